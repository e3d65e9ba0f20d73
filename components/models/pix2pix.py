"""Pix2Pix (Isola et al. 2017): image-to-image translation with a conditional GAN on aligned
pairs (data kind paired_image: the input x, its target x_paired), a U-Net generator and a
PatchGAN discriminator that sees the input beside the output.

The objective (§3.1, eq. 4) is G* = arg min_G max_D L_cGAN(G, D) + lambda * L_L1(G), with
L_cGAN = E[log D(x, y)] + E[log(1 - D(x, G(x, z)))] (eq. 1), L_L1 = E|y - G(x, z)|_1 (eq. 3)
and lambda = 100, the paper's. The noise z is dropout in the generator's decoder, on at training and
at test time (§3.1: "we provide noise only in the form of dropout ... at both training and test
time"). D's objective is halved (§3.3) and G maximises log D(x, G(x, z)), the non-saturating
form (§3.3, after Goodfellow et al. 2014).

Trained by the adversarial recipe (components/training/adversarial.py): "disc" steps the
PatchGAN on real pairs (x, y) vs (x, G(x).detach()), "gen" steps the U-Net through D plus the
L1 term. The model is for `translate(x)`; `sample` needs the inputs too. `evaluate` scores
translations of held-out inputs against their targets (L1, PSNR).
"""
from typing import Annotated, Literal, Sequence

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.models.dcgan import dcgan_init
from genray.components.models.dcgan import discriminator_loss as gan_discriminator_loss
from genray.components.models.dcgan import generator_loss as gan_generator_loss
from genray.components.models.layers import StackedGenerators, check_image_shape, randn, translation_inputs
from genray.components.models.protocol import SETTINGS_CONFIG
from genray.components.training import Adversarial

# The decoder's first up blocks carry dropout 0.5: CD512 x3 of the paper's seven (appendix 6.1.1).
DROPOUT_BLOCKS = 3
MAX_WIDTH_MULT = 8  # channels grow 64, 128, 256, 512 and stay at 512 (appendix 6.1.1): 8 x width


# ---------------------------------------------------------------------------------------------
# Losses and scores, as plain functions of tensors
# ---------------------------------------------------------------------------------------------


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """(-E[log D(x, y)] - E[log(1 - D(x, G(x, z)))]) / 2, every expectation over the batch and
    over every patch's logit (§3.2.2: D "averag[es] all responses"). Eq. 1 as a loss, halved
    while optimising D (§3.3: "we divide the objective by 2 while optimizing D, which slows
    down the rate at which D learns relative to G")."""
    return 0.5 * gan_discriminator_loss(real_logits, fake_logits)


def generator_loss(fake_logits: Tensor) -> Tensor:
    """-E[log D(x, G(x, z))] over every patch: the non-saturating adversarial term (§3.3)."""
    return gan_generator_loss(fake_logits)


def l1_loss(fake: Tensor, target: Tensor) -> Tensor:
    """E|y - G(x, z)|_1 (eq. 3) as the mean absolute difference per pixel, in the data's [-1, 1]
    scale: L1 rather than L2 "encourages less blurring" (§3.1)."""
    return (fake.float() - target.float()).abs().mean()


def psnr(fake: Tensor, target: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB, 10 log10(1 / MSE), of images mapped from [-1, 1] to
    [0, 1], per image and then averaged over the batch -> scalar. An MSE of 0 counts as 1e-10
    (100 dB), so a perfect translation scores high rather than infinite."""
    a, b = (fake.float() + 1) / 2, (target.float() + 1) / 2
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)  # (B,)
    return (10 * torch.log10(1.0 / mse)).mean()


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------


def dropout_mask(shape: Sequence[int], generator: torch.Generator | StackedGenerators | None,
                 device: torch.device) -> Tensor:
    """Inverted dropout at rate 0.5: each entry 0 or 2 with probability 1/2, (B, ...) float.

    Drawn as the sign of standard normal noise (layers.randn), so a torch.Generator, or serve's
    StackedGenerators row by row, fixes the masks, and the same seed gives the same masks on a
    CPU and a GPU. Scaled by 2 (like nn.Dropout) so dropout=False needs no rescaling.
    """
    return (randn(tuple(shape), generator=generator, device=device) > 0).float() * 2.0


def unet_depth(h: int, w: int) -> int:
    """Stride-2 steps of the U-Net's encoder: down to a 1-pixel smaller side (256 -> 8, as in
    the paper's 1x1 bottleneck; 32 -> 5; 8 -> 3)."""
    return min(h, w).bit_length() - 1


class UNet(nn.Module):
    """The generator: x (B, C_in, H, W) -> G(x, z) (B, C_out, H, W) in [-1, 1].

    An encoder-decoder whose decoder layer i also sees the encoder's layer n - i, concatenated
    on channels (§3.2.1: skip connections "shuttle" low-level information such as the location
    of edges across the bottleneck). Appendix 6.1.1: encoder Conv(4, stride 2)-BatchNorm-
    LeakyReLU(0.2), no BatchNorm on the first layer; decoder ConvTranspose(4, stride 2)-
    BatchNorm-ReLU, dropout 0.5 in its first DROPOUT_BLOCKS blocks; a last ConvTranspose to
    C_out and Tanh. The 1x1 bottleneck has no BatchNorm either, as in the authors' code (a
    1-pixel map has one value per channel and example to normalise).
    """

    def __init__(self, in_channels: int, out_channels: int, size: tuple[int, int], width: int):
        super().__init__()
        n = unet_depth(*size)
        ch = [width * min(2**i, MAX_WIDTH_MULT) for i in range(n)]  # encoder channels at H/2, ..., 1
        self.down = nn.ModuleList()
        for i in range(n):
            norm = 0 < i < n - 1
            self.down.append(nn.Sequential(
                nn.Conv2d(in_channels if i == 0 else ch[i - 1], ch[i], 4, stride=2, padding=1, bias=not norm),
                *([nn.BatchNorm2d(ch[i])] if norm else []), nn.LeakyReLU(0.2)))
        # Up block j (innermost first) takes the bottleneck (j = 0) or the previous block's output
        # beside the encoder's features at its resolution (twice the channels), and doubles H, W.
        self.up = nn.ModuleList()
        for j in range(n - 1):
            level = n - 1 - j  # the encoder level it starts from
            c_in = ch[level] if j == 0 else 2 * ch[level]
            self.up.append(nn.Sequential(nn.ConvTranspose2d(c_in, ch[level - 1], 4, stride=2, padding=1, bias=False),
                                         nn.BatchNorm2d(ch[level - 1]), nn.ReLU()))
        self.out = nn.Sequential(nn.ConvTranspose2d(2 * ch[0], out_channels, 4, stride=2, padding=1), nn.Tanh())
        self.dropout_blocks = min(DROPOUT_BLOCKS, n - 1)

    def forward(self, x: Tensor, *, generator: torch.Generator | StackedGenerators | None = None,
                dropout: bool = True) -> Tensor:
        """dropout=True draws one mask per dropout block, innermost block first, from `generator`
        (None: torch's global generator, as in training)."""
        skips = []
        h = x
        for down in self.down:
            h = down(h)  # (B, ch[i], H / 2^(i+1), W / 2^(i+1))
            skips.append(h)
        skips.pop()  # the bottleneck is h itself
        for j, up in enumerate(self.up):
            h = up(h)  # (B, ch[level - 1], 2 h, 2 w)
            if dropout and j < self.dropout_blocks:
                # Conv-BatchNorm-Dropout-ReLU (appendix 6.1.1) = the mask after the ReLU: the
                # mask is 0 or 2, and ReLU(m * a) = m * ReLU(a) for m >= 0.
                h = h * dropout_mask(h.shape, generator, h.device).to(h.dtype)
            h = torch.cat([h, skips.pop()], dim=1)  # (B, 2 ch[level - 1], 2 h, 2 w)
        return self.out(h)  # (B, C_out, H, W)


def receptive_field(layers: Sequence[tuple[int, int]]) -> int:
    """The side of the input patch that one output of a stack of convolutions sees; `layers` are
    (kernel, stride) from input to output. Walking back from one output pixel, each layer widens
    the patch to (r - 1) * stride + kernel: the paper's C64-C128-C256 (stride 2), C512 and the
    output conv (stride 1) give 70 (§3.2.2, §4.4, the "70x70 PatchGAN")."""
    r = 1
    for kernel, stride in reversed(layers):
        r = (r - 1) * stride + kernel
    return r


def patch_layers(halvings: int) -> list[tuple[int, int]]:
    """(kernel, stride) of a PatchGAN with `halvings` stride-2 convs, then one stride-1 conv and the
    stride-1 output conv, all 4x4 (the authors' code)."""
    return [(4, 2)] * halvings + [(4, 1), (4, 1)]


def patch_halvings(side: int) -> int:
    """Stride-2 convs of the PatchGAN for images whose smaller side is `side`: the most whose
    receptive field is at most half the side (at least 0). 3 at 256 (70 px, the paper's), 1 at
    32 (16 px: half the side, a quarter of the image), 0 below 32 (7 px)."""
    n = 0
    while receptive_field(patch_layers(n + 1)) <= side // 2:
        n += 1
    return n


class PatchDiscriminator(nn.Module):
    """(x (B, C_in, H, W), y (B, C_out, H, W)) -> a grid of logits (B, H', W'), one per
    overlapping patch of `receptive_field` pixels a side: is this patch of y a real translation
    of this patch of x? (§3.2.2). Conditioned by concatenating x and y on channels (§2, eq. 1:
    "unlike an unconditional GAN, both the generator and discriminator observe the input").

    Appendix 6.1.2: Conv(4)-BatchNorm-LeakyReLU(0.2) layers with 64, 128, 256, 512 channels (no
    BatchNorm on the first), then a conv to one channel. The stride-2 layers are scaled to the
    image (patch_halvings) so a logit sees a quarter to a half of the side at any size.
    """

    def __init__(self, in_channels: int, out_channels: int, size: tuple[int, int], width: int):
        super().__init__()
        n = patch_halvings(min(size))
        self.layers = patch_layers(n)
        self.receptive_field = receptive_field(self.layers)
        body: list[nn.Module] = []
        c = in_channels + out_channels
        for i, (kernel, stride) in enumerate(self.layers[:-1]):
            c_out = width * min(2**i, MAX_WIDTH_MULT)
            body += [nn.Conv2d(c, c_out, kernel, stride=stride, padding=1, bias=i == 0),
                     *([nn.BatchNorm2d(c_out)] if i > 0 else []), nn.LeakyReLU(0.2)]
            c = c_out
        kernel, stride = self.layers[-1]
        body.append(nn.Conv2d(c, 1, kernel, stride=stride, padding=1))
        self.body = nn.Sequential(*body)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        logits = self.body(torch.cat([x, y], dim=1))  # (B, 1, H / 2^n - 2, W / 2^n - 2)
        return logits.squeeze(1).float()  # losses and D(x, y) logs in float32 even under bf16 autocast


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class Pix2PixSampling(BaseModel):
    model_config = SETTINGS_CONFIG
    dropout: bool = Field(True, description="keep the generator's dropout on when translating, the paper's "
                          "source of variety (Isola et al. 2017, §3.1); off: one fixed translation per input")


class Pix2Pix(nn.Module):
    capabilities = frozenset({"translate"})  # no "sample": it needs an input to translate
    directions: tuple[str, ...] = ()  # one way, edges -> items: translate takes no direction
    conditioning, num_classes = "none", 0
    sampling_settings = Pix2PixSampling

    def __init__(
        self,
        *,
        image_shape: tuple[int, int, int],
        out_channels: int,
        width: int,
        lambda_l1: float = 100.0,
        g_lr: float | None = None,
        d_lr: float | None = None,
    ):
        super().__init__()
        self.image_shape = check_image_shape(image_shape, "pix2pix")  # the input's (C_in, H, W)
        if out_channels < 1:
            raise ValueError(f"pix2pix: out_channels must be >= 1, got {out_channels}")
        if lambda_l1 < 0:
            raise ValueError(f"pix2pix: lambda_l1 must be >= 0 (0 = the cGAN loss alone), got {lambda_l1}")
        c, h, w = self.image_shape
        self.out_channels, self.lambda_l1 = out_channels, lambda_l1
        self.generator = UNet(c, out_channels, (h, w), width)
        self.discriminator = PatchDiscriminator(c, out_channels, (h, w), width)
        self.apply(dcgan_init)  # N(0, 0.02) weights (appendix 6.2), as DCGAN's
        self.recipe = Adversarial(generator=("generator",), discriminator=("discriminator",), g_lr=g_lr, d_lr=d_lr)

    def _pair(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        if "x_paired" not in batch:
            raise ValueError("pix2pix trains on pairs: every batch needs 'x_paired', the target of 'x' "
                             "(the paired_image kind's image_paired column)")
        return batch["x"], batch["x_paired"]

    def forward(self, batch: dict[str, Tensor], phase: str) -> tuple[Tensor, dict[str, Tensor]]:
        x, y = self._pair(batch)  # input, target: (B, C_in, H, W), (B, C_out, H, W)
        if phase == "disc":
            with torch.no_grad():  # G(x, z).detach(): this phase steps D only
                fake = self.generator(x)
            real_logits = self.discriminator(x, y)  # (B, H', W')
            fake_logits = self.discriminator(x, fake)
            loss = discriminator_loss(real_logits, fake_logits)
            logs = {"d_real": torch.sigmoid(real_logits).mean(),
                    "d_fake": torch.sigmoid(fake_logits).mean()}
        elif phase == "gen":
            fake = self.generator(x)  # (B, C_out, H, W)
            adv = generator_loss(self.discriminator(x, fake))
            l1 = l1_loss(fake, y)
            loss = adv + self.lambda_l1 * l1  # eq. 4
            logs = {"g_adv": adv, "g_l1": l1}  # their sum, the loss, is logged as gen/loss
        else:
            raise ValueError(f"pix2pix phases are disc and gen, got phase={phase!r}")
        return loss, {k: v.detach() for k, v in logs.items()}

    # -- using the trained model ----------------------------------------------------------------------

    @torch.no_grad()
    def translate(self, x: Tensor, *, generator: torch.Generator | StackedGenerators | None = None,
                  dropout: bool = True) -> Tensor:
        """Inputs (B, C_in, H, W) in [-1, 1] -> translations (B, C_out, H, W) in [-1, 1].

        With dropout (the paper's z, §3.1), the masks come from `generator`, so a seed fixes the
        translation; dropout=False gives the one deterministic translation. BatchNorm uses its
        running statistics (eval mode), not the test batch's as the paper does (§3.3), so a
        translation does not depend on what it is batched with (serve batches requests); the
        generator's train/eval mode is restored afterwards.
        """
        c, h, w = self.image_shape
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, h, w):
            raise UserError(f"pix2pix translates images of shape (B, {c}, {h}, {w}) in [-1, 1]; got {tuple(x.shape)}")
        device = next(self.parameters()).device
        was_training = self.generator.training
        self.generator.eval()
        try:
            return self.generator(x.to(device), generator=generator, dropout=dropout).float().clamp(-1.0, 1.0)
        finally:
            self.generator.train(was_training)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | StackedGenerators | None = None,
               x: Tensor | None = None, dropout: bool = True) -> Tensor:
        """translate(x) for n inputs x (n, C_in, H, W). A translation model has nothing to draw
        from without an input, so x is required."""
        x = translation_inputs("pix2pix", n, x, "translate(x)")
        return self.translate(x, generator=generator, dropout=dropout)

    def sampling_cost(self, settings: BaseModel) -> int:
        return 1  # one generator pass

    @torch.no_grad()
    def eval_samples(self, n: int, *, generator_seed: int, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Three grids whose i-th tiles are one example: "input", "translation", "target". Three
        grids rather than one of stacked rows because a grid lays n images out in ceil(sqrt(n))
        columns, so blocks of input, translation and target would not line up in rows. With
        n above the batch's size the inputs repeat, and repeats differ by their dropout masks."""
        x, y = self._pair(batch)
        rows = torch.arange(n, device=x.device) % x.shape[0]
        x, y = x[rows], y[rows]
        fake = self.translate(x, generator=torch.Generator().manual_seed(generator_seed))
        return {"input": x.float().clamp(-1.0, 1.0), "translation": fake, "target": y.float().clamp(-1.0, 1.0)}

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Translations of the held-out inputs against their targets: "loss" and "l1" the mean
        absolute error in [-1, 1] (eq. 3), "psnr" in dB on [0, 1] images; D's mean belief on real
        and translated pairs (eval mode)."""
        x, y = self._pair(batch)
        fake = self.translate(x, generator=generator)
        was_training = self.discriminator.training
        self.discriminator.eval()
        try:
            d_real = torch.sigmoid(self.discriminator(x, y)).mean()
            d_fake = torch.sigmoid(self.discriminator(x, fake)).mean()
        finally:
            self.discriminator.train(was_training)
        l1 = l1_loss(fake, y)
        return {"loss": l1, "l1": l1, "psnr": psnr(fake, y), "d_real": d_real, "d_fake": d_fake}


# ---------------------------------------------------------------------------------------------
# Size presets and builder
# ---------------------------------------------------------------------------------------------


def pix2pix_tiny(**kw): return Pix2Pix(width=16, **kw)
def pix2pix_small(**kw): return Pix2Pix(width=32, **kw)
def pix2pix_base(**kw): return Pix2Pix(width=64, **kw)  # the paper's 64 ... 512 channels


SIZES = {"tiny": pix2pix_tiny, "small": pix2pix_small, "base": pix2pix_base}


def build_pix2pix(
    *,
    data: DatasetInfo,
    size: Literal["tiny", "small", "base"] = "small",
    lambda_l1: Annotated[float, Field(ge=0)] = 100.0,
    g_lr: Annotated[float, Field(gt=0)] | None = None,
    d_lr: Annotated[float, Field(gt=0)] | None = None,
) -> Pix2Pix:
    """Isola et al. 2017 on paired images (x -> x_paired). lambda_l1 weighs the L1 term against
    the cGAN loss (eq. 4; 0 = the cGAN loss alone); g_lr / d_lr (default: trainer.lr) give the
    two networks their own learning rates."""
    if data.modality != "paired_image":
        raise UserError(f"pix2pix trains on paired_image data (image -> the input, image_paired -> its target; "
                        f"e.g. the built-in fashion_edges), got {data.modality} data")
    c = data.image_shape[0]  # input and target share the kind's one shape, so their channels too
    return SIZES[size](image_shape=data.image_shape, out_channels=c, lambda_l1=lambda_l1, g_lr=g_lr, d_lr=d_lr)
