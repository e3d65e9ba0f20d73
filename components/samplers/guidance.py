"""Classifier-free guidance: Ho & Salimans 2022, eq. 6, written as uncond + s (cond - uncond).

    denoise = guided_denoiser(net, {"y": y}, {"y": null_y}, guidance_scale=3.0)
    x = ddim_sample(denoise, shape, schedule)

Ho & Salimans' (1 + w) cond - w uncond is the same with s = 1 + w: s = 1 is the plain
conditional model, s = 0 the unconditional one, s > 1 sharpens towards the condition. The
combination is applied to whatever the network outputs (eps, x0 or v); all three are affine in
each other at fixed x_t, so guiding any of them gives the same x0 and eps.

Composed guidance (Liu et al. 2022) sums several conditions' guidance terms: a prompt
"a red square on the left AND a blue heart on the right" guides towards each part at once
(split_prompt, composed_denoiser).
"""
import math
from typing import Callable

import torch
from torch import Tensor

from genray.components.samplers.objective import Denoiser


def _batched(values: list[Tensor | None], null: Tensor | None, key: str, batch_size: int) -> Tensor | None:
    """cat([*values, null]) along the batch: each condition's branch, then the null one; a null
    of batch 1 is repeated to the batch size. All None (a key the model takes as None) is None."""
    if null is None or any(v is None for v in values):
        if null is not None or any(v is not None for v in values):
            raise ValueError(f"cond[{key!r}] and null_cond[{key!r}] must both be tensors or both be None")
        return None
    if null.shape[0] == 1 and batch_size > 1:
        null = null.expand(batch_size, *null.shape[1:])
    for v in (*values, null):
        if v.shape[0] != batch_size:
            raise ValueError(
                f"cond[{key!r}] and null_cond[{key!r}] need the batch size {batch_size} of x_t first, "
                f"got shapes {[tuple(v.shape) for v in values]} and {tuple(null.shape)}"
            )
    return torch.cat([*values, null.to(values[0].dtype)])  # ((K + 1) B, ...)


def guided_denoiser(
    net: Callable[..., Tensor], cond: dict[str, Tensor], null_cond: dict[str, Tensor], guidance_scale: float
) -> Denoiser:
    """A denoise(x_t, t) for the samplers that calls net(x_t, t, **cond_kwargs) with guidance.

    cond and null_cond hold the same keys (e.g. y (B,), context (B, L, D), context_mask (B, L)),
    batch first; None values are passed through as None, and a null_cond tensor of batch 1
    is repeated to the batch. For scale 1 only the conditional branch runs, for scale 0 only
    the unconditional one, otherwise one forward pass on the doubled batch; an empty cond
    (an unconditional model) just calls net(x_t, t).
    """
    if not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale must be a finite number (1 = no guidance), got {guidance_scale}")
    if set(cond) != set(null_cond):
        raise ValueError(
            f"cond and null_cond must have the same keys, got {sorted(cond)} and {sorted(null_cond)}"
        )
    s = float(guidance_scale)

    if not cond:
        return lambda x_t, t: net(x_t, t)
    if s == 1.0:
        return lambda x_t, t: net(x_t, t, **cond)
    if s == 0.0:
        return lambda x_t, t: net(x_t, t, **null_cond)

    def denoise(x_t: Tensor, t: Tensor) -> Tensor:
        B = x_t.shape[0]
        kwargs = {k: _batched([cond[k]], null_cond[k], k, B) for k in cond}
        out = net(torch.cat([x_t, x_t]), torch.cat([t, t]), **kwargs)  # (2B, ...)
        out_cond, out_uncond = out[:B], out[B:]  # (B, ...), (B, ...)
        return out_uncond + s * (out_cond - out_uncond)  # Ho & Salimans 2022, eq. 6

    return denoise


# ----------------------------------------------------------------------------- composition

AND = " AND "  # how a prompt names the concepts to compose: "a red square on the left AND a blue heart"


def split_prompt(prompt: str) -> list[str]:
    """A prompt's concepts for composed guidance: the parts between " AND " (upper case, with the
    spaces, as Liu et al. 2022 write them), stripped. A prompt without one is one concept."""
    parts = [p.strip() for p in prompt.split(AND)]
    if len(parts) > 1 and not all(parts):
        raise ValueError(f"prompt {prompt!r}: every part around ' AND ' must name something")
    return parts


def composed_denoiser(
    net: Callable[..., Tensor], conds: list[dict[str, Tensor]], null_cond: dict[str, Tensor], weights: Tensor
) -> Denoiser:
    """Composed guidance, the conjunction of Liu et al. 2022 (Composable Diffusion, eq. 10):

        out = out(x_t | null) + sum_i w_i (out(x_t | c_i) - out(x_t | null))

    conds: K condition dicts with the same keys as null_cond, each batch first (B, ...); weights
    (K, B): w_i per sample, 0 where sample b has no concept i (its conds entry is then ignored).
    With K = 1 it is classifier-free guidance at scale w (guided_denoiser). One forward pass of
    the K + 1 branches on a (K + 1) B batch.
    """
    if not conds:
        raise ValueError("composed_denoiser: give at least one condition")
    K = len(conds)
    if weights.ndim != 2 or weights.shape[0] != K:
        raise ValueError(f"composed_denoiser: weights must be (K={K}, B), got {tuple(weights.shape)}")
    if not torch.isfinite(weights).all():
        raise ValueError("composed_denoiser: weights must be finite")
    for c in conds:
        if set(c) != set(null_cond):
            raise ValueError(f"every condition needs the keys of null_cond {sorted(null_cond)}, got {sorted(c)}")

    def denoise(x_t: Tensor, t: Tensor) -> Tensor:
        B = x_t.shape[0]
        kwargs = {k: _batched([c[k] for c in conds], null, k, B) for k, null in null_cond.items()}
        out = net(x_t.repeat(K + 1, *([1] * (x_t.ndim - 1))), t.repeat(K + 1), **kwargs)
        out = out.view(K + 1, B, *out.shape[1:])
        uncond = out[K]  # (B, ...)
        w = weights.to(out.device, out.dtype).view(K, B, *([1] * (out.ndim - 2)))
        return uncond + (w * (out[:K] - uncond)).sum(0)  # Liu et al. 2022, eq. 10

    return denoise
