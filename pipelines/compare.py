"""Compare the families on one dataset at one budget: the source's comparison table, measured.

    genray compare --data fashion_mnist --budget-minutes 10 --seeds 3 --out docs/
    genray compare --families vae,dcgan --data digits --steps 300 --seeds 1
    genray compare ... --resume NAME          # continue an interrupted comparison; finished trials are kept
    genray compare ... --dry-run              # the families, their configs and the trials; nothing runs
    python -m genray.pipelines.compare ...    # the same job

    setup    every family -> its one shipped config for the data (`shipped_configs`), with the
             budget, the seed and --set applied; validated, its data prepared and its model built
             on the driver, so an unknown family, a budget <= 0, a bad --set value or a family
             the data cannot feed exits 2 here, before Ray starts
    trials   one Ray Tune experiment, a trial per (family, seed), run as `genray tune` runs a
             training sweep (pipelines/tune.py): train.run in the trial's own process (one
             worker) or as a Ray Train run of its own (more), its MLflow run nested under the
             comparison's; then genray eval's `evaluate` in the trial (its CPUs), and the
             sampling probe (one sample's latency, network evaluations, sharpness, latent size)
    report   pipelines/comparison.py: COMPARISON.md (one row per family, every column defined,
             the source's claims each beside its measurement, decided by its CLAIMS),
             comparison.csv (one row per trial) and two plots; logged to the comparison's MLflow
             run and copied to --out

A budget is `--steps N` (every family trains N steps) or `--budget-minutes M` (every family
trains M minutes, through trainer.max_minutes: the loop stops at the first step past M minutes
of training, evals excluded, and checkpoints there). Under a time budget max_steps is lifted to
STEP_CAP, so the learning-rate schedule is computed for a run that never ends: constant after
its warmup.

Layout under the project home: comparisons/<name>/ holds Tune's state (what --resume reads),
plan.yaml (what --resume checks) and the report; each training's checkpoints live in
ray_results/<name>-<family>-seed<S>/.
"""
from __future__ import annotations

import copy
import math
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ray.tune import Callback

from genray.pipelines import arguments, catalog, console, tracking
from genray.pipelines.comparison import (LATENCY_REPEATS, LIKELIHOOD_ROWS, SHARPNESS_IMAGES, SPEED_BATCH, TRIAL_COLUMNS,
                                         TrialRow, cell, columns, finite, judge_claims, summarize, write_report)
from genray.pipelines.config import ConfigError, apply_overrides, read_yaml, set_key, validate
from genray.pipelines.env import init_ray, log_path, project_home
from genray.pipelines.tune import check_resumable

EXPERIMENT = "genray-compare"  # every comparison's run and its trainings, so the trainings nest under it
STATE_PLAN = "plan.yaml"  # the plan a comparison started with; --resume checks it
STEP_CAP = 10**9  # max_steps under a time budget: the minutes decide
# Keys genray compare sets itself, the same for every family; --set may not change them.
OWN_KEYS = ("trainer.max_steps", "trainer.max_minutes", "trainer.seed", "scaling.workers", "scaling.cpus_per_worker",
            "tracking.experiment", "tracking.register_model", "tracking.run_name", "data.dataset")


# ----------------------------------------------------------------------------- the plan


def shipped_configs() -> dict[str, list[tuple[str, str]]]:
    """family -> [(shipped config name, its data.dataset)] of every shipped experiment config
    (sweeps, which have a tune: section, left out)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for name, path in catalog.shipped().items():
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict) or "tune" in raw or "model" not in raw:
            continue
        family = raw["model"].get("family")
        dataset = (raw.get("data") or {}).get("dataset", "digits")
        out.setdefault(family, []).append((name, dataset))
    return out


@dataclass(frozen=True)
class Entry:
    family: str
    config: str  # the shipped config's name, e.g. vae/vae_fashion
    raw: dict[str, Any]  # the config with the budget, --set and the comparison's settings applied
    named: bool  # the user named the family (--families): a problem with it is an error, not a skip


@dataclass
class Plan:
    data: str
    entries: list[Entry]
    skipped: dict[str, str]  # family -> why it is not compared
    steps: int | None
    minutes: float | None
    seeds: int
    workers: int
    cpus_per_trial: float
    num_samples: int
    feature_net: str
    overrides: list[str] = field(default_factory=list)
    max_concurrent: int | None = None
    requested: list[str] = field(default_factory=list)  # --families as given ([]: the default list)

    @property
    def families(self) -> list[str]:
        return [e.family for e in self.entries]

    @property
    def num_trials(self) -> int:
        return len(self.entries) * self.seeds

    @property
    def budget(self) -> str:
        if self.steps is not None:
            return f"{self.steps:,} steps"
        return f"{self.minutes:g} minute{'s' if self.minutes != 1 else ''} of training"

    def state(self) -> dict[str, Any]:
        """What a resumed comparison must match (plan.yaml): the options it was started with."""
        return {"data": self.data, "families": ",".join(self.requested) or "default", "steps": self.steps,
                "minutes": self.minutes, "seeds": self.seeds, "workers": self.workers,
                "cpus_per_trial": self.cpus_per_trial, "num_samples": self.num_samples,
                "feature_net": self.feature_net, "overrides": list(self.overrides)}

    def command(self, name: str | None = None) -> str:
        """The genray compare command line of this plan (for the report and the resume hint)."""
        parts = ["genray", "compare", *(["--families", ",".join(self.requested)] if self.requested else []),
                 "--data", self.data,
                 *(["--steps", str(self.steps)] if self.steps is not None else ["--budget-minutes", f"{self.minutes:g}"]),
                 "--seeds", str(self.seeds), "--workers", str(self.workers),
                 "--cpus-per-trial", f"{self.cpus_per_trial:g}", "--num-samples", str(self.num_samples)]
        if self.feature_net != "auto":
            parts += ["--feature-net", self.feature_net]
        for o in self.overrides:
            parts += ["--set", o]
        if name:
            parts += ["--resume", name]
        return shlex.join(parts)


def make_plan(*, data: str = "fashion_mnist", families: list[str] | None = None, steps: int | None = None,
              minutes: float | None = None, seeds: int = 3, workers: int = 1, cpus_per_trial: float = 1.0,
              num_samples: int = 1000, feature_net: str = "auto", overrides: list[str] | None = None,
              max_concurrent: int | None = None) -> Plan:
    """The families to compare and each one's config at the budget, checked without Ray, data or
    models: a ConfigError names the value and what is allowed."""
    from genray.components.data import DATASETS
    from genray.components.models import FAMILIES

    overrides = list(overrides or [])
    if (steps is None) == (minutes is None):
        raise ConfigError(("--steps and --budget-minutes: give one budget, not both" if steps is not None else
                           "no budget: give --steps N (training steps per trial) or --budget-minutes M "
                           "(minutes of training per trial)"))
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {steps}")
    if minutes is not None and not (minutes > 0 and math.isfinite(minutes)):
        raise ConfigError(f"--budget-minutes must be > 0, got {minutes:g}")
    for flag, value, low in (("--seeds", seeds, 1), ("--workers", workers, 1), ("--num-samples", num_samples, 2),
                             ("--max-concurrent", max_concurrent or 1, 1)):
        if value < low:
            hint = " (1: each trial trains in its own process; more: a Ray Train run per trial)" if flag == "--workers" else ""
            raise ConfigError(f"{flag} must be >= {low}, got {value}{hint}")
    if not cpus_per_trial > 0:
        raise ConfigError(f"--cpus-per-trial must be > 0, got {cpus_per_trial:g}")
    if data not in DATASETS:
        raise ConfigError(f"--data {data}: unknown dataset; built-in datasets: {', '.join(sorted(DATASETS))}")
    for o in overrides:
        key = o.partition("=")[0]
        if key in OWN_KEYS:
            raise ConfigError(f"--set {o}: genray compare sets {key} itself, the same for every family "
                              "(--steps/--budget-minutes, --seeds, --workers, --cpus-per-trial, --data)")

    configs = shipped_configs()
    here = {f: [name for name, d in cs if d == data] for f, cs in configs.items()}
    here = {f: names for f, names in here.items() if names}
    if not here:
        with_configs = sorted({d for cs in configs.values() for _, d in cs})
        raise ConfigError(f"--data {data}: no shipped config trains on it; datasets with shipped configs: "
                          f"{', '.join(with_configs)}")
    named = [f for item in (families or []) for f in item.split(",") if f]
    for f in named:
        if f not in FAMILIES:
            raise ConfigError(f"--families {f}: unknown family; families: {', '.join(FAMILIES)}")
        if f not in here:
            elsewhere = ", ".join(f"{n} on {d}" for n, d in configs.get(f, [])) or "none"
            raise ConfigError(f"--families {f}: no shipped config trains it on {data} ({_kind(f)}its configs: "
                              f"{elsewhere}); families with one: {', '.join(f for f in FAMILIES if f in here)}")
    chosen = list(dict.fromkeys(named)) or [f for f in FAMILIES if f in here]
    skipped = {}
    if not named:
        for f in FAMILIES:
            if f not in here:
                datasets = sorted({d for _, d in configs.get(f, [])})
                skipped[f] = f"no shipped config on {data} ({_kind(f)}its configs train on {', '.join(datasets) or 'nothing'})"

    entries = []
    for f in chosen:
        name = here[f][0]  # sorted: the first shipped config of the family on this data
        raw = read_yaml(name)
        apply_overrides(raw, overrides, name)
        own = {"trainer.max_steps": steps if steps is not None else STEP_CAP, "trainer.max_minutes": minutes,
               "scaling.workers": workers, "scaling.cpus_per_worker": cpus_per_trial / workers,
               "tracking.experiment": EXPERIMENT, "tracking.register_model": False, "tracking.run_name": None}
        if feature_net != "auto":
            own["trainer.feature_net"] = feature_net
        for key, value in own.items():
            set_key(raw, key, value, what=key)
        validate(copy.deepcopy(raw), name)  # its message names the config, so the family
        entries.append(Entry(f, name, raw, bool(named)))
    return Plan(data, entries, skipped, steps, minutes, seeds, workers, cpus_per_trial, num_samples, feature_net,
                overrides, max_concurrent, list(dict.fromkeys(named)))


def _kind(family: str) -> str:
    """'it trains on audio data; ' for a family whose data is never plain images (FAMILY_KINDS),
    else ''. Token networks are left out: built with a tokenizer they are image models."""
    from genray.components.models import FAMILY_KINDS

    kind = FAMILY_KINDS.get(family)
    return f"it trains on {kind} data; " if kind not in (None, "tokens") else ""


def check_models(plan: Plan, *, home: Path, uri: str) -> None:
    """On the driver, before Ray: every family's data prepared and checked, its model references
    resolved and its model built (train.resolve_model_inputs, as `genray train` does), and the
    model able to sample images. A family the user named fails with a ConfigError; one the
    default list brought is skipped with the reason (plan.skipped), e.g. a token prior whose
    tokenizer was never trained."""
    from genray.components.models import build
    from genray.pipelines import train
    from genray.pipelines.data import resolve_data

    kept, dropped = [], {}
    for e in plan.entries:
        spec = validate(copy.deepcopy(e.raw), e.config)
        data = resolve_data(spec, home)
        why = None
        if not data.info.kind.is_image:
            why = f"its config trains on {data.info.modality} data; genray compare scores samples of images"
        else:
            try:
                inputs = train.resolve_model_inputs(spec, data, uri=uri, home=home)
            except ConfigError as err:
                if e.named or not str(err).startswith("model."):  # only a missing referenced model is a skip
                    raise ConfigError(f"{e.family} ({e.config}): {err}") from None
                why = f"{err} (train it first: its config names it)"
            else:
                model = build(spec.model.family, inputs.args, data.info)
                if "sample" not in model.capabilities:
                    why = (f"it cannot sample (it can {', '.join(sorted(model.capabilities))}); "
                           "genray compare scores samples")
        if why is None:
            kept.append(e)
        elif e.named:
            raise ConfigError(f"--families {e.family}: {why}")
        else:
            dropped[e.family] = why
    plan.entries = kept
    plan.skipped.update(dropped)
    if not kept:
        reasons = "; ".join(f"{f}: {w}" for f, w in dropped.items())
        raise ConfigError(f"--data {plan.data}: no family can be compared on it ({reasons})")


# ----------------------------------------------------------------------------- a trial (a Ray actor)


def trial_run_name(name: str, family: str, seed: int) -> str:
    return f"{name}-{family}-seed{seed}"


def compare_trial(config: dict[str, Any], *, ctx: dict[str, Any]) -> None:
    """One (family, seed): the family's config trained by train.run (its MLflow run nested under
    the comparison's), scored by genray eval's `evaluate` at batch SPEED_BATCH, and probed for
    latency, network evaluations, sharpness and latent size; all of it reported to Tune."""
    import torch
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from genray.pipelines import evaluate, train
    from genray.pipelines.data import resolve_data
    from genray.pipelines.quality import read_split

    torch.set_num_threads(ctx["threads"])
    family, seed = config["family"], int(config["seed"])
    raw = copy.deepcopy(ctx["configs"][family])
    set_key(raw, "trainer.seed", seed, what="trainer.seed")
    spec = validate(raw, ctx["sources"][family])
    home = Path(ctx["home"])
    name = trial_run_name(ctx["name"], family, seed)
    started = time.perf_counter()
    # One worker: the loop runs here and reports to Tune itself; more: a Ray Train run whose
    # reports TuneReportCallback forwards (pipelines/tune.py's train_trial does the same).
    out = train.run(spec, name=name, home=home, uri=ctx["uri"], parent_run_id=ctx["run_id"],
                    callbacks=None if ctx["in_process"] else [TuneReportCallback()], show_progress=False,
                    in_process=ctx["in_process"])
    trained = time.perf_counter() - started
    torch.set_num_threads(ctx["threads"])
    request = evaluate.EvalRequest(target=str(out.checkpoint), num_samples=ctx["num_samples"], batch_size=SPEED_BATCH,
                                   workers=0, feature_net=ctx["feature_net"], likelihood_rows=LIKELIHOOD_ROWS,
                                   seed=0, tags={"genray.compare.trial": name})
    result = evaluate.evaluate(request, home=home, say=lambda line: None)
    real = read_split(resolve_data(spec, home).test, SHARPNESS_IMAGES).x
    probe = sampling_probe(out.checkpoint, real, seed=seed)
    tune.report(trial_metrics(family, seed, spec, out.metrics, result.metrics, result.params, probe,
                              feature=ctx["feature"], trial_s=trained, eval_run_id=result.eval_run_id,
                              checkpoint=str(out.checkpoint)))


def trial_metrics(family: str, seed: int, spec, trained: dict[str, Any], scores: dict[str, float],
                  params: dict[str, str], probe: dict[str, Any], *, feature: str, trial_s: float,
                  eval_run_id: str | None, checkpoint: str) -> dict[str, Any]:
    """A trial's row: what it trained, genray eval's scores under the table's names, the probe."""
    steps = int(trained.get("step", 0))
    train_s = float(trained.get("train_seconds", float("nan")))
    row: dict[str, Any] = {
        "family": family, "seed": seed, "steps": steps, "batch_size": spec.trainer.batch_size, "train_s": train_s,
        "examples_per_s": steps * spec.trainer.batch_size / train_s if train_s > 0 else float("nan"),
        "train_wall_s": trial_s,
        "samples_per_s": scores.get("samples_per_s"), "batch_latency_s": scores.get("batch_latency_s"),
        "bits_per_dim": scores.get("bits_per_dim"), "bits_per_dim_unit": params.get("eval.bits_per_dim_unit"),
        "class_consistency": scores.get("class_consistency"), "eval_run_id": eval_run_id, "checkpoint_path": checkpoint,
        "interp_evenness": scores.get("interp_evenness"), "interp_detour": scores.get("interp_detour"),
        "mig": scores.get("mig"),
        **probe,
    }
    for ours, theirs in (("fd", "fd"), ("kid", "kid"), ("precision", "precision"), ("recall", "recall")):
        row[ours] = scores.get(f"{theirs}_{feature}")
        row[f"{ours}_floor"] = scores.get(f"{theirs}_{feature}_floor")
    return {k: v for k, v in row.items() if v is not None}


def sampling_probe(ckpt_dir: Path, real, *, seed: int) -> dict[str, Any]:
    """What genray eval does not measure, from the checkpoint alone (components/): the latency of
    one sample (median of LATENCY_REPEATS `sample(1)` calls after a warm-up of len(real)
    samples), network evaluations per call of the default settings (`sampling_cost`), the
    sharpness of len(real) samples relative to the real images, the latent size when the model
    encodes, and its likelihood kind."""
    import torch

    from genray.components import checkpoint
    from genray.components.metrics.likelihood import likelihood_of
    from genray.components.models.protocol import sampling_cost_unit
    from genray.pipelines.sampling import resolve

    model, state = checkpoint.build_model(ckpt_dir)
    settings = resolve(model, {}, state.get("sampling_defaults"))
    chosen = settings.model_dump(exclude_unset=True)

    def draw(n: int, index: int):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
        kw = dict(chosen)
        if model.conditioning == "class":
            kw["y"] = torch.arange(n) % model.num_classes
        with torch.no_grad():
            return model.sample(n, generator=gen, **kw)

    samples = draw(len(real), 0)  # also the warm-up
    times = []
    for i in range(LATENCY_REPEATS):
        t0 = time.perf_counter()
        draw(1, i + 1)
        times.append(time.perf_counter() - t0)
    out: dict[str, Any] = {
        "latency_s": statistics.median(times), "nfe": int(model.sampling_cost(settings)),
        "nfe_unit": sampling_cost_unit(model), "conditioning": model.conditioning,
        "sharpness": sharpness(samples) / sharpness(real), "encode": int("encode" in model.capabilities),
        "likelihood": likelihood_of(model)[1] if "log_prob" in model.capabilities else "none",
    }
    if "encode" in model.capabilities:
        with torch.no_grad():
            out["latent_size"] = int(torch.as_tensor(model.encode(real[:1])).numel())
    return out


def sharpness(x) -> float:
    """The mean over images of the variance of their 4-neighbour Laplacian, pixels on [0, 1] (the
    variance-of-Laplacian focus measure, Pech-Pacheco et al. 2000): blur lowers it."""
    import torch

    x = ((x.float().clamp(-1, 1) + 1) / 2).flatten(0, 1)[:, None]  # (B*C, 1, H, W)
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])[None, None]
    lap = torch.nn.functional.conv2d(x, kernel)  # (B*C, 1, H-2, W-2)
    return float(lap.flatten(1).var(dim=1).mean())


# ----------------------------------------------------------------------------- the driver


@dataclass
class CompareOutcome:
    name: str
    run_id: str
    rows: list[TrialRow]
    summary: list[dict[str, Any]]
    claims: list[dict[str, Any]]
    directory: Path
    files: dict[str, Path]
    tracking_uri: str
    trained: int  # trials that reported in this call (0: a resumed comparison that was already done)
    interrupted: bool = False


def run(plan: Plan, *, name: str, resume: bool = False, home: Path | None = None, out: Path | None = None,
        say=print) -> CompareOutcome:
    """Run the comparison `name` (or continue it with resume=True) and write its report."""
    from ray import tune

    home = home or project_home()
    home.mkdir(parents=True, exist_ok=True)
    logs = console.route_logs(log_path(home, "compare", name))
    uri = tracking.tracking_uri(home)
    directory = home / "comparisons" / name
    check_name(plan, name, directory, resume)
    check_models(plan, home=home, uri=uri)
    for family, why in plan.skipped.items():
        say(f"[{name}] skipped {family}: {why}")

    # --- setup on the driver: the domain classifier trained and cached once, here, not by two
    # trials at the same time.
    from genray.pipelines import quality
    from genray.pipelines.data import resolve_data

    spec = validate(copy.deepcopy(plan.entries[0].raw), plan.entries[0].config)
    data = resolve_data(spec, home)
    quality.domain_classifier(plan.feature_net, train_path=data.train, dataset=plan.data, home=home, say=say)
    experiment_id = tracking.ensure_experiment(uri, EXPERIMENT, home)
    params = {f"compare.{k}": v for k, v in plan.state().items() if k != "overrides"}
    params.update({"compare.families": ",".join(plan.families), "compare.overrides": " ".join(plan.overrides)})
    run_id, continued = tracking.start_run(uri, experiment_id, name, params, {"genray.kind": "comparison"})
    say(f"[{name}] {len(plan.entries)} families x {plan.seeds} seed{'s' if plan.seeds != 1 else ''} = "
        f"{plan.num_trials} trials on {plan.data} at {plan.budget} each; MLflow run {run_id} "
        f"({'continued' if continued else 'new'}) in {uri}")
    if logs is not None:
        say(f"[{name}] Ray, Tune and library output: {logs} (--verbose shows it here)")

    # --- the Tuner: one trial per (family, seed)
    init_ray()
    resources = trial_resources(plan)
    ctx = {"name": name, "home": str(home), "uri": uri, "run_id": run_id,
           "configs": {e.family: e.raw for e in plan.entries}, "sources": {e.family: e.config for e in plan.entries},
           "in_process": plan.workers == 1, "threads": max(1, int(plan.cpus_per_trial)) if plan.workers == 1 else 1,
           "num_samples": plan.num_samples, "feature_net": plan.feature_net, "feature": plan.data}
    trainable = tune.with_resources(tune.with_parameters(compare_trial, ctx=ctx), resources)
    started = time.time()
    concurrency = fitting_concurrency(plan, resources, say=lambda line: say(f"[{name}] {line}"))
    bar = TrialBar(name, plan.num_trials)
    if resume:
        tuner = tune.Tuner.restore(str(directory), trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=False)
    else:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        directory.mkdir(parents=True, exist_ok=True)
        (directory / STATE_PLAN).write_text(yaml.safe_dump(plan.state(), sort_keys=False))
        tuner = tune.Tuner(
            trainable,
            param_space={"family": tune.grid_search(plan.families), "seed": tune.grid_search(list(range(plan.seeds)))},
            tune_config=tune.TuneConfig(search_alg=BasicVariantGenerator(max_concurrent=concurrency)),
            # A failed trial is recorded with its error and the comparison goes on (a diverged
            # family diverges again: no retries). Tune's own tables only with --verbose.
            run_config=tune.RunConfig(name=name, storage_path=str(home / "comparisons"),
                                      failure_config=tune.FailureConfig(max_failures=0),
                                      verbose=1 if console.verbose() else 0, callbacks=[bar]))
    grid = tuner.fit()
    # Trials that reported in this call (a resumed comparison keeps its finished trials' results).
    ran = sum((r.metrics or {}).get("timestamp", 0) >= int(started) for r in grid)

    # Ctrl-C: Tune saves its state and returns early; what it saved says which trials did not finish.
    saved = tune.ExperimentAnalysis(str(directory)).trials
    if any(trial.status not in ("TERMINATED", "ERROR") for trial in saved):
        tracking.finish_run(uri, run_id, "KILLED")
        return CompareOutcome(name, run_id, [], [], [], directory, {}, uri, 0, interrupted=True)

    # --- teardown: the report, logged to the comparison's run and copied to --out
    rows = sorted((trial_row(r) for r in grid), key=lambda r: (plan.families.index(r.family), r.seed))
    summary = summarize(rows, plan)
    claims = judge_claims(summary)
    files = write_report(rows, summary, claims, plan, directory, name=name)
    logger = tracking.RunLogger(uri, run_id)
    for path in files.values():
        logger.client.log_artifact(run_id, str(path), "comparison")
    finished = [r for r in rows if r.status == "finished"]
    logger.metrics({"compare/trials": len(rows), "compare/finished": len(finished),
                    "compare/diverged": sum(r.status == "diverged" for r in rows),
                    "compare/failed": sum(r.status == "failed" for r in rows)}, step=0)
    tracking.finish_run(uri, run_id, "FINISHED" if finished else "FAILED")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        files = {k: Path(shutil.copy2(p, out / p.name)) for k, p in files.items()}
    return CompareOutcome(name, run_id, rows, summary, claims, directory, files, uri, ran)


def check_name(plan: Plan, name: str, directory: Path, resume: bool) -> None:
    check_resumable(name, directory, resume, state_file=STATE_PLAN, now=plan.state(), what="comparison",
                    plural="comparisons", mismatch="the comparison started with other options ({started}) at "
                    "{changed}; resume with the same options")


def trial_resources(plan: Plan) -> dict[str, float]:
    """A trial that trains in its own process holds its CPUs; one that starts a Ray Train run
    holds next to nothing (its workers ask for theirs: --cpus-per-trial over --workers)."""
    return {"CPU": plan.cpus_per_trial} if plan.workers == 1 else {"CPU": 0.01}


def fitting_concurrency(plan: Plan, per_trial: dict[str, float], *, say=print) -> int:
    """Trials at once: --max-concurrent, or as many as the cluster holds with one CPU left for
    Ray Data, which decodes each trial's dataset in tasks of its own (with every CPU held by
    trials, those tasks never start: docs in shared/RAY_NOTES.md)."""
    import ray

    need = per_trial["CPU"] + (plan.cpus_per_trial if plan.workers > 1 else 0.0)
    have = ray.cluster_resources().get("CPU", 0.0)
    fits = max(1, int((have - 1) // need)) if have > need else 1
    want = plan.max_concurrent or fits
    if want > fits:
        say(f"{fits} trial(s) at a time, not --max-concurrent {want}: each needs {need:g} CPUs and the cluster has "
            f"{have:g} (one kept for Ray Data)")
    return max(1, min(want, fits))


class TrialBar(Callback):
    """A Tune callback: one line per trial that ends, led by a bar of the trials done so far, with
    what it measured. Plain data only: Tune pickles its callbacks with the experiment's state."""

    def __init__(self, name: str, total: int):
        self.name, self.total, self.done, self.counted = name, total, 0, False

    def on_step_begin(self, iteration, trials, **info):
        if not self.counted:  # a resumed comparison: the trials that had ended count as done
            self.done, self.counted = sum(t.status in ("TERMINATED", "ERROR") for t in trials), True

    def _end(self, trial, how: str) -> None:
        self.done += 1
        m = trial.last_result or {}
        filled = int(20 * self.done / max(self.total, 1))
        fd, floor = m.get("fd"), m.get("fd_floor")
        shown = []
        if finite(fd) and finite(floor) and floor > 0:
            shown.append(f"FD/floor {fd / floor:.3g}")
        if finite(m.get("samples_per_s")):
            shown.append(f"{m['samples_per_s']:,.0f} samples/s")
        if finite(m.get("steps")) and finite(m.get("train_s")):
            shown.append(f"{int(m['steps']):,} steps in {m['train_s']:.0f} s")
        config = trial.config or {}
        sys.stdout.write(f"[{self.name}] {'█' * filled}{'░' * (20 - filled)} {self.done}/{self.total} "
                         f"{config.get('family')} seed {config.get('seed')} {how}"
                         + (f": {', '.join(shown)}" if shown else "") + "\n")
        sys.stdout.flush()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, "finished")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "failed")


def trial_row(result) -> TrialRow:
    """A Tune result as a row: finished, diverged (non-finite loss, which the loop stops, or a
    non-finite FD) or failed (any other error: its line)."""
    from genray.pipelines.tune import short_error

    metrics = {k: v for k, v in (result.metrics or {}).items()
               if k in TRIAL_COLUMNS or k in ("checkpoint_path", "eval_run_id")}
    config = result.config or {}
    family, seed = config.get("family", "?"), int(config.get("seed", -1))
    if result.error is not None:
        error = short_error(result.error)
        return TrialRow(family, seed, "diverged" if "diverged" in error else "failed", metrics, error)
    if "fd" in metrics and not finite(metrics["fd"]):
        return TrialRow(family, seed, "diverged", metrics, "FD is not finite")
    return TrialRow(family, seed, "finished", metrics)


def print_report(out: CompareOutcome, plan: Plan) -> None:
    keys = ("family", "fd_ratio", "samples_per_s", "nfe", "steps", "train_s", "diverged", "likelihood", "bits_per_dim")
    shown = [c for c in columns(plan) if c.key in keys]
    table = [[c.header for c in shown]] + [[cell(c, row) for c in shown] for row in out.summary]
    widths = [max(len(r[i]) for r in table) for i in range(len(shown))]
    print()
    for r in table:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    print()
    for c in out.claims:
        print(f"{c['verdict']:<28}  {c['claim']}")
    print()
    print(f"report         {out.files['markdown']}")
    print(f"table, plots   {out.files['csv']}, {out.files['scatter']}, {out.files['likelihood']}")
    print(f"comparison run {out.run_id}  in {out.tracking_uri}")
    if out.trained == 0:
        print("trained        nothing: every trial had finished before")


def print_plan(plan: Plan) -> None:
    print(f"{plan.num_trials} trials on {plan.data} at {plan.budget} each:")
    for e in plan.entries:
        print(f"  {e.family:<10} {e.config}  seeds {', '.join(str(s) for s in range(plan.seeds))}")
    for family, why in plan.skipped.items():
        print(f"  skipped {family}: {why}")
    print("(model references and data are checked when the comparison starts)")


# ----------------------------------------------------------------------------- command line


def default_name(data: str) -> str:
    return f"compare-{data}-{time.strftime('%Y%m%d-%H%M%S')}"


def command(args) -> int:
    """`genray compare` with parsed arguments (pipelines/arguments.py)."""
    console.set_verbose(args.verbose)
    plan = make_plan(data=args.data, families=args.families, steps=args.steps, minutes=args.budget_minutes,
                     seeds=args.seeds, workers=args.workers, cpus_per_trial=args.cpus_per_trial,
                     num_samples=args.num_samples, feature_net=args.feature_net, overrides=args.overrides,
                     max_concurrent=args.max_concurrent)
    if args.dry_run:
        print_plan(plan)
        return 0
    name = args.resume or args.name or default_name(plan.data)
    try:
        out = run(plan, name=name, resume=args.resume is not None, out=args.out)
    except KeyboardInterrupt:
        out = None
    if out is None or out.interrupted:
        print(f"genray: comparison {name} interrupted; continue it with: {plan.command(name)}"
              + (f" --out {shlex.quote(str(args.out))}" if args.out else ""), file=sys.stderr)
        return console.EXIT_INTERRUPTED
    print_report(out, plan)
    return 0 if any(r.status == "finished" for r in out.rows) else 1


def main(argv: list[str] | None = None) -> int:
    return console.run(command, arguments.compare_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
