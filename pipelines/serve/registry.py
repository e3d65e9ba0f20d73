"""The MLflow registry, read safely: which version an alias names, and that version rebuilt.

A served model is a registered genray checkpoint: safetensors weights and state.json, rebuilt by
the family's own code (components.checkpoint.build_model). Nothing is unpickled, neither
MLflow's pyfunc wrapper nor an optimizer file.

    resolve_versions(uri, ["vae-digits"], "champion")   -> {"vae-digits": "3"}
    load_version(uri, home, "vae-digits", "3")           -> Loaded(model, state, ...)
    check_versions(uri, home, {"vae-digits": "3"})       a bad checkpoint is one ConfigError here

What an app serves is written in the registry too, as a tag on each registered model
(`serving_tag("genray")` = "genray.serve.genray.version"): `genray serve` sets it, `--reload` moves
it, and every replica reads it (`serving_version`) and swaps when it names another version.
An alias is where training points; the tag is what is served: only --reload copies one onto the
other.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genray.components.checkpoint import build_model
from genray.components.errors import UserError
from genray.pipelines import tracking
from genray.pipelines.config import ConfigError


@dataclass
class Loaded:
    """One registered version, rebuilt: the model in eval mode and its checkpoint state."""

    name: str
    version: str
    model: Any
    state: dict[str, Any]
    family: str
    run_id: str | None
    # Attribute directions `genray directions` stored for this version (its tag
    # genray.directions): what POST /edit moves images along. None: the version has none.
    directions: Any = None

    @property
    def sampling_defaults(self) -> dict[str, Any]:
        """Sampling settings a sweep chose for this checkpoint (over the model's own defaults)."""
        return dict(self.state.get("sampling_defaults") or {})


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


def load_version(uri: str, home: str | Path, name: str, version: str, *, device: str = "cpu") -> Loaded:
    """Registered model NAME at VERSION, downloaded to <home>/cache/serve and rebuilt from its
    safetensors weights and state.json.

    Raises UserError with a plain message when the version is not a genray checkpoint or holds
    weights that are not safetensors (a pickle is refused unread)."""
    from safetensors import SafetensorError


    ref = f"models:/{name}/{version}"
    ckpt_dir = tracking.resolve_checkpoint(ref, uri, Path(home) / "cache" / "serve")
    try:
        model, state = build_model(ckpt_dir, map_location=device, with_optimizer=False)
    except SafetensorError as e:
        raise UserError(f"{ref}: the weights are not a safetensors file ({e}); genray loads no pickled weights") from None
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise UserError(f"{ref}: state.json does not describe a genray model ({e})") from None
    directions = None
    if {"encode", "decode"} <= set(model.capabilities):
        directions = tracking.version_directions(uri, home, name, str(version))
        if directions is not None and tuple(directions.latent_shape) != tuple(model.latent_shape):
            raise UserError(f"{ref}: its directions (tag {tracking.DIRECTIONS_TAG}) are for latents "
                            f"{list(directions.latent_shape)}, but the model's are {list(model.latent_shape)}; "
                            f"run `genray directions {ref}` again")
    return Loaded(name, str(version), model, state, state["model"]["family"], state.get("mlflow_run_id"), directions)


def check_versions(uri: str, home: Path, versions: dict[str, str]) -> None:
    """Load each version once in this process, so a bad checkpoint is one plain error here rather
    than a replica Serve restarts forever."""
    for name, version in versions.items():
        try:
            load_version(uri, home, name, version)
        except UserError as e:
            raise ConfigError(str(e)) from None


# --------------------------------------------------------------------- the version an app serves


def serving_tag(app_name: str) -> str:
    """The registered-model tag naming the version Serve app APP_NAME serves of that model."""
    return f"genray.serve.{re.sub(r'[^A-Za-z0-9_-]', '_', app_name)}.version"


def set_serving_versions(uri: str, tag: str, versions: dict[str, str]) -> None:
    """Point `tag` of each model at its version: replicas that follow the tag swap to it."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for name, version in versions.items():
        client.set_registered_model_tag(name, tag, str(version))


def serving_version(uri: str, name: str, tag: str) -> str | None:
    """The version `tag` of registered model NAME names; None when it has no such tag."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri).get_registered_model(name).tags.get(tag)
