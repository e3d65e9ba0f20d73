"""Model references in a config (`model.autoencoder: models:/shapes-autoencoder@champion`),
resolved on the driver the same way for every family and every argument typed ModelRef: the
referenced checkpoint is found (registry, run or directory), and the reference gains that
model's family, arguments, data description and weights. Builders then receive it through
components.models.build, which makes the frozen module.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import save as save_safetensors

from genray.components import checkpoint
from genray.components.errors import UserError
from genray.components.models import FAMILIES
from genray.components.models.refs import ModelRef, ref_arguments
from genray.components.models.retrieval import IndexRef, index_arguments
from genray.pipelines import tracking
from genray.pipelines.config import ConfigError


def resolve_refs(family: str, args: dict[str, Any], *, uri: str, cache: Path) -> dict[str, Any]:
    """`args` with every ModelRef argument resolved (weights included), and every retrieval
    index (IndexRef) read from its folder (`cache` is <home>/cache; indexes live in <home>/indexes)."""
    out = dict(args)
    for name in ref_arguments(FAMILIES[family]):
        if out.get(name) is None:
            continue
        ref = ModelRef.parse(out[name])
        try:
            ckpt_dir = tracking.resolve_checkpoint(ref.ref, uri, cache)
        except UserError as e:
            raise ConfigError(f"model.{name}: {e}") from None
        ck = checkpoint.load(ckpt_dir, with_optimizer=False)
        spec = ck.state.get("model", {})
        if "data" not in spec:
            raise ConfigError(f"model.{name}: {ref.ref} is a checkpoint from an older genray (no data description); "
                              "retrain it")
        weights = ck.ema if ck.ema is not None else ck.model
        out[name] = ModelRef(ref.ref, spec["family"], spec["args"], spec["data"],
                             save_safetensors({k: v.contiguous() for k, v in weights.items()}))
    for name in index_arguments(FAMILIES[family]):  # retrieval indexes: a name under <home>/indexes or a folder
        if out.get(name) is None:
            continue
        ref = IndexRef.parse(out[name])
        if ref.resolved and ref.index is None:
            raise ConfigError(f"model.{name}: give the index's name or folder, not its description")
        from genray.pipelines.retrieval import resolve_index

        try:
            out[name] = IndexRef.of(ref.ref, resolve_index(ref.ref, cache.parent, field_name=f"model.{name}"))
        except UserError as e:
            raise ConfigError(str(e)) from None
    return out
