"""What `genray serve` runs: the serve settings (ServeSpec), the per-request limits, and the serve
config file that sets them.

    genray serve --config pipelines/configs/serve/default.yaml

Every key is optional; the file documents the defaults. Command-line flags (--model, --alias,
--host, --port, --api-key-file) win over the file.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from genray.pipelines.config import ConfigError, read_yaml

DEFAULT_APP = "genray"


class Limits(BaseModel):
    """What one request may ask for. Over a limit: 422 naming the field (413 for the body)."""

    model_config = ConfigDict(extra="forbid")
    max_n: int = Field(16, ge=1, le=1024)
    # Network evaluations one sample call may make, as the model counts them
    # (model.sampling_cost): the steps of an iterative method, 1 for a one-shot generator.
    max_steps: int = Field(100, ge=1, le=10_000)
    # Text models: tokens one generate call may add (each a cached forward pass of one position,
    # far cheaper than an image model's step, so counted apart from max_steps).
    max_new_tokens: int = Field(512, ge=1, le=100_000)
    # Audio models: the longest clip one sample request may ask for (a network step per sample:
    # 8,000 steps a second at 8 kHz).
    max_audio_s: float = Field(5.0, gt=0, le=600)
    # Gibbs-sampled models (RBM): block Gibbs sweeps one sample call may make (each sweep is two
    # matrix products, thousands of times cheaper than a U-Net step, so counted apart as well).
    max_gibbs_sweeps: int = Field(20_000, ge=1, le=10_000_000)
    # Images, latents or token grids in one encode/decode/log_prob/tokenize; captions in one
    # embed; labels, and templates, in one classify.
    max_images: int = Field(16, ge=1, le=1024)
    max_interpolation_steps: int = Field(16, ge=2, le=256)
    max_prompt_chars: int = Field(256, ge=1, le=10_000)
    max_body_bytes: int = Field(2_000_000, ge=1_000)
    request_timeout_s: float = Field(60.0, gt=0)


class Autoscaling(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(8.0, gt=0)


class DeploymentSpec(BaseModel):
    """How each model's deployment runs: replicas (fixed or autoscaled), batching, resources."""

    model_config = ConfigDict(extra="forbid")
    num_replicas: int = Field(1, ge=1)
    autoscaling: Autoscaling | None = None
    max_batch_size: int = Field(16, ge=1, le=1024)
    max_ongoing_requests: int | None = Field(None, ge=1)  # per replica; default 2 x max_batch_size, at least 8
    batch_wait_timeout_s: float = Field(0.01, ge=0, le=10)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    health_check_period_s: float = Field(10.0, gt=0)
    # How often each replica reads the version it should serve from the registry: a
    # `genray serve --reload` is served within about this long plus the new version's load time.
    version_poll_period_s: float = Field(1.0, gt=0, le=60)
    gateway_max_ongoing_requests: int = Field(1000, ge=1)  # requests the ingress holds at once


class ServeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    app_name: str = DEFAULT_APP
    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = Field(8000, ge=0, le=65535)
    alias: str = "champion"  # or "latest": the newest version
    models: list[str] = Field(default_factory=list)  # empty: every registered model with the alias
    deployment: DeploymentSpec = Field(default_factory=DeploymentSpec)
    limits: Limits = Field(default_factory=Limits)
    # Set one, and every route but /healthz and the gallery page needs `Authorization: Bearer
    # <key>` (serve/auth.py). A path or a variable's name, never the key: this spec is written to
    # <home>/serve/<app>.json and a Serve config's args show in Ray's dashboard.
    api_key_file: str | None = None  # a file only its owner can read (chmod 600)
    api_key_env: str | None = None  # an environment variable (KubeRay: a Secret as an env var)

    @model_validator(mode="after")
    def _one_key_source(self):
        if self.api_key_file is not None and self.api_key_env is not None:
            raise ValueError("api_key_file and api_key_env are both set; the key comes from one of them")
        return self


def load_spec(path: str | None, overrides: dict[str, Any]) -> ServeSpec:
    """The serve config file (YAML, optional) with command-line values on top. A bad value is a
    ConfigError naming the file and the key."""
    raw: dict[str, Any] = dict((read_yaml(path) if path else {}) or {})
    raw.update({k: v for k, v in overrides.items() if v not in (None, [])})
    try:
        return ServeSpec.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])  # empty for a check across keys
        raise ConfigError(f"{path or 'serve settings'}: {where + ': ' if where else ''}{err['msg']}") from None
