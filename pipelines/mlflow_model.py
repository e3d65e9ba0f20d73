"""The registered form of a genray model: MLflow "models from code".

MLflow stores this file as the model's code and the genray checkpoint (safetensors + state.json)
as its artifact, so `mlflow.pyfunc.load_model("models:/NAME@champion")` rebuilds the network
from genray's own code and the weights from safetensors, with nothing unpickled.

predict input: {"n": number of samples, "seed": int, the condition the model takes ("y": class
    labels when its conditioning is "class", "prompt": a string or n strings when "text")}
predict params: the model's sampling settings (the fields of its `sampling_settings`), as the
    registered signature lists them; `mlflow models predict/serve` pass them as params too
translation models (capability translate) take {"x": input images' values in [-1, 1], flat or
    (B, C, H, W), "seed": int, "direction": one of the model's directions (two-way models)} and
    return the (B, C, H, W) translations
image-variation models (capability variations: unCLIP and its decoder) given {"x": images as
    above, "n": variations per image, "seed": int} return (B * n, C, H, W) images decoded from
    each image's own CLIP embedding, image i's in rows i * n ...; without x they sample as usual
predict output: float32 array in the data's layout, in [-1, 1]: (n, C, H, W) images, (n, T) audio;
    a token model without text generation (MaskGIT on tokens data) gives n strings when the
    vocabulary is characters, else (n, T) int64 token ids

Text models (capability "generate_text", GPT) take "prompt" as the text to continue (one for
every sample) and "stop" (strings that end a sample where they first appear) and return the n
continuations as a list of strings, the prompt not repeated.

Sampling settings left out of a request take the checkpoint's `sampling_defaults` (state.json;
written when `genray tune` registers a sampling-time sweep's winner), then the model's own. An
unknown setting or a value out of range is a UserError naming sampling.KEY and what is allowed.
"""
from __future__ import annotations

import mlflow
import numpy as np
import torch
from mlflow.pyfunc import PythonModel

from genray.components.checkpoint import build_model
from genray.components.errors import UserError
from genray.components.samplers import text
from genray.pipelines.sampling import resolve

# The request key that carries each kind of condition.
CONDITION_KEYS = {"class": "y", "text": "prompt"}


class GenrayModel(PythonModel):
    def load_context(self, context) -> None:
        self.model, self.state = build_model(context.artifacts["checkpoint"])

    def predict(self, context, model_input, params=None):
        request = {k: v for k, v in _first_row(model_input).items() if v is not None}
        n = int(request.pop("n", 1))
        generator = torch.Generator().manual_seed(int(request.pop("seed", 0)))
        if "generate_text" in self.model.capabilities:
            return self._generate(n, generator, request, params)
        if "translate" in self.model.capabilities:
            return self._translate(generator, request, params)
        if "embed" in self.model.capabilities:
            return self._embed(request)
        if "variations" in self.model.capabilities and "x" in request:
            x = self._images(request.pop("x"))
            settings = resolve(self.model, {**request, **(params or {})}, self.state.get("sampling_defaults"))
            return self.model.variations(x, n, generator=generator, **settings.model_dump()).float().cpu().numpy()
        condition = CONDITION_KEYS.get(self.model.conditioning)
        kwargs = {}
        for key in CONDITION_KEYS.values():
            if key not in request:
                continue
            if key != condition:
                raise UserError(f"{key}: this model takes no {key!r} (its conditioning is {self.model.conditioning!r})")
            value = request.pop(key)
            kwargs[key] = torch.as_tensor(np.asarray(value), dtype=torch.long) if key == "y" else value
        # Settings a sampling-time sweep chose are the defaults; params (or, from older callers,
        # settings in the input) override them.
        settings = resolve(self.model, {**request, **(params or {})}, self.state.get("sampling_defaults"))
        kwargs.update(settings.model_dump())
        out = self.model.sample(n, generator=generator, **kwargs).cpu()
        if self.state["model"]["data"]["modality"] == "tokens":
            return self._tokens(out.numpy())
        return out.float().numpy()

    def _tokens(self, ids: np.ndarray) -> list[str] | np.ndarray:
        """A token model without text generation (MaskGIT on tokens data): its rows as text when
        every token is a character, else the ids themselves, (n, T) int64."""
        vocab = self.state["model"]["data"]["vocab"]
        if all(len(t) == 1 for t in vocab):
            return ["".join(vocab[i] for i in row) for row in ids.tolist()]
        return ids.astype(np.int64)


    def _embed(self, request: dict) -> np.ndarray:
        """{"texts": captions} or {"x": images' values in [-1, 1], flat or (B, C, H, W)} -> unit-norm
        embeddings (B, D) float32, in the space where a caption and its image are close."""
        given = [k for k in ("texts", "x") if k in request]
        if len(given) != 1:
            raise UserError("texts or x: a CLIP model embeds either captions (texts: a list of strings) or images "
                            "(x: their values in [-1, 1]); give exactly one")
        with torch.no_grad():
            if given == ["texts"]:
                texts = request["texts"]
                texts = [texts] if isinstance(texts, str) else list(texts)
                if not texts:
                    raise UserError("texts: give at least one caption")
                return self.model.embed_text(texts).cpu().numpy()
            return self.model.embed_images(self._images(request["x"])).cpu().numpy()

    def _images(self, value) -> torch.Tensor:
        """An input's images: their values in [-1, 1], flat or (B, C, H, W) -> (B, C, H, W) float32."""
        c, h, w = self.model.image_shape
        x = np.asarray(value, dtype=np.float32)
        if x.size == 0 or x.size % (c * h * w):
            raise UserError(f"x: {x.size} values are not whole {c}x{h}x{w} images")
        if not np.isfinite(x).all() or x.min() < -1 or x.max() > 1:
            raise UserError("x: values must be finite and in [-1, 1]")
        return torch.as_tensor(x.reshape(-1, c, h, w))

    def _translate(self, generator: torch.Generator, request: dict, params: dict | None) -> np.ndarray:
        """{"x": the input images' values, flat or (B, C, H, W), in [-1, 1]} -> (B, C, H, W) translations."""
        if "x" not in request:
            raise UserError(f"x: a {self.state['model']['family']} model translates images; give x, the input "
                            "images' values in [-1, 1], flat or (B, C, H, W)")
        x_t = self._images(request.pop("x"))
        way = {}
        direction = request.pop("direction", None)
        if direction is not None:
            if direction not in self.model.directions:
                allowed = " or ".join(self.model.directions) or "none: this model translates one way"
                raise UserError(f"direction {direction!r}: this model takes {allowed}")
            way["direction"] = direction
        settings = resolve(self.model, {**request, **(params or {})}, self.state.get("sampling_defaults"))
        return self.model.translate(x_t, generator=generator, **settings.model_dump(), **way).float().cpu().numpy()

    def _generate(self, n: int, generator: torch.Generator, request: dict, params: dict | None) -> list[str]:
        prompt = str(request.pop("prompt", ""))
        stop = request.pop("stop", None)
        y = request.pop("y", None)
        if y is not None and self.model.conditioning != "class":
            raise UserError(f"y: this model takes no 'y' (its conditioning is {self.model.conditioning!r})")
        if y is not None:
            y = torch.as_tensor(np.asarray(y), dtype=torch.long)
        settings = resolve(self.model, {**request, **(params or {})}, self.state.get("sampling_defaults"))
        return text.generate_text(self.model, [prompt] * n, self.state["model"]["data"]["vocab"], generator=generator,
                                  stop=None if stop is None else [str(s) for s in stop], y=y, **settings.model_dump())


def _first_row(model_input) -> dict:
    if hasattr(model_input, "to_dict"):  # pandas DataFrame from pyfunc's schema enforcement
        rows = model_input.to_dict(orient="records")
        return rows[0] if rows else {}
    return dict(model_input)


mlflow.models.set_model(GenrayModel())
