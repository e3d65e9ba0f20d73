"""RealNVP (Dinh et al. 2017, "Density estimation using Real NVP"): affine coupling layers with
checkerboard and channel-wise masks, squeezes and multi-scale factoring-out, on the logit of
the pixels; its log-likelihood is exact.

    images   logit(x) (alpha = 0.05, sec. 4.1), then per scale but the last: 3 checkerboard
             couplings, squeeze, 3 channel-wise couplings, half the channels factored out under
             N(0, I); the last scale: 4 checkerboard couplings (sec. 3.6, 4.1)
    points   affine couplings with alternating masks and MLP nets (the 2-D toys of fig. 1)

Each coupling's s is bounded, scale * tanh(raw), as in the paper's code. The s, t network is a
small conv net (flow_layers.ConvNet) rather than the paper's deep ResNet with batch norm: batch
statistics would make log p(x) depend on the batch. Images need sides that halve levels - 1
times and stay at least 2 (a checkerboard on one pixel would pass everything or nothing): with
the default levels = 2, 8x8 digits end at 4x4; Fashion-MNIST (stored padded to 32x32) takes
levels = 3 and ends at 8x8.
"""
from typing import Annotated, Literal

from pydantic import Field

from genray.components.data import DatasetInfo
from genray.components.models.flow_layers import (AffineCoupling, ConvNet, FlowModel, Logit, MLPNet, MultiScaleFlow,
                                                  Split, Squeeze, TopPrior, channel_mask, check_data,
                                                  checkerboard_mask)

# hidden width of each coupling's network; couplings of a points flow
SIZES = {"tiny": (8, 4), "small": (64, 8), "base": (128, 12)}


def image_flow(shape: tuple[int, int, int], *, levels: int, hidden: int, alpha: float) -> MultiScaleFlow:
    """Dinh et al. 2017, sec. 3.6 and 4.1: the multi-scale architecture on (C, H, W) images."""
    c, h, w = shape

    def checkerboards(n: int, c: int, h: int, w: int) -> list[AffineCoupling]:
        return [AffineCoupling(ConvNet(c, hidden), checkerboard_mask(c, h, w, i % 2)) for i in range(n)]

    stages, splits = [], []
    for _ in range(levels - 1):
        stage = checkerboards(3, c, h, w) + [Squeeze()]
        c, h, w = 4 * c, h // 2, w // 2
        stage += [AffineCoupling(ConvNet(c, hidden), channel_mask(c, i % 2, (h, w))) for i in range(3)]
        stages.append(stage)
        splits.append(Split(c, learned=False))  # half the dimensions leave at each scale
        c = c // 2  # the kept half goes on (Split keeps the first C // 2 channels)
    stages.append(checkerboards(4, c, h, w))
    return MultiScaleFlow([Logit(alpha)], stages, splits, TopPrior((c, h, w), learned=False), shape)


def points_flow(dims: int, *, couplings: int, hidden: int) -> MultiScaleFlow:
    """Alternating-mask couplings with MLP nets on (D,) points, a standard normal base."""
    layers = [AffineCoupling(MLPNet(dims, hidden), channel_mask(dims, i % 2)) for i in range(couplings)]
    return MultiScaleFlow([], [layers], [], TopPrior((dims,), learned=False), (dims,))


def build_realnvp(
    *,
    data: DatasetInfo,
    size: Literal["tiny", "small", "base"] = "small",
    levels: Annotated[int, Field(ge=1, le=6)] = 2,
    alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.05,
) -> FlowModel:
    """RealNVP on images (levels scales, the logit's alpha) or on points (size sets the depth)."""
    hidden, couplings = SIZES[size]

    def levels_ok(h: int, w: int) -> str | None:
        if min(h, w) >> (levels - 1) < 2:
            return (f"levels = {levels} halves the sides {levels - 1} times and the last scale's checkerboard "
                    f"needs at least 2x2 pixels; use levels <= {min(h, w).bit_length() - 1} for this image size "
                    "(model.levels in the config)")
        return None

    shape = check_data(data, "realnvp", levels_ok)
    if len(shape) == 1:
        flow = points_flow(shape[0], couplings=couplings, hidden=max(hidden, 32))
    else:
        flow = image_flow(shape, levels=levels, hidden=hidden, alpha=alpha)
    return FlowModel(family="realnvp", flow=flow, data_init=False)
