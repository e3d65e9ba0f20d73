"""The pieces normalizing flows are built from, shared by RealNVP (realnvp.py) and Glow (glow.py).

Every layer is a bijection with `forward(x) -> (y, logdet)` and `inverse(y) -> x`, where logdet
is log|det dy/dx| per example, (B,). The layers take images (B, C, H, W) or vectors (B, D) (a
vector is an image of one pixel: every per-channel statement below holds for it with H = W = 1).

    Logit           RealNVP's pre-transform of [-1, 1] pixels onto the real line (Dinh et al. 2017, sec. 4.1)
    ActNorm         per-channel affine with data-dependent init (Kingma & Dhariwal 2018, sec. 3.1)
    InvConv1x1      invertible 1x1 convolution in LU form (Kingma & Dhariwal 2018, sec. 3.2, eq. 10)
    AffineCoupling  y_b = x_b, y_~b = x_~b * s(x_b) + t(x_b), masked (Dinh et al. 2017, eq. 7-9)
    Squeeze         (C, H, W) -> (4C, H/2, W/2) (Dinh et al. 2017, sec. 3.6)
    Split           factor half the channels out under a prior: N(0, I) (RealNVP) or a Gaussian
                    whose mean and scale a zero-initialised conv reads off the kept half (Glow)
    TopPrior        the prior of what is left at the last scale: N(0, I), or learned per element
    MultiScaleFlow  the levels strung together: x -> latents, log p(x) by the change of variables
    FlowModel       a MultiScaleFlow as a genray model (objective, sampling, latents, input checks)
"""
import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import Tensor, nn

from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.metrics.likelihood import BIN_WIDTH, bits_per_dim, dequantize, dequantized_nll
from genray.components.models.layers import check_image_shape, randn
from genray.components.models.protocol import SETTINGS_CONFIG
from genray.components.training import Backprop

LOG_2PI = math.log(2 * math.pi)


def sum_per_example(t: Tensor) -> Tensor:
    return t.flatten(1).sum(dim=1)


def pixels(x: Tensor) -> int:
    """H * W of an image batch, 1 for vectors: how often a per-channel log-scale counts."""
    return x.shape[2] * x.shape[3] if x.dim() == 4 else 1


def channel_view(v: Tensor, x: Tensor) -> Tensor:
    """A per-channel vector (C,) shaped to broadcast over x: (1, C, 1, 1) or (1, C)."""
    return v.view(1, -1, 1, 1) if x.dim() == 4 else v.view(1, -1)


def gaussian_log_prob(z: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log N(z; mean, exp(log_scale)^2) summed per example, (B,)."""
    return sum_per_example(-0.5 * (LOG_2PI + ((z - mean) * torch.exp(-log_scale)) ** 2) - log_scale)


# ---------------------------------------------------------------------------------------------
# The bijections
# ---------------------------------------------------------------------------------------------


class Logit(nn.Module):
    """x in [-1, 1] -> logit(alpha + (1 - 2 alpha) (x + 1) / 2), each pixel.

    Dinh et al. 2017, sec. 4.1: model the logit of the pixel rather than the bounded pixel, with
    alpha = 0.05 keeping the boundary values away from +-infinity. Its log-det is part of log
    p(x): d/dx logit(p) = (1 - 2 alpha) / 2 * 1 / (p (1 - p)).
    """

    def __init__(self, alpha: float = 0.05):
        super().__init__()
        if not 0 < alpha < 0.5:
            raise ValueError(f"logit alpha must be in (0, 0.5), got {alpha}")
        self.alpha = alpha

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        p = self.alpha + (1 - 2 * self.alpha) * (x + 1) / 2
        y = torch.log(p) - torch.log1p(-p)
        logdet = sum_per_example(math.log((1 - 2 * self.alpha) / 2) - torch.log(p) - torch.log1p(-p))
        return y, logdet

    def inverse(self, y: Tensor) -> Tensor:
        p = torch.sigmoid(y)
        return 2 * (p - self.alpha) / (1 - 2 * self.alpha) - 1


class ActNorm(nn.Module):
    """y = (x + bias) * exp(log_scale), per channel (Kingma & Dhariwal 2018, sec. 3.1, table 1:
    log-det = H W sum(log|s|)).

    Initialised from data: `initialize(x)` sets bias and scale so that this layer's output on x
    has zero mean and unit variance per channel. MultiScaleFlow.initialize runs it layer by
    layer on the first training batch (the recipe's `init` hook)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        dims = [0, 2, 3] if x.dim() == 4 else [0]
        mean = x.mean(dim=dims)
        std = x.std(dim=dims, unbiased=False)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + 1e-6))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = (x + channel_view(self.bias, x)) * channel_view(self.log_scale.exp(), x)
        return y, (pixels(x) * self.log_scale.sum()).expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y * channel_view(torch.exp(-self.log_scale), y) - channel_view(self.bias, y)


class InvConv1x1(nn.Module):
    """An invertible 1x1 convolution (a linear map of the channels at every pixel), in LU form.

    Kingma & Dhariwal 2018, sec. 3.2, eq. 10: W = P L (U + diag(s)), P a fixed permutation, L
    lower triangular with a unit diagonal, U strictly upper triangular; log|det W| = sum log|s|,
    so the layer's log-det is H W sum(log|s|) in O(C) instead of an O(C^3) determinant. W starts
    as a random rotation (log-det 0), as in the paper."""

    def __init__(self, channels: int, *, generator: torch.Generator | None = None):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("p", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(s.abs()))

    def weight(self) -> Tensor:
        eye = torch.eye(self.p.shape[0], device=self.p.device, dtype=self.p.dtype)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.p @ lower @ upper  # (C, C), eq. 10

    def _apply_matrix(self, w: Tensor, x: Tensor) -> Tensor:
        if x.dim() == 4:
            return F.conv2d(x, w.view(*w.shape, 1, 1))
        return x @ w.T

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._apply_matrix(self.weight(), x), (pixels(x) * self.log_s.sum()).expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return self._apply_matrix(torch.linalg.inv(self.weight()), y)


def checkerboard_mask(channels: int, h: int, w: int, parity: int) -> Tensor:
    """(1, C, H, W): 1 where (i + j + parity) is even; the pixels a coupling passes unchanged
    (Dinh et al. 2017, fig. 3, left)."""
    i, j = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return ((i + j + parity) % 2 == 0).float().expand(1, channels, h, w).contiguous()


def channel_mask(channels: int, parity: int, spatial: tuple[int, int] | None = None) -> Tensor:
    """(1, C, 1, 1) or (1, C): 1 on the first half of the channels (the second half when parity
    is 1); the channels a coupling passes unchanged (Dinh et al. 2017, fig. 3, right). For
    vectors, the alternating masks of a 2-D toy flow."""
    if channels < 2:
        raise ValueError(f"a channel-wise coupling needs at least 2 channels, got {channels}")
    m = (torch.arange(channels) < channels // 2).float()
    if parity:
        m = 1 - m
    return m.view(1, -1, 1, 1) if spatial is not None else m.view(1, -1)


class ConvNet(nn.Module):
    """The coupling's s and t network on images: 3x3 conv, ReLU, 1x1 conv, ReLU, 3x3 conv to
    2C outputs (Glow's NN(), Kingma & Dhariwal 2018, sec. 3.3), with the last conv zero-initialised
    so each coupling starts as the identity. Its input is the masked image and the mask itself,
    so a checkerboard coupling knows which pixels it may read."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels + 1, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
            nn.Conv2d(hidden, 2 * channels, 3, padding=1),
        )
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.body(torch.cat([x, mask[:, :1].expand(x.shape[0], 1, *x.shape[2:])], dim=1))


class MLPNet(nn.Module):
    """The coupling's s and t network on vectors (2-D toys): two hidden layers, the last layer
    zero-initialised."""

    def __init__(self, dims: int, hidden: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dims, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                  nn.Linear(hidden, 2 * dims))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.body(x)


class AffineCoupling(nn.Module):
    """An affine coupling layer with a binary mask b (Dinh et al. 2017, eq. 9):

        y = b * x + (1 - b) * (x * exp(s(b * x)) + t(b * x)),   log-det = sum (1 - b) * s

    `scale` says how the net's raw output becomes s: "tanh" is RealNVP's bounded scale (s =
    scale * tanh(raw), with a learned per-channel scale, as in Dinh et al.'s code); "sigmoid" is
    Glow's (Kingma & Dhariwal 2018, table 1 and their code: y = (x + t) * sigmoid(raw + 2), so
    the scale starts near 0.9 and can never blow up; here also softly kept above e^-4)."""

    def __init__(self, net: nn.Module, mask: Tensor, *, scale: str = "tanh"):
        super().__init__()
        if scale not in ("tanh", "sigmoid"):
            raise ValueError(f"coupling scale must be tanh or sigmoid, got {scale!r}")
        self.net = net
        self.scale = scale
        self.register_buffer("mask", mask, persistent=False)
        if scale == "tanh":
            # (1, C, 1, 1) or (1, D): one learned bound per channel
            self.tanh_scale = nn.Parameter(torch.ones(1, mask.shape[1], *(1,) * (mask.dim() - 2)))

    def _s_t(self, x_b: Tensor) -> tuple[Tensor, Tensor]:
        raw_s, t = self.net(x_b, self.mask).chunk(2, dim=1)
        keep = 1 - self.mask
        if self.scale == "tanh":
            log_s = self.tanh_scale * torch.tanh(raw_s)
        else:
            # Glow's sigmoid(raw + 2), kept above e^-4 by a soft clip (as the VAE keeps its
            # sigma): the inverse divides by it, and one large early step must not make a
            # sample overflow.
            log_s = -4.0 + F.softplus(F.logsigmoid(raw_s + 2.0) + 4.0)
        return log_s * keep, t * keep

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x_b = x * self.mask
        log_s, t = self._s_t(x_b)
        if self.scale == "tanh":
            y = x_b + (1 - self.mask) * (x * torch.exp(log_s) + t)  # eq. 9
        else:
            y = x_b + (1 - self.mask) * ((x + t) * torch.exp(log_s))  # Glow's order: shift, then scale
        return y, sum_per_example(log_s)

    def inverse(self, y: Tensor) -> Tensor:
        y_b = y * self.mask
        log_s, t = self._s_t(y_b)
        if self.scale == "tanh":
            return y_b + (1 - self.mask) * ((y - t) * torch.exp(-log_s))
        return y_b + (1 - self.mask) * (y * torch.exp(-log_s) - t)


class Squeeze(nn.Module):
    """(B, C, H, W) -> (B, 4C, H/2, W/2): each 2x2 block of pixels becomes 4 channels (Dinh et al.
    2017, sec. 3.6, fig. 3). A permutation: log-det 0."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        y = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)
        return y, x.new_zeros(b)

    def inverse(self, y: Tensor) -> Tensor:
        b, c4, h2, w2 = y.shape
        c = c4 // 4
        return y.view(b, c, 2, 2, h2, w2).permute(0, 1, 4, 2, 5, 3).reshape(b, c, 2 * h2, 2 * w2)


# ---------------------------------------------------------------------------------------------
# Priors and the multi-scale architecture
# ---------------------------------------------------------------------------------------------


class Split(nn.Module):
    """Factor out the second half of the channels (Dinh et al. 2017, sec. 3.6: half the
    dimensions leave the flow at each scale and are modelled by the prior directly).

    learned=False: the factored-out half is N(0, I) (RealNVP). learned=True: it is N(mu, sigma^2)
    with (mu, log sigma) from a zero-initialised 3x3 conv of the kept half (Glow's split prior,
    Kingma & Dhariwal 2018, their code's `split2d`), so the factor-out is conditioned on what
    the flow still carries."""

    def __init__(self, channels: int, *, learned: bool):
        super().__init__()
        if channels < 2:
            raise ValueError(f"a split needs at least 2 channels, got {channels}")
        self.keep = channels // 2
        self.out = channels - self.keep
        self.prior = None
        if learned:
            self.prior = nn.Conv2d(self.keep, 2 * self.out, 3, padding=1)
            nn.init.zeros_(self.prior.weight)
            nn.init.zeros_(self.prior.bias)

    def mean_log_scale(self, kept: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        if self.prior is None:
            return torch.zeros_like(like), torch.zeros_like(like)
        mean, raw = self.prior(kept).chunk(2, dim=1)
        # A soft bound |log sigma| < 4 (Glow leaves it free): one large early step would
        # otherwise make a sample's inverse overflow before training has settled.
        return mean, 4.0 * torch.tanh(raw / 4.0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x -> (kept half, factored-out half z, log p(z | kept))."""
        kept, z = x[:, : self.keep], x[:, self.keep :]
        mean, log_scale = self.mean_log_scale(kept, z)
        return kept, z, gaussian_log_prob(z, mean, log_scale)

    def inverse(self, kept: Tensor, z: Tensor | None = None, *, temperature: float = 1.0,
                eps: Tensor | None = None) -> Tensor:
        """The kept half and z -> x; without z, z is drawn from the prior with its scale times
        `temperature` (Kingma & Dhariwal 2018, sec. 5: sampling at T < 1), from the standard
        normal noise `eps`."""
        shape = (kept.shape[0], self.out, *kept.shape[2:])
        if z is None:
            mean, log_scale = self.mean_log_scale(kept, kept.new_zeros(shape))
            z = mean + temperature * torch.exp(log_scale) * eps.reshape(shape)
        return torch.cat([kept, z], dim=1)


class TopPrior(nn.Module):
    """The prior of the last scale's output: N(0, I), or (learned=True, Glow's `learntop`) a
    Gaussian with a learned mean and log-scale per element, zero-initialised (so it starts as
    N(0, I))."""

    def __init__(self, shape: tuple[int, ...], *, learned: bool):
        super().__init__()
        self.shape = tuple(shape)
        self.mean = nn.Parameter(torch.zeros(shape)) if learned else None
        self.log_scale = nn.Parameter(torch.zeros(shape)) if learned else None

    def mean_log_scale(self, like: Tensor) -> tuple[Tensor, Tensor]:
        if self.mean is None:
            return torch.zeros_like(like), torch.zeros_like(like)
        return self.mean.expand_as(like), self.log_scale.expand_as(like)

    def log_prob(self, z: Tensor) -> Tensor:
        return gaussian_log_prob(z, *self.mean_log_scale(z))

    def sample(self, n: int, *, temperature: float, eps: Tensor) -> Tensor:
        eps = eps.reshape(n, *self.shape)
        mean, log_scale = self.mean_log_scale(eps)
        return mean + temperature * torch.exp(log_scale) * eps


class MultiScaleFlow(nn.Module):
    """x -> z by `pre` (bijections before the first level), then per level its bijections and,
    between levels, a Split; the last level's output goes to `top`.

        log p(x) = sum_levels log p(z_l | kept) + log p_top(z_L) + sum_layers log|det J|

    (Dinh et al. 2017, eq. 3, the change of variables, with the multi-scale factorisation of
    sec. 3.6). The latents of every level, flattened and concatenated in order, are one vector
    of as many numbers as x has: `encode`/`decode`'s latent."""

    def __init__(self, pre: list[nn.Module], levels: list[list[nn.Module]], splits: list[Split],
                 top: TopPrior, data_shape: tuple[int, ...]):
        super().__init__()
        if len(splits) != len(levels) - 1:
            raise ValueError(f"{len(levels)} levels need {len(levels) - 1} splits, got {len(splits)}")
        self.pre = nn.ModuleList(pre)
        self.levels = nn.ModuleList(nn.ModuleList(level) for level in levels)
        self.splits = nn.ModuleList(splits)
        self.top = top
        self.data_shape = tuple(data_shape)
        # Each level's factored-out shape and the top's, found by running a dummy example.
        with torch.no_grad():
            zs, _, _ = self.to_latents(torch.zeros(1, *data_shape))
        self.latent_shapes = [tuple(z.shape[1:]) for z in zs]

    def bijections(self) -> list[nn.Module]:
        return [*self.pre, *(layer for level in self.levels for layer in level)]

    def to_latents(self, x: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """x -> (latents of every level, log|det| of every bijection, log prior of the latents)."""
        h, logdet = x, x.new_zeros(x.shape[0])
        for layer in self.pre:
            h, ld = layer(h)
            logdet = logdet + ld
        zs, log_prior = [], x.new_zeros(x.shape[0])
        for i, level in enumerate(self.levels):
            for layer in level:
                h, ld = layer(h)
                logdet = logdet + ld
            if i < len(self.splits):
                h, z, lp = self.splits[i](h)
                zs.append(z)
                log_prior = log_prior + lp
        zs.append(h)
        return zs, logdet, log_prior + self.top.log_prob(h)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x), nats per example, (B,): exact, by the change of variables."""
        _, logdet, log_prior = self.to_latents(x)
        return log_prior + logdet

    def from_latents(self, zs: list[Tensor | None], n: int, *, temperature: float = 1.0, generator=None) -> Tensor:
        """The inverse: latents (None where one is to be drawn from its prior at `temperature`)
        -> x. The noise of every latent is one draw of (n, D) standard normals, split as the latents
        are, so a seed names one sample whatever else is drawn with it (a request's first image
        is the same for any n)."""
        device = next(self.parameters()).device
        eps = [None] * len(zs)
        if any(z is None for z in zs):
            eps = self.unflatten(randn((n, sum(math.prod(s) for s in self.latent_shapes)), generator=generator,
                                       device=device))
        h = zs[-1] if zs[-1] is not None else self.top.sample(n, temperature=temperature, eps=eps[-1])
        for i in reversed(range(len(self.levels))):
            if i < len(self.splits):
                h = self.splits[i].inverse(h, zs[i], temperature=temperature, eps=eps[i])
            for layer in reversed(self.levels[i]):
                h = layer.inverse(h)
        for layer in reversed(self.pre):
            h = layer.inverse(h)
        return h

    def flatten(self, zs: list[Tensor]) -> Tensor:
        return torch.cat([z.flatten(1) for z in zs], dim=1)

    def unflatten(self, z: Tensor) -> list[Tensor]:
        sizes = [math.prod(s) for s in self.latent_shapes]
        return [part.reshape(-1, *shape) for part, shape in zip(z.split(sizes, dim=1), self.latent_shapes)]

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Data-dependent init (Kingma & Dhariwal 2018, sec. 3.1): each ActNorm, in order, is set
        from the batch as it arrives at that layer, so every ActNorm's output on this batch has
        zero mean and unit variance per channel."""
        h = x
        for layer in self.pre:
            h, _ = layer(h)
        for i, level in enumerate(self.levels):
            for layer in level:
                if isinstance(layer, ActNorm):
                    layer.initialize(h)
                h, _ = layer(h)
            if i < len(self.splits):
                h, _, _ = self.splits[i](h)


# ---------------------------------------------------------------------------------------------
# The model around a flow: objective, sampling, latents (what RealNVP and Glow share)
# ---------------------------------------------------------------------------------------------


class FlowSampling(BaseModel):
    model_config = SETTINGS_CONFIG
    temperature: float = Field(1.0, gt=0, le=10, description="prior scale: every latent drawn from its prior with "
                                                             "its standard deviation times T (Kingma & Dhariwal "
                                                             "2018, sec. 5: T < 1 gives more typical samples)")


class FlowModel(nn.Module):
    """A normalizing flow as a genray model: a MultiScaleFlow on images (B, C, H, W) in [-1, 1]
    or on points (B, D).

    Images: the density is on [-1, 1]^D, trained on dequantised pixels (uniform noise inside
    each 8-bit bin, added in `forward`; Theis et al. 2016, sec. 3.1), and the loss is the
    dequantised NLL in bits/dim, an upper bound on the discrete bits/dim
    (components/metrics/likelihood.py). Points: the density is on R^D and the loss is nats per
    point. Either way log_prob is exact (the change of variables), and the latent is x's
    bijective image: one number per number of x, flattened."""

    conditioning, num_classes = "none", 0
    sampling_settings = FlowSampling
    log_prob_space, log_prob_kind = "continuous", "exact"

    def __init__(self, *, family: str, flow: MultiScaleFlow, data_init: bool):
        super().__init__()
        self.family = family
        self.flow = flow
        self.images = len(flow.data_shape) == 3
        if self.images:
            self.image_shape = flow.data_shape
        self.num_dims = math.prod(flow.data_shape)
        self.latent_shape = (self.num_dims,)
        self.capabilities = frozenset({"sample", "log_prob", "encode", "decode"})
        self.recipe = Backprop(init=self.initialize if data_init else None)

    # -- the objective ----------------------------------------------------------------------------

    def initialize(self, batch: dict[str, Tensor]) -> None:
        """The recipe's init hook: data-dependent init of every ActNorm on the first batch."""
        x = batch["x"].float()
        with torch.autocast(device_type=x.device.type, enabled=False):  # statistics in float32
            self.flow.initialize(dequantize(x) if self.images else x)

    def nll(self, x: Tensor) -> Tensor:
        """-log p(x) in float32 whatever the autocast around it (sums over every pixel of
        exponentials of log-scales are no place for bf16), (B,)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            return -self.flow.log_prob(x.float())

    def score(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Images: dequantised bits/dim of each 8-bit image; points: nats per point. (mean, logs)."""
        if not self.images:
            nll = self.nll(x)
            return nll.mean(), {"nats_per_point": nll.mean().detach()}
        nll = dequantized_nll(self.nll(dequantize(x, generator=generator)), self.num_dims)
        bpd = bits_per_dim(nll, self.num_dims).mean()
        return bpd, {"bits_per_dim": bpd.detach()}

    def forward(self, batch: dict[str, Tensor], phase: str = "main") -> tuple[Tensor, dict[str, Tensor]]:
        if phase != "main":
            raise ValueError(f"{self.family} has one phase, 'main'; got phase={phase!r}")
        return self.score(batch["x"])

    # -- using the trained model ----------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        loss, logs = self.score(batch["x"], generator)
        return {"loss": loss, **logs}

    def check_x(self, x: Tensor, name: str = "x") -> None:
        """x must have the data's shape and, for images, lie in the data range: [-1, 1] widened by
        half a bin each side, where dequantised pixels can reach."""
        if tuple(x.shape[1:]) != self.flow.data_shape:
            raise UserError(f"{self.family}: {name} must be (B, {', '.join(map(str, self.flow.data_shape))}), "
                            f"got {tuple(x.shape)}")
        edge = 1 + BIN_WIDTH / 2 + 1e-6
        if self.images and x.numel() and not (x.min() >= -edge and x.max() <= edge):
            raise UserError(f"{self.family}: {name} (images) must lie in [-1, 1] (pixels v / 127.5 - 1, up to half an "
                            f"8-bit bin beyond when dequantised), got values in [{float(x.min()):.4g}, "
                            f"{float(x.max()):.4g}]")

    @torch.no_grad()
    def log_prob(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """log p(x), nats per example, (B,): exact. A density on [-1, 1]^D for images (pass
        dequantised pixels: components/metrics/likelihood.py), on R^D for points."""
        self.check_x(x)
        return -self.nll(x)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """x -> its latent, (B, D): every level's factored-out part, then the top, flattened."""
        self.check_x(x)
        zs, _, _ = self.flow.to_latents(x.float())
        return self.flow.flatten(zs)

    def output(self, x: Tensor) -> Tensor:
        return x.clamp(-1.0, 1.0) if self.images else x

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """A latent (B, D), as encode returns it -> x; images clamped to [-1, 1]."""
        if z.dim() != 2 or z.shape[1] != self.num_dims:
            raise UserError(f"{self.family}: z (latents) must be (B, {self.num_dims}), one number per number of "
                            f"x as encode returns it; got {tuple(z.shape)}")
        return self.output(self.flow.from_latents(self.flow.unflatten(z.float()), len(z)))

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, y: Tensor | None = None,
               temperature: float = 1.0) -> Tensor:
        """x = f^-1(z), each latent drawn from its prior at `temperature`: (n, C, H, W) images in
        [-1, 1], or (n, D) points."""
        if y is not None:
            raise ValueError(f"{self.family} is unconditional (no 'condition' capability); call sample without y")
        if not temperature > 0:
            raise UserError(f"{self.family}: temperature must be > 0, got {temperature}")
        zs = [None] * len(self.flow.latent_shapes)
        return self.output(self.flow.from_latents(zs, n, temperature=temperature, generator=generator))

    def sampling_cost(self, settings: BaseModel) -> int:
        return 1  # one pass through the inverse

    @torch.no_grad()
    def eval_samples(self, n: int, *, generator_seed: int, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"": self.sample(n, generator=torch.Generator().manual_seed(generator_seed))}


def check_data(data: DatasetInfo, family: str, levels_ok) -> tuple[int, ...]:
    """The example shape a flow builds for: (C, H, W) images whose sides suit `levels_ok(h, w)`
    (None if fine, else the reason), or (D,) points with D >= 2."""
    if data.modality == "points":
        if len(data.shape) != 1 or data.shape[0] < 2:
            raise ValueError(f"{family}: points must be vectors of at least 2 numbers (a coupling splits them), "
                             f"got shape {list(data.shape)}")
        return tuple(data.shape)
    if not data.kind.is_image:
        raise ValueError(f"{family} trains on image or points data, got {data.modality} data")
    c, h, w = check_image_shape(data.image_shape, family)
    reason = levels_ok(h, w)
    if reason:
        raise ValueError(f"{family}: {reason} for image_shape {(c, h, w)}")
    return c, h, w
