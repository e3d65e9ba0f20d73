"""The experiment spec: one YAML file per experiment, validated before anything starts.

    data:     which Parquet data (a built-in dataset name, or paths)
    model:    `family` plus that family's builder arguments
    trainer:  steps, batch, optimiser, schedule, checkpoints, eval
    scaling:  Ray Train workers and resources, fault tolerance
    tracking: MLflow experiment, run and registered-model names

Every user mistake becomes a `ConfigError` whose message names the file, the field, the value
and what is allowed; the CLI prints it without a traceback and exits with code 2.
"""
from __future__ import annotations

import copy
import inspect
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from genray.components.data import DATASETS, DatasetInfo
from genray.components.errors import UserError
from genray.pipelines import catalog
from genray.components.models import FAMILIES



class ConfigError(UserError):
    """A mistake in a config file or command-line override."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSpec(_Section):
    dataset: str | None = "digits"  # a built-in dataset, prepared on first use
    size: Literal["tiny", "full"] = "full"
    seed: int = 0
    path: str | None = None  # Parquet file or folder for training; overrides `dataset`
    test_path: str | None = None  # held-out Parquet; defaults to the built-in test split

    @model_validator(mode="after")
    def _check_source(self) -> "DataSpec":
        if self.path is None and self.dataset is None:
            raise ValueError("set data.dataset (a built-in name) or data.path (Parquet)")
        if self.path is None and self.dataset not in DATASETS:
            raise ValueError(
                f"unknown dataset {self.dataset!r}; built-in datasets: {', '.join(sorted(DATASETS))}"
            )
        return self


class TrainerSpec(_Section):
    max_steps: int = Field(1000, ge=1)
    # A time budget: training stops at the first step after this many minutes of training (the
    # loop's evals excluded, a resumed run's earlier minutes included), checkpointed there.
    max_minutes: float | None = Field(None, gt=0, description="stop after this many minutes of training")
    batch_size: int = Field(64, ge=1, description="global batch, split across workers")
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="the schedule decays to lr * this")
    lr_schedule: Literal["cosine", "linear"] = Field(
        "cosine", description="after warmup: cosine decay, or linear: constant, then linear from lr_decay_start")
    lr_decay_start: float = Field(0.5, ge=0, lt=1, description="linear: the share of the steps after warmup "
                                                               "at which the decay starts")
    grad_accum: int = Field(1, ge=1)
    grad_clip: float | None = Field(1.0, gt=0)
    ema_decay: float | None = Field(0.999, gt=0, lt=1)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    checkpoint_every: int = Field(500, ge=1)
    num_to_keep: int = Field(2, ge=1)
    eval_every: int = Field(500, ge=1)
    eval_batches: int = Field(4, ge=1)
    num_samples: int = Field(64, ge=1, description="images in each sample grid")
    # Cheap quality curves: at each eval, this many samples are scored (KID, FD, class
    # consistency) on the feature network; 0 turns it off. `genray eval` is the full measure.
    quality_samples: int = Field(256, ge=0)
    feature_net: str = Field("auto", description="auto (the dataset's cached domain classifier), none, or a classifier directory")
    log_every: int = Field(20, ge=1)
    seed: int = 0


class ScalingSpec(_Section):
    workers: int = Field(2, ge=0, description="Ray Train workers; 0 runs the loop in this process (local mode)")
    gpu: bool = False
    cpus_per_worker: float = Field(0.5, gt=0)
    max_failures: int = Field(0, ge=-1, description="-1 retries forever")
    # How the workers' bundles are placed: PACK fills a node first; SPREAD puts them on
    # different nodes (STRICT_*: must, or the run waits).
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: NCCL with GPUs, gloo on CPUs


class TrackingSpec(_Section):
    experiment: str = "genray"
    run_name: str | None = None
    register_model: bool = True
    model_name: str | None = None  # registry name; default <family>-<dataset>


class ModelSpec(BaseModel):
    # The family's own arguments are checked against its builder's signature.
    model_config = ConfigDict(extra="allow")
    family: str

    @model_validator(mode="after")
    def _check_family(self) -> "ModelSpec":
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; families: {', '.join(sorted(FAMILIES))}")
        family_args_model(self.family).model_validate(self.model_extra or {})
        return self


class ExperimentSpec(_Section):
    data: DataSpec = DataSpec()
    model: ModelSpec
    trainer: TrainerSpec = TrainerSpec()
    scaling: ScalingSpec = ScalingSpec()
    tracking: TrackingSpec = TrackingSpec()

    @model_validator(mode="after")
    def _check(self) -> "ExperimentSpec":
        world = max(1, self.scaling.workers)  # local mode is one process
        per_worker = self.trainer.batch_size // world
        if self.trainer.batch_size % world or per_worker % self.trainer.grad_accum:
            raise ValueError(
                f"trainer.batch_size={self.trainer.batch_size} must split evenly over "
                f"scaling.workers={self.scaling.workers} and then trainer.grad_accum="
                f"{self.trainer.grad_accum} micro-batches"
            )
        return self

    def model_args(self) -> dict[str, Any]:
        return dict(self.model.model_extra or {})

    def flat(self) -> dict[str, Any]:
        """The resolved config as `section.key -> value`, for MLflow params."""
        return flatten(self.model_dump(mode="json"))


def family_args_model(family: str) -> type[BaseModel]:
    """A pydantic model of the family builder's keyword arguments: its annotations are the
    schema (types and ranges), its defaults the defaults, and nothing else is allowed."""
    fields: dict[str, Any] = {}
    hints = typing.get_type_hints(FAMILIES[family], include_extras=True)
    for name, p in inspect.signature(FAMILIES[family]).parameters.items():
        annotation = hints.get(name, Any)
        # The dataset's description comes from the data, never from the config.
        if annotation is DatasetInfo or p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        fields[name] = (annotation, ... if p.default is inspect.Parameter.empty else p.default)
    return create_model(
        f"{family}_args", __config__=ConfigDict(extra="forbid"), **fields  # type: ignore[call-overload]
    )


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def apply_overrides(raw: dict[str, Any], overrides: list[str] | Mapping[str, Any], source: str) -> dict[str, Any]:
    """Apply `a.b=value` overrides; values are parsed as YAML (`3`, `0.5`, `true`, `[1, 2]`).
    A mapping ({"trainer.lr": 3e-4}, from the Python API) sets its values as they are."""
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            set_key(raw, str(key), value, what=f"override {key!r}")
        return raw
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set trainer.lr=3e-4")
        set_key(raw, key, yaml.safe_load(value), what=f"--set {item!r}")
    return raw


def set_key(raw: dict[str, Any], key: str, value: Any, *, what: str) -> None:
    """raw[a][b] = value for key "a.b", creating sections on the way."""
    node = raw
    *parents, leaf = key.split(".")
    for p in parents:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{what}: {p!r} is a value, not a section")
        node = child
    node[leaf] = value


def _describe(err: dict[str, Any], raw: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        # Name the allowed keys: a typo is the usual cause.
        section = err["loc"][0] if len(err["loc"]) > 1 else None
        allowed = _allowed_keys(section, raw)
        return f"{loc}: unknown key; allowed: {', '.join(allowed)}"
    msg = err["msg"].removeprefix("Value error, ")
    if "input" in err and err["type"] != "missing" and not isinstance(err["input"], dict):
        return f"{loc}: {msg} (got {err['input']!r})" if loc else msg
    return f"{loc}: {msg}" if loc else msg


def _allowed_keys(section: Any, raw: dict[str, Any]) -> list[str]:
    sections = {"data": DataSpec, "trainer": TrainerSpec, "scaling": ScalingSpec, "tracking": TrackingSpec}
    if section is None:
        return list(ExperimentSpec.model_fields)
    if section == "model":
        family = (raw.get("model") or {}).get("family")
        if family in FAMILIES:
            return ["family", *family_args_model(family).model_fields]
        return ["family"]
    return list(sections[section].model_fields) if section in sections else []


def validate(raw: Any, source: str) -> ExperimentSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections (data, model, trainer, ...)")
    try:
        spec = ExperimentSpec.model_validate(raw)
    except ValidationError as e:
        lines = [_describe(err, raw) for err in e.errors(include_url=False)]
        raise ConfigError(f"{source}: " + "; ".join(lines)) from None
    return spec


Source = str | Path | Mapping[str, Any]  # a config: a file, a shipped config's name, or its contents


def read_yaml(path: Source) -> Any:
    """A config file's contents: a file, or a shipped config by name (pipelines/catalog.py), or
    a mapping given as it is (copied). A missing file names the close matches; bad YAML is a
    ConfigError naming the file."""
    if isinstance(path, Mapping):
        return copy.deepcopy(dict(path))
    path = catalog.find(path)
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None


def source_name(path: Source) -> str:
    """How errors name a config: its file, or "config" for a mapping."""
    return "config" if isinstance(path, Mapping) else str(catalog.find(path))


def load(path: Source, overrides: list[str] | Mapping[str, Any] | None = None) -> ExperimentSpec:
    raw = read_yaml(path)
    path = source_name(path)
    if isinstance(raw, dict):
        if "tune" in raw:
            raise ConfigError(f"{path}: a sweep config (it has a tune: section); run it with `genray tune {path}`")
        raw = apply_overrides(raw, overrides or [], str(path))
    return validate(raw, str(path))


# ----------------------------------------------------------------------------- the tune: section
#
# A sweep config is an experiment config plus a `tune:` section (a training sweep), or a `tune:`
# section alone with a `target` model (a sampling-time sweep: no training). See pipelines/tune.py.

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "int")


class StopRule(_Section):
    """End a trial once a reported metric crosses a threshold."""

    below: float | None = None
    above: float | None = None

    @model_validator(mode="after")
    def _one(self) -> "StopRule":
        if (self.below is None) == (self.above is None):
            raise ValueError("a stopping rule is {below: X} or {above: X}")
        return self


class SweepEvalSpec(_Section):
    """`genray eval`'s metrics on each trial's model (issue 4's suite): the objective of
    disentanglement and sampling-time sweeps."""

    num_samples: int = Field(500, ge=2)
    batch_size: int = Field(250, ge=1)
    feature_net: str = "auto"
    likelihood_rows: int = Field(200, ge=1)
    clip: str | None = None  # a trained CLIP (models:/..., runs:/...): text models' samples get a CLIP score
    seed: int = 0
    # Training sweeps: None scores every trial that finishes, in the trial; k scores only the k
    # finished trials best by `rank_by` (a training metric, the one ASHA's rungs and the search
    # use), on the driver after the sweep.
    top_k: int | None = Field(None, ge=1)
    rank_by: str = "eval/loss"
    rank_mode: Literal["min", "max"] = "min"


class TuneSpec(_Section):
    target: str | None = None  # a trained model: sweep its sampling settings, train nothing
    metric: str  # what the search optimises, as reported: eval/loss, eval_full/mig, fd_digits
    mode: Literal["min", "max"]
    space: dict[str, Any]  # config key -> {choice|grid: [...]} | {uniform|loguniform|int: [low, high]}
    num_samples: int = Field(1, ge=1, description="trials; with grid entries, repeats of the whole grid")
    max_trials: int = Field(32, ge=1, description="a sweep of more trials starts only with --yes")
    # A trial of 0 or 1 workers runs the loop in its own process; false starts a Ray Train run
    # per trial as multi-worker trials do (Train's failure handling per trial, at ~45 s a trial).
    in_process_trials: bool = True
    max_concurrent_trials: int = Field(2, ge=1)
    trial_resources: dict[str, float] | None = None  # default: tune.trial_resources() in pipelines/tune.py
    scheduler: Literal["none", "asha"] = "none"
    grace_period: int | None = Field(None, ge=1, description="ASHA: steps before a trial can be stopped")
    reduction_factor: float = Field(2.0, gt=1)
    search: Literal["random", "optuna"] = "random"
    seed: int = 0
    stop: dict[str, StopRule] = {}
    evaluate: SweepEvalSpec | None = None  # training sweeps: score each final model with genray eval
    report: list[str] = []  # further metrics for the table and the plot
    register_model: bool = True
    model_name: str | None = None  # registry name; default the config's, else <family>-<dataset>
    alias: str = "champion"


def validate_tune(raw: Any, source: str) -> TuneSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: tune: expected a mapping (metric, mode, space, ...)")
    try:
        return TuneSpec.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors(include_url=False):
            if err["type"] == "extra_forbidden":
                loc = ".".join(str(p) for p in err["loc"])
                section = {"stop": StopRule, "evaluate": SweepEvalSpec}.get(err["loc"][0]) if len(err["loc"]) > 1 else TuneSpec
                lines.append(f"tune.{loc}: unknown key; allowed: {', '.join(section.model_fields)}")
            else:
                lines.append("tune." + _describe(err, raw))
        raise ConfigError(f"{source}: " + "; ".join(lines)) from None
