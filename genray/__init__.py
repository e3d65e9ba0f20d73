"""genray: train, sweep, track and serve every family of generative model on Ray.

    import genray

    run = genray.train("vae/vae_digits", overrides={"trainer.max_steps": 200}, workers=0)
    model = genray.load(run.model_uri)            # models:/NAME@ALIAS, models:/NAME/3, a run id, a folder
    images = model.sample(16, seed=0)             # a tensor in the data's own range
    scores = genray.evaluate(run, num_samples=500)
    sweep = genray.tune("vae/sweep_beta_shapes")

The same jobs as the `genray` command (genray.pipelines.cli), with the same config files,
MLflow runs and registered models. The design card's two layers live under this name:
genray.components (pure PyTorch: models, recipes, samplers, data, metrics) and
genray.pipelines (the Ray and MLflow jobs). In a source checkout they are the folders beside this
one; an installed wheel holds them inside it. Importing genray is light: the API's modules (and
torch, Ray, MLflow) load on first use.
"""
from __future__ import annotations

from pathlib import Path as _Path

# A source checkout (a clone, or the copy a Ray job runs in): components/ and pipelines/ sit beside
# this folder, and the checkout's own copies are the ones imported, whatever else is installed.
_checkout = _Path(__file__).resolve().parent.parent
if all((_checkout / layer / "__init__.py").is_file() for layer in ("components", "pipelines")):
    __path__.append(str(_checkout))

__all__ = ["train", "load", "evaluate", "tune", "TrainOutcome", "LoadedModel", "UserError", "__version__"]

_API = {"train": "genray.pipelines.api", "evaluate": "genray.pipelines.api", "tune": "genray.pipelines.api",
        "TrainOutcome": "genray.pipelines.api", "load": "genray.pipelines.sample",
        "LoadedModel": "genray.pipelines.sample", "UserError": "genray.components.errors"}


def __getattr__(name: str):
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("genray")
        except PackageNotFoundError:
            return "0+source"
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'genray' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
