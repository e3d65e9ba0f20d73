"""MLflow: one run per training run, metrics from rank 0, the final model in the registry.

Local default with no setup: `<home>/mlflow.db` (SQLite) and `<home>/mlartifacts/`, with
absolute paths so Ray workers, whatever their working directory, write to the same place.
`MLFLOW_TRACKING_URI` points everything at a tracking server instead.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from genray.components.checkpoint import build_model
from genray.components.data import save_png
from genray.components.data.show import Rendered
from genray.components.errors import UserError
from genray.components.models.protocol import settings_for

RUN_NAME_TAG = "genray.run_name"
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")


def tracking_uri(home: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(home / 'mlflow.db').resolve()}"


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(uri: str, name: str, home: Path) -> str:
    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:"):
        # A local store: an explicit location, or artifacts land in ./mlruns of whatever folder
        # the writer runs in. A tracking server picks its own.
        location = (home / "mlartifacts" / name).resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def start_run(uri: str, experiment_id: str, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> tuple[str, bool]:
    """The MLflow run for `run_name`: the existing one when a run of that name was started
    before (resume, restart), else a new one. Returns (run_id, resumed)."""
    from mlflow.entities import Param, RunTag

    client = _client(uri)
    found = _runs_named(client, experiment_id, run_name)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        logged = found[0].data.params
        changed = {k: v for k, v in params.items() if k in logged and logged[k] != str(v)}
        if changed:
            # MLflow params are immutable; record what a resumed run changed as tags.
            client.log_batch(run_id, tags=[RunTag(f"resume.{k}", str(v)) for k, v in changed.items()])
        return run_id, True
    run = client.create_run(experiment_id, run_name=run_name, tags={RUN_NAME_TAG: run_name, **tags})
    items = [Param(k, str(v)) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        client.log_batch(run.info.run_id, params=items[i : i + 100])
    return run.info.run_id, False


class RunLogger:
    """What rank 0 writes during training: metrics and sample grids."""

    def __init__(self, uri: str, run_id: str):
        self.client = _client(uri)
        self.run_id = run_id

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in values.items() if np.isfinite(v)]
        self.client.log_batch(self.run_id, metrics=batch)

    def image(self, grid: np.ndarray, artifact_file: str, *, key: str | None = None, step: int | None = None) -> None:
        """A PNG at artifact_file; with key and step also an MLflow step image, which the UI
        shows over training with a step slider."""

        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / Path(artifact_file).name
            save_png(grid, path)
            self.client.log_artifact(self.run_id, str(path), str(Path(artifact_file).parent))
        if key is not None:
            self.client.log_image(self.run_id, grid, key=key, step=step)

    def samples(self, shown: Rendered, stem: str, *, key: str | None, step: int) -> None:
        """Samples rendered for their data kind (components/data/show.py) at stem + suffix: a
        PNG grid (with a key, also an MLflow step image), a text file or a WAV file."""
        if shown.grid is not None:
            self.image(shown.grid, stem + shown.suffix, key=key, step=step)
            return
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / (Path(stem).name + shown.suffix)
            path.write_bytes(shown.data)
            self.client.log_artifact(self.run_id, str(path), str(Path(stem).parent))

    def artifacts(self, local_dir: str | Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)


def finish_run(uri: str, run_id: str, status: str) -> None:
    _client(uri).set_terminated(run_id, status=status)


@contextlib.contextmanager
def _fluent(uri: str):
    """mlflow's fluent API (start_run, pyfunc.log_model, artifacts) pointed at `uri`.

    mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI into this process's environment.
    Left there, every later tracking_uri() in the process would read it as the user's choice: the
    next run of a sweep or of benchmarks/results.py, or a test with another GENRAY_HOME, would
    log to this store. The environment is put back as it was on the way out."""
    import mlflow

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield mlflow
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# What the registered model needs beyond genray's own code, pinned to what trained it.
MODEL_REQUIREMENTS = ("torch", "numpy", "safetensors", "pydantic", "pyyaml", "pyarrow", "pillow", "mlflow")


def log_and_register(uri: str, run_id: str, checkpoint_dir: Path, model_name: str | None) -> str | None:
    """Log the final model as an MLflow "models from code" pyfunc: the code is
    pipelines/mlflow_model.py plus the genray package, components/ and pipelines/ inside (bundled, so
    `mlflow models predict/serve` rebuild it anywhere its requirements install), the state a
    genray checkpoint (safetensors + JSON). Nothing is pickled. The signature names the inputs
    (n, seed, the condition) and the model's sampling settings as params. Returns the version."""
    with _fluent(uri) as mlflow, mlflow.start_run(run_id=run_id), tempfile.TemporaryDirectory() as d:
        # Only what serving needs: weights and state, not the optimizer.
        slim = Path(d) / "checkpoint"
        slim.mkdir()
        for f in checkpoint_dir.iterdir():
            if f.suffix in (".safetensors", ".json"):
                (slim / f.name).write_bytes(f.read_bytes())
        signature, example = model_signature(slim)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={"checkpoint": str(slim)},
            code_paths=bundle_code(Path(d) / "code"),
            pip_requirements=requirements(),
            signature=signature,
            input_example=example,
            registered_model_name=model_name,
        )
    version = getattr(info, "registered_model_version", None)
    return str(version) if version is not None else None


def model_signature(checkpoint_dir: Path):
    """(signature, input example) of a checkpoint's model: inputs n, seed and its condition
    (y: class labels, prompt: text), x for images to vary (capability variations); params: its sampling settings, each with its type and the
    default it samples with (the checkpoint's sampling_defaults over the model's own)."""
    from mlflow.models import ModelSignature
    from mlflow.types import DataType
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema


    model, state = build_model(checkpoint_dir)
    inputs = [ColSpec(DataType.long, "n", required=False), ColSpec(DataType.long, "seed", required=False)]
    if model.conditioning == "class":
        inputs.append(ColSpec(Array(DataType.long), "y", required=False))
    elif model.conditioning == "text":
        inputs.append(ColSpec(DataType.string, "prompt", required=False))
    if "generate_text" in model.capabilities:  # the text to continue, and where to stop
        inputs += [ColSpec(DataType.string, "prompt", required=False),
                   ColSpec(Array(DataType.string), "stop", required=False)]
    if "variations" in model.capabilities:  # images to make variations of (n per image), values flattened
        inputs.append(ColSpec(Array(DataType.double), "x", required=False))
    if "translate" in model.capabilities:  # the images to translate, their values flattened
        inputs = [ColSpec(Array(DataType.double), "x"), ColSpec(DataType.long, "seed", required=False)]
        if model.directions:
            inputs.append(ColSpec(DataType.string, "direction", required=False))
    if "embed" in model.capabilities:  # captions or images in, embeddings out
        inputs = [ColSpec(Array(DataType.string), "texts", required=False),
                  ColSpec(Array(DataType.double), "x", required=False)]
    defaults = settings_for(model, {}, state.get("sampling_defaults")).model_dump()
    kinds = {"integer": DataType.long, "number": DataType.double, "boolean": DataType.boolean}
    props = model.sampling_settings.model_json_schema().get("properties", {})
    params = [ParamSpec(name, kinds.get(props[name].get("type"), DataType.string), value)
              for name, value in defaults.items()]
    signature = ModelSignature(inputs=Schema(inputs), params=ParamSchema(params) if params else None)
    if "translate" in model.capabilities:  # one blank image
        return signature, {"x": [-1.0] * math.prod(model.image_shape), "seed": 0}
    if "embed" in model.capabilities:
        return signature, {"texts": ["a photo"]}
    return signature, ({"n": 2, "seed": 0, "prompt": ""} if "generate_text" in model.capabilities
                       else {"n": 4, "seed": 0})


def bundle_code(dest: Path) -> list[str]:
    """genray's code (Python files, configs, the gallery page) laid out as the wheel installs it,
    genray/ with components/ and pipelines/ inside, for code_paths."""
    import shutil

    import genray
    import genray.components

    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "components", "pipelines")
    # The same from a checkout (the layers beside genray/) and from a wheel (inside it).
    shutil.copytree(Path(genray.__file__).parent, dest / "genray", ignore=skip)
    for layer in (Path(genray.components.__file__).parent, Path(__file__).parent):
        shutil.copytree(layer, dest / "genray" / layer.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return [str(dest / "genray")]


def requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in MODEL_REQUIREMENTS:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return out


def latest_sample_grid(uri: str, run_id: str) -> str | None:
    """Where the newest sample grid of a run is (a local path for a local store)."""
    client = _client(uri)
    grids = sorted(f.path for f in client.list_artifacts(run_id, "samples"))
    if not grids:
        return None
    base = client.get_run(run_id).info.artifact_uri
    location = f"{base}/{grids[-1]}"
    return location.removeprefix("file://")


def looks_like_run_id(s: str) -> bool:
    """An MLflow run id as a user pastes it: 32 lowercase hex digits."""
    return len(s) == 32 and all(c in "0123456789abcdef" for c in s)


def resolve_checkpoint(ref: str, uri: str, cache: Path) -> Path:
    """A genray checkpoint named the ways a user names a model, as a local directory:

        models:/NAME@ALIAS, models:/NAME/VERSION   a registered model (its slim checkpoint);
        models:/NAME/latest                         VERSION may be "latest", the newest
        runs:/RUN_ID                                the final checkpoint a training run logged
        a local directory                           a checkpoint directory (holds state.json)

    Downloads land in `cache` keyed by the reference. Raises UserError with a plain message
    when the reference names nothing."""
    from mlflow.exceptions import MlflowException

    local = Path(ref).expanduser()
    if not ref.startswith(("models:/", "runs:/")):
        if (local / "state.json").is_file():
            return local.resolve()
        raise UserError(
            f"{ref!r} is not a checkpoint directory (no state.json) nor an MLflow reference "
            "(models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID)"
        )
    import mlflow

    client = _client(uri)
    try:
        if ref.startswith("runs:/"):
            run_id = ref.removeprefix("runs:/").strip("/").split("/")[0]
            client.get_run(run_id)
            source = f"runs:/{run_id}/checkpoint"
        else:
            name, version = _model_version(client, ref, uri)
            source = f"models:/{name}/{version}"
        dest = cache / source.replace(":/", "-").replace("/", "-")
        if not (dest / "done").exists():
            dest.mkdir(parents=True, exist_ok=True)
            # A progress bar per download is noise in a server's log and a job's output.
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            with _fluent(uri):
                mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dest), tracking_uri=uri)
            (dest / "done").touch()
    except MlflowException as e:
        raise UserError(f"{ref!r}: not found in the MLflow store at {uri} ({e.message.splitlines()[0]})") from None
    found = sorted(p.parent for p in dest.rglob("state.json"))
    if not found:
        raise UserError(f"{ref!r}: the MLflow artifacts hold no genray checkpoint (no state.json)")
    return found[0]


def run_exists(uri: str, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        _client(uri).get_run(run_id)
        return True
    except MlflowException:
        return False


def _model_version(client, ref: str, uri: str) -> tuple[str, str]:
    """(name, version) that models:/NAME@ALIAS, models:/NAME/VERSION or models:/NAME/latest names.
    Raises MlflowException when the registry has no such version, UserError when it has no
    version at all of the model."""
    name, sep, alias = ref.removeprefix("models:/").partition("@")
    if sep:
        return name, str(client.get_model_version_by_alias(name, alias).version)
    name, _, version = name.partition("/")
    if version == "latest":  # the newest version, as `genray train` registered it
        versions = client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise UserError(f"{ref!r}: no registered model named {name!r} in {uri}")
        version = str(max(int(v.version) for v in versions))
    return name, str(client.get_model_version(name, version).version)


def model_version_of(ref: str, uri: str) -> tuple[str, str]:
    """(name, version) of models:/NAME@ALIAS, models:/NAME/VERSION or models:/NAME/latest."""
    return _model_version(_client(uri), ref, uri)


def model_version_tags(uri: str, name: str, version: str) -> dict[str, str]:
    """The tags of registered model NAME at VERSION."""
    return dict(_client(uri).get_model_version(name, str(version)).tags or {})


def set_model_version_tags(uri: str, name: str, version: str, tags: dict[str, str]) -> None:
    client = _client(uri)
    for k, v in tags.items():
        client.set_model_version_tag(name, str(version), k, v)


DIRECTIONS_TAG = "genray.directions"  # on a model version: runs:/ID/directions (pipelines/directions.py)


def version_directions(uri: str, home: str | Path, name: str, version: str):
    """The attribute directions `genray directions` stored for registered model NAME at VERSION
    (its tag genray.directions names them), downloaded once to <home>/cache/directions; None when
    the version has none. A UserError when the tag names something that is not directions."""
    from mlflow.exceptions import MlflowException

    from genray.components.models.directions import META_FILE, Directions

    ref = model_version_tags(uri, name, version).get(DIRECTIONS_TAG)
    if not ref:
        return None
    run_id = ref.removeprefix("runs:/").split("/")[0]
    local = Path(home) / "cache" / "directions" / run_id
    if not (local / META_FILE).exists():
        import mlflow.artifacts

        (Path(home) / "cache").mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=Path(home) / "cache") as d:
            try:
                got = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=d, tracking_uri=uri))
            except MlflowException as e:
                raise UserError(f"models:/{name}/{version}: its tag {DIRECTIONS_TAG} names {ref}, which cannot be "
                                f"read ({e.message.splitlines()[0]}); run `genray directions models:/{name}/{version}` "
                                "again") from None
            local.parent.mkdir(parents=True, exist_ok=True)
            if not local.exists():
                got.rename(local)
    return Directions.load(local)


EVAL_EXPERIMENT = "genray-eval"  # evaluations of models whose training run this store lacks


def log_evaluation(uri: str, home: Path, training_run_id: str | None, *, label: str, params: dict[str, str],
                   metrics: dict[str, float], step: int, shown: Rendered, tags: dict[str, str],
                   parent_run_id: str | None = None) -> str:
    """One evaluation as its own MLflow run, nested under the training run when there is one,
    and its metrics copied onto the training run as eval_full/<name> at the checkpoint's step.
    With parent_run_id (a sampling-time sweep's trial) it nests there instead and leaves the
    training run alone: twenty trials' settings are not the training run's final figures.
    Returns the evaluation run's id."""
    from mlflow.entities import Metric, Param, RunTag

    client = _client(uri)
    nest_under = parent_run_id or training_run_id
    if parent_run_id:
        training_run_id = None  # nothing copied onto the training run
    if nest_under:
        parent = client.get_run(nest_under)
        experiment_id = parent.info.experiment_id
        name = f"eval-{parent.data.tags.get(RUN_NAME_TAG, nest_under[:8])}-{time.strftime('%Y%m%d-%H%M%S')}"
        tags = {**tags, "mlflow.parentRunId": nest_under}
    else:
        experiment_id = ensure_experiment(uri, EVAL_EXPERIMENT, home)
        name = f"eval-{time.strftime('%Y%m%d-%H%M%S')}"
    run = client.create_run(experiment_id, run_name=name, tags={"genray.eval.target": label, **tags})
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])
    finite = {k: float(v) for k, v in metrics.items() if np.isfinite(v)}
    client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in finite.items()])
    RunLogger(uri, run_id).samples(shown, "samples/eval_samples", key=None, step=step)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "metrics.json"
        path.write_text(json.dumps({"params": params, "metrics": metrics}, indent=2, sort_keys=True))
        client.log_artifact(run_id, str(path), "eval")
    client.set_terminated(run_id, status="FINISHED")
    if training_run_id:
        client.log_batch(training_run_id, metrics=[Metric(f"eval_full/{k}", v, now, step) for k, v in finite.items()],
                         tags=[RunTag("genray.eval.last_run", run_id)])
    return run_id


def find_run(uri: str, experiment_name: str, run_name: str) -> str | None:
    """The id of the run genray named `run_name` in that experiment, or None."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        return None
    found = _runs_named(client, exp.experiment_id, run_name)
    return found[0].info.run_id if found else None


def _runs_named(client, experiment_id: str, run_name: str):
    return client.search_runs([experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'", max_results=1)


def tag_run(uri: str, run_id: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    _client(uri).log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def experiment_of(uri: str, run_id: str) -> str:
    return _client(uri).get_run(run_id).info.experiment_id


def set_alias(uri: str, model_name: str, version: str, alias: str, tags: dict[str, str]) -> None:
    """Point models:/NAME@ALIAS at this version, and tag the version (e.g. the sweep that chose
    it and its winning sampling settings)."""
    client = _client(uri)
    for k, v in tags.items():
        client.set_model_version_tag(model_name, version, k, v)
    client.set_registered_model_alias(model_name, alias, version)
