"""Sweep hyperparameters with Ray Tune; the best trial's model becomes the registry's champion.

    genray tune pipelines/configs/gan/sweep_dcgan_digits.yaml
    genray tune pipelines/configs/diffusion/sweep_guidance_digits.yaml --set tune.target=runs:/<RUN_ID>
    genray tune CONFIG --resume NAME       # continue an interrupted sweep; finished trials are kept
    python -m genray.pipelines.tune CONFIG [...]  # the same job, for `ray job submit`

Two kinds of sweep, told apart by `tune.target`:

    training sweep   an experiment config plus a `tune:` section. Every trial is a whole genray
                     training run: a TorchTrainer fitted inside the Tune function, with Ray's
                     TuneReportCallback forwarding rank 0's checkpoint reports (step, eval/*) to
                     Tune, so ASHA can stop a trial at a checkpoint. Its MLflow run nests under the
                     sweep's. With `tune.evaluate`, the final model is then scored with genray
                     eval's metrics (reported as eval_full/*: MIG, the β-VAE metric, FD, ...).
    sampling sweep   `tune.target` names a trained model; trials vary `sampling.*` settings
                     (those the model declares: a diffusion model's guidance_scale, sampler,
                     num_inference_steps, eta; a VAE's temperature) and score samples with genray
                     eval's metrics. Nothing trains. Every swept value (both ends of a range) is
                     checked against the model's settings type before Ray starts. Every trial
                     draws the same noise (one seed), so trials differ only by their settings.

The search space maps config keys to distributions:

    model.beta:        {loguniform: [1, 32]}      also uniform: [low, high]
    trainer.lr:        {choice: [1e-4, 3e-4]}     int: [low, high] (both ends included)
    model.schedule:    {grid: [linear, cosine]}   every value, times num_samples

Afterwards: a table of every trial (printed; trials.csv and trials.md), objective.png (each
metric against each swept key), both logged to the sweep's MLflow run; the best trial's model is
registered with alias `champion` (tune.alias), its sweep, objective and sampling settings as tags
of the model version. A sampling sweep's winning settings are written into the registered
checkpoint as `sampling_defaults`, so loading the champion samples with them by default.

Layout under the project home: sweeps/<name>/ holds Tune's state (what --resume reads), the
config the sweep started with, the table and the plot; training trials' Train runs live in
ray_results/<name>-<trial id>/.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ray.tune import Callback

from genray.components import checkpoint
from genray.components.models import build
from genray.components.errors import UserError
from genray.pipelines import arguments, config, console, evaluate, quality, tracking, train
from genray.pipelines.config import (DISTRIBUTIONS, ConfigError, ExperimentSpec, SweepEvalSpec, TuneSpec, apply_overrides,
                              flatten, read_yaml, set_key, validate, validate_tune)
from genray.pipelines.data import TrainData, build_dataset, resolve_data
from genray.pipelines.env import init_ray, log_path, project_home
from genray.pipelines.evaluate import EvalRequest
from genray.pipelines.sampling import is_integer, resolve

STATE_CONFIG = "sweep.yaml"  # the resolved config a sweep started with; --resume checks it


# ----------------------------------------------------------------------------- the search space


@dataclass(frozen=True)
class Dimension:
    key: str  # a config key, e.g. model.beta or sampling.guidance_scale
    kind: str  # one of DISTRIBUTIONS
    values: tuple  # choice / grid: the values; ranges: (low, high)

    def domain(self):
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.values))
        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        low, high = self.values
        if self.kind == "int":
            return tune.randint(low, high + 1)  # randint excludes its upper end; ours includes it
        return (tune.loguniform if self.kind == "loguniform" else tune.uniform)(low, high)

    def candidates(self) -> list[Any]:
        """Values to check against the config before anything runs: every listed value, or
        both ends of a range."""
        return list(self.values)

    def describe(self) -> str:
        return json.dumps({self.kind: list(self.values)})


def parse_space(space: dict[str, Any]) -> list[Dimension]:
    """The `tune.space` mapping as Dimensions; a malformed entry is a ConfigError naming it."""
    if not space:
        raise ConfigError("tune.space: empty; map config keys to distributions, e.g. model.beta: {loguniform: [1, 16]}")
    dims = []
    for key, entry in space.items():
        where = f"tune.space.{key}"
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ConfigError(f"{where}: expected one distribution, e.g. {{choice: [a, b]}} or {{uniform: [low, high]}}; "
                              f"allowed: {', '.join(DISTRIBUTIONS)} (got {entry!r})")
        (kind, arg), = entry.items()
        if kind not in DISTRIBUTIONS:
            raise ConfigError(f"{where}: unknown distribution {kind!r}; allowed: {', '.join(DISTRIBUTIONS)}")
        if kind in ("choice", "grid"):
            if not isinstance(arg, list) or not arg:
                raise ConfigError(f"{where}: {kind} takes a non-empty list of values (got {arg!r})")
            dims.append(Dimension(key, kind, tuple(arg)))
            continue
        if (not isinstance(arg, list) or len(arg) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in arg)):
            raise ConfigError(f"{where}: {kind} takes [low, high], two numbers (got {arg!r})")
        low, high = arg
        if kind == "int" and not all(isinstance(v, int) for v in arg):
            raise ConfigError(f"{where}: int takes two integers [low, high] (got {arg!r})")
        if not low < high:
            raise ConfigError(f"{where}: low must be below high (got low={low}, high={high})")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{where}: loguniform needs low > 0 (got low={low})")
        dims.append(Dimension(key, kind, (low, high)))
    return dims


# ----------------------------------------------------------------------------- the sweep config


@dataclass
class Sweep:
    source: str
    tune: TuneSpec
    dims: list[Dimension]
    base: dict[str, Any]  # the experiment config (training sweeps); {} for sampling sweeps
    spec: ExperimentSpec | None  # `base`, validated
    resolved: dict[str, Any]  # the whole config after --set: what a resumed sweep must match

    @property
    def kind(self) -> str:
        return "sample" if self.tune.target else "train"

    @property
    def num_trials(self) -> int:
        """Tune's trial count: every combination of the grid entries, num_samples times (each
        sample also draws the other entries)."""
        return math.prod(len(d.values) for d in self.dims if d.kind == "grid") * self.tune.num_samples

    def describe_trials(self) -> str:
        """'grid 5 x num_samples 3 = 15 trials': how the count comes about."""
        grids = [str(len(d.values)) for d in self.dims if d.kind == "grid"]
        parts = ([f"grid {' x '.join(grids)}"] if grids else []) + [f"num_samples {self.tune.num_samples}"]
        return f"{' x '.join(parts)} = {self.num_trials} trial{'s' if self.num_trials != 1 else ''}"

    @property
    def eval_spec(self) -> SweepEvalSpec | None:
        return self.tune.evaluate or (SweepEvalSpec() if self.kind == "sample" else None)


def load(path: config.Source, overrides: list[str] | Mapping[str, Any] | None = None) -> Sweep:
    raw = read_yaml(path)
    path = source = config.source_name(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (tune, data, model, ...)")
    raw = apply_overrides(raw, overrides or [], source)
    resolved = copy.deepcopy(raw)
    if "tune" not in raw:
        raise ConfigError(f"{path}: no tune: section (metric, mode, space, ...); `genray train` runs a plain config")
    t = validate_tune(raw.pop("tune"), source)
    try:
        dims = parse_space(t.space)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None

    if t.target:
        return _check_sampling_sweep(Sweep(source, t, dims, {}, None, resolved), raw)
    return _check_training_sweep(Sweep(source, t, dims, raw, validate(copy.deepcopy(raw), source), resolved))


def _check_training_sweep(sw: Sweep) -> Sweep:
    t, src = sw.tune, sw.source
    for dim in sw.dims:
        if dim.key.startswith("sampling."):
            raise ConfigError(f"{src}: tune.space.{dim.key}: sampling settings sweep a trained model; "
                              "set tune.target to it (models:/NAME@ALIAS, runs:/ID or a checkpoint directory)")
        for value in dim.candidates():
            raw = copy.deepcopy(sw.base)
            set_key(raw, dim.key, value, what=f"tune.space.{dim.key}")
            try:
                validate(raw, src)
            except ConfigError as e:
                raise ConfigError(f"tune.space.{dim.key}={value!r}: {e}") from None
    if t.metric.startswith("eval_full/") and t.evaluate is None:
        raise ConfigError(f"{src}: tune.metric {t.metric!r} comes from genray eval after training; add a tune.evaluate "
                          "section (e.g. evaluate: {num_samples: 500}) or optimise a training metric (eval/loss)")
    if t.evaluate is not None and t.evaluate.top_k and not t.evaluate.rank_by.startswith(("eval/", "train/")):
        raise ConfigError(f"{src}: tune.evaluate.rank_by must be a training metric (eval/*, train/*) that every "
                          f"checkpoint reports, got {t.evaluate.rank_by!r}")
    if t.scheduler == "asha":
        if not rung_metric(t)[0].startswith(("eval/", "train/")):
            raise ConfigError(f"{src}: tune.scheduler=asha compares trials at every checkpoint, so tune.metric must be "
                              f"reported there (eval/*), not only at the end (got {t.metric!r}); or score only the "
                              "best finished trials with genray eval: tune.evaluate.top_k with rank_by: eval/loss")
        tr = sw.spec.trainer
        if tr.checkpoint_every % tr.eval_every:
            raise ConfigError(f"{src}: tune.scheduler=asha needs an eval at every checkpoint: trainer.checkpoint_every "
                              f"({tr.checkpoint_every}) must be a multiple of trainer.eval_every ({tr.eval_every})")
        swept = {d.key for d in sw.dims} & {"trainer.max_steps", "trainer.checkpoint_every", "trainer.eval_every"}
        if swept:
            raise ConfigError(f"{src}: tune.space.{sorted(swept)[0]}: ASHA's rungs are counted in steps; do not sweep it")
    if sw.spec.scaling.workers == 0 and not t.in_process_trials:
        # Ray Train's local mode runs the loop in the calling process, and inside a Tune trial
        # that process is Tune's, where the loop's ray.train calls fail.
        raise ConfigError(f"{src}: scaling.workers=0 (Ray Train's local mode) cannot run inside a trial with "
                          "tune.in_process_trials=false; use scaling.workers: 1 or more, or in_process_trials: true")
    _check_common(sw)
    return sw


def _check_sampling_sweep(sw: Sweep, rest: dict[str, Any]) -> Sweep:
    src = sw.source
    if rest:
        raise ConfigError(f"{src}: a sampling sweep (tune.target set) takes its model and data from the target; "
                          f"remove the {', '.join(sorted(rest))} section(s)")
    for dim in sw.dims:
        if not dim.key.startswith("sampling.") or dim.key.count(".") != 1:
            raise ConfigError(f"{src}: tune.space.{dim.key}: a sampling sweep varies sampling.KEY settings only "
                              "(e.g. sampling.guidance_scale); to sweep training settings drop tune.target")
    if sw.tune.scheduler != "none":
        raise ConfigError(f"{src}: tune.scheduler={sw.tune.scheduler}: a sampling sweep has no training steps to stop "
                          "early at; use scheduler: none")
    if sw.tune.evaluate is not None and sw.tune.evaluate.top_k:
        raise ConfigError(f"{src}: tune.evaluate.top_k: a sampling sweep's every trial is a genray eval; remove top_k")
    _check_common(sw)
    return sw


def _check_common(sw: Sweep) -> None:
    if sw.tune.search == "optuna" and any(d.kind == "grid" for d in sw.dims):
        key = next(d.key for d in sw.dims if d.kind == "grid")
        raise ConfigError(f"{sw.source}: tune.space.{key}: grid does not combine with search: optuna "
                          "(Optuna picks every value itself); use choice, or search: random")


# ----------------------------------------------------------------------------- trials (Ray actors)


def train_trial(config: dict[str, Any], *, ctx: dict[str, Any]) -> None:
    """One training trial: the base config with this trial's values, trained by train.run with
    its MLflow run nested under the sweep's, then (optionally) scored by genray eval."""
    import torch
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback


    raw = copy.deepcopy(ctx["base"])
    for key, value in config.items():
        set_key(raw, key, value, what=f"tune.space.{key}")
    raw.setdefault("tracking", {})["register_model"] = False  # the sweep registers only its winner
    spec = validate(raw, ctx["source"])
    name = f"{ctx['name']}-{tune.get_context().get_trial_id()}"
    # One worker: the loop runs here, reporting to Tune itself (pipelines/training/session.py);
    # more: a Ray Train run whose reports TuneReportCallback forwards.
    in_process = ctx["in_process"]
    out = train.run(spec, name=name, home=Path(ctx["home"]), uri=ctx["uri"], parent_run_id=ctx["run_id"],
                    callbacks=None if in_process else [TuneReportCallback()], train_data=ctx.get("train_data"),
                    show_progress=False, in_process=in_process)
    if ctx["eval"] is None or ctx["eval"]["top_k"]:
        return  # every checkpoint is reported, the last one included; top_k: scored on the driver
    torch.set_num_threads(ctx["threads"])
    result = evaluate.evaluate(_eval_request(ctx, str(out.checkpoint), tags={"genray.tune.trial": name}),
                               home=Path(ctx["home"]))
    final = {k: v for k, v in out.metrics.items() if isinstance(v, (int, float))}
    tune.report({**final, **{f"eval_full/{k}": v for k, v in result.metrics.items()},
                 "checkpoint_path": str(out.checkpoint)})


def sampling_trial(config: dict[str, Any], *, ctx: dict[str, Any]) -> None:
    """One sampling trial: genray eval of the target with this trial's sampling settings, its
    evaluation run nested under the sweep's run."""
    import torch
    from ray import tune


    torch.set_num_threads(ctx["threads"])
    sampling = {k.removeprefix("sampling."): v for k, v in config.items()}
    request = _eval_request(ctx, ctx["checkpoint"], sampling=sampling, parent_run_id=ctx["run_id"],
                            tags={"genray.tune.trial": tune.get_context().get_trial_id()})
    tune.report(evaluate.evaluate(request, home=Path(ctx["home"]), say=lambda line: None).metrics)


def runs_in_trial(spec: ExperimentSpec, t: TuneSpec) -> bool:
    """Whether a training trial runs its loop in its own process (0 or 1 workers, unless
    tune.in_process_trials is false) rather than as a Ray Train run of its own."""
    return spec.scaling.workers <= 1 and t.in_process_trials


def trial_resources(sweep: Sweep) -> dict[str, float]:
    """What each trial asks Tune for: tune.trial_resources, else a training trial that runs its
    loop itself holds one worker's CPUs (and GPU), one that starts Ray Train workers next to
    nothing (the workers ask for theirs), a sampling trial one CPU."""
    if sweep.tune.trial_resources:
        return dict(sweep.tune.trial_resources)
    if sweep.kind == "sample":
        return {"CPU": 1.0}
    s = sweep.spec.scaling
    if runs_in_trial(sweep.spec, sweep.tune):
        return {"CPU": s.cpus_per_worker, **({"GPU": 1.0} if s.gpu else {})}
    return {"CPU": 0.01}


def score_top_k(rows: list[TrialRow], ctx: dict[str, Any], *, say=print) -> None:
    """tune.evaluate.top_k: genray eval of the k finished trials best by rank_by, here on the
    driver, one after another; their rows gain eval_full/*. The others keep their training metrics."""
    e = ctx["eval"]
    finished = [r for r in rows if r.status == "finished" and _finite(r.metrics.get(e["rank_by"]))]
    finished.sort(key=lambda r: r.metrics[e["rank_by"]], reverse=e["rank_mode"] == "max")
    chosen = finished[: e["top_k"]]
    say(f"[{ctx['name']}] genray eval of the {len(chosen)} best finished trial(s) by {e['rank_by']} "
        f"(tune.evaluate.top_k={e['top_k']}) ...")
    for row in chosen:
        result = evaluate.evaluate(_eval_request(ctx, row.checkpoint, tags={"genray.tune.trial": row.run_name}),
                                   home=Path(ctx["home"]), say=lambda line: None)
        row.metrics.update({f"eval_full/{k}": v for k, v in result.metrics.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)})


def _eval_request(ctx: dict[str, Any], target: str, **kwargs):
    """genray eval of `target` with the sweep's evaluate settings, generating in this process
    (the trial's own CPUs) rather than in Ray tasks of its own."""

    e = ctx["eval"]
    return EvalRequest(target=target, num_samples=e["num_samples"], batch_size=e["batch_size"], workers=0,
                       feature_net=e["feature_net"], likelihood_rows=e["likelihood_rows"], clip=e.get("clip"),
                       seed=e["seed"], **kwargs)


class _RuleStopper:
    """tune.stop: end a trial once a metric goes below or above a threshold."""

    def __init__(self, rules: dict[str, Any]):
        self.rules = rules

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        for metric, rule in self.rules.items():
            v = result.get(metric)
            if isinstance(v, (int, float)) and ((rule.below is not None and v < rule.below)
                                                or (rule.above is not None and v > rule.above)):
                return True
        return False


# ----------------------------------------------------------------------------- the driver


@dataclass
class TrialRow:
    trial_id: str
    status: str  # finished | stopped early | failed
    params: dict[str, Any]
    metrics: dict[str, float]
    error: str = ""
    checkpoint: str | None = None
    run_name: str | None = None  # training sweeps: the trial's training run


@dataclass
class SweepOutcome:
    name: str
    run_id: str
    rows: list[TrialRow]
    best: TrialRow | None
    model_name: str | None
    model_version: str | None
    directory: Path
    tracking_uri: str
    interrupted: bool = False
    files: dict[str, Path] = field(default_factory=dict)


def default_sweep_name(config_path: str | Path) -> str:
    return f"{Path(config_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def run(sweep: Sweep, *, name: str, resume: bool = False, home: Path | None = None, say=print,
        yes: bool = False) -> SweepOutcome:
    """Run the sweep `name` (or continue it with resume=True), tabulate and plot its trials and
    register the best trial's model. A new sweep of more than tune.max_trials trials is refused
    unless `yes`."""
    from ray import tune

    if not resume and sweep.num_trials > sweep.tune.max_trials and not yes:
        raise ConfigError(f"{sweep.source}: {sweep.describe_trials()}, over tune.max_trials={sweep.tune.max_trials}; "
                          "confirm with --yes (genray.tune(..., yes=True)) or raise tune.max_trials")
    home = home or project_home()
    home.mkdir(parents=True, exist_ok=True)
    logs = console.route_logs(log_path(home, "tune", name))
    uri = tracking.tracking_uri(home)
    t = sweep.tune
    directory = home / "sweeps" / name
    _check_name(sweep, name, directory, resume)

    # --- setup on the driver: everything the trials share is prepared once, here, so trials
    # never race to prepare a dataset, train a feature net or download a checkpoint.
    if sweep.kind == "train":

        spec = sweep.spec
        data = resolve_data(spec, home)
        inputs = train.resolve_model_inputs(spec, data, uri=uri, home=home)  # a bad base config fails here
        check_scoring(sweep, build(spec.model.family, inputs.args, data.info), data.info)
        experiment_id = tracking.ensure_experiment(uri, spec.tracking.experiment, home)
        parent_tags: dict[str, str] = {}
        checkpoint_dir = None
    else:
        target = evaluate.resolve_target(t.target, uri, home)
        checkpoint_dir = target.checkpoint
        spec, data = _check_sampling_values(sweep, checkpoint_dir, home)
        parent_tags = {"genray.tune.target": t.target}
        if target.training_run_id:  # the sweep nests under the run that trained the model
            parent_tags["mlflow.parentRunId"] = target.training_run_id
            experiment_id = tracking.experiment_of(uri, target.training_run_id)
        else:
            experiment_id = tracking.ensure_experiment(uri, "genray-tune", home)
    ev = sweep.eval_spec
    if ev is not None:  # trained and cached here once, not by two trials at the same time
        dataset = spec.data.dataset if spec.data.path is None else Path(spec.data.path).stem
        quality.domain_classifier(ev.feature_net, train_path=data.train, dataset=dataset, home=home, say=say)

    params = {"tune.kind": sweep.kind, "tune.metric": t.metric, "tune.mode": t.mode,
              "tune.num_samples": t.num_samples, "tune.scheduler": t.scheduler, "tune.search": t.search,
              "tune.seed": t.seed, **{f"tune.space.{d.key}": d.describe() for d in sweep.dims}}
    if sweep.spec is not None:
        params.update(sweep.spec.flat())
    run_id, continued = tracking.start_run(uri, experiment_id, name, params,
                                           {"genray.kind": "sweep", **parent_tags})
    say(f"[{name}] {sweep.kind} sweep of {sweep.describe_trials()}, MLflow run {run_id} "
        f"({'continued' if continued else 'new'}) in {uri}")
    if logs is not None:
        say(f"[{name}] Ray, Tune and library output: {logs} (--verbose shows it here)")

    # --- the Tuner
    init_ray()
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # eval_full/* arrive only at the end
    resources = trial_resources(sweep)
    ctx = {"name": name, "home": str(home), "uri": uri, "run_id": run_id, "source": sweep.source,
           "base": sweep.base, "checkpoint": str(checkpoint_dir) if checkpoint_dir else None,
           "eval": ev.model_dump() if ev is not None else None,
           "threads": max(1, int(resources.get("CPU", 1))),
           "in_process": sweep.kind == "train" and runs_in_trial(sweep.spec, sweep.tune)}
    if sweep.kind == "train" and shares_dataset(sweep):
        # Decoded and materialised once in the object store for every trial: per trial it cost
        # more than the tiny trials' training on 2 cores (benchmarks/tune_asha.py).
        ctx["train_data"] = build_dataset(sweep.spec, data)
    fn = train_trial if sweep.kind == "train" else sampling_trial
    trainable = tune.with_resources(tune.with_parameters(fn, ctx=ctx), resources)
    concurrency = fitting_concurrency(sweep, resources, say=say)
    if resume:
        tuner = tune.Tuner.restore(str(directory), trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=False)
    else:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / STATE_CONFIG).write_text(yaml.safe_dump(sweep.resolved, sort_keys=False))
        tuner = tune.Tuner(trainable, param_space={d.key: d.domain() for d in sweep.dims},
                           tune_config=_tune_config(sweep, concurrency),
                           run_config=_run_config(sweep, name, home, callbacks=[TrialLines(name, sweep)]))
    grid = tuner.fit()

    # Ctrl-C: Tune saves its state and returns early. In memory it marks the trials it stopped
    # as terminated; the state it saved for Tuner.restore says which ones did not finish.
    saved = tune.ExperimentAnalysis(str(directory)).trials
    if any(trial.status not in ("TERMINATED", "ERROR") for trial in saved):
        tracking.finish_run(uri, run_id, "KILLED")
        return SweepOutcome(name, run_id, [], None, None, None, directory, uri, interrupted=True)

    # --- teardown: the table, the plot, the trials' MLflow status, the champion
    rows = [_row(r, sweep, name) for r in grid]
    rows.sort(key=lambda r: r.trial_id)
    if ev is not None and ev.top_k:
        score_top_k(rows, ctx, say=say)
    _close_trial_runs(rows, sweep, uri)
    ranked = [r for r in rows if r.status != "failed" and _finite(r.metrics.get(t.metric))]
    if not ranked and any(r.status != "failed" for r in rows):
        reported = sorted({k for r in rows for k in r.metrics})
        tracking.finish_run(uri, run_id, "FAILED")
        raise ConfigError(f"{sweep.source}: tune.metric {t.metric!r} was reported by no trial; they reported: "
                          f"{', '.join(reported)}")
    best = (min if t.mode == "min" else max)(ranked, key=lambda r: r.metrics[t.metric]) if ranked else None
    files = write_report(rows, sweep, directory, best)
    logger = tracking.RunLogger(uri, run_id)
    for path in files.values():
        logger.client.log_artifact(run_id, str(path), "sweep")
    summary = {"tune/trials": len(rows), "tune/failed": sum(r.status == "failed" for r in rows),
               "tune/stopped_early": sum(r.status == "stopped early" for r in rows)}
    if best is not None:
        summary[f"tune/best_{t.metric}"] = best.metrics[t.metric]
    logger.metrics(summary, step=0)

    model_name = version = None
    if best is not None and t.register_model:
        model_name, version = register_champion(sweep, best, name=name, run_id=run_id, uri=uri,
                                                spec=spec, checkpoint_dir=checkpoint_dir)
    tracking.finish_run(uri, run_id, "FINISHED" if best is not None else "FAILED")
    return SweepOutcome(name, run_id, rows, best, model_name, version, directory, uri, files=files)


def shares_dataset(sweep: Sweep) -> bool:
    """Whether every trial trains on the same Ray Dataset: no swept value changes what
    data.build_dataset builds from."""
    base = TrainData.key(sweep.spec)
    for dim in sweep.dims:
        for value in dim.candidates():
            raw = copy.deepcopy(sweep.base)
            set_key(raw, dim.key, value, what=dim.key)
            if TrainData.key(validate(raw, sweep.source)) != base:
                return False
    return True


def _check_name(sweep: Sweep, name: str, directory: Path, resume: bool) -> None:
    check_resumable(name, directory, resume, state_file=STATE_CONFIG, now=sweep.resolved, what="sweep",
                    plural="sweeps", mismatch=f"{sweep.source} differs from the config the sweep started with "
                    "({started}) at {changed}; resume with the same config and --set values")


def check_resumable(name: str, directory: Path, resume: bool, *, state_file: str, now: dict[str, Any], what: str,
                    plural: str, mismatch: str) -> None:
    """A Tune experiment named `name` in `directory` (a sweep, a comparison) may start or resume:
    a new one must not exist yet; a resumed one must exist, be restorable by Tune, and have
    started with the same settings (`state_file` there against `now`). `mismatch` says what
    differs, with {started} (the state file) and {changed} (the differing keys) filled in."""
    from ray import tune

    started = directory / state_file
    if resume:
        if not (started.exists() and tune.Tuner.can_restore(str(directory))):
            known = sorted(p.name for p in directory.parent.glob("*") if (p / state_file).exists())
            raise ConfigError(f"--resume {name}: no {what} of that name under {directory.parent}"
                              + (f"; {plural}: {', '.join(known)}" if known else ""))
        before, now = flatten(yaml.safe_load(started.read_text())), flatten(now)
        if before != now:
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            raise ConfigError(f"--resume {name}: " + mismatch.format(started=started, changed=", ".join(changed)))
    elif started.exists():
        raise ConfigError(f"--name {name}: a {what} of that name exists ({directory}); --resume {name} continues it")


def _check_sampling_values(sweep: Sweep, checkpoint_dir: Path, home: Path):
    """The target's config and data, once its sampling space has passed check_sampling_space."""

    model, state = checkpoint.build_model(checkpoint_dir)
    check_sampling_space(sweep, model, state.get("sampling_defaults"))
    spec = ExperimentSpec.model_validate(state["config"])
    data = resolve_data(spec, home)
    check_scoring(sweep, model, data.info)
    return spec, data


# genray eval's metrics that not every model can have: name prefix -> what the model needs
# (pipelines/evaluate.py computes them on these capabilities), and what it is.
SCORING_NEEDS = {
    "mig": ({"encode"}, "the mutual information gap of a model's codes"),
    "beta_vae_score": ({"encode"}, "the β-VAE metric of a model's codes"),
    "recon_": ({"encode", "decode"}, "reconstruction of encoded data"),
    "bits_per_dim": ({"log_prob"}, "a likelihood"),
    "bits_per_token": ({"log_prob"}, "a likelihood"),
    "nats_per_": ({"log_prob"}, "a likelihood"),
    "cycle_psnr_": ({"translate"}, "cycle reconstruction of a two-way translator"),
    "target_share_": ({"translate"}, "the target-class share of a two-way translator"),
}


def check_scoring(sweep: Sweep, model, info) -> None:
    """The objective and the report's genray eval metrics are ones this model can have: a GAN has
    no MIG, a VAE no cycle PSNR. A ConfigError naming the metric before any trial starts."""
    t = sweep.tune
    names = [m for m in (t.metric, *t.report) if sweep.kind == "sample" or m.startswith("eval_full/")]
    for name in names:
        bare = name.removeprefix("eval_full/")
        for prefix, (needs, what) in SCORING_NEEDS.items():
            missing = needs - model.capabilities
            if bare.startswith(prefix) and missing:
                where = "tune.metric" if name == t.metric else "tune.report"
                raise ConfigError(f"{sweep.source}: {where} {name!r} is {what}, which a {type(model).__name__} "
                                  f"cannot give (it lacks {', '.join(sorted(missing))}; it can "
                                  f"{', '.join(sorted(model.capabilities))})")
        if bare.startswith("clip_score") and (model.conditioning != "text" or not (t.evaluate and t.evaluate.clip)):
            raise ConfigError(f"{sweep.source}: {name!r} is the CLIP score of a text-conditioned model's samples: it "
                              "needs a model with conditioning text (this one: "
                              f"{model.conditioning}) and tune.evaluate.clip naming a trained genray CLIP")
        if bare.startswith(("mig", "beta_vae_score")) and not any(c.startswith("factor_") for c in info.columns):
            raise ConfigError(f"{sweep.source}: {name!r} needs data with ground-truth factors (factor_* columns, "
                              f"as the built-in shapes dataset has); {info.modality} data with columns "
                              f"{', '.join(info.columns)} has none")


def check_sampling_space(sweep: Sweep, model, defaults: dict[str, Any] | None = None) -> None:
    """Every listed value, and both ends of every range, of the sampling space checked against
    the settings type the model declares (with its checkpoint's sampling defaults for the other
    settings), so a bad key or value is a ConfigError naming tune.space.sampling.KEY before any
    trial starts. A uniform or loguniform range draws fractions: not for an integer setting."""
    for dim in sweep.dims:
        key = dim.key.removeprefix("sampling.")
        for value in dim.candidates():
            try:
                resolve(model, {key: value}, defaults, label="tune.space.sampling.")
            except UserError as e:
                raise ConfigError(f"{sweep.source}: {e}") from None
        if dim.kind in ("uniform", "loguniform") and is_integer(model.sampling_settings, key):
            raise ConfigError(f"{sweep.source}: tune.space.{dim.key}: {dim.kind} draws fractions and this setting "
                              f"takes integers; use int: [low, high] or choice: [...]")


def fitting_concurrency(sweep: Sweep, per_trial: dict[str, float], *, say=print) -> int:
    """tune.max_concurrent_trials, lowered to what the cluster can run at once. Tune counts only
    the trial function's own resources; a training trial's TorchTrainer asks for its workers
    later, and a trial whose workers do not fit waits, timing out and retrying its worker group
    every minute, while holding the CPUs of its Ray Data tasks."""
    import ray

    want = sweep.tune.max_concurrent_trials
    need = dict(per_trial)
    if sweep.kind == "train" and not runs_in_trial(sweep.spec, sweep.tune):
        s = sweep.spec.scaling
        need["CPU"] = need.get("CPU", 0) + s.workers * s.cpus_per_worker
        if s.gpu:
            need["GPU"] = need.get("GPU", 0) + s.workers
    have = ray.cluster_resources()
    fits = min((int(have.get(k, 0) // v) for k, v in need.items() if v > 0), default=want)
    if fits < want:
        say(f"tune: {max(fits, 1)} trial(s) at a time, not tune.max_concurrent_trials={want}: each needs "
            f"{need} and the cluster has {({k: have.get(k, 0) for k in need})}")
    return max(1, min(want, fits))


def _tune_config(sweep: Sweep, concurrency: int):
    from ray import tune

    t = sweep.tune
    scheduler = None
    if t.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        tr = sweep.spec.trainer
        # stop_last_trials=False: a trial at max_t finishes on its own (logs its checkpoint and
        # closes its MLflow run) instead of being killed at its last report.
        scheduler = ASHAScheduler(time_attr="step", max_t=tr.max_steps, grace_period=t.grace_period or tr.checkpoint_every,
                                  reduction_factor=t.reduction_factor, brackets=1, stop_last_trials=False)
    if t.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search, limit = OptunaSearch(seed=t.seed), concurrency
    else:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        # Seeded, so a sweep draws the same trials every time. TuneConfig's max_concurrent_trials
        # is ignored for a variant generator (Tune warns and runs everything at once): it takes
        # its own limit.
        search, limit = BasicVariantGenerator(random_state=t.seed, max_concurrent=concurrency), None
    metric, mode = rung_metric(t)
    return tune.TuneConfig(metric=metric, mode=mode, num_samples=t.num_samples, scheduler=scheduler,
                           search_alg=search, max_concurrent_trials=limit)


def rung_metric(t: TuneSpec) -> tuple[str, str]:
    """The metric Tune itself compares trials on (ASHA's rungs, the search algorithm): tune.metric,
    or with tune.evaluate.top_k, the training metric that ranks trials for genray eval."""
    if t.evaluate is not None and t.evaluate.top_k:
        return t.evaluate.rank_by, t.evaluate.rank_mode
    return t.metric, t.mode


def _run_config(sweep: Sweep, name: str, home: Path, callbacks: list | None = None):
    from ray import tune

    stop = _RuleStopper(sweep.tune.stop) if sweep.tune.stop else None
    # A failed trial is recorded with its error and the sweep goes on (no retries: a config
    # that diverges diverges again). Tune's own status tables only with --verbose; the
    # TrialLines callback prints one line per trial that ends.
    return tune.RunConfig(name=name, storage_path=str(home / "sweeps"), stop=stop,
                          failure_config=tune.FailureConfig(max_failures=0), verbose=1 if console.verbose() else 0,
                          callbacks=callbacks)


class TrialLines(Callback):
    """A Tune callback that prints one line per trial that ends: its values, its objective and
    the best so far. Plain data only: Tune pickles its callbacks with the sweep's state."""

    def __init__(self, name: str, sweep: Sweep):
        self.name = name
        self.metric, self.mode = rung_metric(sweep.tune)  # with top_k, eval_full/* comes after the sweep
        self.keys = [d.key for d in sweep.dims]
        self.best: float | None = None

    def _end(self, trial, how: str) -> None:
        value = (trial.last_result or {}).get(self.metric)
        if _finite(value) and (self.best is None or (value < self.best if self.mode == "min" else value > self.best)):
            self.best = value
        values = ", ".join(f"{k}={_cell(trial.config.get(k))}" for k in self.keys)
        score = f"{self.metric} {value:.4g}" if _finite(value) else f"{self.metric} -"
        best = f" (best {self.best:.4g})" if self.best is not None else ""
        sys.stdout.write(f"[{self.name}] trial {trial.trial_id} {how}: {values} | {score}{best}\n")
        sys.stdout.flush()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, "finished")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "failed")


def _row(result, sweep: Sweep, name: str) -> TrialRow:
    metrics = {k: float(v) for k, v in (result.metrics or {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and _is_metric(k)}
    # A trial that failed before reporting has no metrics; its folder is named after its id
    # (<trainable>_<experiment>_<index>_<params>...).
    found = re.search(r"_([0-9a-f]{5}_\d{5})_", Path(result.path).name)
    trial_id = (result.metrics or {}).get("trial_id") or (found.group(1) if found else Path(result.path).name)
    params = {d.key: result.config.get(d.key) for d in sweep.dims}
    if result.error is not None:
        status = "failed"
    elif sweep.kind == "train" and metrics.get("step", 0) < sweep.spec.trainer.max_steps:
        status = "stopped early"  # by ASHA or a stopping rule, at its last checkpoint
    else:
        status = "finished"
    ckpt = (result.metrics or {}).get("checkpoint_path")
    return TrialRow(trial_id=str(trial_id), status=status, params=params, metrics=metrics,
                    error=short_error(result.error) if result.error is not None else "", checkpoint=ckpt,
                    run_name=f"{name}-{trial_id}" if sweep.kind == "train" else None)


# Tune's bookkeeping in every result; not the trial's own metrics.
_TUNE_KEYS = {"timestamp", "training_iteration", "time_this_iter_s", "time_total_s", "pid", "time_since_restore",
              "iterations_since_restore", "done", "epoch"}


def _is_metric(key: str) -> bool:
    return key not in _TUNE_KEYS and not key.startswith(("config/", "date", "hostname", "node_ip"))


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def short_error(error: BaseException) -> str:
    """The line of a trial's error that says what went wrong (Tune wraps it in tracebacks)."""
    text = str(error)
    lines = [ln.strip() for ln in text.splitlines() if re.match(r"\s*[\w.]*(Error|Exception):", ln)]
    return (lines[-1] if lines else text.strip().splitlines()[-1] if text.strip() else type(error).__name__)[:400]


def _close_trial_runs(rows: list[TrialRow], sweep: Sweep, uri: str) -> None:
    """Training trials stopped by ASHA were killed mid-run: their MLflow runs say so."""
    if sweep.kind != "train":
        return
    for row in rows:
        run_id = tracking.find_run(uri, sweep.spec.tracking.experiment, row.run_name)
        if run_id is None:
            continue
        tracking.tag_run(uri, run_id, {"genray.tune.status": row.status})
        if row.status != "finished":
            tracking.finish_run(uri, run_id, "KILLED" if row.status == "stopped early" else "FAILED")


# ----------------------------------------------------------------------------- table and plot


def table_columns(sweep: Sweep) -> list[str]:
    metrics = [sweep.tune.metric, *[m for m in sweep.tune.report if m != sweep.tune.metric]]
    if sweep.kind == "train":
        metrics.append("step")
    return ["trial_id", "status", *[d.key for d in sweep.dims], *metrics, "error"]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.5g}"
    return str(value) if not isinstance(value, (list, tuple)) else json.dumps(list(value))


def write_report(rows: list[TrialRow], sweep: Sweep, directory: Path, best: TrialRow | None) -> dict[str, Path]:
    """trials.csv, trials.md and objective.png in the sweep's folder."""
    import csv

    columns = table_columns(sweep)

    def values(r: TrialRow) -> list[str]:
        get = {"trial_id": r.trial_id, "status": r.status, "error": r.error, **r.params, **r.metrics}
        return [_cell(get.get(c)) for c in columns]

    directory.mkdir(parents=True, exist_ok=True)
    csv_path = directory / "trials.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(values(r) for r in rows)
    md_path = directory / "trials.md"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        mark = " **(best)**" if best is not None and r.trial_id == best.trial_id else ""
        cells = values(r)
        cells[0] += mark
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    md_path.write_text("\n".join(lines) + "\n")
    png_path = directory / "objective.png"
    plot(rows, sweep, png_path)
    return {"csv": csv_path, "markdown": md_path, "plot": png_path}


def plot(rows: list[TrialRow], sweep: Sweep, path: Path) -> None:
    """One panel per (metric, swept key): the metric of every trial that reported it against
    the key's value; categorical keys are spread over their listed values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [sweep.tune.metric, *[m for m in sweep.tune.report if m != sweep.tune.metric]]
    dims = sweep.dims
    fig, axes = plt.subplots(len(metrics), len(dims), figsize=(4.2 * len(dims), 3.2 * len(metrics)), squeeze=False)
    for j, dim in enumerate(dims):
        numeric = dim.kind in ("uniform", "loguniform", "int") or all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in dim.values)
        labels = [_label(v) for v in dim.values]
        for i, metric in enumerate(metrics):
            ax = axes[i][j]
            xs, ys, colors = [], [], []
            for r in rows:
                v, m = r.params.get(dim.key), r.metrics.get(metric)
                if not _finite(m) or v is None or not (numeric or _label(v) in labels):
                    continue
                xs.append(float(v) if numeric else labels.index(_label(v)))
                ys.append(m)
                colors.append({"finished": "tab:blue", "stopped early": "tab:orange"}.get(r.status, "tab:red"))
            ax.scatter(xs, ys, c=colors, s=28, zorder=3)
            if numeric and len(set(xs)) > 1 and len(xs) > 1:
                order = sorted(range(len(xs)), key=lambda k: xs[k])
                ax.plot([xs[k] for k in order], [ys[k] for k in order], color="0.75", lw=1, zorder=2)
            if not numeric:
                ax.set_xticks(range(len(labels)), labels, rotation=20)
            if dim.kind == "loguniform" or (numeric and min(xs, default=1) > 0
                                            and max(xs, default=1) / min(xs, default=1) >= 100):
                ax.set_xscale("log")
            ax.set_xlabel(dim.key)
            ax.set_ylabel(metric + (" (objective)" if i == 0 else ""))
            ax.grid(alpha=0.3)
    failed = sum(r.status == "failed" for r in rows)
    fig.suptitle(f"{len(rows)} trials ({sweep.tune.mode} {sweep.tune.metric}); orange: stopped early"
                 + (f"; {failed} failed, not shown" if failed else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _label(value: Any) -> str:
    return json.dumps(list(value)) if isinstance(value, (list, tuple)) else str(value)


# ----------------------------------------------------------------------------- the champion


def register_champion(sweep: Sweep, best: TrialRow, *, name: str, run_id: str, uri: str, spec: ExperimentSpec,
                      checkpoint_dir: Path | None) -> tuple[str, str]:
    """Register the best trial's model and point the alias at it. A training sweep logs the
    model into the trial's own run; a sampling sweep logs the target's weights into the sweep's
    run, with the winning settings as the checkpoint's sampling_defaults."""
    t = sweep.tune
    model_name = t.model_name or spec.tracking.model_name or f"{spec.model.family}-{spec.data.dataset or 'custom'}"
    sampling: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if sweep.kind == "train":
            source_run = tracking.find_run(uri, spec.tracking.experiment, best.run_name)
            ckpt = _train_checkpoint(best)
        else:
            source_run = run_id
            state = json.loads((checkpoint_dir / "state.json").read_text())
            sampling = {**state.get("sampling_defaults", {}),
                        **{k.removeprefix("sampling."): v for k, v in best.params.items()}}
            ckpt = Path(tmp) / "checkpoint"
            ckpt.mkdir()
            for f in checkpoint_dir.iterdir():
                if f.suffix == ".safetensors":
                    shutil.copy2(f, ckpt / f.name)
            (ckpt / "state.json").write_text(json.dumps({**state, "sampling_defaults": sampling}, indent=2,
                                                        sort_keys=True))
        with console.library_output():
            version = tracking.log_and_register(uri, source_run, ckpt, model_name)
    tags = {"genray.tune.sweep": name, "genray.tune.trial": best.trial_id, "genray.tune.metric": t.metric,
            "genray.tune.objective": repr(best.metrics[t.metric]),
            **{f"genray.tune.param.{k}": json.dumps(v) for k, v in best.params.items()},
            **{f"genray.sampling.{k}": json.dumps(v) for k, v in sampling.items()},
            **{f"genray.metric.{k}": repr(v) for k, v in best.metrics.items()}}
    tracking.set_alias(uri, model_name, version, t.alias, tags)
    return model_name, version


def _train_checkpoint(best: TrialRow) -> Path:
    if not best.checkpoint or not (Path(best.checkpoint) / "state.json").exists():
        raise RuntimeError(f"trial {best.trial_id}: its checkpoint {best.checkpoint!r} is gone")
    return Path(best.checkpoint)


# ----------------------------------------------------------------------------- the report


def print_report(out: SweepOutcome, sweep: Sweep) -> None:
    print()
    print(out.files["markdown"].read_text())
    if out.best is not None:
        print(f"best trial     {out.best.trial_id}: {sweep.tune.metric}={out.best.metrics[sweep.tune.metric]:.5g}  "
              + "  ".join(f"{k}={_cell(v)}" for k, v in out.best.params.items()))
    else:
        print("best trial     none: every trial failed")
    if out.model_version:
        print(f"registered     models:/{out.model_name}@{sweep.tune.alias} (version {out.model_version})")
    print(f"sweep run      {out.run_id}  in {out.tracking_uri}")
    print(f"table, plot    {out.files['csv']}, {out.files['plot']}")


# ----------------------------------------------------------------------------- command line


def command(args) -> int:
    """`genray tune` with parsed arguments (pipelines/arguments.py). Ctrl-C stops the sweep and
    says how to continue it (exit 130)."""
    console.set_verbose(args.verbose)
    sweep = load(args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(sweep.resolved, sort_keys=False), end="")
        return 0
    name = args.resume or args.name or default_sweep_name(args.config)
    try:
        out = run(sweep, name=name, resume=args.resume is not None, yes=args.yes)
    except KeyboardInterrupt:
        out = None
    if out is None or out.interrupted:
        sets = "".join(f" --set {shlex.quote(o)}" for o in args.overrides)  # a resume must repeat them
        print(f"genray: sweep {name} interrupted; continue it with: genray tune {args.config}{sets} --resume {name}",
              file=sys.stderr)
        return console.EXIT_INTERRUPTED
    print_report(out, sweep)
    return 0 if out.best is not None else 1


def main(argv: list[str] | None = None) -> int:
    return console.run(command, arguments.tune_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
