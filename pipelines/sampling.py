"""Sampling settings as a user gives them, checked against the type the model declares.

Every family declares `sampling_settings`, a pydantic model of the keyword settings its `sample`
takes (ranges, defaults, descriptions; components/models/protocol.py). `genray eval --set
sampling.KEY=VALUE`, a sweep's `tune.space.sampling.KEY` and the MLflow pyfunc's request all go
through `resolve`, so a mistake reads the same everywhere: one line naming the setting, the value
and what the model allows. Nothing here knows any family's settings.
"""
from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from genray.components.errors import UserError
from genray.components.models.protocol import settings_for
from genray.pipelines.config import ConfigError


def parse_overrides(overrides: list[str], *, prefix_required: bool = True) -> dict[str, Any]:
    """`--set sampling.KEY=VALUE` items (values parsed as YAML) -> {KEY: value}. With
    prefix_required=False (`genray sample`, where every --set is a sampling setting) the
    `sampling.` prefix may be left out."""
    out = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        bare = key.removeprefix("sampling.")
        if not sep or not bare or "." in bare or (prefix_required and bare == key):
            expected = ("sampling.KEY=VALUE, e.g. --set sampling.guidance_scale=2" if prefix_required
                        else "KEY=VALUE, e.g. --set temperature=0.8")
            raise ConfigError(f"--set {item!r}: expected {expected}")
        out[bare] = yaml.safe_load(value)
    return out


def resolve(model, given: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None, *,
            label: str = "sampling.") -> BaseModel:
    """The model's settings with `defaults` (a checkpoint's sampling_defaults) and then `given`
    applied. A bad key or value is a UserError; `label` is how the user wrote the key's prefix
    ("--set sampling.", "tune.space.sampling.")."""
    try:
        return settings_for(model, given, defaults)
    except ValidationError as e:
        raise UserError("; ".join(explain(err, model.sampling_settings, label)
                                  for err in e.errors(include_url=False))) from None


def explain(err: dict[str, Any], settings: type[BaseModel], label: str) -> str:
    """One pydantic error of a settings type as a line that names the setting and what is allowed."""
    msg = err["msg"].removeprefix("Value error, ")
    if not err["loc"]:  # a check across settings (a model validator)
        return f"{label.removesuffix('.')}: {msg}"
    key = str(err["loc"][0])
    if err["type"] == "extra_forbidden" or key not in settings.model_fields:
        return f"{label}{key}: this model's sampler takes {takes(settings)}"
    return f"{label}{key}={err.get('input')!r}: {msg}; allowed: {allowed(settings, key)}"


def takes(settings: type[BaseModel]) -> str:
    """'sampling.a, sampling.b', or 'no settings'."""
    return ", ".join(f"sampling.{k}" for k in sorted(settings.model_fields)) or "no settings"


def allowed(settings: type[BaseModel], key: str) -> str:
    """What a setting accepts, read from its type: 'an integer >= 1 and <= 50 (default 20)',
    "one of 'ddim', 'ddpm' (default 'ddim')"."""
    schema = settings.model_json_schema()
    text = _describe(schema["properties"][key], schema.get("$defs", {}))
    field = settings.model_fields[key]
    if not field.is_required():
        text += f" (default {field.get_default(call_default_factory=True)!r})"
    return text


def is_integer(settings: type[BaseModel], key: str) -> bool:
    """Whether a setting takes only integers (a sweep must not draw fractions for it)."""
    schema = settings.model_json_schema()
    node = _deref(schema["properties"][key], schema.get("$defs", {}))
    types = {_deref(n, schema.get("$defs", {})).get("type") for n in node.get("anyOf", [node])} - {"null"}
    return types == {"integer"}


def _deref(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    return defs.get(ref.rsplit("/", 1)[-1], node) if ref else node


def _describe(node: dict[str, Any], defs: dict[str, Any]) -> str:
    node = _deref(node, defs)
    if "anyOf" in node:
        return " or ".join(_describe(n, defs) for n in node["anyOf"])
    if "enum" in node:
        return "one of " + ", ".join(repr(v) for v in node["enum"])
    if "const" in node:
        return repr(node["const"])
    kind = node.get("type")
    if kind in ("integer", "number"):
        bounds = [f"{op} {node[k]}" for k, op in (("minimum", ">="), ("exclusiveMinimum", ">"),
                                                  ("maximum", "<="), ("exclusiveMaximum", "<")) if k in node]
        return ("an integer" if kind == "integer" else "a number") + (" " + " and ".join(bounds) if bounds else "")
    return {"boolean": "true or false", "string": "a string", "null": "null"}.get(kind, "a value of its type")
