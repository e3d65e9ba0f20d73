"""Train any genray family data-parallel with Ray Train, tracked in MLflow.

    genray train pipelines/configs/vae/beta_vae_shapes.yaml --workers 2 --name shapes-b4
    genray train CONFIG --workers 0          # the same loop in this process (Ray Train local mode)
    python -m genray.pipelines.train CONFIG [--set k=v ...]     # the same job, for `ray job submit`

config -> data (pipelines/data.py) -> model inputs (model references resolved, the quality
probe's feature network) -> TorchTrainer (pipelines/training/) -> checkpoint + MLflow run ->
registered model. Rerunning with the same --name continues that run from its latest
checkpoint, in the same MLflow run. Layout under the project home (GENRAY_HOME, default
./genray-runs):

    data/<dataset>-<size>-seed<S>/{train,test}.parquet   built-in datasets, prepared on first use
    ray_results/<name>/checkpoint_*/                      Ray Train checkpoints (components.checkpoint)
    mlflow.db, mlartifacts/                               the local MLflow store
"""
from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from genray.components.models import build
from genray.pipelines import arguments, console, tracking
from genray.pipelines.config import ExperimentSpec
from genray.pipelines.data import DataSource, TrainData, resolve_data
from genray.pipelines.env import init_ray, log_path, project_home, storage_path
from genray.pipelines.progress import TrainingProgress
from genray.pipelines.quality import quality_inputs
from genray.pipelines.refs import resolve_refs
from genray.pipelines.training.loop import latest_checkpoint_dir
from genray.pipelines.training.trainer import ModelInputs, build_trainer, run_in_process

# ----------------------------------------------------------------------------- setup (driver)


def resolve_model_inputs(spec: ExperimentSpec, data: DataSource, *, uri: str, home: Path) -> ModelInputs:
    """Resolve the config's model references and build the model once here, so a bad
    combination (a conditional model on unlabelled data, an autoencoder for other images) is a
    user error before Ray starts."""
    args = resolve_refs(spec.model.family, spec.model_args(), uri=uri, cache=home / "cache")
    model = build(spec.model.family, args, data.info)
    # The probe scores samples: a translation model (pix2pix) has none to score without inputs;
    # `genray eval` measures its translations.
    quality = quality_inputs(spec, data, home) if "sample" in model.capabilities else None
    return ModelInputs(args, data.info.to_json(), quality)


# ----------------------------------------------------------------------------- the driver


@dataclass
class TrainOutcome:
    name: str
    run_id: str
    checkpoint: Path
    metrics: dict[str, Any]
    model_name: str | None
    model_version: str | None
    tracking_uri: str

    @property
    def model_uri(self) -> str | None:
        """models:/NAME/VERSION of the registered model (genray.load takes it), when one was registered."""
        return f"models:/{self.model_name}/{self.model_version}" if self.model_version else None


def run(spec: ExperimentSpec, *, name: str, home: Path | None = None, uri: str | None = None,
        parent_run_id: str | None = None, callbacks: list | None = None,
        train_data: TrainData | None = None, show_progress: bool = True, in_process: bool = False) -> TrainOutcome:
    """Train `spec` as run `name` (continuing it if it exists) and register the final model.

    A Tune trial (pipelines/tune.py) passes the sweep's MLflow run as `parent_run_id`, so its run
    nests under the sweep's, and the dataset the sweep built once for all its trials as
    `train_data`, and shows no progress bar (the sweep's driver shows the trials). A one-worker
    trial runs the loop in its own process (`in_process`: no Train controller or worker group,
    reports straight to Tune); a multi-worker one passes Ray's TuneReportCallback in `callbacks`."""
    from ray.train.v2.api.exceptions import TrainingFailedError

    startup = {"start": time.time()}  # wall-clock marks to the first step (the loop logs them: startup/*)
    home = home or project_home()
    home.mkdir(parents=True, exist_ok=True)
    logs = console.route_logs(log_path(home, "train", name)) if show_progress else None
    data = resolve_data(spec, home)
    startup["data"] = time.time()
    uri = uri or tracking.tracking_uri(home)
    inputs = resolve_model_inputs(spec, data, uri=uri, home=home)
    startup["model_inputs"] = time.time()
    experiment_id = tracking.ensure_experiment(uri, spec.tracking.experiment, home)
    tags = {"genray.family": spec.model.family, "genray.dataset": spec.data.dataset or spec.data.path or ""}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run_id, resumed = tracking.start_run(uri, experiment_id, name, spec.flat(), tags)
    print(f"[{name}] MLflow run {run_id} ({'continued' if resumed else 'new'}) in {uri}", flush=True)
    if logs is not None:
        print(f"[{name}] Ray and library output: {logs} (--verbose shows it here)", flush=True)

    startup["mlflow_run"] = time.time()
    init_ray()
    startup["ray_init"] = time.time()
    if in_process:
        try:
            final, metrics = run_in_process(spec, data, inputs, name=name, home=home, uri=uri, run_id=run_id,
                                            train_data=train_data, startup=startup)
        except BaseException:
            tracking.finish_run(uri, run_id, "FAILED")
            raise
        return _finish(spec, name, run_id, uri, final, final, metrics)

    trainer = build_trainer(spec, data, inputs, name=name, home=home, uri=uri, run_id=run_id, callbacks=callbacks,
                            train_data=train_data, startup=startup)
    progress = TrainingProgress(uri, run_id, name, spec.trainer.max_steps) if show_progress else contextlib.nullcontext()
    try:
        with progress:
            result = trainer.fit()
    except KeyboardInterrupt:
        tracking.finish_run(uri, run_id, "KILLED")
        raise
    except TrainingFailedError:
        tracking.finish_run(uri, run_id, "FAILED")
        raise

    if result.checkpoint is None and spec.scaling.workers == 0:
        # Local mode keeps its own checkpoints: a rerun of a finished run (its steps or its
        # trainer.max_minutes spent) trains and reports nothing, and its newest one is the result.
        final = latest_checkpoint_dir(Path(storage_path(home)) / name)
        if final is not None:
            return _finish(spec, name, run_id, uri, final, final, dict(result.return_value or {}))
    if result.checkpoint is None:
        raise RuntimeError(f"run {name} finished without a checkpoint under {storage_path(home)}/{name}")
    where = Path(result.checkpoint.path) if result.checkpoint.filesystem.type_name == "local" else \
        f"{result.checkpoint.filesystem.type_name}://{result.checkpoint.path}"
    # A local directory as it is; from s3:// or gs:// storage, a temporary download.
    with result.checkpoint.as_directory() as local:
        return _finish(spec, name, run_id, uri, Path(local), where, dict(result.metrics or {}))


def _finish(spec: ExperimentSpec, name: str, run_id: str, uri: str, ckpt_dir: Path, where, metrics: dict[str, Any]) -> TrainOutcome:
    """The final checkpoint into the run's artifacts and the registry; the run marked finished."""
    model_name = version = None
    logger = tracking.RunLogger(uri, run_id)
    logger.artifacts(ckpt_dir, "checkpoint")
    if spec.tracking.register_model:
        model_name = spec.tracking.model_name or f"{spec.model.family}-{spec.data.dataset or 'custom'}"
        with console.library_output():
            version = tracking.log_and_register(uri, run_id, ckpt_dir, model_name)
    tracking.finish_run(uri, run_id, "FINISHED")
    return TrainOutcome(name, run_id, where, metrics, model_name, version, uri)


def default_run_name(config_path: str | Path) -> str:
    return f"{Path(config_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


# ----------------------------------------------------------------------------- command line


def command(args) -> int:
    """`genray train` with parsed arguments (pipelines/arguments.py)."""
    console.set_verbose(args.verbose)
    spec = arguments.train_spec(args)
    if args.print_config:
        print(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), end="")
        return 0
    name = args.name or spec.tracking.run_name or default_run_name(args.config)
    console.print_summary(run(spec, name=name))
    return 0


def main(argv: list[str] | None = None) -> int:
    return console.run(command, arguments.train_parser().parse_args(argv), interrupted=console.TRAIN_INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
