"""StyleGAN2, small (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN").

The generator is two networks. The mapping network turns z into an intermediate latent w (an MLP
with a 100x smaller learning rate, Karras et al. 2019, §2 and appendix C); the synthesis network
starts from a learned 4x4 constant and, at every layer, takes a style from w:

- modulated and demodulated convolutions (2020, §2.2, eqs. 1-3): the style scales the weights'
  input channels, and dividing by the L2 norm of each output channel's weights restores unit
  variance, which replaces AdaIN and removes its droplet artefacts;
- per-layer noise inputs with a learned strength per layer (2019, §3.2), the source of stochastic
  detail;
- skip connections to RGB from every resolution (2020, §4, figure 7b), a residual discriminator
  with a minibatch standard deviation layer (Karras et al. 2018, §3);
- style mixing regularisation (2019, §3.1): with probability 0.9 a generated image takes its
  coarse layers' styles from one z and the rest from another;
- equalised learning rate (Karras et al. 2018, §4.1): weights stored at unit scale and
  multiplied by He's constant at run time.

Trained by the adversarial recipe with the non-saturating logistic loss and lazy R1
regularisation every `r1_every` steps (2020, §3.1); the EMA generator is the trainer's EMA
(`trainer.ema_decay`), which every checkpoint carries and every sampler uses. Path-length
regularisation (2020, §3.2) is left out: it improves the smoothness of W (PPL), not FD, and
costs a second generator pass.

Sampling settings: the truncation trick (2019, appendix B) w' = w_avg + psi (w - w_avg) on the
layers below `truncation_cutoff`, trading diversity for fidelity. w_avg is the mean of W under
a fixed set of z (per class for a class-conditional model, so a truncated sample stays in its
class), computed from the weights when a truncated sample is asked for rather than tracked as a
running buffer: a running average would drift apart between data-parallel ranks.

`style_mix` gives the mixed image of two seeds: layers below `crossover` take the styles of the
first (coarse: shape and pose), the rest those of the second (fine: texture, shading).
"""

import math
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, create_model
from torch import Tensor, nn

from genray.components.data import DatasetInfo
from genray.components.models.dcgan import discriminator_step, generator_loss, lazy_r1_step, mmd2_unbiased
from genray.components.models.layers import StackedGenerators, check_image_shape, num_halvings, randn
from genray.components.models.protocol import SETTINGS_CONFIG
from genray.components.training import Adversarial

SQRT2 = math.sqrt(2.0)
W_AVG_SAMPLES = 2048  # z's whose mean in W is the truncation centre (per class when conditional)
W_AVG_SEED = 0x57A7


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


def lrelu(x: Tensor) -> Tensor:
    """LeakyReLU(0.2) with gain sqrt(2), which keeps the activations' second moment (He et al.)."""
    return F.leaky_relu(x, 0.2) * SQRT2


def modulated_conv2d(x: Tensor, weight: Tensor, styles: Tensor, *, demodulate: bool, padding: int) -> Tensor:
    """Karras et al. 2020, §2.2: x (B, I, H, W), weight (O, I, k, k), styles (B, I) -> (B, O, H, W).

    eq. 1: w'_ijk = s_i * w_ijk (modulate the input channels); eq. 3: w''_ijk = w'_ijk /
    sqrt(sum_ik w'_ijk^2 + eps) (demodulate each output channel). Computed without making
    per-example weights (the official code's non-fused path): scaling the weights' input channels
    by s is scaling x's channels by s, and demodulation scales each output channel of example b by
    one number, rsqrt(sum_i s_bi^2 sum_k w_ijk^2 + eps). So one ordinary convolution serves the
    whole batch, which on a CPU runs ~6x faster than the grouped convolution of per-example weights
    that `modulated_conv2d_grouped` keeps as the reference the tests compare against.
    """
    out = F.conv2d(x * styles[:, :, None, None].to(x.dtype), weight.to(x.dtype), padding=padding)
    if demodulate:
        dcoef = torch.rsqrt(styles.pow(2) @ weight.pow(2).sum(dim=(2, 3)).t() + 1e-8)  # (B, O)
        out = out * dcoef[:, :, None, None].to(out.dtype)
    return out


def modulated_conv2d_grouped(x: Tensor, weight: Tensor, styles: Tensor, *, demodulate: bool, padding: int) -> Tensor:
    """eqs. 1-3 written out: each example's own modulated (and demodulated) weights, run as one
    grouped convolution. The reference for `modulated_conv2d`."""
    b, i, h, w = x.shape
    o, _, k, _ = weight.shape
    wt = weight[None] * styles[:, None, :, None, None]  # (B, O, I, k, k)
    if demodulate:
        wt = wt * torch.rsqrt(wt.pow(2).sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
    out = F.conv2d(x.reshape(1, b * i, h, w), wt.reshape(b * o, i, k, k).to(x.dtype), padding=padding, groups=b)
    return out.reshape(b, o, h, w)


class EqualLinear(nn.Module):
    """A linear layer with equalised learning rate: y = x (w * c)^T + b * lr_mul, c = lr_mul / sqrt(in).

    The weight is stored as N(0, 1) / lr_mul, so Adam's step moves every layer's effective weights
    at the same relative speed; lr_mul < 1 slows a whole network (the mapping's 0.01)."""

    def __init__(self, in_dim: int, out_dim: int, *, bias_init: float = 0.0, lr_mul: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init) / lr_mul))
        self.gain, self.lr_mul = lr_mul / math.sqrt(in_dim), lr_mul

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.gain, self.bias * self.lr_mul)


class EqualConv2d(nn.Module):
    """A convolution with equalised learning rate (c = 1 / sqrt(in * k * k)); 'same' padding."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, *, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.gain = 1 / math.sqrt(in_ch * kernel * kernel)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.gain, self.bias, padding=self.weight.shape[-1] // 2)


class StyledConv(nn.Module):
    """(upsample 2x,) modulated 3x3 conv, noise with a learned strength, bias, lrelu."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, *, up: bool):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_ch, bias_init=1.0)  # styles start at 1: the plain conv
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, 3, 3))
        self.noise_strength = nn.Parameter(torch.zeros(()))  # 2019, §3.2: learned per layer, starts off
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.up, self.gain = up, 1 / math.sqrt(in_ch * 9)

    def forward(self, x: Tensor, w: Tensor, noise: Tensor) -> Tensor:
        x = modulated_conv2d(x, self.weight * self.gain, self.affine(w), demodulate=True, padding=1)
        if self.up:
            # The conv at the low resolution, then bilinear upsampling: the paper's transposed conv
            # followed by a [1, 3, 3, 1] low-pass filter, at the same cost (the conv sees H/2 x W/2
            # positions) and without its checkerboard risk; 4x cheaper than upsampling first.
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = x + self.noise_strength * noise  # noise (B, 1, H, W), broadcast over channels
        return lrelu(x + self.bias[None, :, None, None])


class ToRGB(nn.Module):
    """A modulated 1x1 conv to the image channels, not demodulated (2020, appendix B)."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_ch, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.gain = 1 / math.sqrt(in_ch)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        x = modulated_conv2d(x, self.weight * self.gain, self.affine(w), demodulate=False, padding=0)
        return x + self.bias[None, :, None, None]


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------


class Mapping(nn.Module):
    """z (B, z_dim) [+ label] -> w (B, w_dim): normalise z (and the label embedding) to unit second
    moment, then `depth` equalised linear layers at 0.01 x the learning rate (2019, appendix C)."""

    def __init__(self, z_dim: int, w_dim: int, depth: int, num_classes: int):
        super().__init__()
        self.embed = EqualLinear(num_classes, z_dim) if num_classes else None  # a one-hot's embedding
        self.num_classes = num_classes
        dims = [z_dim * (2 if num_classes else 1)] + [w_dim] * depth
        self.layers = nn.ModuleList(EqualLinear(a, b, lr_mul=0.01) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, z: Tensor, y: Tensor | None) -> Tensor:
        h = z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)
        if self.embed is not None:
            e = self.embed(F.one_hot(y, self.num_classes).to(z.dtype))
            h = torch.cat([h, e * torch.rsqrt(e.pow(2).mean(dim=1, keepdim=True) + 1e-8)], dim=1)
        for layer in self.layers:
            h = lrelu(layer(h))
        return h  # (B, w_dim)


class Synthesis(nn.Module):
    """ws (B, num_ws, w_dim) -> image (B, C, H, W): a learned constant at the smallest side (4),
    then per resolution an upsampling styled conv and a styled conv; a ToRGB at every resolution
    adds into the upsampled image so far (the skip generator, 2020 figure 7b).

    Layer k reads ws[:, k]: the convs take 0 .. num_convs - 1 in order, and a resolution's ToRGB
    reads the index after its last conv (as the official code does), so num_ws = num_convs + 1."""

    def __init__(self, image_shape: tuple[int, int, int], w_dim: int, channels: list[int]):
        super().__init__()
        c, h, w = image_shape
        n = num_halvings(h, w)
        self.start = (h >> n, w >> n)
        self.const = nn.Parameter(torch.randn(channels[0], *self.start))
        self.convs = nn.ModuleList([StyledConv(channels[0], channels[0], w_dim, up=False)])
        self.to_rgb = nn.ModuleList([ToRGB(channels[0], c, w_dim)])
        for i in range(n):
            self.convs.append(StyledConv(channels[i], channels[i + 1], w_dim, up=True))
            self.convs.append(StyledConv(channels[i + 1], channels[i + 1], w_dim, up=False))
            self.to_rgb.append(ToRGB(channels[i + 1], c, w_dim))
        self.num_ws = len(self.convs) + 1
        # The (H, W) each conv's noise has: the constant's size, then two per doubled resolution.
        self.noise_shapes = [self.start] + [(self.start[0] << i, self.start[1] << i) for i in range(1, n + 1)
                                            for _ in range(2)]

    def draw_noise(self, n: int, *, generator, device) -> list[Tensor]:
        """One (n, 1, H, W) normal per conv, in layer order (training's draws)."""
        return [randn((n, 1, *hw), generator=generator, device=device) for hw in self.noise_shapes]

    def split_noise(self, flat: Tensor) -> list[Tensor]:
        """(n, noise_size) numbers -> the per-conv (n, 1, H, W) noise maps, in layer order."""
        sizes = [h * w for h, w in self.noise_shapes]
        return [part.reshape(-1, 1, *hw) for part, hw in zip(flat.split(sizes, dim=1), self.noise_shapes)]

    @property
    def noise_size(self) -> int:
        return sum(h * w for h, w in self.noise_shapes)

    def forward(self, ws: Tensor, noise: list[Tensor]) -> Tensor:
        x = self.const[None].expand(ws.shape[0], -1, -1, -1)  # (B, C0, 4, 4)
        x = self.convs[0](x, ws[:, 0], noise[0])
        img = self.to_rgb[0](x, ws[:, 1])
        for r in range(1, len(self.to_rgb)):
            k = 2 * r - 1  # the up conv of resolution r
            x = self.convs[k](x, ws[:, k], noise[k])
            x = self.convs[k + 1](x, ws[:, k + 1], noise[k + 1])
            img = F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False)
            img = img + self.to_rgb[r](x, ws[:, k + 2])
        return img  # (B, C, H, W)


def minibatch_stddev(x: Tensor, group: int = 4) -> Tensor:
    """Karras et al. 2018, §3: append the standard deviation of each feature over a group of
    examples, averaged to one value per group, as an extra channel; (B, C, H, W) -> (B, C + 1, H, W).
    The group is the largest divisor of B that is at most `group`."""
    b, c, h, w = x.shape
    g = min(group, b)
    while b % g:
        g -= 1
    y = x.float().reshape(g, b // g, c, h, w)
    y = (y - y.mean(dim=0)).pow(2).mean(dim=0).add(1e-8).sqrt()  # (B/g, C, H, W)
    y = y.mean(dim=(1, 2, 3)).reshape(-1, 1, 1, 1).repeat(g, 1, h, w)  # (B, 1, H, W), row i -> group i % (B/g)
    return torch.cat([x, y.to(x.dtype)], dim=1)


class DiscriminatorBlock(nn.Module):
    """A 3x3 conv, a 2x average-pool and a 3x3 conv, with a pooled 1x1 residual path, summed / sqrt(2)
    (2020, fig. 7c)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv0 = EqualConv2d(in_ch, in_ch, 3)
        self.conv1 = EqualConv2d(in_ch, out_ch, 3)
        self.skip = EqualConv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        skip = self.skip(F.avg_pool2d(x, 2))
        x = lrelu(self.conv0(x))
        # Pool, then conv: the paper's low-pass filter and stride-2 conv, at the half resolution's cost.
        x = lrelu(self.conv1(F.avg_pool2d(x, 2)))
        return (x + skip) / SQRT2


class Discriminator(nn.Module):
    """image (B, C, H, W) -> one logit per image (B,): from-RGB 1x1, residual blocks down to 4x4,
    minibatch stddev, a 3x3 conv and two linear layers. With labels, a projection term
    <embed(y), features> (Miyato & Koyama 2018, as StyleGAN2-ADA conditions its D)."""

    def __init__(self, image_shape: tuple[int, int, int], channels: list[int], num_classes: int):
        super().__init__()
        c, h, w = image_shape
        n = num_halvings(h, w)
        ch = channels[::-1]  # at H, H/2, ..., 4
        self.from_rgb = EqualConv2d(c, ch[0], 1)
        self.blocks = nn.Sequential(*(DiscriminatorBlock(ch[i], ch[i + 1]) for i in range(n)))
        self.conv = EqualConv2d(ch[-1] + 1, ch[-1], 3)
        self.fc = EqualLinear(ch[-1] * (h >> n) * (w >> n), ch[-1])
        self.out = EqualLinear(ch[-1], 1)
        self.embed = nn.Embedding(num_classes, ch[-1]) if num_classes else None
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, 0.0, 1 / math.sqrt(ch[-1]))

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        h = self.blocks(lrelu(self.from_rgb(x)))  # (B, C4, 4, 4)
        h = lrelu(self.conv(minibatch_stddev(h)))
        h = lrelu(self.fc(h.flatten(1)))  # (B, C4)
        logit = self.out(h).squeeze(1)
        if self.embed is not None:
            logit = logit + (self.embed(y) * h).sum(dim=1) / math.sqrt(h.shape[1])
        return logit.float()


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


def sampling_settings_type(num_ws: int) -> type[BaseModel]:
    """Truncation psi in [0, 1.5] (1: off; 0: every sample is the mean w) and the cutoff layer."""
    return create_model(
        "StyleGAN2Sampling", __config__=SETTINGS_CONFIG,
        truncation_psi=(float, Field(1.0, ge=0, le=1.5, allow_inf_nan=False,
                                     description="truncation: w_avg + psi (w - w_avg); <1 fidelity, >1 diversity")),
        truncation_cutoff=(int | None, Field(None, ge=1, le=num_ws,
                                             description=f"truncate only layers below this (1..{num_ws}); "
                                                         "null: every layer")),
    )


class StyleGAN2(nn.Module):
    def __init__(
        self,
        *,
        image_shape: tuple[int, int, int],
        channels: list[int],
        z_dim: int = 128,
        w_dim: int = 128,
        mapping_depth: int = 4,
        num_classes: int = 0,
        conditional: bool = False,
        mixing_prob: float = 0.9,
        r1_gamma: float = 0.1,
        r1_every: int = 16,
        g_lr: float | None = None,
        d_lr: float | None = None,
    ):
        super().__init__()
        self.image_shape = check_image_shape(image_shape, "stylegan2")
        if conditional and num_classes < 1:
            raise ValueError(
                "stylegan2: conditional=True needs class labels, but the dataset has none "
                f"(num_classes={num_classes}); use a labelled dataset or set conditional: false")
        if not 0 <= mixing_prob <= 1:
            raise ValueError(f"stylegan2: mixing_prob must be in [0, 1], got {mixing_prob}")
        n = num_halvings(*self.image_shape[1:])
        if len(channels) != n + 1:
            raise ValueError(f"stylegan2: {len(channels)} channel widths for {n + 1} resolutions")
        self.z_dim, self.mixing_prob = z_dim, mixing_prob
        self.r1_gamma, self.r1_every = r1_gamma, r1_every
        self.num_classes = num_classes if conditional else 0
        self.conditioning = "class" if conditional else "none"
        self.capabilities = frozenset({"sample", "style_mix"} | ({"condition"} if conditional else set()))

        self.mapping = Mapping(z_dim, w_dim, mapping_depth, self.num_classes)
        self.synthesis = Synthesis(self.image_shape, w_dim, channels)
        self.discriminator = Discriminator(self.image_shape, channels, self.num_classes)
        self.num_ws = self.synthesis.num_ws
        self.sampling_settings = sampling_settings_type(self.num_ws)
        self.recipe = Adversarial(generator=("mapping", "synthesis"), discriminator=("discriminator",),
                                  g_lr=g_lr, d_lr=d_lr, r1_every=r1_every if r1_gamma > 0 else 0)

    # -- training ---------------------------------------------------------------------------------

    def _labels(self, batch: dict[str, Tensor]) -> Tensor | None:
        if not self.num_classes:
            return None
        if "y" not in batch:
            raise ValueError("stylegan2 is conditional, so every batch needs integer labels 'y'")
        return batch["y"]

    def _mixed_ws(self, n: int, y: Tensor | None, device) -> Tensor:
        """Style mixing regularisation (2019, §3.1): ws (n, num_ws, w_dim) from one z, and with
        probability mixing_prob the layers from a random crossover on from a second z."""
        ws = self.mapping(torch.randn(n, self.z_dim, device=device), y)[:, None].repeat(1, self.num_ws, 1)
        if self.mixing_prob > 0 and torch.rand(()) < self.mixing_prob:
            cut = int(torch.randint(1, self.num_ws, ()))
            w2 = self.mapping(torch.randn(n, self.z_dim, device=device), y)
            ws[:, cut:] = w2[:, None]
        return ws

    def _generate_train(self, n: int, y: Tensor | None, device) -> Tensor:
        noise = self.synthesis.draw_noise(n, generator=None, device=device)
        return self.synthesis(self._mixed_ws(n, y, device), noise)

    def forward(self, batch: dict[str, Tensor], phase: str) -> tuple[Tensor, dict[str, Tensor]]:
        x = batch["x"]
        y = self._labels(batch)  # fakes reuse the real batch's labels: the same class frequencies
        if phase == "disc":
            with torch.no_grad():
                fake = self._generate_train(x.shape[0], y, x.device)
            loss, logs = discriminator_step(self.discriminator, x, fake, y)  # softplus(D(G(z))) + softplus(-D(x))
        elif phase == "disc_reg":
            loss, logs = lazy_r1_step(self.discriminator, x, y, gamma=self.r1_gamma, every=self.r1_every)
        elif phase == "gen":
            loss = generator_loss(self.discriminator(self._generate_train(x.shape[0], y, x.device), y))
            logs = {}  # the phase loss is logged by the engine as gen/loss
        else:
            raise ValueError(f"stylegan2 phases are disc, disc_reg and gen, got phase={phase!r}")
        return loss, {k: v.detach() for k, v in logs.items()}

    # -- sampling ---------------------------------------------------------------------------------

    def _device(self) -> torch.device:
        return self.synthesis.const.device

    def _check_labels(self, n: int, y: Tensor | None) -> Tensor | None:
        if not self.num_classes:
            if y is not None:
                raise ValueError("stylegan2 was built with conditional=False; call sample without y")
            return None
        if y is None:
            return torch.arange(n, device=self._device()) % self.num_classes
        if y.shape != (n,):
            raise ValueError(f"stylegan2: y must have shape ({n},), got {tuple(y.shape)}")
        return y.to(self._device())

    @torch.no_grad()
    def w_avg(self, y: Tensor | None) -> Tensor:
        """The truncation centre for each row, (n, w_dim): the mean of mapping(z) over W_AVG_SAMPLES
        fixed z's, of the row's class when the model is conditional."""
        g = torch.Generator().manual_seed(W_AVG_SEED)
        z = torch.randn(W_AVG_SAMPLES, self.z_dim, generator=g).to(self._device())
        if y is None:
            return self.mapping(z, None).mean(dim=0, keepdim=True)
        centres = torch.stack([self.mapping(z, torch.full((len(z),), k, device=z.device)).mean(dim=0)
                               for k in range(self.num_classes)])  # (K, w_dim)
        return centres[y]

    def truncate(self, ws: Tensor, y: Tensor | None, psi: float, cutoff: int | None) -> Tensor:
        """Karras et al. 2019, appendix B: w' = w_avg + psi (w - w_avg) on layers [0, cutoff)."""
        if psi == 1.0:
            return ws
        centre = self.w_avg(y)[:, None]  # (n or 1, 1, w_dim)
        cut = self.num_ws if cutoff is None else cutoff
        ws = ws.clone()
        ws[:, :cut] = centre + psi * (ws[:, :cut] - centre)
        return ws

    def _synthesise(self, ws: Tensor, noise: list[Tensor]) -> Tensor:
        return self.synthesis(ws, noise).float().clamp(-1.0, 1.0)

    def draw(self, n: int, generator) -> tuple[Tensor, list[Tensor]]:
        """Row i's z and noise from one draw of (n, z_dim + noise_size) normals: row i gets the
        i-th row's numbers whatever n is, so a seed's first images do not depend on how many are
        asked for (and a batched request draws what it draws alone)."""
        flat = randn((n, self.z_dim + self.synthesis.noise_size), generator=generator, device=self._device())
        return flat[:, : self.z_dim], self.synthesis.split_noise(flat[:, self.z_dim :])

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | StackedGenerators | None = None,
               y: Tensor | None = None, truncation_psi: float = 1.0, truncation_cutoff: int | None = None) -> Tensor:
        """(n, C, H, W) in [-1, 1]. Conditional without y: the labels cycle 0..K-1 so a grid
        shows every class."""
        y = self._check_labels(n, y)
        z, noise = self.draw(n, generator)
        ws = self.mapping(z, y)[:, None].repeat(1, self.num_ws, 1)
        return self._synthesise(self.truncate(ws, y, truncation_psi, truncation_cutoff), noise)

    @torch.no_grad()
    def style_mix(self, n: int, *, generator_a, generator_b, crossover: int, y: Tensor | None = None,
                  truncation_psi: float = 1.0, truncation_cutoff: int | None = None) -> Tensor:
        """The images whose layers [0, crossover) take the styles of the rows `sample` draws from
        generator_a and whose layers from crossover on take those of generator_b's rows; the
        noise is generator_a's. crossover 0 gives b's styles everywhere, num_ws gives a's image."""
        if not 0 <= crossover <= self.num_ws:
            raise ValueError(f"stylegan2: crossover must be in 0..{self.num_ws}, got {crossover}")
        y = self._check_labels(n, y)
        z_a, noise = self.draw(n, generator_a)
        z_b, _ = self.draw(n, generator_b)
        ws = self.mapping(z_a, y)[:, None].repeat(1, self.num_ws, 1)
        ws[:, crossover:] = self.mapping(z_b, y)[:, None]
        return self._synthesise(self.truncate(ws, y, truncation_psi, truncation_cutoff), noise)

    def sampling_cost(self, settings: BaseModel) -> int:
        return 1  # one generator pass

    # -- evaluation -------------------------------------------------------------------------------

    @torch.no_grad()
    def eval_samples(self, n: int, *, generator_seed: int, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        grids = {"": self.sample(n, generator=torch.Generator().manual_seed(generator_seed))}
        grids["psi0.7"] = self.sample(n, generator=torch.Generator().manual_seed(generator_seed), truncation_psi=0.7)
        return grids

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """"loss": unbiased MMD^2 between as many samples as the batch holds and the batch."""
        x = batch["x"]
        y = self._labels(batch)
        fake = self.sample(x.shape[0], generator=generator, y=y)
        d_real = torch.sigmoid(self.discriminator(x, y)).mean()
        d_fake = torch.sigmoid(self.discriminator(fake, y)).mean()
        return {"loss": mmd2_unbiased(fake.flatten(1), x.flatten(1)), "d_real": d_real, "d_fake": d_fake}


# ---------------------------------------------------------------------------------------------
# Size presets and builder
# ---------------------------------------------------------------------------------------------


def widths(n: int, top: int, bottom: int) -> list[int]:
    """Channels from 4x4 up: `top` at the two smallest resolutions, halving after, never below `bottom`."""
    return [max(bottom, top >> max(0, i - 1)) for i in range(n + 1)]


def stylegan2_tiny(*, image_shape, **kw):
    return StyleGAN2(image_shape=image_shape, channels=widths(num_halvings(*image_shape[1:]), 32, 16),
                     z_dim=32, w_dim=32, mapping_depth=2, **kw)


def stylegan2_small(*, image_shape, **kw):
    return StyleGAN2(image_shape=image_shape, channels=widths(num_halvings(*image_shape[1:]), 128, 32),
                     z_dim=128, w_dim=128, mapping_depth=4, **kw)


def stylegan2_base(*, image_shape, **kw):
    return StyleGAN2(image_shape=image_shape, channels=widths(num_halvings(*image_shape[1:]), 256, 64),
                     z_dim=256, w_dim=256, mapping_depth=8, **kw)


SIZES = {"tiny": stylegan2_tiny, "small": stylegan2_small, "base": stylegan2_base}


def build_stylegan2(
    *,
    data: DatasetInfo,
    size: Literal["tiny", "small", "base"] = "small",
    conditional: bool = False,
    mixing_prob: Annotated[float, Field(ge=0, le=1)] = 0.9,
    r1_gamma: Annotated[float, Field(ge=0)] = 0.1,
    r1_every: Annotated[int, Field(ge=1)] = 16,
    g_lr: Annotated[float, Field(gt=0)] | None = None,
    d_lr: Annotated[float, Field(gt=0)] | None = None,
) -> StyleGAN2:
    """Karras et al. 2020 at small sizes; conditional=True feeds labels to the mapping network and
    a projection D. mixing_prob: style mixing regularisation; r1_gamma > 0: lazy R1 every
    r1_every steps; g_lr / d_lr: per-network learning rates (default: trainer.lr)."""
    kw: dict[str, Any] = dict(num_classes=data.num_classes, conditional=conditional, mixing_prob=mixing_prob,
                              r1_gamma=r1_gamma, r1_every=r1_every, g_lr=g_lr, d_lr=d_lr)
    return SIZES[size](image_shape=data.image_shape, **kw)
