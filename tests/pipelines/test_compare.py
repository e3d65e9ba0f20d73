"""`genray compare`: a real two-family comparison on tiny digits (one Tune experiment, a trial per
family, a time budget), its resume, the report's rules on made-up rows, the time budget in the
training loop, and bad input (exit 2 before anything starts)."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from genray.pipelines import cli, config, train
from genray.pipelines.compare import Plan, make_plan
from genray.pipelines.comparison import CLAIMS, TrialRow, judge_claims, summarize, write_report

TINY = ["--set", "data.size=tiny", "--set", "model.size=tiny", "--set", "trainer.batch_size=16",
        "--set", "trainer.quality_samples=0", "--set", "trainer.warmup_steps=0", "--set", "trainer.eval_batches=1",
        "--set", "trainer.num_samples=4", "--set", "trainer.log_every=1000"]
BUDGET_MIN = 0.02  # 1.2 s of training per family


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def mlflow_client(home: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


# ----------------------------------------------------------------------------- a real comparison


@pytest.mark.integration
def test_two_families_at_a_time_budget_fill_the_table_and_a_resume_retrains_nothing(
        ray_session, genray_home, tmp_path, digits_classifier, capsys):
    out = tmp_path / "docs"
    argv = ["compare", "--families", "vae,dcgan", "--data", "digits", "--budget-minutes", str(BUDGET_MIN),
            "--seeds", "1", "--num-samples", "40", "--feature-net", str(digits_classifier), *TINY, "--out", str(out)]
    assert cli.main([*argv, "--name", "cmp"]) == 0
    printed = capsys.readouterr().out
    assert "2 families x 1 seed = 2 trials on digits" in printed
    assert "2/2" in printed  # the trials' bar reached the end

    # The CSV: one row per trial, trained to the budget (the first step past it) and scored.
    rows = {r["family"]: r for r in read_csv(out / "comparison.csv")}
    assert set(rows) == {"vae", "dcgan"}
    for family, r in rows.items():
        assert r["status"] == "finished", r
        assert float(r["train_s"]) >= BUDGET_MIN * 60 and 1 <= int(r["steps"]) < 10**9, r
        assert math.isfinite(float(r["fd"])) and float(r["fd_floor"]) > 0, r
        assert float(r["samples_per_s"]) > 0 and float(r["latency_s"]) > 0 and int(r["nfe"]) == 1, r
        assert float(r["examples_per_s"]) == pytest.approx(int(r["steps"]) * 16 / float(r["train_s"]), rel=1e-4)
    assert (rows["vae"]["encode"], rows["vae"]["likelihood"], rows["dcgan"]["encode"], rows["dcgan"]["likelihood"]) == \
        ("1", "bound", "0", "none")
    assert int(rows["vae"]["latent_size"]) > 0 and math.isfinite(float(rows["vae"]["bits_per_dim"]))
    # Interpolation smoothness: the VAE's decoded lerps; DCGAN does not encode, so none.
    assert 1 <= float(rows["vae"]["interp_evenness"]) <= 16 and float(rows["vae"]["interp_detour"]) >= 1
    assert rows["dcgan"]["interp_evenness"] in ("", "nan")

    # COMPARISON.md: the table (a row per family, every column), the claims, the plots, the definitions.
    md = (out / "COMPARISON.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| family |"))
    for col in ("FD", "floor", "FD/floor", "KID", "precision", "recall", "class cons.", "sharpness", "samples/s @64",
                "latency (ms)", "NFE", "train s", "steps", "examples/s", "FD spread", "diverged", "encode",
                "latent size", "interp. evenness", "interp. detour", "MIG", "likelihood", "bits/dim"):
        assert f"| {col} |" in header, col
    table = [line for line in md.split("## The table")[1].split("##")[0].splitlines() if line.startswith("| ")][1:]
    assert [line.split("|")[1].split()[0] for line in table] == ["vae", "dcgan"]
    claims = md.split("## The source's claims")[1].split("## Plots")[0]
    for claim in CLAIMS:
        assert claim.text in claims
    assert "flows give exact likelihood | - | not measured" in claims  # no flow ran
    assert "![quality against speed](comparison_quality_speed.png)" in md and "- **FD/floor**:" in md
    for png in ("comparison_quality_speed.png", "comparison_likelihood.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"

    # One MLflow run for the comparison, the trainings nested under it, the report in its artifacts.
    client = mlflow_client(genray_home)
    experiment = client.get_experiment_by_name("genray-compare")
    [parent] = client.search_runs([experiment.experiment_id], filter_string="tags.`genray.kind` = 'comparison'")
    nested = client.search_runs([experiment.experiment_id],
                                filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {r.data.tags["genray.run_name"] for r in nested} == {"cmp-vae-seed0", "cmp-dcgan-seed0"}
    assert {f.path for f in client.list_artifacts(parent.info.run_id, "comparison")} >= {
        "comparison/COMPARISON.md", "comparison/comparison.csv"}
    runs_before = len(client.search_runs([experiment.experiment_id]))
    checkpoints = sorted(p.name for p in (genray_home / "ray_results").glob("cmp-*/checkpoint_*"))

    # --resume of a finished comparison: no trial runs again; the same report is written.
    assert cli.main([*argv, "--resume", "cmp"]) == 0
    assert "trained        nothing" in capsys.readouterr().out
    assert len(client.search_runs([experiment.experiment_id])) == runs_before
    assert sorted(p.name for p in (genray_home / "ray_results").glob("cmp-*/checkpoint_*")) == checkpoints
    assert {r["family"]: r["steps"] for r in read_csv(out / "comparison.csv")} == \
        {f: r["steps"] for f, r in rows.items()}


@pytest.mark.integration
def test_a_time_budget_stops_training_at_its_deadline_and_keeps_the_checkpoint(ray_session, genray_home):
    spec = config.validate({
        "data": {"dataset": "digits", "size": "tiny"},
        "model": {"family": "vae", "size": "tiny"},
        "trainer": {"max_steps": 10**6, "max_minutes": 0.005, "batch_size": 16, "checkpoint_every": 10**6,
                    "eval_every": 10**6, "log_every": 10**6, "eval_batches": 1, "num_samples": 4, "quality_samples": 0},
        "scaling": {"workers": 0},
        "tracking": {"experiment": "test", "register_model": False},
    }, "<test>")
    first = train.run(spec, name="timed", home=genray_home, show_progress=False)
    steps = first.metrics["step"]
    assert 1 <= steps < 10**6 and first.metrics["train_seconds"] >= 0.3
    assert first.checkpoint.name == f"checkpoint_{steps:06d}"  # checkpointed at the deadline's step
    # Continued under the same name: its budget is spent, so nothing more is trained.
    again = train.run(spec, name="timed", home=genray_home, show_progress=False)
    assert again.metrics["step"] == steps


# ----------------------------------------------------------------------------- the report's rules


def fake_plan(families: list[str], seeds: int) -> Plan:
    from genray.pipelines.compare import Entry

    return Plan("digits", [Entry(f, f"x/{f}_digits", {}, True) for f in families], {"wavenet": "audio"}, 100, None,
                seeds, 1, 1.0, 40, "auto")


def trial(family: str, seed: int, *, fd: float, speed: float, sharp: float = 1.0, likelihood: str = "none",
          bpd: float | None = None, encode: int = 0, even: float | None = None, status: str = "finished") -> TrialRow:
    m = {"family": family, "seed": seed, "steps": 100, "train_s": 10.0, "examples_per_s": 160.0, "fd": fd,
         "fd_floor": 2.0, "samples_per_s": speed, "latency_s": 0.01, "nfe": 1, "nfe_unit": "steps",
         "sharpness": sharp, "encode": encode, "likelihood": likelihood, "conditioning": "none",
         "bits_per_dim_unit": "bits per 8-bit pixel"}
    if bpd is not None:
        m["bits_per_dim"] = bpd
    if encode:
        m["latent_size"] = 16
    if even is not None:
        m["interp_evenness"] = even
    return TrialRow(family, seed, status, m, "training diverged: loss is not finite" if status == "diverged" else "")


def test_each_claim_is_decided_by_its_rule_and_the_report_has_every_part(tmp_path):
    rows = [
        trial("dcgan", 0, fd=8.0, speed=5000), trial("dcgan", 1, fd=9.0, speed=5200, status="diverged"),
        trial("diffusion", 0, fd=2.2, speed=80, likelihood="bound", bpd=1.5),
        trial("diffusion", 1, fd=2.4, speed=90, likelihood="bound", bpd=1.5),
        trial("vae", 0, fd=6.0, speed=4000, sharp=0.4, likelihood="bound", bpd=1.2, encode=1, even=1.1),
        trial("vae", 1, fd=6.5, speed=4100, sharp=0.5, likelihood="bound", bpd=1.2, encode=1, even=1.3),
        trial("glow", 0, fd=5.0, speed=900, sharp=1.1, likelihood="exact", bpd=1.0, encode=1, even=1.5),
        trial("glow", 1, fd=5.5, speed=950, sharp=1.2, likelihood="exact", bpd=1.0, encode=1, even=1.7),
        trial("pixelcnn", 0, fd=4.0, speed=3, likelihood="exact", bpd=0.9),
        trial("pixelcnn", 1, fd=4.4, speed=3, likelihood="exact", bpd=0.9),
    ]
    plan = fake_plan(["dcgan", "diffusion", "vae", "glow", "pixelcnn"], seeds=2)
    summary = summarize(rows, plan)
    by = {s["family"]: s for s in summary}
    assert by["dcgan"]["diverged"] == "1/2" and by["dcgan"]["finished"] == 1
    assert by["diffusion"]["fd_ratio"] == pytest.approx((1.1 + 1.2) / 2)
    assert by["diffusion"]["fd_spread"] == pytest.approx(math.sqrt(0.02))
    assert math.isnan(by["dcgan"]["fd_spread"])  # one seed finished
    verdicts = {c["claim"]: c["verdict"] for c in judge_claims(summary)}
    assert verdicts == {
        "GANs sample fast but train unstably": "supported",  # fastest, and a run diverged
        "diffusion has the best quality but samples slowly": "supported",
        "VAEs have a smooth latent space but blurry samples": "supported",  # encodes, evenness 1.2 < 1.6, blurrier
        "flows give exact likelihood": "supported",
        "autoregressive models give exact likelihood but sample slowly": "supported",
    }
    assert by["vae"]["interp_evenness"] == pytest.approx(1.2)
    # The same rules contradict a claim when the measurement goes the other way.
    rougher = [trial("vae", i, fd=6.0, speed=4000, sharp=0.4, likelihood="bound", bpd=1.2, encode=1, even=2.0)
               for i in (0, 1)]
    claims = {c["claim"]: c for c in judge_claims(summarize(rows[:4] + rougher + rows[6:], plan))}
    smooth = claims["VAEs have a smooth latent space but blurry samples"]
    assert smooth["verdict"] == "mixed" and "smoother than the other latent spaces ✗" in smooth["evidence"]
    assert "glow 1.6" in smooth["evidence"]
    rows[8] = trial("pixelcnn", 0, fd=4.0, speed=9000, likelihood="exact", bpd=0.9)
    rows[9] = trial("pixelcnn", 1, fd=4.4, speed=9000, likelihood="exact", bpd=0.9)
    claims = {c["claim"]: c for c in judge_claims(summarize(rows, plan))}
    assert claims["autoregressive models give exact likelihood but sample slowly"]["verdict"] == "mixed"
    assert "samples slowly ✗" in claims["autoregressive models give exact likelihood but sample slowly"]["evidence"]

    files = write_report(rows, summary, judge_claims(summary), plan, tmp_path, name="fake")
    md = files["markdown"].read_text()
    assert "## Families not compared" in md and "- **wavenet**: audio" in md
    assert "dcgan seed 1: diverged: training diverged" in md
    assert len(read_csv(files["csv"])) == len(rows)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, message", [
    (["--families", "nope", "--steps", "4"], "--families nope: unknown family; families: vae,"),
    (["--budget-minutes", "0"], "--budget-minutes must be > 0, got 0"),
    (["--budget-minutes", "-2"], "--budget-minutes must be > 0, got -2"),
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--steps", "4", "--budget-minutes", "1"], "--steps and --budget-minutes: give one budget, not both"),
    ([], "no budget: give --steps N"),
    (["--families", "wavenet", "--steps", "4"],
     "--families wavenet: no shipped config trains it on fashion_mnist (it trains on audio data;"),
    (["--data", "nope", "--steps", "4"], "--data nope: unknown dataset; built-in datasets:"),
    (["--steps", "4", "--set", "trainer.seed=1"], "--set trainer.seed=1: genray compare sets trainer.seed itself"),
    (["--families", "vae", "--data", "digits", "--steps", "4", "--set", "model.sise=tiny"],
     "vae/vae_digits: model.sise: unknown key; allowed: family, size,"),
    # The data has no images for a text model's config: refused after reading it, before Ray.
    (["--families", "gpt", "--data", "text", "--steps", "4", "--set", "data.size=tiny"],
     "--families gpt: its config trains on tokens data; genray compare scores samples of images"),
])
def test_bad_input_exits_2_with_one_line_before_anything_runs(args, message, genray_home, capsys):
    assert cli.main(["compare", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genray: error: ") and message in err and err.count("\n") == 1, err
    assert not (genray_home / "comparisons").exists() and not (genray_home / "mlflow.db").exists()


def test_the_default_families_are_those_with_a_config_for_the_data_and_the_rest_say_why():
    plan = make_plan(data="fashion_mnist", steps=4)
    assert {"vae", "dcgan", "stylegan2", "diffusion", "pixelcnn", "rbm", "realnvp", "glow"} <= set(plan.families)
    assert {e.config for e in plan.entries} >= {"vae/vae_fashion", "gan/dcgan_fashion", "diffusion/ddpm_fashion"}
    assert "audio data" in plan.skipped["wavenet"] and "paired_image" in plan.skipped["pix2pix"]
    for e in plan.entries:  # the budget and the comparison's settings, the same for every family
        assert e.raw["trainer"]["max_steps"] == 4 and e.raw["tracking"]["experiment"] == "genray-compare"
        assert e.raw["scaling"] == {**e.raw["scaling"], "workers": 1, "cpus_per_worker": 1.0}
    assert plan.state()["families"] == "default" and "--families" not in plan.command("x")  # a resume asks the same
    timed = make_plan(data="fashion_mnist", families=["vae"], minutes=2.5)
    assert timed.entries[0].raw["trainer"]["max_minutes"] == 2.5 and timed.budget == "2.5 minutes of training"
