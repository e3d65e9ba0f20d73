"""Real Ray Tune sweeps on tiny configs: ASHA, a failed trial, sampling-time sweeps, resume."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from typing import Literal

import pytest
import yaml
from pydantic import BaseModel, Field

from genray.components.models.protocol import SETTINGS_CONFIG
from genray.pipelines import cli, config, train, tune

TINY = {
    "data": {"dataset": "digits", "size": "tiny"},
    "model": {"family": "vae", "size": "tiny"},
    "trainer": {"max_steps": 8, "batch_size": 16, "checkpoint_every": 2, "eval_every": 2, "log_every": 2,
                "eval_batches": 1, "num_samples": 16, "quality_samples": 0, "warmup_steps": 0},
    "scaling": {"workers": 1, "cpus_per_worker": 0.5},
    "tracking": {"experiment": "test"},
}


def write_config(path: Path, tune_section: dict, base: dict | None = TINY) -> Path:
    path.write_text(yaml.safe_dump({**(base or {}), "tune": tune_section}))
    return path


def mlflow_client(home: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def children(client, run_id: str):
    experiment_id = client.get_run(run_id).info.experiment_id
    return client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'")


def read_table(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def wait_for_idle_cluster(ray, timeout: float = 60) -> None:
    """Every CPU is free again: no trial left a Train worker group behind."""
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
        if time.monotonic() > deadline:
            raise AssertionError(f"resources still held: {ray.available_resources()} of {ray.cluster_resources()}")
        time.sleep(0.5)


# ----------------------------------------------------------------------------- training sweeps


@pytest.mark.integration
def test_asha_stops_trials_early_a_diverging_trial_fails_and_the_best_becomes_champion(
        ray_session, genray_home, tmp_path, digits_classifier):
    # Learning rates from high to low, two trials at a time: after two steps the low ones are
    # clearly behind the first pair, so ASHA (reduction factor 2, first rung at step 2) stops
    # them. lr 1e12 without gradient clipping turns the loss non-finite within a few steps; the
    # training loop stops that trial with the reason. The best finished trial by eval/loss is
    # then scored by genray eval on the driver (tune.evaluate.top_k: the eval_full/* path of the
    # β sweep), the others are not.
    base = json.loads(json.dumps(TINY))
    base["trainer"].update(log_every=1, grad_clip=None)
    cfg = write_config(tmp_path / "sweep.yaml", {
        "metric": "eval/loss", "mode": "min", "scheduler": "asha", "grace_period": 2,
        "report": ["eval_full/recon_psnr"], "evaluate": {"num_samples": 40, "feature_net": str(digits_classifier), "top_k": 1},
        "max_concurrent_trials": 2, "space": {"trainer.lr": {"grid": [3e-3, 1e12, 1e-4, 1e-5]}},
    }, base)
    out = tune.run(tune.load(cfg), name="asha", home=genray_home)

    assert len(out.rows) == 4 and len({r.trial_id for r in out.rows}) == 4
    by_lr = {r.params["trainer.lr"]: r for r in out.rows}
    assert by_lr[1e12].status == "failed"
    assert "diverged" in by_lr[1e12].error and "not finite" in by_lr[1e12].error, by_lr[1e12].error
    assert by_lr[3e-3].status == "finished" and by_lr[3e-3].metrics["step"] == 8, by_lr[3e-3]
    early = [r for r in out.rows if r.status == "stopped early"]
    assert early and all(r.metrics["step"] < 8 for r in early), {lr: r.status for lr, r in by_lr.items()}
    ranked = [r for r in out.rows if r.status != "failed"]
    best = min(ranked, key=lambda r: r.metrics["eval/loss"])
    assert out.best.trial_id == best.trial_id == by_lr[3e-3].trial_id
    assert best.metrics["eval_full/recon_psnr"] > 0
    assert [r.trial_id for r in out.rows if "eval_full/recon_psnr" in r.metrics] == [best.trial_id]

    client = mlflow_client(genray_home)
    version = client.get_model_version_by_alias("vae-digits", "champion")
    assert str(version.version) == out.model_version
    trial_run = tune.tracking.find_run(out.tracking_uri, "test", f"asha-{best.trial_id}")
    assert version.run_id == trial_run  # the model was logged in the winning trial's own run
    assert float(version.tags["genray.tune.objective"]) == best.metrics["eval/loss"]
    assert float(version.tags["genray.metric.eval_full/recon_psnr"]) == best.metrics["eval_full/recon_psnr"]
    assert version.tags["genray.tune.sweep"] == "asha"
    # Every trial is an MLflow run nested under the sweep's, marked with how it ended.
    nested = {r.data.tags["genray.run_name"]: r for r in children(client, out.run_id)}
    assert set(nested) == {f"asha-{r.trial_id}" for r in out.rows}
    expected = {"finished": "FINISHED", "stopped early": "KILLED", "failed": "FAILED"}
    for row in out.rows:
        run = nested[f"asha-{row.trial_id}"]
        assert run.data.tags["genray.tune.status"] == row.status
        assert run.info.status == expected[row.status], (row, run.info.status)
        assert run.data.params["trainer.lr"] == str(row.params["trainer.lr"])
    # The winner's genray eval run nests under its training run, as `genray eval` does.
    [evaluation] = children(client, trial_run)
    assert evaluation.data.metrics["recon_psnr"] == best.metrics["eval_full/recon_psnr"]
    sweep_run = client.get_run(out.run_id)
    assert sweep_run.data.metrics["tune/stopped_early"] == len(early)
    assert sweep_run.data.metrics["tune/failed"] == 1
    assert {f.path for f in client.list_artifacts(out.run_id, "sweep")} == {
        "sweep/trials.csv", "sweep/trials.md", "sweep/objective.png"}
    table = read_table(out.files["csv"])
    assert sorted(r["trial_id"] for r in table) == sorted(r.trial_id for r in out.rows)
    assert [r["status"] for r in table if r["trainer.lr"] == "1e+12"] == ["failed"]
    wait_for_idle_cluster(ray_session)


@pytest.mark.integration
def test_a_two_worker_trial_trains_with_ray_train_inside_the_trial(ray_session, genray_home, tmp_path):
    # A trial of more than one worker starts its own TorchTrainer; Ray's TuneReportCallback
    # forwards rank 0's reports, checkpoint path included, as the one-worker trials report theirs.
    base = json.loads(json.dumps(TINY))
    base["trainer"].update(max_steps=2, checkpoint_every=2, eval_every=2)
    base["scaling"] = {"workers": 2, "cpus_per_worker": 0.5}
    cfg = write_config(tmp_path / "two.yaml", {"metric": "eval/loss", "mode": "min",
                                               "space": {"trainer.lr": {"choice": [1e-3]}}}, base)
    out = tune.run(tune.load(cfg), name="two", home=genray_home)
    [row] = out.rows
    assert row.status == "finished" and row.metrics["step"] == 2, row
    assert (Path(row.checkpoint) / "state.json").is_file()
    state = json.loads((Path(row.checkpoint) / "state.json").read_text())
    assert state["step"] == 2 and state["config"]["scaling"]["workers"] == 2
    assert out.model_version is not None
    wait_for_idle_cluster(ray_session)


# ----------------------------------------------------------------------------- sampling sweeps


@pytest.fixture(scope="module")
def trained_diffusion(ray_session, tmp_path_factory):
    """A tiny class-conditional diffusion model, registered as tinydiff/1, in its own home."""
    home = tmp_path_factory.mktemp("tune-home")
    raw = json.loads(json.dumps(TINY))
    raw["model"] = {"family": "diffusion", "size": "tiny", "conditioning": "class", "num_timesteps": 50,
                    "num_inference_steps": 5, "vlb_timesteps": 5}
    raw["trainer"].update(max_steps=6, checkpoint_every=6, eval_every=6)
    raw["tracking"]["model_name"] = "tinydiff"
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        out = train.run(config.validate(raw, "<test>"), name="diff", home=home)
    finally:
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    return home, out


def sampling_sweep(tmp_path: Path, digits_classifier, space: dict, **extra) -> Path:
    return write_config(tmp_path / "sweep.yaml", {
        "target": "models:/tinydiff/1", "metric": "fd_digits", "mode": "min", "report": ["class_consistency"],
        "evaluate": {"num_samples": 40, "feature_net": str(digits_classifier)}, "space": space, **extra,
    }, base=None)


@pytest.mark.integration
def test_a_sampling_sweep_scores_guidance_scales_without_training(trained_diffusion, tmp_path, digits_classifier,
                                                                  monkeypatch):
    import mlflow.pyfunc
    import numpy as np

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    home, trained = trained_diffusion
    before = sorted(p.name for p in (home / "ray_results").iterdir())
    cfg = sampling_sweep(tmp_path, digits_classifier, {"sampling.guidance_scale": {"grid": [0.0, 2.0, 6.0]}},
                         max_concurrent_trials=2)
    out = tune.run(tune.load(cfg), name="guidance", home=home)

    assert sorted(p.name for p in (home / "ray_results").iterdir()) == before  # no Train run started
    assert [r.status for r in out.rows] == ["finished"] * 3
    fds = {r.params["sampling.guidance_scale"]: r.metrics["fd_digits"] for r in out.rows}
    assert len(set(fds.values())) == 3  # the setting reaches the sampler
    assert out.best.params["sampling.guidance_scale"] == min(fds, key=fds.get)

    client = mlflow_client(home)
    sweep_run = client.get_run(out.run_id)
    assert sweep_run.data.tags["mlflow.parentRunId"] == trained.run_id  # nested under the training run
    evals = children(client, out.run_id)
    assert sorted(float(r.data.params["eval.sampling.guidance_scale"]) for r in evals) == [0.0, 2.0, 6.0]
    assert "eval_full/fd_digits" not in client.get_run(trained.run_id).data.metrics  # trials leave it alone

    version = client.get_model_version_by_alias("tinydiff", "champion")
    assert version.run_id == out.run_id and str(version.version) == out.model_version != "1"
    best_scale = out.best.params["sampling.guidance_scale"]
    assert json.loads(version.tags["genray.sampling.guidance_scale"]) == best_scale
    # The champion samples with the winning scale by default; a request can still override it.
    mlflow.set_registry_uri(f"sqlite:///{home / 'mlflow.db'}")
    champion = mlflow.pyfunc.load_model("models:/tinydiff@champion")
    default = champion.predict({"n": 4, "seed": 3})
    explicit = champion.predict({"n": 4, "seed": 3}, params={"guidance_scale": best_scale})
    other = champion.predict({"n": 4, "seed": 3}, params={"guidance_scale": best_scale + 1.0})
    assert np.array_equal(default, explicit) and not np.array_equal(default, other)


@pytest.mark.integration
def test_optuna_searches_a_continuous_range(trained_diffusion, tmp_path, digits_classifier, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    home, _ = trained_diffusion
    cfg = sampling_sweep(tmp_path, digits_classifier, {"sampling.guidance_scale": {"uniform": [0.5, 4.0]},
                                                       "sampling.eta": {"choice": [0.0, 1.0]}},
                         search="optuna", num_samples=3, max_concurrent_trials=1, register_model=False)
    out = tune.run(tune.load(cfg), name="optuna", home=home)
    assert [r.status for r in out.rows] == ["finished"] * 3
    scales = [r.params["sampling.guidance_scale"] for r in out.rows]
    assert all(0.5 <= s <= 4.0 for s in scales) and len(set(scales)) == 3
    assert {r.params["sampling.eta"] for r in out.rows} <= {0.0, 1.0}
    assert out.best is not None and out.model_version is None  # register_model: false


@pytest.mark.integration
def test_an_interrupted_sweep_resumes_without_rerunning_finished_trials(trained_diffusion, tmp_path, digits_classifier):
    import ray

    home, _ = trained_diffusion
    scales = [0.0, 1.0, 2.0, 4.0, 8.0]
    cfg = sampling_sweep(tmp_path, digits_classifier, {"sampling.guidance_scale": {"grid": scales}},
                         max_concurrent_trials=1)
    cfg = write_config(cfg, {**yaml.safe_load(cfg.read_text())["tune"],
                             "evaluate": {"num_samples": 200, "feature_net": str(digits_classifier)}}, base=None)
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "GENRAY_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "genray.pipelines.cli", "tune", str(cfg)]
    first = subprocess.Popen(cmd + ["--name", "resumed"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    client = mlflow_client(home)
    deadline = time.monotonic() + 240
    done_before: list[str] = []
    while len(done_before) < 2:
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0][-3000:]
        sweep = tune.tracking.find_run(f"sqlite:///{home / 'mlflow.db'}", "test", "resumed")
        done_before = [r.data.tags["genray.tune.trial"] for r in children(client, sweep)] if sweep else []
        time.sleep(0.5)
    time.sleep(1.0)  # let Tune record the second trial's result
    first.send_signal(signal.SIGINT)
    log, _ = first.communicate(timeout=120)
    assert first.returncode == 130, log[-3000:]
    assert "--resume resumed" in log
    started_before = len(children(client, sweep))
    assert started_before < len(scales)

    second = subprocess.run(cmd + ["--resume", "resumed"], env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    evaluated = [r.data.tags["genray.tune.trial"] for r in children(client, sweep)]
    assert sorted(evaluated) == sorted(set(evaluated)), evaluated  # no trial scored twice
    assert set(done_before) <= set(evaluated) and len(evaluated) == len(scales)
    table = read_table(home / "sweeps" / "resumed" / "trials.csv")
    assert len(table) == len(scales) and sorted(float(r["sampling.guidance_scale"]) for r in table) == scales

    # Resuming again with another config is refused, naming what changed.
    changed = subprocess.run(cmd + ["--resume", "resumed", "--set", "tune.num_samples=2"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert changed.returncode == 2 and "tune.num_samples" in changed.stderr, changed.stderr


@pytest.mark.integration
def test_a_sampling_value_the_model_does_not_allow_exits_2_before_any_trial(trained_diffusion, tmp_path,
                                                                           digits_classifier, monkeypatch, capsys):
    home, _ = trained_diffusion
    monkeypatch.setenv("GENRAY_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = sampling_sweep(tmp_path, digits_classifier, {"sampling.num_inference_steps": {"choice": [5, 500]}})
    assert cli.main(["tune", str(cfg), "--name", "too-many-steps"]) == 2
    err = capsys.readouterr().err
    assert "tune.space.sampling.num_inference_steps=500" in err and "<= 50" in err, err  # T = 50
    assert "Traceback" not in err
    assert not (home / "sweeps" / "too-many-steps").exists()  # Ray Tune never started


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("space, message", [
    ({"model.beta": {"lognormal": [1, 4]}}, "tune.space.model.beta: unknown distribution 'lognormal'; allowed: choice"),
    ({"trainer.lr": {"uniform": [0.1, 0.01]}}, "tune.space.trainer.lr: low must be below high (got low=0.1, high=0.01)"),
    ({"trainer.lr": {"loguniform": [0, 1]}}, "loguniform needs low > 0"),
    ({"trainer.batch_size": {"int": [8, 16.5]}}, "int takes two integers"),
    ({"trainer.lrr": {"choice": [0.1]}}, "trainer.lrr: unknown key; allowed: max_steps"),
    ({"trainer.lr": {"choice": [-1.0]}}, "tune.space.trainer.lr=-1.0"),
    ({"trainer.lr": [0.1, 0.2]}, "expected one distribution"),
    ({"sampling.guidance_scale": {"choice": [1.0]}}, "set tune.target"),
])
def test_a_bad_search_space_entry_exits_2_with_a_plain_message(space, message, tmp_path, capsys):
    cfg = write_config(tmp_path / "bad.yaml", {"metric": "eval/loss", "mode": "min", "space": space})
    assert cli.main(["tune", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genray: error: ") and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("section, message", [
    ({"metric": "eval/loss", "mode": "min", "space": {"trainer.lr": {"choice": [0.1]}}, "schedular": "asha"},
     "tune.schedular: unknown key; allowed: target, metric, mode"),
    ({"metric": "eval/loss", "mode": "lowest", "space": {"trainer.lr": {"choice": [0.1]}}}, "tune.mode"),
    ({"metric": "eval_full/mig", "mode": "max", "scheduler": "asha", "evaluate": {},
      "space": {"model.latent_dim": {"choice": [4]}}}, "must be reported there (eval/*)"),
    ({"metric": "eval_full/mig", "mode": "max", "space": {"model.latent_dim": {"choice": [4]}}}, "add a tune.evaluate"),
    ({"metric": "eval/loss", "mode": "min", "search": "optuna", "space": {"trainer.lr": {"grid": [0.1, 0.2]}}},
     "grid does not combine with search: optuna"),
    ({"metric": "eval_full/mig", "mode": "max", "evaluate": {"top_k": 2, "rank_by": "eval_full/fd"},
      "space": {"model.latent_dim": {"choice": [4]}}}, "tune.evaluate.rank_by must be a training metric"),
    ({"metric": "eval_full/mig", "mode": "max", "evaluate": {"top_k": 0}, "space": {"model.latent_dim": {"choice": [4]}}},
     "tune.evaluate.top_k: Input should be greater than or equal to 1"),
])
def test_bad_tune_settings_exit_2(section, message, tmp_path, capsys):
    cfg = write_config(tmp_path / "bad.yaml", section)
    assert cli.main(["tune", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_the_trial_count_is_spelled_out_and_a_sweep_over_the_limit_needs_yes(tmp_path, genray_home, capsys):
    # num_samples repeats the whole grid: 5 x 3 = 15 trials, and the choice entry multiplies nothing.
    cfg = write_config(tmp_path / "big.yaml", {"metric": "eval/loss", "mode": "min", "num_samples": 3, "max_trials": 10,
                                               "space": {"trainer.lr": {"grid": [1e-4, 2e-4, 3e-4, 4e-4, 5e-4]},
                                                         "model.latent_dim": {"choice": [4, 8]}}})
    assert tune.load(cfg).describe_trials() == "grid 5 x num_samples 3 = 15 trials"
    assert cli.main(["tune", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "grid 5 x num_samples 3 = 15 trials, over tune.max_trials=10; confirm with --yes" in err, err
    assert "Traceback" not in err and not (genray_home / "sweeps").exists()  # refused before anything started


def test_asha_rungs_use_the_training_metric_when_genray_eval_scores_only_the_top_k(tmp_path):
    section = {"metric": "eval_full/mig", "mode": "max", "scheduler": "asha", "evaluate": {"top_k": 2},
               "space": {"model.latent_dim": {"choice": [4, 8]}}}
    sweep = tune.load(write_config(tmp_path / "s.yaml", section))
    assert tune.rung_metric(sweep.tune) == ("eval/loss", "min")
    section["evaluate"] = {"top_k": 2, "rank_by": "eval/elbo", "rank_mode": "max"}
    assert tune.rung_metric(tune.load(write_config(tmp_path / "s.yaml", section)).tune) == ("eval/elbo", "max")


def test_a_metric_the_family_cannot_have_exits_2_before_any_trial(tmp_path, genray_home, capsys):
    base = json.loads(json.dumps(TINY))
    base["model"] = {"family": "dcgan", "size": "tiny"}
    cfg = write_config(tmp_path / "gan.yaml", {"metric": "eval_full/mig", "mode": "max", "evaluate": {},
                                               "space": {"trainer.lr": {"choice": [1e-4]}}}, base)
    assert cli.main(["tune", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "tune.metric 'eval_full/mig' is the mutual information gap of a model's codes, which a DCGAN cannot give" \
        in err and "Traceback" not in err, err
    base["model"] = {"family": "vae", "size": "tiny"}  # a VAE encodes, but digits have no ground-truth factors
    cfg = write_config(tmp_path / "vae.yaml", {"metric": "eval/loss", "mode": "min", "evaluate": {},
                                               "report": ["eval_full/mig"], "space": {"trainer.lr": {"choice": [1e-4]}}}, base)
    assert cli.main(["tune", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "'eval_full/mig' needs data with ground-truth factors" in err and "Traceback" not in err, err
    # The CLIP score needs a text-conditioned model and a CLIP to score with.
    cfg = write_config(tmp_path / "clip.yaml", {"metric": "eval/loss", "mode": "min", "evaluate": {},
                                                "report": ["eval_full/clip_score"],
                                                "space": {"trainer.lr": {"choice": [1e-4]}}}, base)
    assert cli.main(["tune", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert ("'eval_full/clip_score' is the CLIP score of a text-conditioned model's samples: it needs a model with "
            "conditioning text (this one: none) and tune.evaluate.clip naming a trained genray CLIP") in err, err
    assert not list((genray_home / "sweeps").glob("*/*.json"))  # no trial state: nothing started


def test_one_worker_trials_run_their_loop_in_process_and_hold_its_resources(tmp_path):
    section = {"metric": "eval/loss", "mode": "min", "space": {"trainer.lr": {"choice": [0.1]}}}
    for workers in (0, 1):  # local mode is allowed in a sweep now: the trial's process is the worker
        sweep = tune.load(write_config(tmp_path / "s.yaml", section), [f"scaling.workers={workers}"])
        assert tune.runs_in_trial(sweep.spec, sweep.tune) and tune.trial_resources(sweep) == {"CPU": 0.5}
    sweep = tune.load(write_config(tmp_path / "s.yaml", section), ["scaling.workers=2", "scaling.gpu=true"])
    assert not tune.runs_in_trial(sweep.spec, sweep.tune) and tune.trial_resources(sweep) == {"CPU": 0.01}
    sweep = tune.load(write_config(tmp_path / "s.yaml", section), ["scaling.gpu=true"])
    assert tune.trial_resources(sweep) == {"CPU": 0.5, "GPU": 1.0}
    sweep = tune.load(write_config(tmp_path / "s.yaml", section), ["tune.in_process_trials=false"])
    assert not tune.runs_in_trial(sweep.spec, sweep.tune) and tune.trial_resources(sweep) == {"CPU": 0.01}
    with pytest.raises(config.ConfigError, match="local mode.*cannot run inside a trial with tune.in_process_trials=false"):
        tune.load(write_config(tmp_path / "s.yaml", section), ["tune.in_process_trials=false", "scaling.workers=0"])


def test_resuming_a_sweep_that_does_not_exist_exits_2(tmp_path, genray_home, capsys):
    cfg = write_config(tmp_path / "s.yaml", {"metric": "eval/loss", "mode": "min",
                                             "space": {"trainer.lr": {"choice": [0.1]}}})
    assert cli.main(["tune", str(cfg), "--resume", "nope"]) == 2
    assert "--resume nope: no sweep of that name" in capsys.readouterr().err


class SamplingSettings(BaseModel):
    model_config = SETTINGS_CONFIG
    guidance_scale: float = Field(1.0, ge=0, le=10)
    num_inference_steps: int = Field(20, ge=1, le=50)
    sampler: Literal["ddim", "ddpm"] = "ddim"


class SettingsModel:
    sampling_settings = SamplingSettings


def sampling_space(tmp_path: Path, space: dict) -> tune.Sweep:
    return tune.load(write_config(tmp_path / "s.yaml", {"target": "models:/m/1", "metric": "fd_digits", "mode": "min",
                                                        "space": space}, base=None))


@pytest.mark.parametrize("space, message", [
    ({"sampling.temperature": {"choice": [0.5]}},
     "tune.space.sampling.temperature: this model's sampler takes sampling.guidance_scale, "
     "sampling.num_inference_steps, sampling.sampler"),
    ({"sampling.guidance_scale": {"uniform": [0.0, 20.0]}},
     "tune.space.sampling.guidance_scale=20.0: Input should be less than or equal to 10; "
     "allowed: a number >= 0 and <= 10 (default 1.0)"),
    ({"sampling.sampler": {"grid": ["ddim", "euler"]}},
     "tune.space.sampling.sampler='euler': Input should be 'ddim' or 'ddpm'; allowed: one of 'ddim', 'ddpm'"),
    ({"sampling.num_inference_steps": {"uniform": [5, 40]}},
     "tune.space.sampling.num_inference_steps: uniform draws fractions and this setting takes integers"),
])
def test_a_sampling_space_is_checked_against_the_models_settings_type(space, message, tmp_path):
    sweep = sampling_space(tmp_path, space)
    with pytest.raises(config.ConfigError) as e:
        tune.check_sampling_space(sweep, SettingsModel())
    assert str(e.value).startswith(f"{sweep.source}: ") and message in str(e.value), str(e.value)


def test_a_valid_sampling_space_passes_with_the_checkpoints_defaults(tmp_path):
    sweep = sampling_space(tmp_path, {"sampling.guidance_scale": {"loguniform": [0.5, 8.0]},
                                      "sampling.num_inference_steps": {"int": [1, 50]},
                                      "sampling.sampler": {"choice": ["ddim", "ddpm"]}})
    tune.check_sampling_space(sweep, SettingsModel(), {"guidance_scale": 2.0, "sampler": "ddpm"})
    with pytest.raises(config.ConfigError, match="sampling.guidance_scale=-1"):  # bad defaults are named too
        tune.check_sampling_space(sweep, SettingsModel(), {"guidance_scale": -1})


def test_space_entries_map_to_tune_domains_with_inclusive_int_ranges():
    dims = tune.parse_space({"a": {"int": [2, 4]}, "b": {"loguniform": [1e-4, 1e-2]}, "c": {"grid": ["x", "y"]}})
    import numpy as np

    rng = np.random.default_rng(0)
    ints = {dims[0].domain().sample(random_state=rng) for _ in range(200)}
    assert ints == {2, 3, 4}
    logs = np.array([dims[1].domain().sample(random_state=rng) for _ in range(2000)])
    assert logs.min() >= 1e-4 and logs.max() <= 1e-2
    # Log-uniform: each decade holds half the draws.
    assert abs(np.mean(logs < 1e-3) - 0.5) < 0.05
    assert dims[2].domain() == {"grid_search": ["x", "y"]}
    assert dims[0].candidates() == [2, 4]


def test_stopping_rules_and_error_lines():
    rules = config.TuneSpec.model_validate({"metric": "m", "mode": "min", "space": {},
                                            "stop": {"eval/loss": {"below": 0.5}, "step": {"above": 99}}}).stop
    stopper = tune._RuleStopper(rules)
    assert not stopper("t", {"eval/loss": 0.7, "step": 10})
    assert stopper("t", {"eval/loss": 0.4, "step": 10}) and stopper("t", {"eval/loss": 0.9, "step": 100})
    err = RuntimeError("Traceback (most recent call last):\n  File x\nray.exceptions.RayTaskError: boom\n"
                       "FloatingPointError: [r] training diverged: train/loss is not finite by step 3")
    assert tune.short_error(err) == "FloatingPointError: [r] training diverged: train/loss is not finite by step 3"


@pytest.mark.integration
def test_concurrency_is_lowered_to_the_trials_whose_workers_fit(ray_session, tmp_path):
    base = json.loads(json.dumps(TINY))
    base["scaling"] = {"workers": 2, "cpus_per_worker": 1.0}
    cfg = write_config(tmp_path / "s.yaml", {"metric": "eval/loss", "mode": "min", "max_concurrent_trials": 3,
                                             "space": {"trainer.lr": {"choice": [0.1]}}}, base)
    said = []
    # The session's cluster has 4 logical CPUs: one trial of 0.01 + 2 x 1.0 fits, two do not.
    assert tune.fitting_concurrency(tune.load(cfg), {"CPU": 0.01}, say=said.append) == 1
    assert "1 trial(s) at a time, not tune.max_concurrent_trials=3" in said[0]
    base["scaling"]["cpus_per_worker"] = 0.5
    cfg = write_config(tmp_path / "s.yaml", {"metric": "eval/loss", "mode": "min", "max_concurrent_trials": 3,
                                             "space": {"trainer.lr": {"choice": [0.1]}}}, base)
    assert tune.fitting_concurrency(tune.load(cfg), {"CPU": 0.01}, say=said.append) == 3 and len(said) == 1


def test_the_report_tabulates_every_trial_and_plots_categorical_values(tmp_path):
    sweep = tune.load(Path(__file__).resolve().parents[2] / "pipelines/configs/gan/sweep_dcgan_digits.yaml")
    rows = [tune.TrialRow("a", "finished", {"trainer.lr": 1e-4, "trainer.betas": [0.5, 0.999]},
                          {"eval/kid_digits": 0.3, "step": 3000.0}),
            tune.TrialRow("b", "stopped early", {"trainer.lr": 1e-3, "trainer.betas": (0.0, 0.99)},  # Tune may hand back tuples
                          {"eval/kid_digits": 0.5, "step": 500.0}),
            tune.TrialRow("c", "failed", {"trainer.lr": 1e-2, "trainer.betas": [0.9, 0.999]}, {}, "FloatingPointError: x")]
    files = tune.write_report(rows, sweep, tmp_path, rows[0])
    table = read_table(files["csv"])
    assert [r["trial_id"] for r in table] == ["a", "b", "c"]
    assert table[1]["trainer.betas"] == "[0.0, 0.99]" and table[2]["error"] == "FloatingPointError: x"
    assert list(table[0]) == ["trial_id", "status", "trainer.lr", "trainer.betas", "eval/kid_digits",
                              "eval/fd_digits_n256", "eval/class_consistency", "step", "error"]
    assert "| a **(best)** | finished |" in files["markdown"].read_text()
    assert files["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
