"""Glow (Kingma & Dhariwal 2018, "Glow: Generative Flow with Invertible 1x1 Convolutions"): steps
of ActNorm, an invertible 1x1 convolution and an affine coupling, in a multi-scale architecture
with a learned prior; exact log-likelihood, sampling at a temperature, and a latent space to
encode into, decode from and interpolate in.

    images   per level: squeeze, K steps of [ActNorm -> InvConv1x1 (LU) -> affine coupling], then
             (all but the last level) half the channels split off under a Gaussian whose mean and
             scale a zero-initialised conv reads from the other half; the top has a learned
             per-element Gaussian (sec. 3, fig. 2; their code's split2d and learntop)
    points   K steps of [ActNorm -> invertible linear map (LU) -> affine coupling]

ActNorm is initialised from the first training batch (sec. 3.1) through the Backprop recipe's
`init` hook. The coupling's scale is sigmoid(raw + 2), as in the paper's code. Images need sides
that halve `levels` times: 8x8 digits take levels = 2 (ending at 2x2), Fashion-MNIST (stored
padded to 32x32) levels = 3 (4x4).
"""
from typing import Annotated, Literal

import torch
from pydantic import Field

from genray.components.data import DatasetInfo
from genray.components.models.flow_layers import (ActNorm, AffineCoupling, ConvNet, FlowModel, InvConv1x1, Logit,
                                                  MLPNet, MultiScaleFlow, Split, Squeeze, TopPrior, channel_mask,
                                                  check_data)

# hidden width of each coupling's network, steps per level (K)
SIZES = {"tiny": (8, 2), "small": (64, 8), "base": (256, 16)}


def step(c: int, net, spatial: tuple[int, int] | None, generator: torch.Generator) -> list:
    """One step of flow (Kingma & Dhariwal 2018, fig. 2a, table 1)."""
    return [ActNorm(c), InvConv1x1(c, generator=generator),
            AffineCoupling(net, channel_mask(c, 0, spatial), scale="sigmoid")]


def image_flow(shape: tuple[int, int, int], *, levels: int, steps: int, hidden: int,
               logit: float | None = None) -> MultiScaleFlow:
    """Kingma & Dhariwal 2018, fig. 2b: the multi-scale architecture (Dinh et al. 2017, sec. 3.6),
    on the pixels themselves or (logit = alpha) on RealNVP's logit of them."""
    c, h, w = shape
    gen = torch.Generator().manual_seed(0)  # the 1x1 convs' initial rotations; the weights are saved anyway
    stages, splits = [], []
    for level in range(levels):
        c, h, w = 4 * c, h // 2, w // 2
        stage: list = [Squeeze()]
        for _ in range(steps):
            stage += step(c, ConvNet(c, hidden), (h, w), gen)
        stages.append(stage)
        if level < levels - 1:
            splits.append(Split(c, learned=True))
            c = c // 2
    pre = [] if logit is None else [Logit(logit)]
    return MultiScaleFlow(pre, stages, splits, TopPrior((c, h, w), learned=True), shape)


def points_flow(dims: int, *, steps: int, hidden: int) -> MultiScaleFlow:
    gen = torch.Generator().manual_seed(0)
    layers = [layer for _ in range(steps) for layer in step(dims, MLPNet(dims, hidden), None, gen)]
    return MultiScaleFlow([], [layers], [], TopPrior((dims,), learned=True), (dims,))


def build_glow(
    *,
    data: DatasetInfo,
    size: Literal["tiny", "small", "base"] = "small",
    levels: Annotated[int, Field(ge=1, le=6)] = 2,
    steps: Annotated[int, Field(ge=1)] | None = None,
    logit: Annotated[float, Field(gt=0, lt=0.5)] | None = None,
) -> FlowModel:
    """Glow on images (levels, K = steps per level; None: the size's) or on points (steps).
    logit: model RealNVP's logit of the pixels with this alpha (Dinh et al. 2017, sec. 4.1)
    instead of the pixels, as Glow's paper does; its log-det is counted, so bits/dim stay exact
    and comparable (None: the pixels)."""
    hidden, default_steps = SIZES[size]
    steps = steps or default_steps

    def levels_ok(h: int, w: int) -> str | None:
        if min(h, w) >> levels < 1:
            return (f"levels = {levels} squeezes the sides {levels} times; use levels <= "
                    f"{min(h, w).bit_length() - 1} for this image size (model.levels in the config)")
        return None

    shape = check_data(data, "glow", levels_ok)
    if len(shape) == 1:
        flow = points_flow(shape[0], steps=steps, hidden=max(hidden, 32))
    else:
        flow = image_flow(shape, levels=levels, steps=steps, hidden=hidden, logit=logit)
    return FlowModel(family="glow", flow=flow, data_init=True)
