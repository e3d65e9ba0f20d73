"""DCGAN (Radford et al. 2016) with the non-saturating GAN loss (Goodfellow et al. 2014, §3),
optionally class-conditional with a projection discriminator (Miyato & Koyama 2018).

Trained by the adversarial recipe (components/training/adversarial.py): "disc" steps the
discriminator on real vs. detached fakes, "gen" steps the generator through the discriminator,
each with its own optimizer (two learning rates, TTUR, when d_lr/g_lr differ), n_critic
discriminator steps per generator step, and, with r1_gamma > 0, a lazy R1 penalty every r1_every
steps ("disc_reg": Mescheder et al. 2018, eq. 9; lazily, Karras et al. 2020, §3.1). GANs have no likelihood, so ``evaluate`` scores
samples against held-out data with the unbiased squared MMD (Gretton et al. 2012).
"""
import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import Tensor, nn

from genray.components.data import DatasetInfo
from genray.components.models.layers import check_image_shape, num_halvings, randn
from genray.components.models.protocol import NoSettings
from genray.components.training import Adversarial


# ---------------------------------------------------------------------------------------------
# Losses and the evaluation distance, as plain functions of tensors
# ---------------------------------------------------------------------------------------------


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """-E[log D(x)] - E[log(1 - D(G(z)))]: Goodfellow et al. 2014, eq. 1, as a loss to minimise."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def generator_loss(fake_logits: Tensor) -> Tensor:
    """-E[log D(G(z))]: the non-saturating generator loss (Goodfellow et al. 2014, §3), which
    keeps gradients alive early on, when D rejects every fake and log(1 - D(G(z))) saturates."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def r1_penalty(real_logits: Tensor, x: Tensor) -> Tensor:
    """E[|grad_x D(x)|^2] on real data (Mescheder et al. 2018, eq. 9, without the gamma / 2),
    -> scalar. x must require grad and real_logits be computed from it."""
    (grad,) = torch.autograd.grad(real_logits.sum(), x, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def discriminator_step(discriminator, x: Tensor, fake: Tensor, y: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
    """The "disc" phase of a non-saturating GAN, shared by DCGAN and StyleGAN2: the loss on a real
    batch and a detached fake batch, and the mean D(x), D(G(z)) to log."""
    real_logits, fake_logits = discriminator(x, y), discriminator(fake, y)
    logs = {"d_real": torch.sigmoid(real_logits).mean(), "d_fake": torch.sigmoid(fake_logits).mean()}
    return discriminator_loss(real_logits, fake_logits), logs


def lazy_r1_step(discriminator, x: Tensor, y: Tensor | None, *, gamma: float, every: int) -> tuple[Tensor, dict[str, Tensor]]:
    """The "disc_reg" phase: gamma / 2 * E|grad_x D(x)|^2 on the real batch (Mescheder et al. 2018,
    eq. 9), run every `every` steps and scaled by the interval, so its average strength matches a
    penalty applied at every step (lazy regularisation, Karras et al. 2020, §3.1)."""
    x = x.detach().requires_grad_(True)
    penalty = r1_penalty(discriminator(x, y), x)
    return 0.5 * gamma * penalty * every, {"r1": penalty}


def mmd2_unbiased(x: Tensor, y: Tensor, scales: tuple[float, ...] = (0.5, 1.0, 2.0)) -> Tensor:
    """Unbiased squared MMD between samples x (n, d) and y (m, d) (Gretton et al. 2012, eq. 3).

    The kernel is a sum of Gaussians exp(-|a - b|^2 / (s * median)), where median is the median
    squared distance over the pooled samples (the median heuristic) and s runs over ``scales``,
    so one bad bandwidth can't hide a difference. Near 0 (possibly slightly negative) when x and
    y come from the same distribution.
    """
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"mmd2_unbiased needs at least 2 samples on each side, got {n} and {m}")
    pooled = torch.cat([x, y]).double()
    d2 = torch.cdist(pooled, pooled).pow(2)  # (n + m, n + m)
    off_diag = ~torch.eye(n + m, dtype=torch.bool, device=d2.device)
    median = d2[off_diag].median().clamp_min(1e-12)
    k = sum(torch.exp(-d2 / (s * median)) for s in scales)
    k_xx, k_yy, k_xy = k[:n, :n], k[n:, n:], k[:n, n:]
    # Drop the diagonals (k(a, a)) from the within-sample means: that is what makes it unbiased.
    mmd2 = ((k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
            + (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
            - 2 * k_xy.mean())
    return mmd2.float()  # float32 even under autocast: a bf16 score can't rank checkpoints


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------


class Generator(nn.Module):
    """z (B, latent_dim [+ label embedding]) -> image (B, C, H, W) in [-1, 1].

    Radford et al. 2016, §3: project and reshape to a small map (the smaller side is 4), then
    stride-2 transposed convs with BatchNorm + ReLU, each halving the channels; Tanh output.
    """

    def __init__(self, image_shape: tuple[int, int, int], in_dim: int, width: int):
        super().__init__()
        c, h, w = image_shape
        n = num_halvings(h, w)
        ch = [width * 2 ** (n - 1 - i) for i in range(n)]  # channels at 4, 8, ..., H/2
        self.start = (ch[0], h >> n, w >> n)
        self.proj = nn.Linear(in_dim, math.prod(self.start), bias=False)
        layers: list[nn.Module] = [nn.BatchNorm2d(ch[0]), nn.ReLU()]
        for i in range(n - 1):
            layers += [nn.ConvTranspose2d(ch[i], ch[i + 1], 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(ch[i + 1]), nn.ReLU()]
        # No BatchNorm on the output layer (Radford et al. 2016, §3: it made samples oscillate).
        layers += [nn.ConvTranspose2d(ch[-1], c, 4, stride=2, padding=1), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        h = self.proj(z).view(-1, *self.start)  # (B, C', H/2^n, W/2^n)
        return self.body(h)  # (B, C, H, W)


class Discriminator(nn.Module):
    """image (B, C, H, W) -> one logit per image, (B,).

    Radford et al. 2016, §3: stride-2 convs (no pooling) with BatchNorm, except on the first
    layer, and LeakyReLU(0.2), down to a 4-pixel side; then a linear read-out. With labels, the
    projection discriminator adds <embed(y), features> (Miyato & Koyama 2018, eq. 3).
    """

    def __init__(self, image_shape: tuple[int, int, int], width: int, num_classes: int):
        super().__init__()
        c, h, w = image_shape
        n = num_halvings(h, w)
        ch = [width * 2**i for i in range(n)]  # channels at H/2, H/4, ..., 4
        layers: list[nn.Module] = [nn.Conv2d(c, ch[0], 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        for i in range(n - 1):
            layers += [nn.Conv2d(ch[i], ch[i + 1], 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(ch[i + 1]), nn.LeakyReLU(0.2)]
        layers += [nn.Flatten()]
        self.body = nn.Sequential(*layers)
        features = ch[-1] * (h >> n) * (w >> n)
        self.head = nn.Linear(features, 1)
        self.embed = nn.Embedding(num_classes, features) if num_classes > 0 else None

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        phi = self.body(x)  # (B, F)
        logit = self.head(phi).squeeze(1)  # (B,)
        if self.embed is not None:
            logit = logit + (self.embed(y) * phi).sum(dim=1)
        return logit.float()  # losses and D(x) logs in float32 even under bf16 autocast


def dcgan_init(m: nn.Module) -> None:
    """Radford et al. 2016, §4: every weight from N(0, 0.02); BatchNorm scales around 1."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class DCGAN(nn.Module):
    sampling_settings = NoSettings

    def __init__(
        self,
        *,
        image_shape: tuple[int, int, int],
        width: int,
        latent_dim: int = 64,
        num_classes: int = 0,
        conditional: bool = False,
        g_lr: float | None = None,
        d_lr: float | None = None,
        n_critic: int = 1,
        r1_gamma: float = 0.0,
        r1_every: int = 16,
    ):
        super().__init__()
        self.image_shape = check_image_shape(image_shape, "dcgan")
        if latent_dim < 1:
            raise ValueError(f"dcgan: latent_dim must be >= 1, got {latent_dim}")
        if conditional and num_classes < 1:
            raise ValueError(
                "dcgan: conditional=True needs class labels, but the dataset has none "
                f"(num_classes={num_classes}); use a labelled dataset or set conditional: false"
            )
        self.latent_dim = latent_dim
        self.num_classes = num_classes if conditional else 0
        self.capabilities = frozenset({"sample", "condition"} if conditional else {"sample"})
        self.conditioning = "class" if conditional else "none"
        if r1_gamma < 0:
            raise ValueError(f"dcgan: r1_gamma must be >= 0 (0 = no R1 penalty), got {r1_gamma}")
        self.r1_gamma, self.r1_every = r1_gamma, r1_every

        # The label enters the generator as an embedding concatenated to z (Mirza & Osindero
        # 2014); its width is latent_dim, a fixed choice until a config needs another.
        self.label_embed = nn.Embedding(num_classes, latent_dim) if conditional else None
        self.generator = Generator(self.image_shape, latent_dim * (2 if conditional else 1), width)
        self.discriminator = Discriminator(self.image_shape, width, self.num_classes)
        self.apply(dcgan_init)
        generator = ("generator", "label_embed") if conditional else ("generator",)
        self.recipe = Adversarial(generator=generator, discriminator=("discriminator",), g_lr=g_lr, d_lr=d_lr,
                                  n_critic=n_critic, r1_every=r1_every if r1_gamma > 0 else 0)

    def generate(self, z: Tensor, y: Tensor | None) -> Tensor:
        if self.label_embed is not None:
            z = torch.cat([z, self.label_embed(y)], dim=1)  # (B, 2 * latent_dim)
        return self.generator(z)

    def _labels(self, batch: dict[str, Tensor]) -> Tensor | None:
        if self.label_embed is None:
            return None
        if "y" not in batch:
            raise ValueError("dcgan is conditional, so every batch needs integer labels 'y'")
        return batch["y"]

    def forward(self, batch: dict[str, Tensor], phase: str) -> tuple[Tensor, dict[str, Tensor]]:
        x = batch["x"]
        y = self._labels(batch)  # fakes reuse the real batch's labels: same class frequencies
        z = torch.randn(x.shape[0], self.latent_dim, device=x.device)
        if phase == "disc":
            with torch.no_grad():  # G(z).detach(): this phase steps D only
                fake = self.generate(z, y)
            loss, logs = discriminator_step(self.discriminator, x, fake, y)
        elif phase == "disc_reg":
            loss, logs = lazy_r1_step(self.discriminator, x, y, gamma=self.r1_gamma, every=self.r1_every)
        elif phase == "gen":
            loss = generator_loss(self.discriminator(self.generate(z, y), y))
            logs = {}  # the phase loss is logged by the engine as gen/loss
        else:
            raise ValueError(f"dcgan phases are disc, disc_reg and gen, got phase={phase!r}")
        return loss, {k: v.detach() for k, v in logs.items()}

    # -- using the trained model ----------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, y: Tensor | None = None) -> Tensor:
        """(n, C, H, W) in [-1, 1]. Conditional: y (n,) picks classes; without y the labels cycle
        0, 1, ..., num_classes - 1 so a grid shows every class.

        Runs the generator in eval mode (BatchNorm running statistics), so a sample does not
        depend on n or on what else is in the batch, and sampling leaves the statistics alone.
        """
        device = next(self.parameters()).device
        if self.label_embed is None:
            if y is not None:
                raise ValueError("dcgan was built with conditional=False; call sample without y")
        elif y is None:
            y = torch.arange(n, device=device) % self.num_classes
        elif y.shape != (n,):
            raise ValueError(f"dcgan.sample: y must have shape ({n},), got {tuple(y.shape)}")
        z = randn((n, self.latent_dim), generator=generator, device=device)
        was_training = self.generator.training
        self.generator.eval()
        try:
            return self.generate(z, None if y is None else y.to(device)).float().clamp(-1.0, 1.0)
        finally:
            self.generator.train(was_training)

    def sampling_cost(self, settings: BaseModel) -> int:
        return 1  # one generator pass

    @torch.no_grad()
    def eval_samples(self, n: int, *, generator_seed: int, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"": self.sample(n, generator=torch.Generator().manual_seed(generator_seed))}

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """"loss": unbiased MMD^2 between as many samples as the batch holds and the batch."""
        x = batch["x"]
        y = self._labels(batch)
        fake = self.sample(x.shape[0], generator=generator, y=y)
        was_training = self.discriminator.training
        self.discriminator.eval()
        try:
            d_real = torch.sigmoid(self.discriminator(x, y)).mean()
            d_fake = torch.sigmoid(self.discriminator(fake, y)).mean()
        finally:
            self.discriminator.train(was_training)
        return {"loss": mmd2_unbiased(fake.flatten(1), x.flatten(1)), "d_real": d_real, "d_fake": d_fake}


# ---------------------------------------------------------------------------------------------
# Size presets and builder
# ---------------------------------------------------------------------------------------------


def dcgan_tiny(**kw): return DCGAN(width=16, **kw)
def dcgan_small(**kw): return DCGAN(width=32, **kw)
def dcgan_base(**kw): return DCGAN(width=64, **kw)


SIZES = {"tiny": dcgan_tiny, "small": dcgan_small, "base": dcgan_base}


def build_dcgan(
    *,
    data: DatasetInfo,
    size: Literal["tiny", "small", "base"] = "small",
    latent_dim: Annotated[int, Field(ge=1)] = 64,
    conditional: bool = False,
    g_lr: Annotated[float, Field(gt=0)] | None = None,
    d_lr: Annotated[float, Field(gt=0)] | None = None,
    n_critic: Annotated[int, Field(ge=1)] = 1,
    r1_gamma: Annotated[float, Field(ge=0)] = 0.0,
    r1_every: Annotated[int, Field(ge=1)] = 16,
) -> DCGAN:
    """Radford et al. 2016; conditional=True adds labels to G and a projection D. g_lr / d_lr
    (default: trainer.lr) give the two networks their own learning rates (TTUR); n_critic
    discriminator steps per generator step; r1_gamma > 0 adds a lazy R1 penalty every r1_every
    steps."""
    return SIZES[size](image_shape=data.image_shape, latent_dim=latent_dim, num_classes=data.num_classes,
                       conditional=conditional, g_lr=g_lr, d_lr=d_lr, n_critic=n_critic, r1_gamma=r1_gamma,
                       r1_every=r1_every)
