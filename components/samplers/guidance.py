"""Classifier-free guidance: Ho & Salimans 2022, eq. 6, written as uncond + s (cond - uncond).

    denoise = guided_denoiser(net, {"y": y}, {"y": null_y}, guidance_scale=3.0)
    x = ddim_sample(denoise, shape, schedule)

Ho & Salimans' (1 + w) cond - w uncond is the same with s = 1 + w: s = 1 is the plain
conditional model, s = 0 the unconditional one, s > 1 sharpens towards the condition. The
combination is applied to whatever the network outputs (eps, x0 or v); all three are affine in
each other at fixed x_t, so guiding any of them gives the same x0 and eps.
"""
import math
from typing import Callable

import torch
from torch import Tensor

from genray.components.samplers.objective import Denoiser


def _batched(value: Tensor | None, null: Tensor | None, key: str, batch_size: int) -> Tensor | None:
    """cat([cond, null]) along the batch; a null of batch 1 is repeated to the batch size."""
    if value is None or null is None:
        if value is not None or null is not None:
            raise ValueError(f"cond[{key!r}] and null_cond[{key!r}] must both be tensors or both be None")
        return None
    if null.shape[0] == 1 and batch_size > 1:
        null = null.expand(batch_size, *null.shape[1:])
    if value.shape[0] != batch_size or null.shape[0] != batch_size:
        raise ValueError(
            f"cond[{key!r}] and null_cond[{key!r}] need the batch size {batch_size} of x_t first, "
            f"got shapes {tuple(value.shape)} and {tuple(null.shape)}"
        )
    return torch.cat([value, null.to(value.dtype)])  # (2B, ...)


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
        kwargs = {k: _batched(cond[k], null_cond[k], k, B) for k in cond}
        out = net(torch.cat([x_t, x_t]), torch.cat([t, t]), **kwargs)  # (2B, ...)
        out_cond, out_uncond = out[:B], out[B:]  # (B, ...), (B, ...)
        return out_uncond + s * (out_cond - out_uncond)  # Ho & Salimans 2022, eq. 6

    return denoise
