"""One registered model behind Ray Serve: the `ModelServer` deployment.

Each replica serves one version of its model and swaps it in place, in the same process:

- `genray serve` names the version twice, in the registry tag the app follows
  (registry.serving_tag) and in the deployment's user_config ({"version": "3"}). Serve calls
  `reconfigure` with the user_config when the replica starts, before it takes traffic; the
  replica loads what the tag names then (a replica started after a --reload must not serve the
  version deployed days ago), the user_config's version if the model has no tag.
- `genray serve --reload` moves the tag. Every `version_poll_period_s` each replica reads it and,
  when it names another version, loads that one in a thread beside the old and swaps with one
  assignment: a batch already running finishes on the model it started with, each request runs
  on the version it was checked against, and no request sees a half-loaded model.
- A re-applied Serve config with only `user_config` changed (app_builder: no tag) calls
  `reconfigure` on the running replicas, which swap the same way.

An alias change alone swaps nothing: only --reload writes the tag.

Sampling requests are batched (`@serve.batch`): requests with equal settings run as one
`model.sample` call, each drawing its noise from its own seeded generator
(components.models.layers.StackedGenerators), so a seed names the same image alone or batched.
The other routes (encode, decode, interpolate, edit, tokenize, decode_tokens, log_prob, translate,
variations, style_mix, embed, classify) run one request at a time, in a thread.

A user's mistake (UserError) comes back as an error body that the gateway answers with a 4xx;
any other exception propagates, and the gateway answers 500 and logs its traceback.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np
from ray import serve

from genray.components.data.images import image_grid, png_bytes, to_uint8_image
from genray.components.data.kinds import get_kind
from genray.components.data.show import wav_bytes
from genray.components.errors import UserError
from genray.components.metrics import likelihood
from genray.components.models.directions import MAX_AMOUNT as MAX_EDIT_AMOUNT
from genray.components.models.directions import edit as edit_images
from genray.components.models.layers import StackedGenerators
from genray.components.models.protocol import settings_for
from genray.components.samplers import text
from genray.pipelines.serve.registry import Loaded, load_version, serving_version
from genray.pipelines.serve.schemas import (
    ClassifyResponse,
    EmbedResponse,
    EncodeResponse,
    InterpolateResponse,
    LogProbResponse,
    RequestError,
    SampleResponse,
    Served,
    TokenizeResponse,
    decode_images,
    decode_png,
    error_body,
    images_payload,
    parse_classify,
    parse_edit,
    parse_embed,
    parse_generate,
    parse_sample,
    parse_style_mix,
    parse_tokens,
    parse_translate,
    parse_variations,
    sample_parameters,
    settings_key,
)
from genray.pipelines.serve.spec import Limits

logger = logging.getLogger("ray.serve")  # Serve writes it to the replica's own log file

# ------------------------------------------------------------------------------- what a model offers


def describe(loaded: Loaded, limits: Limits) -> dict[str, Any]:
    """What GET /v1/models says of a model: its routes (from its capabilities), the parameters a
    sample request may hold and the defaults it gets."""
    model = loaded.model
    caps = sorted(model.capabilities)
    defaults = settings_for(model, {}, loaded.sampling_defaults).model_dump(mode="json")
    data = loaded.state["model"]["data"]
    images = get_kind(data["modality"]).is_image
    routes = []
    if "audio" in caps:  # clips out, as audio/wav or arrays
        routes.append("sample")
    if images:  # the image routes take and give pixels
        if "sample" in caps:
            routes.append("sample")
        if "translate" in caps:
            routes.append("translate")
        if "encode" in caps:
            routes.append("encode")
        if "decode" in caps:
            routes.append("decode")
        if {"encode", "decode"} <= set(caps):
            routes.append("interpolate")
            if loaded.directions is not None:  # attribute directions fitted for this version
                routes.append("edit")
        if "tokenize" in caps:  # images <-> grids of code ids (VQ-VAE)
            routes.extend(["tokenize", "decode_tokens"])
        if "log_prob" in caps:
            routes.append("log_prob")
        if "style_mix" in caps:
            routes.append("style_mix")
        if "embed" in caps:  # captions and images -> unit-norm embeddings; zero-shot labels (CLIP)
            routes.extend(["embed", "classify"])
        if "variations" in caps:  # images -> new images from their CLIP embeddings (unCLIP)
            routes.append("variations")
    params = sample_parameters(model, defaults, limits)
    if "sample" not in caps:  # a translation makes one output per input image: no n
        params.pop("n", None)
    if "embed" in caps and "sample" not in caps:  # nothing drawn, so no seed either (CLIP)
        params.pop("seed", None)
    if "generate_text" in caps:
        routes.append("generate")
        params = {
            "prompt": {"type": "string", "max_length": limits.max_prompt_chars, "default": "",
                       "description": "the text to continue, in the model's vocabulary"},
            **params, "n": {**params["n"], "default": 1},
            "stop": {"type": "array", "max_items": text.MAX_STOPS, "default": None,
                     "description": "strings that end a sample where they first appear (not returned)"},
        }
    info = {
        "name": loaded.name,
        "version": loaded.version,
        "family": loaded.family,
        "capabilities": caps,
        "conditioning": model.conditioning,
        "routes": routes,
        "data": {"kind": data["modality"], "shape": list(data["shape"]),
                 **({"sample_rate": data["sample_rate"]} if data.get("sample_rate") else {})},
        "parameters": params,
        "defaults": defaults,
        "run_id": loaded.run_id,
    }
    if images:
        info["image_shape"] = list(model.image_shape)
    if "encode" in caps:
        info["latent_shape"] = list(model.latent_shape)
    if "edit" in routes:
        info["edit"] = {"directions": list(loaded.directions.names), "max_amount": MAX_EDIT_AMOUNT,
                        "source": loaded.directions.source}
    if "tokenize" in caps:
        info["grid"] = list(model.grid)
        info["codebook_size"] = int(model.codebook_size)
    if "log_prob" in caps:
        info["log_prob_kind"] = model.log_prob_kind
    if "style_mix" in caps:
        info["style_layers"] = model.num_ws
    if "translate" in caps:
        info["directions"] = list(model.directions)
    if "embed" in caps:
        info["embed_dim"] = int(model.embed_dim)
        info["text_len"] = int(model.text_len)  # bytes of UTF-8 a caption may hold
    if "retrieval" in caps:
        info["retrieval"] = {"k": model.retrieval_k, "index_rows": model.index().rows,
                             "index": model.index_meta.get("ref"), "encoder": model.encoder_digest()}
    return info


def usable_indexes(home: Path, encoder: str) -> list[str]:
    """Names of the indexes under the home's indexes/ built with the CLIP whose digest is `encoder`."""
    import json

    from genray.pipelines.retrieval import indexes_dir

    root, out = indexes_dir(home), []
    for meta in sorted(root.glob("*/index.json")) if root.is_dir() else []:
        try:
            if json.loads(meta.read_text()).get("encoder") == encoder:
                out.append(meta.parent.name)
        except (OSError, ValueError):
            continue  # a folder being written, or not an index
    return out


MAX_CACHED_INDEXES = 8  # retrieval indexes a replica keeps in memory (each a few MB at genray's sizes)


# --------------------------------------------------------------------------------- batched sampling


def sample_batch(model, jobs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[int]]:
    """Run sampling jobs (each: n, seed, settings, conditions) with as few forward passes as
    their settings allow: jobs with equal settings share one `model.sample` call, each job's rows
    drawn from a generator seeded with its own seed. Returns per job {"floats", "uint8",
    "batch_requests": jobs in its call}, and the number of jobs in each call made."""
    import torch


    groups: dict[str, list[int]] = {}
    for i, job in enumerate(jobs):  # jobs share a call when their settings and retrieval index agree
        groups.setdefault(settings_key(job["settings"]) + "|" + job["conditions"].get("index_name", ""), []).append(i)
    out: list[dict[str, Any]] = [{} for _ in jobs]
    calls = []
    for idx in groups.values():
        members = [jobs[i] for i in idx]
        kwargs = dict(members[0]["settings"])
        if model.conditioning == "class":
            # A job without labels gets the cycling labels it would get alone.
            labels = [j["conditions"].get("y") or list(np.arange(j["n"]) % model.num_classes) for j in members]
            kwargs["y"] = torch.as_tensor(np.concatenate(labels), dtype=torch.long)
        prompted = ["prompt" in j["conditions"] for j in members]
        if any(prompted) and not all(prompted):  # conditional and unconditional: run them apart
            for i in idx:
                sub, _ = sample_batch(model, [jobs[i]])
                out[i] = sub[0]
            calls.extend([1] * len(idx))
            continue
        if all(prompted):
            kwargs["prompt"] = [p for j in members for p in j["conditions"]["prompt"]]
        if "index" in members[0]["conditions"]:  # a retrieval model's swapped index (the same for the group)
            kwargs["index"] = members[0]["conditions"]["index"]
        gens = StackedGenerators([(torch.Generator().manual_seed(j["seed"]), j["n"]) for j in members])
        x = model.sample(gens.rows, generator=gens, **kwargs).float().cpu()  # (rows, C, H, W) or (rows, T)
        u8 = to_uint8_image(x) if x.ndim == 4 else None  # (rows, H, W, C) for images
        start = 0
        for i, j in zip(idx, members):
            out[i] = {"floats": x[start:start + j["n"]].numpy(),
                      "uint8": None if u8 is None else u8[start:start + j["n"]], "batch_requests": len(idx)}
            start += j["n"]
        calls.append(len(idx))
    return out, calls


def latent_path(za, zb, steps: int, method: str):
    """`steps` latents from za to zb, ends included: straight, or along the great circle
    (slerp, Shoemake 1985), which keeps Gaussian latents at a typical norm."""
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


# ------------------------------------------------------------------------------------ the deployment


class ModelServer:
    """One registered model behind Ray Serve. The version it serves: what registry tag
    `version_tag` names (checked every `poll_period_s`), else user_config {"version": V}. A new
    version is loaded beside the old and swapped in between requests (`_swap_to`)."""

    def __init__(self, name: str, uri: str, home: str, limits: dict[str, Any], batching: dict[str, Any],
                 version_tag: str | None = None, poll_period_s: float = 1.0):
        import torch

        self.name, self.uri, self.home = name, uri, home
        self.limits = Limits.model_validate(limits)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.loaded: Loaded | None = None
        self.info: dict[str, Any] = {}
        self.batch_sizes: list[int] = []  # jobs per model call, the last 1000 (GET .../stats)
        self._sample_batched.set_max_batch_size(int(batching["max_batch_size"]))
        self._sample_batched.set_batch_wait_timeout_s(float(batching["batch_wait_timeout_s"]))
        self.version_tag, self.poll_period_s = version_tag, poll_period_s
        self._swapping = asyncio.Lock()  # one load at a time: reconfigure and the tag poll may overlap
        self._poll: asyncio.Task | None = None
        self._poll_error: str | None = None  # the last error logged, so each distinct one is logged once
        self._indexes: dict[tuple, Any] = {}  # retrieval indexes requests named, by (version, name, file time)

    async def reconfigure(self, config: dict[str, Any]) -> None:
        version = str(config["version"])
        if self.version_tag is not None:
            try:
                version = await asyncio.to_thread(serving_version, self.uri, self.name, self.version_tag) or version
            except Exception as e:  # noqa: BLE001 (registry unreadable now: start on user_config, follow later)
                self._log_poll_error(e)
            self._follow_tag()
        await self._swap_to(version)

    async def _swap_to(self, version: str) -> bool:
        """Serve `version` from now on; False if it is served already."""
        async with self._swapping:
            if self.loaded is not None and self.loaded.version == version:
                return False
            loaded = await asyncio.to_thread(load_version, self.uri, self.home, self.name, version, device=self.device)
            info = describe(loaded, self.limits)
            # One assignment: a request already checked keeps the model it was checked against.
            self.loaded, self.info = loaded, info
            return True

    async def check_health(self) -> None:
        if self.loaded is None:
            raise RuntimeError(f"{self.name}: no model loaded")
        self._follow_tag()  # the poll never ends on its own; should anything end it, start it again

    async def describe(self) -> dict[str, Any]:
        if "retrieval" not in self.info.get("capabilities", ()):
            return self.info
        # The indexes a request may name: those under the home built with this model's CLIP, read now
        # (an index built after the model loaded is offered at once).
        names = await asyncio.to_thread(usable_indexes, Path(self.home), self.info["retrieval"]["encoder"])
        params = dict(self.info["parameters"])
        params["index"] = {**params["index"], "choices": [None, *names]} if names else params["index"]
        return {**self.info, "parameters": params, "retrieval": {**self.info["retrieval"], "indexes": names}}

    async def stats(self) -> dict[str, Any]:
        return {"batch_sizes": list(self.batch_sizes), "version": self.loaded.version if self.loaded else None,
                "pid": os.getpid()}

    # -- following the registry tag (genray serve --reload)

    def _follow_tag(self) -> None:
        """Start polling the tag, on the replica's event loop, unless it is polled already."""
        if self.version_tag is not None and (self._poll is None or self._poll.done()):
            self._poll = asyncio.get_running_loop().create_task(self._poll_tag())

    async def _poll_tag(self) -> None:
        while True:
            await asyncio.sleep(self.poll_period_s)
            try:
                await self._follow_once()
            except Exception as e:  # noqa: BLE001 (registry down, a version that will not load: keep serving, retry)
                self._log_poll_error(e)
                continue
            if self._poll_error is not None:
                logger.info("%s: following registry tag %s again", self.name, self.version_tag)
                self._poll_error = None

    async def _follow_once(self) -> None:
        version = await asyncio.to_thread(serving_version, self.uri, self.name, self.version_tag)
        old = self.loaded.version if self.loaded else None
        if version is not None and await self._swap_to(version):
            logger.info("%s: serving version %s (was %s), as registry tag %s says", self.name, version, old,
                        self.version_tag)

    def _log_poll_error(self, e: Exception) -> None:
        """Log a failure to follow the tag the first time it happens: the same error every period
        would bury the log, and none of them may take the replica down."""
        error = f"{type(e).__name__}: {e}"
        if error != self._poll_error:
            served = self.loaded.version if self.loaded else None
            logger.warning("%s: cannot follow registry tag %s (%s); serving version %s, trying again every %g s",
                           self.name, self.version_tag, error, served, self.poll_period_s,
                           exc_info=not isinstance(e, UserError))
            self._poll_error = error

    # -- sample, batched

    def _index(self, loaded: Loaded, name: str):
        """The index `name` under the project home's indexes/, read once per file version and
        checked against the model's CLIP; a 422 naming `index` (and the indexes there) otherwise."""
        from genray.pipelines.retrieval import indexes_dir, resolve_index

        root = indexes_dir(Path(self.home))
        folder = root / name
        if not (folder / "index.safetensors").is_file():
            there = sorted(p.name for p in root.iterdir() if (p / "index.safetensors").is_file()) if root.is_dir() else []
            raise RequestError("index", f"no index named {name!r} on this server; indexes: {', '.join(there) or 'none'}")
        key = (loaded.version, name, (folder / "index.safetensors").stat().st_mtime_ns)
        if key not in self._indexes:
            try:
                index = loaded.model.checked_index(resolve_index(name, Path(self.home), field_name="index"))
            except UserError as e:
                raise RequestError("index", str(e).removeprefix("index: ").removeprefix(f"index {name}: ")) from None
            if len(self._indexes) >= MAX_CACHED_INDEXES:
                self._indexes.clear()
            self._indexes[key] = index
        return self._indexes[key]

    async def sample(self, req: dict[str, Any], grid: bool = False) -> dict[str, Any]:
        loaded, info = self.loaded, self.info
        try:
            if "sample" not in info["routes"]:
                why = ("it generates text; use POST /v1/models/{name}/generate" if "generate" in info["routes"]
                       else f"it draws no samples; its routes: {', '.join(info['routes'])}")
                raise RequestError(None, f"{self.name} ({loaded.family}) has no sample route: {why}", status=404,
                                   loc=["path", "name"], routes=info["routes"])
            job = parse_sample(req, loaded, self.limits)
            if "index_name" in job["conditions"]:
                job["conditions"]["index"] = await asyncio.to_thread(self._index, loaded, job["conditions"]["index_name"])
        except UserError as e:
            return error_body(e)
        result = await self._sample_batched((job, loaded))
        if isinstance(result, UserError):
            return error_body(result)
        if isinstance(result, Exception):
            raise result
        if job["format"] == "wav":  # the clips as one WAV file, apart by a short silence
            return {"version": result["version"], "wav": wav_bytes(result["floats"], info["data"]["sample_rate"])}
        if grid and result["uint8"] is not None:
            return {"version": result["version"], "grid": png_bytes(image_grid(result["uint8"]))}
        return SampleResponse(
            model=self.name, version=result["version"], family=info["family"], n=job["n"], seed=job["seed"],
            settings=job["settings"], batch_requests=result["batch_requests"],
            **images_payload(result["uint8"], result["floats"], job["format"]),
        ).model_dump(exclude_none=True)

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
            except Exception as e:  # noqa: BLE001 (handed to each request's own call, which raises it)
                for i in idx:
                    out[i] = e
                continue
            self.batch_sizes = (self.batch_sizes + calls)[-1000:]
            for k, i in enumerate(idx):
                out[i] = {**results[k], "version": loaded.version}
        return out

    # -- generate (text models), streamed

    async def generate(self, req: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """A streaming method (the gateway calls it with handle.options(stream=True)): first
        {"start": {...}} or {"error": ...} for a request the model cannot honour, then
        {"pieces": [text per sample]} per generated token, the last one after generation ends.
        Each token is a forward pass on the event loop, so other requests interleave by token."""
        import torch

        loaded = self.loaded
        try:
            self._needs("generate_text", route="generate")
            job = parse_generate(req, loaded, self.limits)
            y = torch.tensor(job["y"], dtype=torch.long, device=self.device) if job["y"] is not None else None
            gen = torch.Generator(device=self.device).manual_seed(job["seed"])
            try:
                pieces = text.stream_text(loaded.model, job["prompts"], loaded.state["model"]["data"]["vocab"],
                                          generator=gen, stop=job["stop"], y=y, **job["settings"])
            except UserError as e:  # what only the model can tell: prompt + new tokens beyond its context
                raise RequestError("max_new_tokens", str(e)) from None
        except UserError as e:
            yield error_body(e)
            return
        yield {"start": {"model": self.name, "version": loaded.version, "family": loaded.family, "n": job["n"],
                         "seed": job["seed"], "settings": job["settings"], "prompts": job["prompts"]}}
        try:
            for step in pieces:
                yield {"pieces": step}
                await asyncio.sleep(0)  # let other requests (and a client's disconnect) through between tokens
        finally:
            pieces.close()

    # -- encode, decode, interpolate, tokenize, decode_tokens, log_prob

    async def encode(self, req: dict[str, Any]) -> dict[str, Any]:
        try:
            loaded = self._needs("encode")
            x = self._images(req, loaded)
        except UserError as e:
            return error_body(e)
        z = await asyncio.to_thread(lambda: loaded.model.encode(x.to(self.device)).float().cpu())
        return EncodeResponse(model=self.name, version=loaded.version, latent_shape=list(z.shape[1:]),
                              latents=z.flatten(1).double().numpy().round(6).tolist()).model_dump()

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
        except UserError as e:
            return error_body(e)
        z = torch.tensor(req["latents"], dtype=torch.float32).view(-1, *shape)
        x = await asyncio.to_thread(lambda: loaded.model.decode(z.to(self.device)).float().cpu())
        return {**Served(model=self.name, version=loaded.version).model_dump(),
                **images_payload(to_uint8_image(x), x, req["format"])}

    async def tokenize(self, req: dict[str, Any]) -> dict[str, Any]:
        try:
            loaded = self._needs("tokenize")
            x = self._images(req, loaded)
        except UserError as e:
            return error_body(e)
        ids = await asyncio.to_thread(lambda: loaded.model.tokens(x.to(self.device)).cpu())  # (B, h, w)
        return TokenizeResponse(model=self.name, version=loaded.version, grid=list(loaded.model.grid),
                                codebook_size=int(loaded.model.codebook_size), tokens=ids.tolist()).model_dump()

    async def decode_tokens(self, req: dict[str, Any]) -> dict[str, Any]:
        import torch

        try:
            loaded = self._needs("tokenize", route="decode_tokens")
            ids = parse_tokens(req["tokens"], tuple(loaded.model.grid), int(loaded.model.codebook_size), self.limits)
        except UserError as e:
            return error_body(e)
        ids = torch.as_tensor(ids)  # (B, h, w) int64
        x = await asyncio.to_thread(lambda: loaded.model.decode_tokens(ids.to(self.device)).float().cpu())
        return {**Served(model=self.name, version=loaded.version).model_dump(),
                **images_payload(to_uint8_image(x), x, req["format"])}

    async def interpolate(self, req: dict[str, Any]) -> dict[str, Any]:
        import torch

        try:
            loaded = self._needs("encode", "decode", route="interpolate")
            if req["steps"] > self.limits.max_interpolation_steps:
                raise RequestError("steps", f"steps is {req['steps']}; at most {self.limits.max_interpolation_steps} "
                                            "(limits.max_interpolation_steps)")
            shape = tuple(loaded.model.image_shape)
            x = torch.as_tensor(np.stack([decode_png(req["a"], "a", shape), decode_png(req["b"], "b", shape)]))
        except UserError as e:
            return error_body(e)

        def run():
            z = loaded.model.encode(x.to(self.device)).float()
            path = latent_path(z[0], z[1], req["steps"], req["method"])
            return loaded.model.decode(path).float().cpu()

        out = await asyncio.to_thread(run)
        return InterpolateResponse(model=self.name, version=loaded.version, method=req["method"],
                                   **images_payload(to_uint8_image(out), out, req["format"])).model_dump(exclude_none=True)

    async def edit(self, req: dict[str, Any]) -> dict[str, Any]:
        import torch

        try:
            loaded = self._needs("encode", "decode", route="edit")
            job = parse_edit(req, loaded, self.limits)
        except UserError as e:
            return error_body(e)

        def run():
            return edit_images(loaded.model, torch.as_tensor(job["x"]).to(self.device), loaded.directions,
                               job["direction"], job["amount"]).cpu()

        x = await asyncio.to_thread(run)
        return {**Served(model=self.name, version=loaded.version).model_dump(), "direction": job["direction"],
                "amount": job["amount"], **images_payload(to_uint8_image(x), x, job["format"])}

    async def translate(self, req: dict[str, Any]) -> dict[str, Any]:
        import torch

        try:
            loaded = self._needs("translate")
            job = parse_translate(req, loaded, self.limits)
        except UserError as e:
            return error_body(e)

        def run():
            gen = torch.Generator().manual_seed(job["seed"])
            way = {} if job["direction"] is None else {"direction": job["direction"]}
            return loaded.model.translate(torch.as_tensor(job["x"]).to(self.device), generator=gen,
                                          **job["settings"], **way).float().cpu()

        x = await asyncio.to_thread(run)
        return {**Served(model=self.name, version=loaded.version).model_dump(), "seed": job["seed"],
                "settings": job["settings"], **images_payload(to_uint8_image(x), x, job["format"])}

    async def variations(self, req: dict[str, Any]) -> dict[str, Any]:
        import torch

        try:
            loaded = self._needs("variations")
            job = parse_variations(req, loaded, self.limits)
        except UserError as e:
            return error_body(e)

        def run():
            gen = torch.Generator().manual_seed(job["seed"])
            return loaded.model.variations(torch.as_tensor(job["x"]).to(self.device), job["n_per_image"],
                                           generator=gen, **job["settings"]).float().cpu()

        x = await asyncio.to_thread(run)
        return {**Served(model=self.name, version=loaded.version).model_dump(), "seed": job["seed"],
                "n_per_image": job["n_per_image"], "settings": job["settings"],
                **images_payload(to_uint8_image(x), x, job["format"])}

    async def style_mix(self, req: dict[str, Any]) -> dict[str, Any]:
        import torch

        try:
            loaded = self._needs("style_mix")
            job = parse_style_mix(req, loaded, self.limits)
        except UserError as e:
            return error_body(e)
        kwargs = dict(job["settings"])
        if loaded.model.conditioning == "class":
            labels = job["conditions"].get("y") or list(np.arange(job["n"]) % loaded.model.num_classes)
            kwargs["y"] = torch.as_tensor(labels, dtype=torch.long)

        def run():
            gen = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731
            return loaded.model.style_mix(job["n"], generator_a=gen(job["seed"]), generator_b=gen(job["seed_b"]),
                                          crossover=job["crossover"], **kwargs).float().cpu()

        x = await asyncio.to_thread(run)
        return {**Served(model=self.name, version=loaded.version).model_dump(),
                "seed": job["seed"], "seed_b": job["seed_b"], "crossover": job["crossover"],
                "settings": job["settings"], **images_payload(to_uint8_image(x), x, job["format"])}

    async def log_prob(self, req: dict[str, Any]) -> dict[str, Any]:
        import torch


        try:
            loaded = self._needs("log_prob")
            x = self._images(req, loaded)
        except UserError as e:
            return error_body(e)

        def run():
            g = torch.Generator().manual_seed(req["seed"])
            return likelihood.model_bits_per_dim(loaded.model, x.to(self.device), generator=g).cpu()

        bpd = await asyncio.to_thread(run)
        nats = (bpd * x[0].numel() * math.log(2.0)).tolist()
        space, kind = likelihood.likelihood_of(loaded.model)
        return LogProbResponse(model=self.name, version=loaded.version, kind=kind, unit=likelihood.UNITS[space],
                               neg_log_prob_nats=[round(v, 6) for v in nats],
                               bits_per_dim=[round(v, 6) for v in bpd.tolist()],
                               note=LOG_PROB_NOTES[space] + KIND_NOTES[kind]).model_dump()

    async def embed(self, req: dict[str, Any]) -> dict[str, Any]:
        import torch

        try:
            loaded = self._needs("embed")
            job = parse_embed(req, loaded, self.limits)
        except UserError as e:
            return error_body(e)

        def run():
            with torch.no_grad():
                if "texts" in job:
                    return loaded.model.embed_text(job["texts"]).float().cpu()
                return loaded.model.embed_images(torch.as_tensor(job["x"]).to(self.device)).float().cpu()

        z = await asyncio.to_thread(run)  # (B, D), unit rows
        return EmbedResponse(model=self.name, version=loaded.version, input="texts" if "texts" in job else "images",
                             dim=int(z.shape[1]), embeddings=z.tolist()).model_dump()

    async def classify(self, req: dict[str, Any]) -> dict[str, Any]:
        import torch

        try:
            loaded = self._needs("embed", route="classify")
            job = parse_classify(req, loaded, self.limits)
        except UserError as e:
            return error_body(e)

        def run():
            with torch.no_grad():
                cosines = loaded.model.classify(torch.as_tensor(job["x"]).to(self.device), job["prompts"])  # (B, K)
                return cosines.double().cpu(), float(loaded.model.logit_scale())

        cosines, scale = await asyncio.to_thread(run)
        scores = torch.softmax(scale * cosines, dim=1)  # (B, K): Radford et al. 2021's zero-shot probabilities
        top = scores.argmax(1).tolist()
        labels = job["labels"]
        predictions = [{"label": labels[k], "score": row[k], "scores": dict(zip(labels, row))}
                       for k, row in zip(top, scores.tolist())]
        return ClassifyResponse(model=self.name, version=loaded.version, labels=labels, templates=job["templates"],
                                logit_scale=scale, predictions=predictions).model_dump()

    # -- helpers

    def _needs(self, *caps: str, route: str | None = None) -> Loaded:
        """The loaded model, if it has the capabilities a route needs; else a 404 that lists what
        it has."""
        loaded, info = self.loaded, self.info
        route = route or caps[0]
        missing = [c for c in caps if c not in loaded.model.capabilities]
        if missing or route not in info["routes"]:
            why = (f"it lacks the {missing[0]!r} capability" if missing
                   else f"version {loaded.version} has no attribute directions (`genray directions "
                        f"models:/{self.name}/{loaded.version}` fits them)" if route == "edit" and info["data"]["kind"] == "image"
                   else f"the route takes images and it models {info['data']['kind']} data")
            raise RequestError(None, f"{self.name} ({loaded.family}) has no {route} route: {why}", status=404,
                               loc=["path", "name"], capabilities=info["capabilities"], routes=info["routes"])
        return loaded

    def _images(self, req: dict[str, Any], loaded: Loaded):
        import torch

        return torch.as_tensor(decode_images(req, tuple(loaded.model.image_shape), self.limits))


# What a log_prob answer's figures are, by the model's likelihood space and kind.
LOG_PROB_NOTES = {
    "discrete": "-log P of the 8-bit images",
    "continuous": "-log P of the 8-bit images (the density of the dequantized pixels over each pixel's bin)",
    "binary": "-log P of the images binarised at the midpoint (8-bit value >= 128 is on), per binary pixel; "
              "not comparable with 8-bit bits/dim",
}
KIND_NOTES = {"exact": "; exact", "bound": "; a bound: the true bits/dim are at most these",
              "estimate": "; an estimate (its log partition function by annealed importance sampling)"}


ModelServerDeployment = serve.deployment(ModelServer)
