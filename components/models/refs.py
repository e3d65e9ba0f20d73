"""A trained model that another model's builder takes, frozen: latent diffusion's autoencoder,
a VQ tokenizer, a distillation teacher, a CLIP text tower. One type for all of them.

In a config it is a string: `models:/NAME@ALIAS`, `models:/NAME/VERSION` (or `latest`),
`runs:/RUN_ID`, or a checkpoint directory. A builder declares it by annotation,

    def build_diffusion(*, data: DatasetInfo, autoencoder: ModelRef | None = None, ...)

and the pipeline resolves every such argument the same way, on the driver, before the builder
runs (pipelines/refs.py): the reference gains the referenced model's family, arguments and data
description, and on a fresh run its weights. `components.models.build` then makes the frozen
module (`ref.module`) before calling the builder.
A checkpoint stores the resolved reference without weights (the frozen module is a submodule,
so its weights are in the checkpoint's own safetensors) and rebuilds without the registry.
"""
from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from genray.components.errors import UserError


SCHEMES = ("models:/", "runs:/")


@dataclass(frozen=True)
class ModelRef:
    ref: str
    family: str | None = None
    args: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    weights: bytes | None = field(default=None, repr=False, compare=False)  # safetensors, in transit only
    # The frozen model itself, made by components.models.build before the builder runs.
    module: nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def resolved(self) -> bool:
        return self.family is not None

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "family": self.family, "args": self.args, "data": self.data}

    # A ModelRef validates from its string form (configs) or its JSON form (checkpoints).
    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any):
        return reference_schema(cls)

    @classmethod
    def parse(cls, value: Any) -> "ModelRef":
        if isinstance(value, ModelRef):
            return value
        if isinstance(value, dict) and isinstance(value.get("ref"), str):
            return cls(value["ref"], value.get("family"), value.get("args"), value.get("data"))
        if isinstance(value, str) and value.strip():
            return cls(value.strip())
        raise ValueError("a model reference: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID or a checkpoint directory")


def reference_schema(cls):
    """The pydantic schema of a reference type (ModelRef, retrieval.IndexRef): it validates from a
    config's string or a checkpoint's JSON with `cls.parse`, and serialises to its `ref` string."""
    from pydantic_core import core_schema

    return core_schema.no_info_plain_validator_function(
        cls.parse, json_schema_input_schema=core_schema.str_schema(),
        serialization=core_schema.plain_serializer_function_ser_schema(lambda r: r.ref if isinstance(r, cls) else r),
    )


def frozen_module(ref: ModelRef, owner: str, arg: str, families: tuple[str, ...] | None = None,
                  what: str = "") -> nn.Module:
    """The frozen module a builder's reference brought (`components.models.build` makes it), and,
    with `families`, checked to be of one of them, `what` saying what the argument must be:
    `owner: model.arg REF is a FAMILY; it must be WHAT`. One check for every model reference."""
    if ref.module is None:
        raise UserError(f"{owner}: model.{arg} {ref.ref} was not loaded; build models with components.models.build")
    if families is not None and ref.family not in families:
        raise UserError(f"{owner}: model.{arg} {ref.ref} is a {ref.family}; it must be {what}")
    return ref.module


def ref_arguments(builder: Callable[..., Any]) -> list[str]:
    """The builder's arguments annotated ModelRef (or ModelRef | None)."""
    hints = typing.get_type_hints(builder)
    out = []
    for name in inspect.signature(builder).parameters:
        hint = hints.get(name)
        if hint is ModelRef or ModelRef in typing.get_args(hint):
            out.append(name)
    return out


def as_json(args: dict[str, Any]) -> dict[str, Any]:
    """Builder arguments with every reference (a ModelRef, a retrieval IndexRef: anything with a
    `to_json`) in its JSON form (for state.json)."""
    return {k: v.to_json() if hasattr(v, "to_json") else v for k, v in args.items()}
