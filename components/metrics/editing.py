"""How well an edit along an attribute direction (components/models/directions.py) changes that
attribute and keeps the others, read by a classifier with one head per attribute (the domain
classifier: its main head for the class, one head per generative factor on shapes).

Each image is compared with its own reconstruction, decode(encode(x)), not with x: what the
autoencoder loses anyway is not the edit's doing. For direction d of attribute a, at amount t:

    edited   = decode(encode(x) + t d)
    control  = decode(encode(x) + t r),  r a random direction of d's length
    moved    (categorical, value v)  among rows whose reconstruction the head does not call v,
                                     the share it calls v after the edit
    shift    (continuous)            mean change of the head's expected bin, E_p[bin] =
                                     sum_k p_k k over its ordered bins, edited - reconstructed
    kept                             over every other attribute b with a head, the share of rows
                                     whose predicted b is unchanged, averaged over b

The control says what moving that far in latent space does without aiming: a direction earns its
name when `moved` (or `shift`) is well above the control's and `kept` is close to it.
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from genray.components.models.directions import CATEGORICAL, Directions


@dataclass(frozen=True)
class EditScore:
    direction: str
    attribute: str
    kind: str  # categorical | continuous
    effect: float  # moved (share) or shift (bins)
    effect_control: float
    kept: float | None  # None: no other attribute has a head
    kept_control: float | None


@torch.no_grad()
def edit_scores(model, directions: Directions, x: Tensor, heads: Callable[[Tensor], dict[str, Tensor]], *,
                amount: float = 1.0, seed: int = 0, batch_size: int = 256) -> list[EditScore]:
    """One EditScore per direction whose attribute `heads` reads. x (N, C, H, W) in [-1, 1];
    heads(images) -> {attribute name: logits (B, K)}, the K bins ordered for a continuous one."""

    def decoded(z: Tensor) -> Tensor:
        return torch.cat([model.decode(z[i : i + batch_size]).float() for i in range(0, len(z), batch_size)])

    def read(images: Tensor) -> dict[str, Tensor]:
        parts = [heads(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        return {k: torch.cat([p[k].float() for p in parts]).softmax(1) for k in parts[0]}

    z = torch.cat([model.encode(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)])
    base = read(decoded(z))
    gen = torch.Generator().manual_seed(seed)
    scores = []
    for k, name in enumerate(directions.names):
        attribute = directions.attribute(name)
        if attribute.name not in base:
            continue
        d = directions.vectors[k]
        r = torch.randn(d.shape, generator=gen, dtype=d.dtype)
        r = r * (d.norm() / r.norm())
        moved = [read(decoded(z + amount * v.reshape(directions.latent_shape))) for v in (d, r)]
        others = [b for b in base if b != attribute.name]
        if attribute.kind == CATEGORICAL:
            value = attribute.values.index(name.split("=", 1)[1])
            before = base[attribute.name].argmax(1)
            rows = before != value
            effect = [float((m[attribute.name].argmax(1)[rows] == value).float().mean()) if rows.any() else float("nan")
                      for m in moved]
        else:
            bins = torch.arange(base[attribute.name].shape[1], dtype=torch.float32)
            expected = lambda p: p @ bins  # noqa: E731
            effect = [float((expected(m[attribute.name]) - expected(base[attribute.name])).mean()) for m in moved]
        kept = [float(np.mean([(m[b].argmax(1) == base[b].argmax(1)).float().mean().item() for b in others]))
                if others else None for m in moved]
        scores.append(EditScore(name, attribute.name, attribute.kind, effect[0], effect[1], kept[0], kept[1]))
    return scores


def summary(scores: list[EditScore]) -> dict[str, float]:
    """Means over directions, by kind: edit_moved(_control), edit_shift(_control), edit_kept(_control)."""
    out = {}
    for kind, key in ((CATEGORICAL, "edit_moved"), ("continuous", "edit_shift")):
        rows = [s for s in scores if s.kind == kind]
        if rows:
            out[key] = float(np.nanmean([s.effect for s in rows]))
            out[f"{key}_control"] = float(np.nanmean([s.effect_control for s in rows]))
    kept = [s for s in scores if s.kept is not None]
    if kept:
        out["edit_kept"] = float(np.mean([s.kept for s in kept]))
        out["edit_kept_control"] = float(np.mean([s.kept_control for s in kept]))
    return out
