"""genray from Python: the jobs of the `genray` command as functions (re-exported by `genray`).

    run = genray.train("vae/vae_digits", overrides={"trainer.max_steps": 200}, workers=0)
    scores = genray.evaluate(run, num_samples=500, workers=0)
    sweep = genray.tune("vae/sweep_beta_shapes", overrides={"tune.num_samples": 4})
    model = genray.load(run)                                  # genray.pipelines.sample

A config is a shipped config's name, a YAML file, or the same contents as a dict; overrides are
{"section.key": value} (or the command line's "section.key=value" strings). The functions run
the same code as `genray train|eval|tune` (same MLflow runs, checkpoints, registered models) and
return their outcomes instead of printing a summary. A user mistake raises UserError (a
ValueError) with the same one-line message the command prints.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from genray.pipelines import config, evaluate as evaluation, train as training, tune as tuning
from genray.pipelines.evaluate import EvalOutcome, EvalRequest
from genray.pipelines.train import TrainOutcome
from genray.pipelines.tune import SweepOutcome

Overrides = Mapping[str, Any] | list[str] | None


def train(config_or_path: config.Source, *, overrides: Overrides = None, workers: int | None = None,
          gpu: bool = False, name: str | None = None, home: str | Path | None = None,
          progress: bool = True) -> TrainOutcome:
    """Train a config as `genray train` does and register its model. workers: Ray Train workers
    (0 trains in this process, Ray Train's local mode); name: the run, continued from its latest
    checkpoint when it exists. Returns the run: name, run_id, checkpoint, metrics, model_name,
    model_version and model_uri (models:/NAME/VERSION, for genray.load)."""
    scaling = {"scaling.workers": workers} if workers is not None else {}
    if gpu:
        scaling["scaling.gpu"] = True
    if isinstance(overrides, Mapping):
        overrides = {**overrides, **scaling}
    else:  # the command line's form, as `genray train --workers N --gpu` adds them
        overrides = [*(overrides or []), *(f"{k}={str(v).lower()}" for k, v in scaling.items())]
    spec = config.load(config_or_path, overrides)
    stem = "experiment" if isinstance(config_or_path, Mapping) else config.source_name(config_or_path)
    run_name = name or spec.tracking.run_name or training.default_run_name(stem)
    return training.run(spec, name=run_name, home=_home(home), show_progress=progress)


def evaluate(target: str | TrainOutcome, *, num_samples: int = evaluation.DEFAULT_NUM_SAMPLES,
             workers: int = 2, sampling: Mapping[str, Any] | None = None, home: str | Path | None = None,
             **options: Any) -> EvalOutcome:
    """Score a model as `genray eval` does: its sample quality against the real-vs-real floor,
    and likelihood or reconstruction where the family has them. target: models:/NAME@ALIAS,
    models:/NAME/VERSION, runs:/RUN_ID, a run id, a checkpoint directory, or genray.train's result.
    workers: Ray tasks that generate (0: in this process); sampling: the model's sampling
    settings; options: the other fields of genray.pipelines.evaluate.EvalRequest (batch_size,
    reference, feature_net, seed, log, ...). Returns the metrics and the evaluation's MLflow run."""
    if isinstance(target, TrainOutcome):
        target = f"runs:/{target.run_id}"
    request = EvalRequest(target=str(target), num_samples=num_samples, workers=workers,
                          sampling=dict(sampling or {}), **options)
    return evaluation.evaluate(request, home=_home(home))


def tune(config_or_path: config.Source, *, overrides: Overrides = None, name: str | None = None,
         resume: bool = False, home: str | Path | None = None, yes: bool = False) -> SweepOutcome:
    """Run a sweep config as `genray tune` does (resume=True continues the sweep `name`; yes=True
    starts one of more than tune.max_trials trials). Returns every trial's row, the best one, the
    registered champion and the report's files."""
    sweep = tuning.load(config_or_path, overrides)
    stem = "sweep" if isinstance(config_or_path, Mapping) else sweep.source
    return tuning.run(sweep, name=name or tuning.default_sweep_name(stem), resume=resume, home=_home(home), yes=yes)


def _home(home: str | Path | None) -> Path | None:
    return Path(home).expanduser() if home is not None else None
