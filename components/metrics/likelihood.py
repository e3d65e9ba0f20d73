"""Bits per dimension: one likelihood scale for every family, on 8-bit images in [-1, 1].

genray stores images as uint8 and trains on x = v / 127.5 - 1, so each pixel value v owns a bin
of width 2/255 centred on x. A model's likelihood is compared on those bins:

    bits/dim = -log2 P(v) / D,   D = C * H * W

Models report log_prob(x) in nats per example, in one of three spaces (the model's
`log_prob_space` attribute):

    "discrete"    log P(v) of the 8-bit bins already (diffusion's discretized decoder, Ho et al.
                  2020 eq. 13; PixelCNN's softmax). Used as it is.
    "continuous"  a density p(x) on [-1, 1]^D (a VAE's Gaussian decoder, a flow). P(v) is the
                  integral of p over v's bin; with uniform dequantization (Theis et al. 2016,
                  sec. 3.1), x~ = x + Δ(u - 1/2), u ~ U[0, 1)^D, Δ = 2/255, Jensen gives

                      -log P(v) <= E_u[-log p(x~)] - D log Δ          (dequantized_nll)

                  so the continuous NLL becomes an upper bound on the discrete one. Without the
                  dequantization noise, a density can put unbounded mass on the grid points and
                  "bits/dim" below zero means nothing.
    "binary"      log P(v) of the image binarised (a pixel is on above the midpoint, 8-bit
                  value >= 128): a Bernoulli RBM's likelihood. Used as it is, so its bits/dim
                  are bits per binary pixel, at most 1, and compare only with other binary
                  models (the binarised-MNIST literature), never with the 8-bit spaces above.

and of one of three kinds (`log_prob_kind`), reported beside every figure:

    "exact"       log p(x) itself (a flow)
    "bound"       a lower bound on log p(x) (VAE's ELBO or IWAE bound, diffusion's variational
                  bound): the bits/dim is an upper bound on the model's true bits/dim
    "estimate"    a stochastic estimate that may err either way (an RBM's AIS estimate of log Z)

    nll = -model.log_prob(dequantize(x, generator=g))      # continuous model
    bpd = bits_per_dim(dequantized_nll(nll, num_dims=x[0].numel()), x[0].numel())
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

KINDS = ("exact", "bound", "estimate")
SPACES = ("discrete", "continuous", "binary")
# What one "dim" of bits/dim is in each space: every report prints it beside the figure.
UNITS = {"discrete": "bits per 8-bit pixel", "continuous": "bits per 8-bit pixel (dequantized)",
         "binary": "bits per binarised pixel"}
LEVELS = 256  # 8-bit pixels
BIN_WIDTH = 2.0 / (LEVELS - 1)  # one pixel value's bin in [-1, 1]


def dequantize(x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """x on the 8-bit grid in [-1, 1] -> x + Δ(u - 1/2), u ~ U[0, 1): uniform within each bin."""
    u = torch.rand(x.shape, generator=generator, dtype=torch.float32).to(x.device)
    return x + BIN_WIDTH * (u.to(x.dtype) - 0.5)


def dequantized_nll(nll_continuous: Tensor, num_dims: int) -> Tensor:
    """-log p(x~) of a density on [-1, 1]^D at dequantized x~ -> an upper bound on -log P(v) of
    the 8-bit bins, nats: add -D log Δ (each bin has volume Δ per dimension)."""
    if num_dims < 1:
        raise ValueError(f"num_dims must be >= 1, got {num_dims}")
    return nll_continuous - num_dims * math.log(BIN_WIDTH)


def bits_per_dim(nll_nats: Tensor, num_dims: int) -> Tensor:
    """Nats per example -> bits per dimension."""
    if num_dims < 1:
        raise ValueError(f"num_dims must be >= 1, got {num_dims}")
    return nll_nats / (num_dims * math.log(2.0))


def likelihood_of(model) -> tuple[str, str]:
    """(space, kind) a model declares for its log_prob, checked against SPACES and KINDS."""
    space = getattr(model, "log_prob_space", None)
    kind = getattr(model, "log_prob_kind", None)
    name = type(model).__name__
    if space not in SPACES:
        raise ValueError(f"{name}.log_prob_space must be one of {', '.join(SPACES)}, got {space!r}")
    if kind not in KINDS:
        raise ValueError(f"{name}.log_prob_kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return space, kind


@torch.no_grad()
def model_bits_per_dim(model, x: Tensor, *, generator: torch.Generator | None = None, **kwargs) -> Tensor:
    """Bits/dim of each 8-bit image in x (B, C, H, W) in [-1, 1] under a model with the log_prob
    capability, (B,); dequantizes first when the model's density is continuous. A binary model's
    figure is bits per binarised pixel (UNITS). kwargs go to log_prob (y, text, ...)."""
    space, _ = likelihood_of(model)
    d = x[0].numel()
    if space == "continuous":
        nll = dequantized_nll(-model.log_prob(dequantize(x, generator=generator), generator=generator, **kwargs), d)
    else:
        nll = -model.log_prob(x, generator=generator, **kwargs)
    return bits_per_dim(nll.double(), d)
