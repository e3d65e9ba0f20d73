"""The wire format of the HTTP API: request and response bodies, errors, and a model's own
sampling request, read from the settings the model declares.

    POST /v1/models/{name}/sample     {"n": 4, "seed": 0, "class_label": 3, "<setting>": ..., "format": "png"}
                                      audio models answer audio/wav (format "wav", their default)
    POST /v1/models/{name}/translate  {"images": [base64 PNG, ...] or "arrays": ..., "seed": 0, "<setting>": ...}  (Pix2Pix)
    POST /v1/models/{name}/variations {"images": [...] or "arrays": ..., "n_per_image": 2, "seed": 0, "<setting>": ...}
                                      images decoded from each image's own CLIP embedding  (unCLIP: capability variations)
    POST /v1/models/{name}/style_mix  {"seed": 0, "seed_b": 1, "crossover": 2, ...a sample request}  (StyleGAN2)
    POST /v1/models/{name}/edit       {"images": [...] or "arrays": ..., "direction": "class=sneaker", "amount": 1.5}
                                      each image moved along an attribute direction  (`genray directions`)
    POST /v1/models/{name}/generate   {"prompt": "def ", "n": 1, "seed": 0, "stop": ["\\n\\n"], "stream": true,
                                       "<setting>": ...}      text models
    POST /v1/models/{name}/decode_tokens  {"tokens": [[[3, 7], [0, 15]], ...], "format": "png"}
                                          one h x w grid of code ids per image  (VQ-VAE: capability tokenize)
    POST /v1/models/{name}/embed      {"texts": ["a sneaker", ...]} or {"images": [...]} or {"arrays": ...}
                                      unit-norm embeddings  (CLIP: capability embed)
    POST /v1/models/{name}/classify   {"images"/"arrays": ..., "labels": ["sneaker", "bag"],
                                       "templates": ["a photo of a {}"]}   zero-shot, by the same model

n, seed, format and the condition (class_label or prompt, as `model.conditioning` says) are
every model's; the other fields are the model's sampling settings (`model.sampling_settings`, a
pydantic model: components/models/protocol.py), validated by it with the checkpoint's sampling
defaults in between. What a sample call may cost is the model's own count
(`model.sampling_cost`), held to limits.max_steps (limits.max_new_tokens for a text model,
limits.max_audio_s for an audio model, whose cost is a step per sample).
Serve names no setting of any family.

Errors look like FastAPI's own 422: {"detail": [{"loc": ["body", FIELD], "msg": ..., "type": ...}]}.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import math
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, ValidationError

from genray.components.data.images import normalize_images, png_bytes, quantize
from genray.components.errors import UserError
from genray.components.models.directions import MAX_AMOUNT as MAX_EDIT_AMOUNT
from genray.components.models.protocol import sampling_cost_unit, settings_for
from genray.pipelines.serve.spec import Limits

# The field that carries a model's condition, by `model.conditioning`.
CONDITION_FIELDS = {"class": "class_label", "text": "prompt"}


# ----------------------------------------------------------------------------------- request bodies


class SampleRequest(BaseModel):
    """n, seed, format and the condition; every other field is one of the model's sampling
    settings (GET /v1/models/{name} lists them with their ranges and defaults). A field the model
    does not take is refused (422 naming it); null means the model's default."""

    model_config = ConfigDict(extra="allow")
    n: int = Field(4, ge=1, description="samples to draw (at most limits.max_n)")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="same seed, same images")
    class_label: int | list[int] | None = Field(
        None, description="class-conditional models: one label for all, or one per sample")
    prompt: str | None = Field(None, description="text-conditional models")
    index: str | None = Field(None, description="retrieval models: the name of an index of the model's own CLIP "
                                                "(`genray data index` on the server's project home) to retrieve "
                                                "from instead of the model's own")
    format: Literal["png", "wav", "array"] | None = Field(
        None, description="images: base64 PNGs (png, the default) or float arrays in [-1, 1]; audio: one WAV "
                          "file of the clips, the response body being audio/wav (wav, the default), or float arrays")


class StyleMixRequest(SampleRequest):
    """Models with the style_mix capability (StyleGAN2): the images of `seed` with the styles of
    layers from `crossover` on taken from `seed_b`'s. The other fields are a sample request's."""

    seed_b: int = Field(1, ge=0, le=2**63 - 1, description="the seed whose styles the layers from crossover on take")
    crossover: int = Field(description="layers below it keep seed's styles (coarse: shape), the rest take "
                                       "seed_b's (fine: texture); 0..style_layers (GET /v1/models/{name})")


class GenerateRequest(BaseModel):
    """Text models (capability generate_text): continue a prompt. Every field beyond these is one
    of the model's sampling settings (max_new_tokens, temperature, top_k, top_p, ...)."""

    model_config = ConfigDict(extra="allow")
    prompt: str | list[str] = Field("", description="the text to continue: one for all samples, or one per sample")
    n: int = Field(1, ge=1, description="samples to generate (at most limits.max_n)")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="same seed, same text")
    stop: list[str] | None = Field(None, description="up to 4 strings that end a sample where they first appear "
                                                     "(not returned)")
    stream: bool = Field(False, description="server-sent events, one per generated piece, then event: done")
    class_label: int | list[int] | None = Field(
        None, description="class-conditional models: one label for all, or one per sample")


class ImagesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: list[str] | None = Field(None, min_length=1, description="base64 PNGs of the model's size")
    arrays: list[list[list[list[FiniteFloat]]]] | None = Field(None, min_length=1, description="(B, C, H, W) in [-1, 1]")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="seed of the likelihood estimator's noise")


class TranslateRequest(BaseModel):
    """Translation models (capability translate: Pix2Pix): images in, their translations out.
    Every field beyond these is one of the model's sampling settings (Pix2Pix: dropout)."""

    model_config = ConfigDict(extra="allow")
    images: list[str] | None = Field(None, min_length=1, description="base64 PNGs of the model's size")
    arrays: list[list[list[list[FiniteFloat]]]] | None = Field(None, min_length=1, description="(B, C, H, W) in [-1, 1]")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="seed of the translation's noise (Pix2Pix: dropout masks)")
    direction: str | None = Field(None, description="models that translate both ways: which way (GET "
                                                    "/v1/models/{name} lists them); null: the model's one way")
    format: Literal["png", "array"] = "png"


class VariationsRequest(BaseModel):
    """Models with the variations capability (unCLIP, its decoder): images in, n_per_image new
    images per input decoded from its CLIP image embedding (Ramesh et al. 2022, sec. 3.1). Every
    field beyond these is one of the model's sampling settings (guidance_scale, steps, ...)."""

    model_config = ConfigDict(extra="allow")
    images: list[str] | None = Field(None, min_length=1, description="base64 PNGs of the model's size")
    arrays: list[list[list[list[FiniteFloat]]]] | None = Field(None, min_length=1, description="(B, C, H, W) in [-1, 1]")
    n_per_image: int = Field(1, ge=1, description="variations of each image (images x n_per_image at most limits.max_n)")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="same seed, same variations")
    format: Literal["png", "array"] = "png"


class EditRequest(BaseModel):
    """Models served with attribute directions (`genray directions`; GET /v1/models/{name} lists
    them under edit): each image moved `amount` along one direction in the model's latent space,
    decode(encode(x) + amount * d)."""

    model_config = ConfigDict(extra="forbid")
    images: list[str] | None = Field(None, min_length=1, description="base64 PNGs of the model's size")
    arrays: list[list[list[list[FiniteFloat]]]] | None = Field(None, min_length=1, description="(B, C, H, W) in [-1, 1]")
    direction: str = Field(description="a direction the model has: attribute=value (class=sneaker) or a continuous "
                                       "attribute (scale)")
    amount: FiniteFloat = Field(1.0, ge=-MAX_EDIT_AMOUNT, le=MAX_EDIT_AMOUNT,
                                description="how far: 1 moves an image as far as the data moves between typical "
                                            "images without and with the attribute; negative moves away")
    format: Literal["png", "array"] = "png"


class DecodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    latents: list[list[FiniteFloat]] = Field(min_length=1, description="flat latent vectors, as /encode returns them")
    format: Literal["png", "array"] = "png"


class DecodeTokensRequest(BaseModel):
    """Models with the tokenize capability (VQ-VAE): grids of code ids -> images. The grids are
    checked by `parse_tokens` against the model's grid and codebook size, so a wrong one is a 422
    naming `tokens` and saying what fits, not a type error deep inside the nesting."""

    model_config = ConfigDict(extra="forbid")
    tokens: list[Any] = Field(
        min_length=1, description="one h x w grid (h lists of w integers in [0, codebook_size)) per image, as "
                                  "/tokenize returns them; GET /v1/models/{name} gives grid and codebook_size",
        json_schema_extra={"items": {"type": "array", "items": {"type": "array",
                                                                "items": {"type": "integer", "minimum": 0}}}})
    format: Literal["png", "array"] = "png"


class EmbedRequest(BaseModel):
    """Models with the embed capability (CLIP): captions or images -> unit-norm embeddings, in the
    space where an image and its caption lie close. Exactly one of texts, images or arrays. The
    captions are checked by `parse_embed` against the model's text_len (GET /v1/models/{name}), so
    a bad one is a 422 naming `texts` and saying which, not a type error inside the list."""

    model_config = ConfigDict(extra="forbid")
    texts: list[Any] | None = Field(None, min_length=1, description="captions (strings), each at most the model's "
                                                                      "text_len bytes of UTF-8")
    images: list[str] | None = Field(None, min_length=1, description="base64 PNGs of the model's size")
    arrays: list[list[list[list[FiniteFloat]]]] | None = Field(None, min_length=1, description="(B, C, H, W) in [-1, 1]")


# CLIP's zero-shot prompt when a classify request names no templates (Radford et al. 2021, §3.1.4).
DEFAULT_TEMPLATES = ("a photo of a {}",)


class ClassifyRequest(BaseModel):
    """Models with the embed capability (CLIP): zero-shot classification of images among the
    labels. Each label's embedding is the normalised mean of its prompts' (each template with the
    label in place of "{}"); each image's scores are the softmax of the model's logit scale times
    its cosines to them. Checked by `parse_classify`: a 422 names `labels` or `templates`."""

    model_config = ConfigDict(extra="forbid")
    images: list[str] | None = Field(None, min_length=1, description="base64 PNGs of the model's size")
    arrays: list[list[list[list[FiniteFloat]]]] | None = Field(None, min_length=1, description="(B, C, H, W) in [-1, 1]")
    labels: list[Any] = Field(min_length=1, description="the classes to choose among: distinct, non-empty strings")
    templates: list[Any] | None = Field(None, min_length=1, description='prompts with "{}" where the label goes; '
                                                                        f'null: {list(DEFAULT_TEMPLATES)}')


class InterpolateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    a: str = Field(description="base64 PNG: the path starts here")
    b: str = Field(description="base64 PNG: the path ends here")
    steps: int = Field(8, ge=2, description="images on the path, both ends included")
    method: Literal["linear", "slerp"] = "linear"
    format: Literal["png", "array"] = "png"


# ---------------------------------------------------------------------------------- response bodies


class Served(BaseModel):
    model: str
    version: str = Field(description="the registered version that answered (also the X-Genray-Model-Version header)")


class ImagesOut(Served):
    images: list[str] | None = Field(None, description="base64 PNGs (format png)")
    arrays: list[Any] | None = Field(None, description="(B, C, H, W) images or (B, T) audio clips, floats in "
                                                       "[-1, 1] (format array)")


class SampleResponse(ImagesOut):
    family: str
    n: int
    seed: int
    settings: dict[str, Any] = Field(description="the sampling settings used, defaults filled in")
    batch_requests: int = Field(description="requests that shared this forward pass")


class GenerateResponse(Served):
    family: str
    n: int
    seed: int
    settings: dict[str, Any] = Field(description="the sampling settings used, defaults filled in")
    prompts: list[str]
    texts: list[str] = Field(description="what each prompt continues with (the prompt not repeated)")


class InterpolateResponse(ImagesOut):
    method: str


class EncodeResponse(Served):
    latent_shape: list[int]
    latents: list[list[float]]


class TokenizeResponse(Served):
    grid: list[int] = Field(description="[h, w]: the shape of each image's grid of code ids")
    codebook_size: int = Field(description="K: code ids lie in [0, K)")
    tokens: list[list[list[int]]] = Field(description="one h x w grid of code ids per image")


class EmbedResponse(Served):
    input: Literal["texts", "images"] = Field(description="what was embedded (arrays are images)")
    dim: int = Field(description="D: the length of each embedding")
    embeddings: list[list[float]] = Field(description="one unit-norm embedding per caption or image, in order")


class Prediction(BaseModel):
    label: str = Field(description="the label with the highest score")
    score: float
    scores: dict[str, float] = Field(description="every label's score (they sum to 1), in the request's order")


class ClassifyResponse(Served):
    labels: list[str]
    templates: list[str] = Field(description="the prompts' templates used (the default when none were given)")
    logit_scale: float = Field(description="the model's learned temperature's inverse: scores are "
                                           "softmax(logit_scale * cosine) over the labels")
    predictions: list[Prediction] = Field(description="one per image, in order")


class LogProbResponse(Served):
    kind: str = Field(description="exact, bound or estimate")
    unit: str = Field(description="what one dim of bits_per_dim is: an 8-bit pixel, or a binarised one")
    neg_log_prob_nats: list[float]
    bits_per_dim: list[float]
    note: str


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    detail: list[ErrorDetail]


class RequestError(UserError):
    """A request the model cannot honour: HTTP `status` with a FastAPI-shaped detail."""

    def __init__(self, field: str | None, message: str, status: int = 422, *, loc: list[str] | None = None,
                 **extra: Any):
        super().__init__(message)
        self.status = status
        loc = loc or (["body", field] if field else ["body"])
        self.detail = [{"loc": loc, "msg": message, "type": "value_error", **extra}]

    @classmethod
    def from_validation(cls, e: ValidationError) -> RequestError:
        """A pydantic error of the model's settings, every field it names under "body" (the
        input itself is left out: it may hold values JSON cannot encode)."""
        err = cls(None, str(e))
        err.detail = [{"loc": ["body", *d["loc"]], "msg": d["msg"], "type": d["type"]} for d in e.errors()]
        return err

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"status": self.status, "detail": self.detail}}


def error_body(e: UserError) -> dict[str, Any]:
    """What a replica returns for a user's mistake: the gateway answers it as an HTTP error."""
    if isinstance(e, RequestError):
        return e.to_dict()
    return RequestError(None, str(e)).to_dict()


# ------------------------------------------------------------------ a model's own sampling request


def sample_parameters(model, defaults: dict[str, Any], limits: Limits) -> dict[str, dict[str, Any]]:
    """What a sample request to this model may hold, for GET /v1/models: n, seed, the condition
    the model takes, then its sampling settings as its settings schema describes them (type,
    min, max, choices, default, description), `defaults` being the settings a request without
    them gets. An integer setting whose cost grows with it gets the largest value that fits
    the cost limit (cost_limit) as its max."""
    params: dict[str, dict[str, Any]] = {
        "n": {"type": "integer", "min": 1, "max": limits.max_n, "default": 4},
        "seed": {"type": "integer", "min": 0, "default": 0},
    }
    if model.conditioning == "class":
        params["class_label"] = {"type": "integer", "min": 0, "max": model.num_classes - 1, "default": None,
                                 "description": "one label for all samples, or one per sample; none: labels cycle"}
    elif model.conditioning == "text":
        params["prompt"] = {"type": "string", "max_length": limits.max_prompt_chars, "default": None}
    if "retrieval" in model.capabilities:
        params["index"] = {"type": "string", "default": None,
                           "description": "an index of the model's CLIP to retrieve from (see retrieval.indexes); "
                                          "none: the model's own"}
    schema = model.sampling_settings.model_json_schema()
    defs = schema.get("$defs", {})
    for name, prop in schema.get("properties", {}).items():
        param = {**describe_field(prop, defs), "default": defaults.get(name)}
        if param["type"] == "integer":
            top = _max_within_cost(model, name, param.get("min", 0), param.get("max"), defaults,
                                   cost_limit(model, limits)[0])
            if top is not None:
                param["max"] = top
        elif param["type"] == "number" and isinstance(defaults.get(name), (int, float)):
            top = _max_within_cost(model, name, float(defaults[name]), param.get("max"), defaults,
                                   cost_limit(model, limits)[0], integer=False)
            if top is not None:
                param["max"] = top
        params[name] = param
    return params


def describe_field(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """One property of a JSON schema (as pydantic writes it) -> {type, min, max, choices,
    max_length, nullable, description}, the keys that apply."""
    prop = _resolve(prop, defs)
    out: dict[str, Any] = {}
    if "anyOf" in prop:  # Optional[X], or a union
        options = [_resolve(p, defs) for p in prop["anyOf"]]
        if any(p.get("type") == "null" for p in options):
            out["nullable"] = True
        options = [p for p in options if p.get("type") != "null"]
        if len(options) == 1:
            prop = {**options[0], **{k: v for k, v in prop.items() if k != "anyOf"}}
        else:
            out["type"] = [p.get("type", "any") for p in options]
    if "enum" in prop or "const" in prop:
        out["choices"] = list(prop["enum"]) if "enum" in prop else [prop["const"]]
    out.setdefault("type", prop.get("type", "string" if "choices" in out else "any"))
    for key, name in (("minimum", "min"), ("maximum", "max"), ("exclusiveMinimum", "min"),
                      ("exclusiveMaximum", "max"), ("maxLength", "max_length")):
        if key in prop:
            out[name] = prop[key]
            if key.startswith("exclusive"):
                out[f"exclusive_{name}"] = True
    if prop.get("description"):
        out["description"] = prop["description"]
    return out


def _resolve(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = prop.get("$ref")
    if ref is None:
        return prop
    return {**defs.get(ref.rsplit("/", 1)[-1], {}), **{k: v for k, v in prop.items() if k != "$ref"}}


def _max_within_cost(model, name: str, low: float, high: float | None, defaults: dict[str, Any], limit: int, *,
                     integer: bool = True) -> float | None:
    """The largest value of setting NAME in [low, high] whose sampling cost, the other settings
    at their defaults, is at most `limit`: exact for an integer setting; for a real-valued one (an
    audio clip's seconds, searched from its default, which fits) to three decimals, rounded
    down. None when the cost does not grow with NAME within its range (or no value fits, which
    each request then hears about)."""

    def fits(value: float) -> bool:
        try:
            return model.sampling_cost(settings_for(model, {name: value}, defaults)) <= limit
        except ValidationError:  # a value its own validators refuse with the other settings
            return False

    high = high if high is not None else low + (2**20 if integer else 1e6)
    if not fits(low) or fits(high):
        return None
    if integer:
        while high - low > 1:  # fits(low), not fits(high); the cost grows with the value
            mid = (low + high) // 2
            low, high = (mid, high) if fits(mid) else (low, mid)
        return low
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return math.floor(low * 1000) / 1000


def parse_sample(req: dict[str, Any], loaded, limits: Limits) -> dict[str, Any]:
    """A /sample body (SampleRequest's fields plus the model's settings) -> a sampling job
    {n, seed, settings, conditions}: settings validated by the model's settings schema over the
    checkpoint's defaults, conditions as `model.sample` takes them. Raises RequestError naming
    the first field that does not fit this model."""
    model = loaded.model
    n = req["n"]
    if n > limits.max_n:
        raise RequestError("n", f"n is {n}; at most {limits.max_n} samples per request (limits.max_n)")
    condition = CONDITION_FIELDS.get(model.conditioning)
    setting_names = list(model.sampling_settings.model_fields)
    given = {k: v for k, v in req.items() if v is not None and k not in ("n", "seed", "format", "index")}
    for k in given:
        if k != condition and k not in setting_names:
            takes = ([condition] if condition else []) + setting_names + (
                ["index"] if "retrieval" in model.capabilities else [])
            raise RequestError(k, f"{loaded.name} ({loaded.family}) does not take {k}; it takes "
                                  f"{', '.join(takes) or 'only n, seed and format'}")
    conditions = _conditions(req, model, limits)
    if req.get("index") is not None:
        conditions["index_name"] = index_name(req["index"], loaded)
    settings = checked_settings(loaded, {k: v for k, v in given.items() if k != condition}, limits)
    return {"n": n, "seed": req["seed"], "settings": settings.model_dump(), "conditions": conditions,
            "format": response_format(req.get("format"), model)}


def index_name(name: Any, loaded) -> str:
    """A request's `index`: a retrieval model, and a name (never a path: the server looks it up
    under its own project home's indexes/)."""
    from genray.pipelines.retrieval import NAME

    if "retrieval" not in loaded.model.capabilities:
        raise RequestError("index", f"{loaded.name} ({loaded.family}) does not retrieve; index is for models trained "
                                    "with conditioning: retrieval")
    if not isinstance(name, str) or not NAME.match(name):
        raise RequestError("index", "an index name: letters, digits, '.', '_' and '-', starting with a letter or digit "
                                    "(GET /v1/models/{name} lists the indexes this model can use)")
    return name


def checked_settings(loaded, settings_given: dict[str, Any], limits: Limits):
    """The model's sampling settings from the fields a request gave, over the checkpoint's
    defaults, validated by the model's schema and held to what one call may cost. Raises
    RequestError naming the field."""
    model = loaded.model
    for k, v in settings_given.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise RequestError(k, f"{k} must be a finite number")
    try:
        settings = settings_for(model, settings_given, loaded.sampling_defaults)
    except ValidationError as e:
        raise RequestError.from_validation(e) from None
    cost = model.sampling_cost(settings)
    limit, limit_name = cost_limit(model, limits)
    if cost > limit:
        field = _costly_field(model, settings_given, loaded.sampling_defaults, limit)
        what = f"{field}={settings_given[field]!r}" if field else "this model's default settings"
        if "audio" in model.capabilities:
            raise RequestError(field, f"{what}: clips of {cost / model.sample_rate:g} s; at most "
                                      f"{limits.max_audio_s:g} s per clip (limits.max_audio_s)")
        raise RequestError(field, f"{what}: one sample call would make {cost} network evaluations; at most "
                                  f"{limit} (limits.{limit_name}): ask for fewer steps")
    return settings


def parse_variations(req: dict[str, Any], loaded, limits: Limits) -> dict[str, Any]:
    """A /variations body -> {x (B, C, H, W) float32, n_per_image, seed, settings, format}: the
    images by the model's size, B x n_per_image held to limits.max_n, every other field one of
    the model's sampling settings (refused by name otherwise)."""
    model = loaded.model
    names = list(model.sampling_settings.model_fields)
    given = {k: v for k, v in req.items() if k not in VariationsRequest.model_fields and v is not None}
    for k in given:
        if k not in names:
            raise RequestError(k, f"{loaded.name} ({loaded.family}) does not take {k}; a variations request takes "
                                  f"images or arrays, n_per_image, seed, format and the settings "
                                  f"{', '.join(names) or '(none)'}")
    settings = checked_settings(loaded, given, limits)
    x = decode_images(req, tuple(model.image_shape), limits)
    total = len(x) * req["n_per_image"]
    if total > limits.max_n:
        raise RequestError("n_per_image", f"{len(x)} images x n_per_image {req['n_per_image']} = {total} images; at "
                                          f"most {limits.max_n} per request (limits.max_n)")
    return {"x": x, "n_per_image": req["n_per_image"], "seed": req["seed"], "settings": settings.model_dump(),
            "format": req["format"]}


def parse_edit(req: dict[str, Any], loaded, limits: Limits) -> dict[str, Any]:
    """An /edit body -> {x (B, C, H, W) float32, direction, amount, format}: the direction one of
    the version's (a 422 naming `direction` lists them), the images by the model's size."""
    names = list(loaded.directions.names)
    if req["direction"] not in names:
        raise RequestError("direction", f"{loaded.name} has no direction {req['direction']!r}; its directions: "
                                        f"{', '.join(names)}")
    x = decode_images(req, tuple(loaded.model.image_shape), limits)
    return {"x": x, "direction": req["direction"], "amount": float(req["amount"]), "format": req["format"]}


def parse_style_mix(req: dict[str, Any], loaded, limits: Limits) -> dict[str, Any]:
    """A /style_mix body -> a sampling job (parse_sample's) plus seed_b and crossover, the
    crossover checked against the model's number of style layers."""
    rest = {k: v for k, v in req.items() if k not in ("seed_b", "crossover")}
    job = parse_sample(rest, loaded, limits)
    layers = loaded.model.num_ws
    if not 0 <= req["crossover"] <= layers:
        raise RequestError("crossover", f"crossover is {req['crossover']}; this model has {layers} style layers, "
                                        f"so crossover is 0..{layers}")
    return {**job, "seed_b": req["seed_b"], "crossover": req["crossover"]}


def parse_translate(req: dict[str, Any], loaded, limits: Limits) -> dict[str, Any]:
    """A /translate body -> {x (B, C, H, W) float32, seed, settings, format}: the direction checked
    against the model's, the settings by its settings schema, the images by its size and channels."""
    model = loaded.model
    directions = list(model.directions)  # a two-way model's (CycleGAN); empty for one way
    if req.get("direction") is not None and req["direction"] not in directions:
        allowed = f"one of {', '.join(directions)}" if directions else "null: this model translates one way"
        raise RequestError("direction", f"direction {req['direction']!r}: {loaded.name} ({loaded.family}) takes {allowed}")
    given = {k: v for k, v in req.items() if k not in TranslateRequest.model_fields and v is not None}
    try:
        settings = settings_for(model, given, loaded.sampling_defaults)
    except ValidationError as e:
        raise RequestError.from_validation(e) from None
    x = decode_images(req, tuple(model.image_shape), limits)
    return {"x": x, "seed": req["seed"], "settings": settings.model_dump(), "format": req["format"],
            "direction": req.get("direction")}


def response_format(fmt: str | None, model) -> str:
    """The format a sample answer takes: png or array for images, wav or array for audio; None
    picks the first."""
    allowed = ("wav", "array") if "audio" in model.capabilities else ("png", "array")
    if fmt is None:
        return allowed[0]
    if fmt not in allowed:
        kind = "audio" if "audio" in model.capabilities else "images"
        raise RequestError("format", f"format {fmt!r}: this model makes {kind}; format is one of {', '.join(allowed)}")
    return fmt


def cost_limit(model, limits: Limits) -> tuple[int, str]:
    """The most network evaluations one call may make, and the limit's name: tokens for a text
    model (each a one-position pass through the KV cache), steps for the others."""
    if "generate_text" in model.capabilities:
        return limits.max_new_tokens, "max_new_tokens"
    if "audio" in model.capabilities:  # a step per sample: the limit is on the clip's length
        return int(limits.max_audio_s * model.sample_rate), "max_audio_s"
    if sampling_cost_unit(model) == "gibbs_sweeps":
        return limits.max_gibbs_sweeps, "max_gibbs_sweeps"
    return limits.max_steps, "max_steps"


def parse_generate(req: dict[str, Any], loaded, limits: Limits) -> dict[str, Any]:
    """A /generate body -> a text job {n, seed, settings, prompts, stop, y}: the settings,
    n and class labels checked as a sample request's are, then the prompts (count, length, each
    character in the model's vocabulary) and the stop strings. Raises RequestError naming the
    field."""
    from genray.components.samplers import text

    rest = {k: v for k, v in req.items() if k not in ("prompt", "stop", "stream")}
    job = parse_sample({**rest, "format": None}, loaded, limits)
    n = job["n"]
    prompts = [req["prompt"]] if isinstance(req["prompt"], str) else list(req["prompt"])
    if len(prompts) == 1:
        prompts = prompts * n
    if len(prompts) != n:
        raise RequestError("prompt", f"{len(prompts)} prompts for n={n} samples; give one, or one per sample")
    vocab = loaded.state["model"]["data"].get("vocab") or []
    for i, p in enumerate(prompts):
        where = "prompt" if isinstance(req["prompt"], str) else f"prompt[{i}]"
        if len(p) > limits.max_prompt_chars:
            raise RequestError("prompt", f"{where} has {len(p)} characters; at most {limits.max_prompt_chars} "
                                         "(limits.max_prompt_chars)")
        try:
            text.encode_prompt(p, vocab, field_name=where)
        except UserError as e:
            raise RequestError("prompt", str(e)) from None
    try:
        stop = text.check_stops(req.get("stop"))
    except UserError as e:
        raise RequestError("stop", str(e)) from None
    return {"n": n, "seed": job["seed"], "settings": job["settings"], "prompts": prompts, "stop": list(stop),
            "y": job["conditions"].get("y")}


def _conditions(req: dict[str, Any], model, limits: Limits) -> dict[str, Any]:
    """class_label or prompt -> the `y` labels or `prompt` strings of `model.sample`, one per sample."""
    n, conditions = req["n"], {}
    label = req.get("class_label")
    if label is not None:
        labels = [label] * n if isinstance(label, int) else list(label)
        if len(labels) != n:
            raise RequestError("class_label", f"{len(labels)} labels for n={n} samples; give one, or one per sample")
        top = model.num_classes - 1
        bad = [v for v in labels if not 0 <= v <= top]
        if bad:
            raise RequestError("class_label", f"label {bad[0]} is out of range; this model's classes are 0..{top}")
        conditions["y"] = labels
    prompt = req.get("prompt")
    if prompt is not None:
        if len(prompt) > limits.max_prompt_chars:
            raise RequestError("prompt", f"prompt has {len(prompt)} characters; at most "
                                         f"{limits.max_prompt_chars} (limits.max_prompt_chars)")
        conditions["prompt"] = [prompt] * n
    return conditions


def _costly_field(model, given: dict[str, Any], defaults: dict[str, Any], limit: int) -> str | None:
    """The first setting of a request that alone, over the defaults, costs more than the limit;
    else the first it gave (a combination over the limit); None if it gave none."""
    for k, v in given.items():
        try:
            if model.sampling_cost(settings_for(model, {k: v}, defaults)) > limit:
                return k
        except ValidationError:
            continue
    return next(iter(given), None)


def settings_key(settings: dict[str, Any]) -> str:
    """Requests with equal keys can share one `model.sample` call."""
    return json.dumps(settings, sort_keys=True, default=str)


# ------------------------------------------------------------------------------------ images in, out


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
        # Pillow's ways of saying "these bytes are not a PNG it can read".
        raise RequestError(field, f"not a PNG image ({type(e).__name__})") from None
    array = array[..., None] if array.ndim == 2 else array
    return normalize_images(np.moveaxis(array, -1, 0))


def decode_images(req: dict[str, Any], shape: tuple[int, int, int], limits: Limits) -> np.ndarray:
    """The images of an ImagesRequest (base64 PNGs or float arrays) -> (B, C, H, W) float32 in
    [-1, 1] on the 8-bit grid, as the model was trained and as likelihoods are defined."""
    images, arrays = req.get("images"), req.get("arrays")
    if (images is None) == (arrays is None):
        raise RequestError("images", "give images (base64 PNGs) or arrays ((B, C, H, W) in [-1, 1]), one of them")
    field = "images" if images is not None else "arrays"
    items = images if images is not None else arrays
    if len(items) > limits.max_images:
        raise RequestError(field, f"{len(items)} images; at most {limits.max_images} (limits.max_images)")
    if images is not None:
        return np.stack([decode_png(s, f"images[{i}]", shape) for i, s in enumerate(images)])
    try:
        x = np.asarray(arrays, dtype=np.float32)
    except ValueError:  # numpy's word for ragged nesting
        x = None
    if x is None or x.shape[1:] != shape:
        got = list(x.shape[1:]) if x is not None else "ragged"
        raise RequestError("arrays", f"arrays must be (B, {', '.join(map(str, shape))}); got {got}")
    if x.min() < -1 or x.max() > 1:
        raise RequestError("arrays", "pixel values must lie in [-1, 1]")
    return normalize_images(quantize(x))


def parse_tokens(tokens: list[Any], grid: tuple[int, int], codebook_size: int, limits: Limits) -> np.ndarray:
    """The `tokens` of a /decode_tokens body -> (B, h, w) int64 code ids: at most
    limits.max_images grids, each h lists of w integers in [0, codebook_size). JSON's true/false
    and 1.0 are not ids (Python would take them for 1). Raises RequestError naming `tokens`, the
    first bad grid or id, and what fits."""
    h, w = grid
    if len(tokens) > limits.max_images:
        raise RequestError("tokens", f"{len(tokens)} token grids; at most {limits.max_images} (limits.max_images)")
    shape = f"this model's grids are {h} x {w}: {h} lists of {w} code ids"
    for i, rows in enumerate(tokens):
        if not isinstance(rows, list) or len(rows) != h or any(not isinstance(r, list) or len(r) != w for r in rows):
            raise RequestError("tokens", f"tokens[{i}] is not a {h} x {w} grid ({_shape_of(rows)}); {shape}")
        for r, row in enumerate(rows):
            for c, v in enumerate(row):
                if isinstance(v, bool) or not isinstance(v, int):
                    raise RequestError("tokens", f"tokens[{i}][{r}][{c}] is {_json(v)}; code ids are integers in "
                                                 f"[0, {codebook_size}) (codebook_size)")
                if not 0 <= v < codebook_size:
                    raise RequestError("tokens", f"tokens[{i}][{r}][{c}] is {v}; code ids lie in [0, {codebook_size}) "
                                                 f"(codebook_size {codebook_size})")
    return np.asarray(tokens, dtype=np.int64).reshape(len(tokens), h, w)


def parse_embed(req: dict[str, Any], loaded, limits: Limits) -> dict[str, Any]:
    """An /embed body -> {"texts": captions} or {"x": (B, C, H, W) float32 in [-1, 1]}: exactly
    one of texts, images or arrays; the captions checked by `check_captions`, the images as every
    image route takes them (decode_images). Raises RequestError naming the field."""
    model = loaded.model
    given = [k for k in ("texts", "images", "arrays") if req.get(k) is not None]
    if len(given) != 1:
        got = f"; got {' and '.join(given)}" if given else ""
        raise RequestError(given[1] if given else "texts", "give texts (captions), images (base64 PNGs) or arrays "
                                                           f"((B, C, H, W) in [-1, 1]), exactly one of them{got}")
    if given == ["texts"]:
        return {"texts": check_captions(req["texts"], "texts", int(model.text_len), limits)}
    return {"x": decode_images(req, tuple(model.image_shape), limits)}


def check_captions(texts: list[Any], field: str, text_len: int, limits: Limits) -> list[str]:
    """At most limits.max_images captions, each a string of at most text_len bytes of UTF-8: the
    model reads that many, and a caption cut short would embed another text."""
    if len(texts) > limits.max_images:
        raise RequestError(field, f"{len(texts)} captions; at most {limits.max_images} per request (limits.max_images)")
    texts = _strings(texts, field, "captions")
    for i, t in enumerate(texts):
        size = len(t.encode("utf-8"))
        if size > text_len:
            raise RequestError(field, f"{field}[{i}] is {size} bytes of UTF-8; this model reads at most {text_len} "
                                      "bytes per caption (text_len), and a caption cut short would be another text")
    return texts


def parse_classify(req: dict[str, Any], loaded, limits: Limits) -> dict[str, Any]:
    """A /classify body -> {x, labels, templates, prompts}, prompts[k] every template with label k
    in place of "{}". labels: distinct, non-empty strings; templates: strings holding "{}"; at
    most limits.max_images of each; every prompt at most the model's text_len bytes of UTF-8 (the
    template is named when it alone is too long, else the label). The images as every image
    route takes them. Raises RequestError naming the field."""
    model = loaded.model
    text_len = int(model.text_len)
    labels = _strings(req["labels"], "labels", "labels")
    if len(labels) > limits.max_images:
        raise RequestError("labels", f"{len(labels)} labels; at most {limits.max_images} per request "
                                     "(limits.max_images)")
    first: dict[str, int] = {}
    for i, label in enumerate(labels):
        if not label.strip():
            raise RequestError("labels", f"labels[{i}] is {_json(label)}; a label names its class in words")
        if label in first:
            raise RequestError("labels", f"labels[{i}] is {_json(label)}, as labels[{first[label]}] is; name each "
                                         "class once")
        first[label] = i
    given = req.get("templates")
    templates = list(DEFAULT_TEMPLATES) if given is None else _strings(given, "templates", "templates")
    if len(templates) > limits.max_images:
        raise RequestError("templates", f"{len(templates)} templates; at most {limits.max_images} per request "
                                        "(limits.max_images)")
    for j, t in enumerate(templates):
        if "{}" not in t:
            raise RequestError("templates", f'templates[{j}] is {_json(t)}; a template holds "{{}}" where the label '
                                            'goes, as in "a photo of a {}"')
        if len(t.replace("{}", "").encode("utf-8")) > text_len:
            raise RequestError("templates", f"templates[{j}] is over {text_len} bytes of UTF-8 without its label; "
                                            f"this model reads at most {text_len} bytes per caption (text_len)")
    prompts = [[t.replace("{}", label) for t in templates] for label in labels]
    for i, row in enumerate(prompts):
        for j, p in enumerate(row):
            size = len(p.encode("utf-8"))
            if size > text_len:
                raise RequestError("labels", f"labels[{i}] in templates[{j}] makes {_json(p)}, {size} bytes of "
                                             f"UTF-8; this model reads at most {text_len} bytes per caption (text_len)")
    x = decode_images(req, tuple(model.image_shape), limits)
    return {"x": x, "labels": labels, "templates": templates, "prompts": prompts}


def _strings(values: list[Any], field: str, what: str) -> list[str]:
    """values, each a string of valid Unicode (JSON may carry a lone surrogate, which no UTF-8
    encoder takes); else a RequestError naming the field and the first item that is not."""
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise RequestError(field, f"{field}[{i}] is {_json(v)}; {what} are strings")
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestError(field, f"{field}[{i}] is not valid Unicode (a lone surrogate)") from None
    return list(values)


def _shape_of(rows: Any) -> str:
    """What a would-be grid is, in words, for an error message."""
    if not isinstance(rows, list):
        return f"got {_json(rows)}"
    if not rows:
        return "got an empty list"
    lengths = [len(r) if isinstance(r, list) else None for r in rows]
    if any(n is None for n in lengths):
        return f"got a list of {len(rows)} with non-lists in it"
    rows_of = f"got {len(rows)} row{'s' if len(rows) != 1 else ''} of "
    return rows_of + (f"{lengths[0]}" if len(set(lengths)) == 1 else f"lengths {lengths}")


def _json(v: Any) -> str:
    """A value as the client wrote it (true, null, "3"), cut short."""
    text = json.dumps(v)
    return text if len(text) <= 40 else text[:37] + "..."


def images_payload(u8: np.ndarray, floats, fmt: str) -> dict[str, Any]:
    """Images for a response: base64 PNGs of the uint8 (B, H, W, C), or the floats as arrays."""
    if fmt == "array":
        return {"arrays": np.asarray(floats, dtype=np.float64).round(6).tolist()}
    return {"images": [base64.b64encode(png_bytes(im)).decode() for im in u8]}
