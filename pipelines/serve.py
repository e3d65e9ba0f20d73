"""`genray serve`: the registered champions over HTTP, with Ray Serve.

    genray serve [--model NAME ...] [--alias champion] [--host 127.0.0.1] [--port 8000]
                 [--config FILE] [--address ADDR]
    genray serve --reload [--address auto]     re-read every served alias; swap in new versions

One `ModelServer` deployment per registered model loads the version its alias names from the
MLflow registry: the checkpoint's safetensors weights and state.json, rebuilt by genray's own
family code (components.checkpoint.build_model). Nothing is unpickled, neither MLflow's pyfunc
wrapper nor an optimizer file. One FastAPI ingress (`Gateway`) validates requests and routes
them by the model's capabilities:

    GET  /                          the gallery: pick a model, set its parameters, see samples
    GET  /healthz                   200 when every model is loaded
    GET  /v1/models                 name, family, capabilities, parameters, defaults, version
    GET  /v1/models/{name}
    POST /v1/models/{name}/sample       n, seed, class_label, prompt, guidance_scale, sampler, ...
    POST /v1/models/{name}/encode       images -> latents          (capability "encode")
    POST /v1/models/{name}/decode       latents -> images          (capability "decode")
    POST /v1/models/{name}/interpolate  two images -> a path       (encode and decode)
    POST /v1/models/{name}/log_prob     images -> nats, bits/dim   (capability "log_prob")
    GET  /docs, /openapi.json

Sampling requests are batched (`@serve.batch`): requests with the same settings run as one
forward pass, each drawing its noise from its own seeded generator
(components.models.layers.StackedGenerators), so a seed names the same image alone or batched.
Limits (n, steps, body size, time) come from the serve config and answer 422 (413 for the
body) naming the field; bad input never gets a 5xx.

The alias is resolved to a version when the app is deployed; `--reload` resolves it again and
redeploys with the new version in each deployment's user_config. Serve applies that with
`reconfigure`, which loads the new weights beside the old and swaps them between batches: no
request fails or sees a half-loaded model.
"""

import asyncio
import base64
import binascii
import inspect
import io
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, ValidationError
from ray import serve

from components.data.images import image_grid, to_uint8_image
from pipelines.config import ConfigError

DEFAULT_APP = "genray"
WEB_PAGE = Path(__file__).with_name("web") / "index.html"
VERSION_HEADER = "X-Genray-Model-Version"


# --------------------------------------------------------------------------------- the serve spec


class Limits(BaseModel):
    """What one request may ask for. Over a limit: 422 naming the field (413 for the body)."""

    model_config = ConfigDict(extra="forbid")
    max_n: int = Field(16, ge=1, le=1024)
    max_steps: int = Field(100, ge=1, le=10_000)  # denoising steps; DDPM runs all T of them
    max_images: int = Field(16, ge=1, le=1024)  # images or latents in one encode/decode/log_prob
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


def load_spec(path: str | None, overrides: dict[str, Any]) -> ServeSpec:
    """The serve config file (YAML, optional) with command-line values on top."""
    from pipelines.config import read_yaml

    raw: dict[str, Any] = read_yaml(path) if path else {}
    raw = dict(raw or {})
    raw.update({k: v for k, v in overrides.items() if v not in (None, [])})
    try:
        return ServeSpec.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{path or 'serve settings'}: {where}: {err['msg']}") from None


# ------------------------------------------------------------------------- the registry, read safely


@dataclass
class Loaded:
    name: str
    version: str
    model: Any
    state: dict[str, Any]
    family: str
    run_id: str | None


def load_version(uri: str, home: str | Path, name: str, version: str, *, device: str = "cpu") -> Loaded:
    """Registered model NAME at VERSION, rebuilt from its safetensors weights and state.json.

    Raises ValueError with a plain message when the version does not exist, is not a genray
    checkpoint, or holds weights that are not safetensors (a pickle is refused unread)."""
    from safetensors import SafetensorError

    from components.checkpoint import build_model
    from pipelines import tracking

    ckpt_dir = tracking.resolve_checkpoint(f"models:/{name}/{version}", uri, Path(home) / "cache" / "serve")
    try:
        model, state = build_model(ckpt_dir, map_location=device, with_optimizer=False)
    except SafetensorError as e:
        raise ValueError(f"models:/{name}/{version}: the weights are not a safetensors file ({e}); "
                         "genray loads no pickled weights") from None
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"models:/{name}/{version}: state.json does not describe a genray model ({e})") from None
    return Loaded(name, str(version), model, state, state["model"]["family"], state.get("mlflow_run_id"))


def resolve_versions(uri: str, names: list[str], alias: str) -> dict[str, str]:
    """{name: version} that NAME@ALIAS points at now (alias "latest": the newest version).
    With no names, every registered model that has the alias."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    if not names:
        names = sorted(m.name for m in client.search_registered_models()
                       if alias == "latest" or alias in (m.aliases or {}))
        if not names:
            raise ConfigError(f"no registered model in {uri} has the alias {alias!r}: run `genray tune` "
                              "(which sets champion), name models with --model, or serve --alias latest")
    out = {}
    for name in names:
        try:
            if alias == "latest":
                versions = client.search_model_versions(f"name = '{name}'")
                if not versions:
                    raise MlflowException(f"no versions of {name!r}")
                out[name] = str(max(int(v.version) for v in versions))
            else:
                out[name] = str(client.get_model_version_by_alias(name, alias).version)
        except MlflowException as e:
            raise ConfigError(f"--model {name}: no version of {name!r} has alias {alias!r} in {uri} "
                              f"({e.message.splitlines()[0]})") from None
    return out


# ------------------------------------------------------------------------------ request bodies

Sampler = Literal["ddim", "ddpm"]
Spacing = Literal["leading", "trailing", "linspace"]


class SampleRequest(BaseModel):
    """Sampling settings a model does not take are refused (422 naming them): GET /v1/models
    lists each model's parameters and their defaults."""

    model_config = ConfigDict(extra="forbid")
    n: int = Field(4, ge=1, description="samples to draw (at most limits.max_n)")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="same seed, same images")
    class_label: int | list[int] | None = Field(None, description="class-conditional models: one label for all, or one per sample")
    prompt: str | None = Field(None, description="text-conditional models")
    guidance_scale: FiniteFloat | None = Field(None, ge=0, le=100, description="classifier-free guidance (diffusion)")
    num_inference_steps: int | None = Field(None, ge=1, description="DDIM steps (diffusion)")
    sampler: Sampler | None = None
    eta: FiniteFloat | None = Field(None, ge=0, le=1, description="DDIM noise: 0 deterministic, 1 DDPM-like")
    spacing: Spacing | None = None
    temperature: FiniteFloat | None = Field(None, ge=0, le=10, description="prior scale (VAE)")
    format: Literal["png", "array"] = Field("png", description="base64 PNGs, or float arrays in [-1, 1]")


class ImagesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: list[str] | None = Field(None, min_length=1, description="base64 PNGs of the model's size")
    arrays: list[list[list[list[FiniteFloat]]]] | None = Field(None, min_length=1, description="(B, C, H, W) in [-1, 1]")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="seed of the likelihood estimator's noise")


class DecodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    latents: list[list[FiniteFloat]] = Field(min_length=1, description="flat latent vectors, as /encode returns them")
    format: Literal["png", "array"] = "png"


class InterpolateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    a: str = Field(description="base64 PNG: the path starts here")
    b: str = Field(description="base64 PNG: the path ends here")
    steps: int = Field(8, ge=2, description="images on the path, both ends included")
    method: Literal["linear", "slerp"] = "linear"
    format: Literal["png", "array"] = "png"


class RequestError(Exception):
    """A request the model cannot honour: HTTP `status` with a FastAPI-shaped detail."""

    def __init__(self, field: str | None, message: str, status: int = 422, *, loc: list[str] | None = None,
                 **extra: Any):
        super().__init__(message)
        self.status = status
        loc = loc or (["body", field] if field else ["body"])
        self.detail = [{"loc": loc, "msg": message, "type": "value_error", **extra}]

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"status": self.status, "detail": self.detail}}


# ------------------------------------------------------------------------------- images in, out


def png_bytes(u8: np.ndarray) -> bytes:
    """(H, W, C) uint8 -> PNG bytes (grey for C = 1)."""
    from PIL import Image

    array = u8[..., 0] if u8.shape[-1] == 1 else u8
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: str, field: str, shape: tuple[int, int, int]) -> np.ndarray:
    """A base64 PNG of the model's size -> (C, H, W) float32 in [-1, 1]. Anything else is a
    RequestError naming the field; the header is checked before any pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    c, h, w = shape
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(field, "not base64") from None
    try:
        img = Image.open(io.BytesIO(raw), formats=["PNG"])
        if img.size != (w, h):
            raise RequestError(field, f"image is {img.size[0]}x{img.size[1]}; this model takes {w}x{h}")
        img = img.convert("L" if c == 1 else "RGB")
        array = np.asarray(img, dtype=np.uint8)
    except RequestError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise RequestError(field, f"not a PNG image ({type(e).__name__})") from None
    array = array[..., None] if array.ndim == 2 else array
    return np.moveaxis(array, -1, 0).astype(np.float32) / 127.5 - 1.0


def images_payload(u8: np.ndarray, floats, fmt: str) -> dict[str, Any]:
    if fmt == "array":
        return {"arrays": np.asarray(floats, dtype=np.float64).round(6).tolist()}
    return {"images": [base64.b64encode(png_bytes(im)).decode() for im in u8]}


# --------------------------------------------------------------------------- one model's server


SETTING_DESCRIPTIONS = {
    "guidance_scale": {"type": "number", "min": 0.0, "max": 100.0},
    "num_inference_steps": {"type": "integer", "min": 1},
    "sampler": {"type": "string", "choices": ["ddim", "ddpm"]},
    "eta": {"type": "number", "min": 0.0, "max": 1.0},
    "spacing": {"type": "string", "choices": ["leading", "trailing", "linspace"]},
    "temperature": {"type": "number", "min": 0.0, "max": 10.0},
}


def describe(loaded: Loaded, limits: Limits) -> dict[str, Any]:
    """What GET /v1/models says of a model, and what the gateway checks requests against."""
    model = loaded.model
    caps = sorted(model.capabilities)
    signature = inspect.signature(model.sample).parameters
    takes = set(signature)
    defaults = dict(getattr(model, "defaults", {}))
    for k, p in signature.items():
        if k in SETTING_DESCRIPTIONS and p.default is not inspect.Parameter.empty and p.default is not None:
            defaults.setdefault(k, p.default)
    defaults.update(loaded.state.get("sampling_defaults", {}))
    params: dict[str, Any] = {
        "n": {"type": "integer", "min": 1, "max": limits.max_n, "default": 4},
        "seed": {"type": "integer", "min": 0, "default": 0},
    }
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    if "condition" in caps and num_classes and "y" in takes:
        params["class_label"] = {"type": "integer", "min": 0, "max": num_classes - 1, "default": None}
    if "condition" in caps and getattr(model, "text_encoder", None) is not None and "prompt" in takes:
        params["prompt"] = {"type": "string", "max_length": limits.max_prompt_chars, "default": None}
    for k in sorted(takes & set(SETTING_DESCRIPTIONS)):
        if k == "guidance_scale" and "condition" not in caps:
            continue  # nothing to guide towards
        d = dict(SETTING_DESCRIPTIONS[k])
        if k == "num_inference_steps":
            d["max"] = min(limits.max_steps, model.schedule.num_timesteps)
        params[k] = {**d, "default": defaults.get(k)}
    routes = ["sample"]
    if "encode" in caps:
        routes.append("encode")
    if "decode" in caps:
        routes.append("decode")
    if {"encode", "decode"} <= set(caps):
        routes.append("interpolate")
    if "log_prob" in caps:
        routes.append("log_prob")
    info = {
        "name": loaded.name,
        "version": loaded.version,
        "family": loaded.family,
        "capabilities": caps,
        "routes": routes,
        "image_shape": list(getattr(model, "image_shape", ())),
        "parameters": params,
        "defaults": {k: v for k, v in defaults.items() if k in params},
        "run_id": loaded.run_id,
    }
    if "encode" in caps:
        info["latent_shape"] = list(model.latent_shape)
    if "log_prob" in caps:
        info["log_prob_kind"] = getattr(model, "log_prob_kind", None)
    if hasattr(model, "schedule"):
        info["num_timesteps"] = int(model.schedule.num_timesteps)
    return info


def check_sample(req: dict[str, Any], info: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """A validated /sample body -> the model's sampling settings (defaults filled in) and
    conditions. Raises RequestError naming the first field that does not fit this model."""
    params = info["parameters"]
    if req["n"] > limits.max_n:
        raise RequestError("n", f"n is {req['n']}; at most {limits.max_n} samples per request (limits.max_n)")
    given = {k for k, v in req.items() if v is not None and k not in ("n", "seed", "format", "grid")}
    for k in sorted(given):
        if k not in params:
            takes = sorted(set(params) - {"n", "seed"})
            raise RequestError(k, f"{info['name']} ({info['family']}) does not take {k}; it takes "
                                  f"{', '.join(takes) or 'only n and seed'}")
    settings = {k: req[k] if req.get(k) is not None else info["defaults"].get(k)
                for k in params if k in SETTING_DESCRIPTIONS}
    settings = {k: v for k, v in settings.items() if v is not None}
    if "num_inference_steps" in settings and settings.get("sampler") != "ddpm":
        top = params["num_inference_steps"]["max"]
        if settings["num_inference_steps"] > top:
            raise RequestError("num_inference_steps", f"num_inference_steps is {settings['num_inference_steps']}; "
                                                      f"at most {top} (limits.max_steps, and the model's num_timesteps)")
    if settings.get("sampler") == "ddpm":
        settings.pop("num_inference_steps", None)  # DDPM walks every step of the schedule
        settings.pop("eta", None)
        settings.pop("spacing", None)
        T = info.get("num_timesteps", 0)
        if T > limits.max_steps:
            raise RequestError("sampler", f"sampler ddpm runs all {T} steps of this model's schedule; the limit is "
                                          f"{limits.max_steps} (limits.max_steps): use ddim with num_inference_steps")
    conditions: dict[str, Any] = {}
    label = req.get("class_label")
    if label is not None:
        labels = [label] * req["n"] if isinstance(label, int) else list(label)
        if len(labels) != req["n"]:
            raise RequestError("class_label", f"{len(labels)} labels for n={req['n']} samples; give one, or one per sample")
        top = params["class_label"]["max"]
        bad = [v for v in labels if not 0 <= v <= top]
        if bad:
            raise RequestError("class_label", f"label {bad[0]} is out of range; this model's classes are 0..{top}")
        conditions["y"] = labels
    if req.get("prompt") is not None:
        if len(req["prompt"]) > limits.max_prompt_chars:
            raise RequestError("prompt", f"prompt has {len(req['prompt'])} characters; at most "
                                         f"{limits.max_prompt_chars} (limits.max_prompt_chars)")
        conditions["prompt"] = [req["prompt"]] * req["n"]
    return {"settings": settings, "conditions": conditions}


def _settings_key(settings: dict[str, Any]) -> str:
    return json.dumps(settings, sort_keys=True)


def sample_batch(model, jobs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[int]]:
    """Run sampling jobs (each: n, seed, settings, conditions) with as few forward passes as
    their settings allow: jobs with equal settings share one `model.sample` call, each job's rows
    drawn from a generator seeded with its own seed. Returns per job {"floats", "uint8",
    "batch_requests": jobs in its call}, and the number of jobs in each call made."""
    import torch

    from components.models.layers import StackedGenerators

    groups: dict[str, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(_settings_key(job["settings"]), []).append(i)
    out: list[dict[str, Any]] = [{} for _ in jobs]
    calls = []
    for idx in groups.values():
        members = [jobs[i] for i in idx]
        gens = StackedGenerators([(torch.Generator().manual_seed(j["seed"]), j["n"]) for j in members])
        kwargs = dict(members[0]["settings"])
        num_classes = int(getattr(model, "num_classes", 0) or 0)
        if num_classes and "y" in inspect.signature(model.sample).parameters:
            # A job without labels gets the cycling labels it would get alone.
            labels = [j["conditions"].get("y") or list(np.arange(j["n"]) % num_classes) for j in members]
            kwargs["y"] = torch.as_tensor(np.concatenate(labels), dtype=torch.long)
        if any("prompt" in j["conditions"] for j in members):
            if all("prompt" in j["conditions"] for j in members):
                kwargs["prompt"] = [p for j in members for p in j["conditions"]["prompt"]]
            else:  # mixed conditional and unconditional: run them apart
                for i in idx:
                    sub, _ = sample_batch(model, [jobs[i]])
                    out[i] = sub[0]
                calls.extend([1] * len(idx))
                continue
        x = model.sample(gens.rows, generator=gens, **kwargs).float().cpu()
        u8 = to_uint8_image(x)
        start = 0
        for i, j in zip(idx, members):
            out[i] = {"floats": x[start:start + j["n"]].numpy(), "uint8": u8[start:start + j["n"]],
                      "batch_requests": len(idx)}
            start += j["n"]
        calls.append(len(idx))
    return out, calls


def _interpolate(za, zb, steps: int, method: str):
    import torch

    t = torch.linspace(0, 1, steps).view(-1, *([1] * za.dim()))
    if method == "linear":
        return (1 - t) * za + t * zb
    a, b = za.flatten(), zb.flatten()
    omega = torch.arccos(torch.clamp(torch.dot(a, b) / (a.norm() * b.norm() + 1e-12), -1, 1))
    if float(omega) < 1e-6:
        return (1 - t) * za + t * zb
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so) * za + (torch.sin(t * omega) / so) * zb


class ModelServer:
    """One registered model behind Ray Serve. user_config {"version": V} names the version to
    serve; a new one is loaded beside the old and swapped in between batches (`reconfigure`)."""

    def __init__(self, name: str, uri: str, home: str, limits: dict[str, Any], batching: dict[str, Any]):
        import torch

        self.name, self.uri, self.home = name, uri, home
        self.limits = Limits.model_validate(limits)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.loaded: Loaded | None = None
        self.info: dict[str, Any] = {}
        self.batch_sizes: list[int] = []  # jobs per model call, the last 1000 (GET .../stats)
        self._sample_batched.set_max_batch_size(int(batching["max_batch_size"]))
        self._sample_batched.set_batch_wait_timeout_s(float(batching["batch_wait_timeout_s"]))

    async def reconfigure(self, config: dict[str, Any]) -> None:
        version = str(config["version"])
        if self.loaded is not None and self.loaded.version == version:
            return
        loaded = await asyncio.to_thread(load_version, self.uri, self.home, self.name, version, device=self.device)
        info = describe(loaded, self.limits)
        # One assignment each: a batch already running keeps the model it started with.
        self.loaded, self.info = loaded, info

    def check_health(self) -> None:
        if self.loaded is None:
            raise RuntimeError(f"{self.name}: no model loaded")

    async def describe(self) -> dict[str, Any]:
        return self.info

    async def stats(self) -> dict[str, Any]:
        return {"batch_sizes": list(self.batch_sizes), "version": self.loaded.version if self.loaded else None,
                "pid": os.getpid()}

    # -- routes

    async def sample(self, req: dict[str, Any]) -> dict[str, Any]:
        try:
            loaded, info = self.loaded, self.info
            job = {"n": req["n"], "seed": req["seed"], **check_sample(req, info, self.limits)}
        except RequestError as e:
            return e.to_dict()
        result = await self._sample_batched((job, loaded))
        if isinstance(result, RequestError):
            return result.to_dict()
        if req.get("grid"):
            body = {"grid": png_bytes(image_grid(result["uint8"]))}
        else:
            body = images_payload(result["uint8"], result["floats"], req["format"])
        return {"model": self.name, "version": result["version"], "family": info["family"], "n": req["n"],
                "seed": req["seed"], "settings": job["settings"], "batch_requests": result["batch_requests"],
                **body}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _sample_batched(self, items: list[tuple[dict[str, Any], Loaded]]) -> list[Any]:
        # A batch may straddle a swap: each request runs on the version it was checked against.
        by_version: dict[str, list[int]] = {}
        for i, (_, loaded) in enumerate(items):
            by_version.setdefault(loaded.version, []).append(i)
        out: list[Any] = [None] * len(items)
        for idx in by_version.values():
            loaded = items[idx[0]][1]
            try:
                # On the event loop, not in a worker thread: a forward pass of small tensors holds
                # the GIL most of the time, so a thread would starve the loop that gathers the
                # next batch (measured at 32 clients: mean batch 3 in a thread, 18 here). Requests
                # arriving meanwhile wait in Ray's queue and form the next batch.
                results, calls = sample_batch(loaded.model, [items[i][0] for i in idx])
            except ValueError as e:  # a combination of settings the family itself refuses
                for i in idx:
                    out[i] = RequestError(None, str(e))
                continue
            self.batch_sizes = (self.batch_sizes + calls)[-1000:]
            for k, i in enumerate(idx):
                out[i] = {**results[k], "version": loaded.version}
        return out

    async def encode(self, req: dict[str, Any]) -> dict[str, Any]:
        try:
            loaded = self._needs("encode")
            x = self._images(req, loaded)
        except RequestError as e:
            return e.to_dict()
        z = await asyncio.to_thread(lambda: loaded.model.encode(x.to(self.device)).float().cpu())
        return {"model": self.name, "version": loaded.version, "latent_shape": list(z.shape[1:]),
                "latents": z.flatten(1).double().numpy().round(6).tolist()}

    async def decode(self, req: dict[str, Any]) -> dict[str, Any]:
        import torch

        try:
            loaded = self._needs("decode")
            shape = tuple(loaded.model.latent_shape)
            size = math.prod(shape)
            if len(req["latents"]) > self.limits.max_images:
                raise RequestError("latents", f"{len(req['latents'])} latents; at most {self.limits.max_images} "
                                              "(limits.max_images)")
            for i, z in enumerate(req["latents"]):
                if len(z) != size:
                    raise RequestError("latents", f"latents[{i}] has {len(z)} numbers; this model's latents have "
                                                  f"{size} (shape {list(shape)})")
        except RequestError as e:
            return e.to_dict()
        z = torch.tensor(req["latents"], dtype=torch.float32).view(-1, *shape)
        x = await asyncio.to_thread(lambda: loaded.model.decode(z.to(self.device)).float().cpu())
        return {"model": self.name, "version": loaded.version, **images_payload(to_uint8_image(x), x, req["format"])}

    async def interpolate(self, req: dict[str, Any]) -> dict[str, Any]:
        try:
            loaded = self._needs("encode", "decode", route="interpolate")
            if req["steps"] > self.limits.max_interpolation_steps:
                raise RequestError("steps", f"steps is {req['steps']}; at most {self.limits.max_interpolation_steps} "
                                            "(limits.max_interpolation_steps)")
            shape = tuple(loaded.model.image_shape)
            import torch

            x = torch.as_tensor(np.stack([decode_png(req["a"], "a", shape), decode_png(req["b"], "b", shape)]))
        except RequestError as e:
            return e.to_dict()

        def run():
            z = loaded.model.encode(x.to(self.device)).float()
            path = _interpolate(z[0], z[1], req["steps"], req["method"])
            return loaded.model.decode(path).float().cpu()

        out = await asyncio.to_thread(run)
        return {"model": self.name, "version": loaded.version, "method": req["method"],
                **images_payload(to_uint8_image(out), out, req["format"])}

    async def log_prob(self, req: dict[str, Any]) -> dict[str, Any]:
        import torch

        from components.metrics import likelihood

        try:
            loaded = self._needs("log_prob")
            x = self._images(req, loaded)
        except RequestError as e:
            return e.to_dict()

        def run():
            g = torch.Generator().manual_seed(req["seed"])
            bpd = likelihood.model_bits_per_dim(loaded.model, x.to(self.device), generator=g).cpu()
            return bpd

        bpd = await asyncio.to_thread(run)
        d = x[0].numel()
        nats = (bpd * d * math.log(2.0)).tolist()
        _, kind = likelihood.likelihood_of(loaded.model)
        return {"model": self.name, "version": loaded.version, "kind": kind,
                "neg_log_prob_nats": [round(v, 6) for v in nats], "bits_per_dim": [round(v, 6) for v in bpd.tolist()],
                "note": "-log P of the 8-bit images; a bound's bits/dim is an upper bound"}

    # -- helpers

    def _needs(self, *caps: str, route: str | None = None) -> Loaded:
        loaded = self.loaded
        missing = [c for c in caps if c not in loaded.model.capabilities]
        if missing:
            raise RequestError(None, f"{self.name} ({loaded.family}) has no {route or missing[0]} route: it lacks "
                                     f"the {missing[0]!r} capability", status=404,
                               loc=["path", "name"], capabilities=self.info["capabilities"],
                               routes=self.info["routes"])
        return loaded

    def _images(self, req: dict[str, Any], loaded: Loaded):
        import torch

        shape = tuple(loaded.model.image_shape)
        images, arrays = req.get("images"), req.get("arrays")
        if (images is None) == (arrays is None):
            raise RequestError("images", "give images (base64 PNGs) or arrays ((B, C, H, W) in [-1, 1]), one of them")
        field = "images" if images is not None else "arrays"
        items = images if images is not None else arrays
        if len(items) > self.limits.max_images:
            raise RequestError(field, f"{len(items)} images; at most {self.limits.max_images} (limits.max_images)")
        if images is not None:
            return torch.as_tensor(np.stack([decode_png(s, f"images[{i}]", shape) for i, s in enumerate(images)]))
        try:
            x = np.asarray(arrays, dtype=np.float32)
        except ValueError:  # ragged nesting
            x = None
        if x is None or x.shape[1:] != shape:
            got = list(x.shape[1:]) if x is not None else "ragged"
            raise RequestError("arrays", f"arrays must be (B, {', '.join(map(str, shape))}); got {got}")
        if x.min() < -1 or x.max() > 1:
            raise RequestError("arrays", "pixel values must lie in [-1, 1]")
        # On the 8-bit grid, as the model was trained and as likelihoods are defined.
        return torch.as_tensor(np.round((x + 1) * 127.5) / 127.5 - 1)


# ----------------------------------------------------------------------------------- the gateway


def build_fastapi(limits_of):
    """The FastAPI app of the gateway. `limits_of()` returns the gateway's Limits (set when the
    deployment starts)."""
    app = FastAPI(
        title="genray",
        version="1",
        description="Generative models trained with genray, served by Ray Serve. "
                    "GET /v1/models lists each model's routes and parameters.",
    )

    class BodyLimit:
        """413 for a body over limits.max_body_bytes, declared or streamed."""

        def __init__(self, inner):
            self.inner = inner

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.inner(scope, receive, send)
            limit = limits_of().max_body_bytes
            headers = dict(scope.get("headers") or [])
            declared = headers.get(b"content-length")
            too_big = JSONResponse(status_code=413, content={"detail": [{
                "loc": ["body"], "type": "too_large",
                "msg": f"request body is over {limit} bytes (limits.max_body_bytes)"}]})
            if declared is not None and declared.isdigit() and int(declared) > limit:
                return await too_big(scope, receive, send)
            seen = 0
            started = False

            async def limited_receive():
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > limit:
                        raise _BodyTooLarge
                return message

            async def tracking_send(message):
                nonlocal started
                started = started or message["type"] == "http.response.start"
                await send(message)

            try:
                await self.inner(scope, limited_receive, tracking_send)
            except _BodyTooLarge:
                if not started:
                    await too_big(scope, receive, send)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc: RequestValidationError):
        # FastAPI's own 422 echoes the input, which may hold NaN or Infinity (Python's JSON parser
        # accepts them) that its JSON response cannot encode: a 500. Location, message and type
        # are what a client needs.
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": detail})

    app.add_middleware(BodyLimit)
    return app


class _BodyTooLarge(Exception):
    pass


_LIMITS: list[Limits] = [Limits()]
app = build_fastapi(lambda: _LIMITS[0])


def _error_response(err: dict[str, Any]):
    e = err["error"]
    return JSONResponse(status_code=e["status"], content={"detail": e["detail"]})


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class Gateway:
    def __init__(self, models: dict[str, Any], limits: dict[str, Any]):
        self.models = models  # name -> DeploymentHandle of that model's ModelServer
        self.limits = Limits.model_validate(limits)
        _LIMITS[0] = self.limits

    async def _call(self, name: str, method: str, body: dict[str, Any]):
        handle = self.models.get(name)
        if handle is None:
            return JSONResponse(status_code=404, content={"detail": [{
                "loc": ["path", "name"], "type": "not_found",
                "msg": f"no model {name!r} is served; served: {', '.join(sorted(self.models)) or 'none'}"}]})
        try:
            result = await asyncio.wait_for(getattr(handle, method).remote(body), self.limits.request_timeout_s)
        except asyncio.TimeoutError:
            return JSONResponse(status_code=503, content={"detail": [{
                "loc": ["body"], "type": "timeout",
                "msg": f"{name} took over {self.limits.request_timeout_s:g} s (limits.request_timeout_s); "
                       "ask for fewer samples or steps, or retry"}]})
        if "error" in result:
            return _error_response(result)
        return result

    @app.get("/healthz")
    async def healthz(self):
        versions = {}
        for name, handle in self.models.items():
            try:
                versions[name] = (await asyncio.wait_for(handle.stats.remote(), 10))["version"]
            except Exception as e:  # noqa: BLE001 (health is a report, not a request)
                return JSONResponse(status_code=503, content={"status": "unhealthy", "model": name, "error": str(e)})
        return {"status": "ok", "models": versions}

    @app.get("/v1/models")
    async def list_models(self):
        infos = await asyncio.gather(*(h.describe.remote() for h in self.models.values()))
        return {"models": list(infos)}

    @app.get("/v1/models/{name}")
    async def get_model(self, name: str):
        if name not in self.models:
            return JSONResponse(status_code=404, content={"detail": [{
                "loc": ["path", "name"], "type": "not_found",
                "msg": f"no model {name!r} is served; served: {', '.join(sorted(self.models))}"}]})
        return await self.models[name].describe.remote()

    @app.get("/v1/models/{name}/stats", include_in_schema=False)
    async def model_stats(self, name: str):
        if name not in self.models:
                return JSONResponse(status_code=404, content={"detail": "no such model"})
        return await self.models[name].stats.remote()

    @app.post("/v1/models/{name}/sample",
              responses={200: {"content": {"image/png": {}}, "description": "JSON, or a PNG grid with Accept: image/png"}})
    async def sample(self, name: str, body: SampleRequest, request: Request):
        wants_png = "image/png" in request.headers.get("accept", "")
        payload = {**body.model_dump(), "grid": wants_png}
        result = await self._call(name, "sample", payload)
        if not isinstance(result, dict):
            return result
        headers = {VERSION_HEADER: result["version"]}
        if wants_png:
            return Response(content=result["grid"], media_type="image/png", headers=headers)
        return JSONResponse(content=result, headers=headers)

    @app.post("/v1/models/{name}/encode")
    async def encode(self, name: str, body: ImagesRequest):
        return await self._versioned(name, "encode", body.model_dump())

    @app.post("/v1/models/{name}/decode")
    async def decode(self, name: str, body: DecodeRequest):
        return await self._versioned(name, "decode", body.model_dump())

    @app.post("/v1/models/{name}/interpolate")
    async def interpolate(self, name: str, body: InterpolateRequest):
        return await self._versioned(name, "interpolate", body.model_dump())

    @app.post("/v1/models/{name}/log_prob")
    async def log_prob(self, name: str, body: ImagesRequest):
        return await self._versioned(name, "log_prob", body.model_dump())

    async def _versioned(self, name: str, method: str, body: dict[str, Any]):
        result = await self._call(name, method, body)
        if not isinstance(result, dict):
            return result
        return JSONResponse(content=result, headers={VERSION_HEADER: result["version"]})

    @app.get("/", include_in_schema=False)
    async def gallery(self):
        return HTMLResponse(WEB_PAGE.read_text())



# ----------------------------------------------------------------------------- deploy and reload


def deployment_name(model_name: str) -> str:
    return "model-" + re.sub(r"[^A-Za-z0-9_-]", "_", model_name)


def build_app(spec: ServeSpec, uri: str, home: Path, versions: dict[str, str]):
    d = spec.deployment
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus},
        # Room for a full batch queued while one runs (RAY_NOTES: keep it >= max_batch_size).
        "max_ongoing_requests": d.max_ongoing_requests or max(2 * d.max_batch_size, 8),
        "health_check_period_s": d.health_check_period_s,
        # The gateway logs every HTTP request; a second line per request from the model's replica
        # costs CPU that batching would rather spend on the forward pass.
        "logging_config": {"enable_access_log": False},
    }
    if d.autoscaling is not None:
        options["autoscaling_config"] = d.autoscaling.model_dump()
    else:
        options["num_replicas"] = d.num_replicas
    batching = {"max_batch_size": d.max_batch_size, "batch_wait_timeout_s": d.batch_wait_timeout_s}
    servers = {}
    for name, version in versions.items():
        args = (name, uri, str(home), spec.limits.model_dump(), batching)
        servers[name] = ModelServerDeployment.options(
            name=deployment_name(name), user_config={"version": version}, **options,
            **_stable_version(args, options),
        ).bind(*args)
    # The gateway only parses, checks and forwards: Serve's default of 5 requests in flight per
    # replica would cap every model's batches at 5.
    gateway = {"max_ongoing_requests": d.gateway_max_ongoing_requests}
    return Gateway.options(**gateway, **_stable_version((sorted(versions), spec.limits.model_dump()), gateway)).bind(
        servers, spec.limits.model_dump())


def _stable_version(args: Any, options: dict[str, Any]) -> dict[str, Any]:
    """A deployment version that changes only with genray's code, the constructor's arguments and
    the replica options, never with user_config.

    Serve's Python API (serve.run) gives every deployment a random code version on each call, so
    redeploying with a new user_config would replace every replica (and drop the requests routed
    to the old ones as they stop). With the same version, Serve treats a user_config change as
    the lightweight update that config-file deploys get: each running replica's `reconfigure`.
    `version` is internal to Deployment.options in Ray 2.60 (pinned in pyproject.toml)."""
    import hashlib

    digest = hashlib.sha256()
    digest.update(Path(__file__).read_bytes())
    digest.update(WEB_PAGE.read_bytes())
    digest.update(json.dumps([args, options], sort_keys=True, default=str).encode())
    return {"version": digest.hexdigest()[:16], "_internal": True}


ModelServerDeployment = serve.deployment(ModelServer)


def state_file(home: Path, app_name: str) -> Path:
    return home / "serve" / f"{app_name}.json"


@dataclass
class Deployed:
    url: str
    versions: dict[str, str]
    spec: ServeSpec


def deploy(spec: ServeSpec, *, uri: str, home: Path, versions: dict[str, str] | None = None,
           checked: bool = False) -> Deployed:
    """Start Serve's HTTP proxy on spec.host:spec.port and run the app. Ray must be initialised.
    `checked=True`: the caller ran check_versions on `versions` already. Writes what was deployed
    to <home>/serve/<app>.json, which --reload reads."""
    versions = versions or resolve_versions(uri, spec.models, spec.alias)
    if not checked:
        check_versions(uri, home, versions)
    serve.start(http_options={"host": spec.host, "port": spec.port})
    serve.run(build_app(spec, uri, home, versions), name=spec.app_name, route_prefix="/", blocking=False)
    path = state_file(home, spec.app_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"spec": spec.model_dump(), "uri": uri, "versions": versions}, indent=2))
    host = "127.0.0.1" if spec.host in ("0.0.0.0", "::") else spec.host
    return Deployed(f"http://{host}:{spec.port}", versions, spec)


def check_versions(uri: str, home: Path, versions: dict[str, str]) -> None:
    """Load each version once in this process, so a bad checkpoint is one plain error here rather
    than a replica Serve restarts forever."""
    for name, version in versions.items():
        try:
            load_version(uri, home, name, version)
        except ValueError as e:
            raise ConfigError(str(e)) from None


def reload(*, home: Path, app_name: str = DEFAULT_APP) -> dict[str, tuple[str, str]]:
    """Resolve every served model's alias again and redeploy the versions that changed (Serve
    calls each replica's `reconfigure`). Returns {name: (old version, new version)}."""
    path = state_file(home, app_name)
    if not path.is_file():
        raise ConfigError(f"nothing to reload: {path} does not exist (is `genray serve` running with this GENRAY_HOME?)")
    saved = json.loads(path.read_text())
    spec = ServeSpec.model_validate(saved["spec"])
    old = saved["versions"]
    new = resolve_versions(saved["uri"], list(old), spec.alias)
    check_versions(saved["uri"], home, {k: v for k, v in new.items() if v != old.get(k)})
    serve.run(build_app(spec, saved["uri"], home, new), name=spec.app_name, route_prefix="/", blocking=False)
    path.write_text(json.dumps({**saved, "versions": new}, indent=2))
    return {name: (old.get(name, "-"), new[name]) for name in new}


def curl_example(url: str, info: dict[str, Any] | None) -> str:
    name = info["name"] if info else "MODEL"
    return (f"curl -s -X POST {url}/v1/models/{name}/sample -H 'Content-Type: application/json' "
            f"-H 'Accept: image/png' -d '{{\"n\": 16, \"seed\": 0}}' -o samples.png")


def wait_until_ready(url: str, timeout_s: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}/healthz did not answer 200 within {timeout_s:.0f} s")
        time.sleep(0.5)




def app_builder(args: dict[str, Any]):
    """The app for Serve's config files (`serve run`, `serve deploy`, KubeRay's RayService):

        import_path: pipelines.serve:app_builder
        args: {models: [vae-digits], alias: champion, deployment: {...}, limits: {...}}

    The registry is MLFLOW_TRACKING_URI (else GENRAY_HOME's SQLite store); aliases are resolved
    when the config is applied. To swap versions, re-apply it: Serve reconfigures in place."""
    from pipelines import tracking

    spec = ServeSpec.model_validate({k: v for k, v in (args or {}).items() if k not in ("host", "port")})
    from pipelines.train import project_home

    home = project_home()
    uri = tracking.tracking_uri(home)
    return build_app(spec, uri, home, resolve_versions(uri, spec.models, spec.alias))
