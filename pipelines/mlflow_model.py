"""The registered form of a genray model: MLflow "models from code".

MLflow stores this file as the model's code and the genray checkpoint (safetensors + state.json)
as its artifact, so `mlflow.pyfunc.load_model("models:/NAME@champion")` rebuilds the network
from genray's own code and the weights from safetensors, with nothing unpickled.

predict input: {"n": number of samples, "seed": int, optional "y": class labels, and any other
    keyword the model's `sample` takes (diffusion: "prompt", "guidance_scale", "sampler",
    "num_inference_steps", "eta", "spacing")}
predict output: float32 array (n, C, H, W) in [-1, 1]

Sampling settings left out of a request take the checkpoint's `sampling_defaults` (state.json;
written when `genray tune` registers a sampling-time sweep's winner), then the model's own.
"""
from __future__ import annotations

import inspect

import mlflow
import numpy as np
import torch
from mlflow.pyfunc import PythonModel

from components.checkpoint import build_model


class GenrayModel(PythonModel):
    def load_context(self, context) -> None:
        self.model, self.state = build_model(context.artifacts["checkpoint"])

    def predict(self, context, model_input, params=None):
        request = _first_row(model_input)
        n = int(request.get("n", 1))
        generator = torch.Generator().manual_seed(int(request.get("seed", 0)))
        kwargs = {}
        if request.get("y") is not None:
            kwargs["y"] = torch.as_tensor(np.asarray(request["y"]), dtype=torch.long)
        accepted = set(inspect.signature(self.model.sample).parameters) - {"n", "generator", "y"}
        unknown = set(request) - accepted - {"n", "seed", "y"}
        if unknown:
            raise ValueError(f"unknown sampling settings {sorted(unknown)}; this model takes {sorted(accepted)}")
        # Settings a sampling-time sweep chose are the defaults; the request overrides them.
        settings = {**self.state.get("sampling_defaults", {}), **request}
        kwargs.update({k: v for k, v in settings.items() if k in accepted and v is not None})
        return self.model.sample(n, generator=generator, **kwargs).float().cpu().numpy()


def _first_row(model_input) -> dict:
    if hasattr(model_input, "to_dict"):  # pandas DataFrame from pyfunc's schema enforcement
        rows = model_input.to_dict(orient="records")
        return rows[0] if rows else {}
    return dict(model_input)


mlflow.models.set_model(GenrayModel())
