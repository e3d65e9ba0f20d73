"""Convolutional Gaussian VAE (Kingma & Welling 2014) and beta-VAE (Higgins et al. 2017).

One class serves both families: ``build_vae`` fixes beta = 1 (the true ELBO), ``build_beta_vae``
weights the KL term by beta or, with ``capacity_max > 0``, uses the capacity-annealed objective
of Burgess et al. 2018. The decoder is a Gaussian with one learned global scale (sigma-VAE,
Rybkin et al. 2021) unless ``decoder_sigma`` fixes it.

Likelihoods here are densities on continuous pixels in [-1, 1]: ``log_prob`` and the ELBO are in
nats per example of that density (they can be positive), not discrete bits per dim of 8-bit
images, so they compare only with other continuous-density models on the same scaling.
"""
import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import Tensor, nn

from genray.components.data import DatasetInfo
from genray.components.models.layers import check_image_shape, num_halvings, randn
from genray.components.models.protocol import SETTINGS_CONFIG
from genray.components.training import Backprop

LOG_2PI = math.log(2 * math.pi)


# ---------------------------------------------------------------------------------------------
# The objective's pieces, as plain functions of tensors
# ---------------------------------------------------------------------------------------------


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) in nats, summed over latent dims (a vector or a
    map) -> (B,).

    Kingma & Welling 2014, appendix B: -KL = 1/2 sum(1 + log var - mu^2 - var).
    """
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(dim=1)


def gaussian_nll(x: Tensor, mean: Tensor, log_sigma: Tensor) -> Tensor:
    """-log N(x; mean, sigma^2 I) in nats, summed over every pixel -> (B,)."""
    z = (x - mean) * torch.exp(-log_sigma)
    nll = 0.5 * z.pow(2) + log_sigma + 0.5 * LOG_2PI  # (B, C, H, W)
    return nll.flatten(1).sum(dim=1)


def softclip(t: Tensor, low: float) -> Tensor:
    """A smooth max(t, low); Rybkin et al. 2021 keep the learned log-scale off -infinity this way."""
    return low + F.softplus(t - low)


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, c), c)


class ResBlock(nn.Module):
    """x + conv(silu(norm(x))): one 3x3 conv with a skip, so extra depth never hurts at init."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _channels(width: int, n: int) -> list[int]:
    # width, 2*width, 4*width, 4*width, ...: capped so 64x64 images don't explode the parameter count
    return [width * 2 ** min(i, 2) for i in range(n + 1)]


class Encoder(nn.Module):
    """x (B, C, H, W) -> mean and log-variance of q(z|x): each (B, latent_dim), or with a spatial
    latent each (B, latent_channels, H/2^k, W/2^k) for k = latent_downsample."""

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int, width: int, depth: int,
                 latent_channels: int = 0, latent_downsample: int = 0):
        super().__init__()
        c, h, w = image_shape
        n = latent_downsample if latent_channels else num_halvings(h, w)
        ch = _channels(width, n)
        layers: list[nn.Module] = [nn.Conv2d(c, ch[0], 3, padding=1)]
        for i in range(n):
            layers += [ResBlock(ch[i]) for _ in range(depth)]
            layers += [_norm(ch[i]), nn.SiLU(), nn.Conv2d(ch[i], ch[i + 1], 4, stride=2, padding=1)]
        if latent_channels:
            # Rombach et al. 2022, §3: a latent *map* keeps the image's spatial layout, so a
            # convolutional denoiser can work on it; a 1x1 conv gives mean and log-variance.
            layers += [ResBlock(ch[n]) for _ in range(depth)]
            layers += [_norm(ch[n]), nn.SiLU()]
            self.body = nn.Sequential(*layers)
            self.head = nn.Conv2d(ch[n], 2 * latent_channels, 1)
        else:
            layers += [_norm(ch[n]), nn.SiLU(), nn.Flatten()]
            self.body = nn.Sequential(*layers)
            self.head = nn.Linear(ch[n] * (h >> n) * (w >> n), 2 * latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x)  # (B, C' * H/2^n * W/2^n), or (B, C', H/2^k, W/2^k) for a latent map
        mu, logvar = self.head(h).chunk(2, dim=1)  # (B, D) or (B, c, H/2^k, W/2^k) each
        return mu, logvar


class Decoder(nn.Module):
    """z (B, latent_dim) or a latent map -> mean of p(x|z), (B, C, H, W); unbounded, so the
    Gaussian is honest."""

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int, width: int, depth: int,
                 latent_channels: int = 0, latent_downsample: int = 0):
        super().__init__()
        c, h, w = image_shape
        n = latent_downsample if latent_channels else num_halvings(h, w)
        ch = _channels(width, n)
        self.start = (ch[n], h >> n, w >> n)
        if latent_channels:
            self.proj = nn.Sequential(nn.Conv2d(latent_channels, ch[n], 3, padding=1),
                                      *[ResBlock(ch[n]) for _ in range(depth)])
        else:
            self.proj = nn.Linear(latent_dim, ch[n] * (h >> n) * (w >> n))
        layers: list[nn.Module] = []
        for i in reversed(range(n)):
            layers += [ResBlock(ch[i + 1]) for _ in range(depth)]
            # Nearest upsample + conv rather than a transposed conv: no checkerboard artifacts
            # (Odena et al. 2016, "Deconvolution and Checkerboard Artifacts").
            layers += [_norm(ch[i + 1]), nn.SiLU(), nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(ch[i + 1], ch[i], 3, padding=1)]
        layers += [ResBlock(ch[0]) for _ in range(depth)]
        layers += [_norm(ch[0]), nn.SiLU(), nn.Conv2d(ch[0], c, 3, padding=1)]
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        h = self.proj(z).view(-1, *self.start)  # (B, C', H/2^n, W/2^n)
        return self.body(h)  # (B, C, H, W)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class VAESampling(BaseModel):
    model_config = SETTINGS_CONFIG
    temperature: float = Field(1.0, ge=0, le=10, description="prior scale: z ~ N(0, temperature^2 I)")


class VAE(nn.Module):
    capabilities = frozenset({"sample", "encode", "decode", "log_prob"})
    conditioning, num_classes = "none", 0
    sampling_settings = VAESampling
    # A Gaussian density on [-1, 1]^D, bounded from below by IWAE (components/metrics/likelihood.py).
    log_prob_space, log_prob_kind = "continuous", "bound"

    def __init__(
        self,
        *,
        image_shape: tuple[int, int, int],
        width: int,
        depth: int,
        latent_dim: int = 16,
        decoder_sigma: float | None = None,
        iw_samples: int = 64,
        beta: float = 1.0,
        capacity_max: float = 0.0,
        capacity_steps: int = 0,
        gamma: float = 1000.0,
        latent_channels: int = 0,
        latent_downsample: int = 2,
    ):
        super().__init__()
        self.image_shape = check_image_shape(image_shape, "vae")
        c, h, w = self.image_shape
        if latent_channels < 0:
            raise ValueError(f"vae: latent_channels must be >= 0 (0 = a latent vector), got {latent_channels}")
        if latent_channels and not 1 <= latent_downsample <= num_halvings(h, w):
            raise ValueError(
                f"vae: latent_downsample must be between 1 and {num_halvings(h, w)} for {h}x{w} images "
                f"(the latent map is H/2^k x W/2^k and at least 4x4), got {latent_downsample}"
            )
        if latent_dim < 1:
            raise ValueError(f"vae: latent_dim must be >= 1, got {latent_dim}")
        if iw_samples < 1:
            raise ValueError(f"vae: iw_samples (importance samples for log_prob) must be >= 1, got {iw_samples}")
        if beta < 0 or capacity_max < 0 or capacity_steps < 0 or gamma < 0:
            raise ValueError(
                "vae: beta, capacity_max, capacity_steps and gamma must be >= 0, got "
                f"{beta=}, {capacity_max=}, {capacity_steps=}, {gamma=}"
            )
        # A latent vector of latent_dim, or a latent map (latent_channels, H/2^k, W/2^k) for
        # latent diffusion; latent_shape is what `encode` returns per example.
        if latent_channels:
            self.latent_shape = (latent_channels, h >> latent_downsample, w >> latent_downsample)
        else:
            self.latent_shape = (latent_dim,)
        self.latent_dim = math.prod(self.latent_shape)
        self.num_dims = math.prod(self.image_shape)
        self.iw_samples = iw_samples
        self.beta = beta
        self.capacity_max = capacity_max
        self.capacity_steps = capacity_steps
        self.gamma = gamma

        self.encoder = Encoder(self.image_shape, latent_dim, width, depth, latent_channels, latent_downsample)
        self.decoder = Decoder(self.image_shape, latent_dim, width, depth, latent_channels, latent_downsample)
        if decoder_sigma is None:
            # sigma-VAE (Rybkin et al. 2021): one learned scale for every pixel, so the
            # reconstruction/KL balance is learned instead of hand-tuned.
            self.log_sigma_raw = nn.Parameter(torch.zeros(()))
        else:
            if decoder_sigma <= 0:
                raise ValueError(f"vae: decoder_sigma must be > 0 (or None to learn it), got {decoder_sigma}")
            self.register_buffer("log_sigma_raw", torch.tensor(math.log(decoder_sigma)))
        self.learn_sigma = decoder_sigma is None
        # The optimizer step, for the capacity schedule; a buffer so it round-trips in state_dict.
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.recipe = Backprop(on_step=self.set_step if capacity_max > 0 else None)

    # -- the objective ----------------------------------------------------------------------------

    def log_sigma(self) -> Tensor:
        return softclip(self.log_sigma_raw, -6.0) if self.learn_sigma else self.log_sigma_raw

    def set_step(self, step: int) -> None:
        """The recipe's on_step hook: the optimizer step, for capacity annealing."""
        self.step.fill_(step)

    def capacity(self) -> Tensor:
        """C(step) of Burgess et al. 2018, §4: grows linearly from 0 to capacity_max nats."""
        if self.capacity_steps == 0:
            return torch.tensor(self.capacity_max, device=self.step.device)
        frac = (self.step.float() / self.capacity_steps).clamp(max=1.0)
        return self.capacity_max * frac

    def terms(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """Reparameterised one-sample estimate (Kingma & Welling 2014, eq. 10): recon NLL and
        analytic KL, each (B,) in nats."""
        # The objective in float32 even under bf16 autocast: sums over thousands of pixels.
        mu, logvar = (t.float() for t in self.encoder(x))  # (B, D) each
        z = mu + torch.exp(0.5 * logvar) * eps  # (B, D)
        recon = gaussian_nll(x.float(), self.decoder(z).float(), self.log_sigma())
        return recon, gaussian_kl(mu, logvar)

    def forward(self, batch: dict[str, Tensor], phase: str = "main") -> tuple[Tensor, dict[str, Tensor]]:
        if phase != "main":
            raise ValueError(f"vae has one phase, 'main'; got phase={phase!r}")
        x = batch["x"]
        recon, kl = self.terms(x, torch.randn(x.shape[0], *self.latent_shape, device=x.device))
        logs = {"elbo": -(recon + kl).mean(), "kl": kl.mean(), "recon": recon.mean(),
                "sigma": self.log_sigma().exp()}
        if self.capacity_max > 0:
            # Burgess et al. 2018, eq. 8: recon + gamma * |KL - C|, with the KL averaged over data.
            gap = kl.mean() - self.capacity()
            loss = recon.mean() + self.gamma * gap.abs()
            logs["capacity"] = self.capacity()
            logs["beta"] = self.gamma * torch.sign(gap)  # the weight the KL actually gets now
        else:
            # Higgins et al. 2017, eq. 4: beta = 1 is the ELBO.
            loss = (recon + self.beta * kl).mean()
            logs["beta"] = torch.tensor(float(self.beta))
        # Per pixel, so one learning rate suits 8x8 digits and 64x64 photos alike.
        loss = loss / self.num_dims
        return loss, {k: v.detach().float() for k, v in logs.items()}

    # -- using the trained model ----------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Held-out negative ELBO (beta = 1, whatever the training beta) in nats per dim."""
        x = batch["x"]
        eps = randn((x.shape[0], *self.latent_shape), generator=generator, device=x.device)
        recon, kl = self.terms(x, eps)
        elbo = -(recon + kl)
        return {"loss": -elbo.mean() / self.num_dims, "elbo": elbo.mean(), "kl": kl.mean(), "recon": recon.mean()}

    @torch.no_grad()
    def sample_posterior(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """z ~ q(z|x) by reparameterisation, float32 (B, *latent_shape)."""
        mu, logvar = (t.float() for t in self.encoder(x))
        return mu + torch.exp(0.5 * logvar) * randn(mu.shape, generator=generator, device=mu.device)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """The posterior mean, (B, *latent_shape)."""
        return self.encoder(x)[0]

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """The decoder mean, clamped to the data range, (B, C, H, W)."""
        return self.decoder(z).float().clamp(-1.0, 1.0)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, y: Tensor | None = None,
               temperature: float = 1.0) -> Tensor:
        """Decoder means of z ~ N(0, temperature² I) (the pixel noise would only add grain),
        (n, C, H, W). Temperature < 1 trades diversity for typical samples (Kingma & Dhariwal
        2018, sec. 5, did the same for Glow)."""
        if y is not None:
            raise ValueError("vae is unconditional (no 'condition' capability); call sample without y")
        if not temperature >= 0:
            raise ValueError(f"vae.sample: temperature must be >= 0, got {temperature}")
        z = temperature * randn((n, *self.latent_shape), generator=generator, device=self.step.device)
        return self.decode(z)

    def sampling_cost(self, settings: BaseModel) -> int:
        return 1  # one decoder pass

    @torch.no_grad()
    def eval_samples(self, n: int, *, generator_seed: int, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"": self.sample(n, generator=torch.Generator().manual_seed(generator_seed))}

    @torch.no_grad()
    def log_prob(self, x: Tensor, k: int | None = None, *, generator: torch.Generator | None = None) -> Tensor:
        """Importance-weighted lower bound on log p(x), nats per example, (B,).

        Burda et al. 2016, eq. 8: log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x). It equals the
        ELBO in expectation at k = 1 and tightens towards log p(x) as k grows.
        """
        k = self.iw_samples if k is None else k
        if k < 1:
            raise ValueError(f"vae.log_prob: k (importance samples) must be >= 1, got {k}")
        mu, logvar = (t.float() for t in self.encoder(x))  # (B, D) each
        std = torch.exp(0.5 * logvar)
        log_sigma = self.log_sigma()
        log_w = []
        for _ in range(k):  # one decoder pass per sample keeps memory at one batch
            eps = randn(mu.shape, generator=generator, device=x.device)
            z = mu + std * eps
            log_px_z = -gaussian_nll(x.float(), self.decoder(z).float(), log_sigma)
            log_pz = -0.5 * (z.pow(2) + LOG_2PI).flatten(1).sum(dim=1)
            log_qz = -0.5 * (eps.pow(2) + logvar + LOG_2PI).flatten(1).sum(dim=1)
            log_w.append(log_px_z + log_pz - log_qz)
        return torch.logsumexp(torch.stack(log_w), dim=0) - math.log(k)


# ---------------------------------------------------------------------------------------------
# Size presets and builders (the config's `model:` section maps onto the builder's arguments)
# ---------------------------------------------------------------------------------------------


def vae_tiny(**kw): return VAE(width=8, depth=1, **kw)
def vae_small(**kw): return VAE(width=32, depth=1, **kw)
def vae_base(**kw): return VAE(width=64, depth=2, **kw)


SIZES = {"tiny": vae_tiny, "small": vae_small, "base": vae_base}


def build_vae(
    *,
    data: DatasetInfo,
    size: Literal["tiny", "small", "base"] = "small",
    latent_dim: Annotated[int, Field(ge=1)] = 16,
    decoder_sigma: Annotated[float, Field(gt=0)] | None = None,
    iw_samples: Annotated[int, Field(ge=1)] = 64,
    latent_channels: Annotated[int, Field(ge=0)] = 0,
    latent_downsample: Annotated[int, Field(ge=1)] = 2,
) -> VAE:
    """Kingma & Welling 2014: the plain ELBO (beta = 1). Labels, if any, are ignored.
    latent_channels > 0 makes the latent a map (latent_channels, H/2^k, W/2^k), k =
    latent_downsample, instead of a vector of latent_dim: the autoencoder of latent diffusion."""
    return SIZES[size](image_shape=data.image_shape, latent_dim=latent_dim, decoder_sigma=decoder_sigma,
                       iw_samples=iw_samples, latent_channels=latent_channels,
                       latent_downsample=latent_downsample)


def build_beta_vae(
    *,
    data: DatasetInfo,
    size: Literal["tiny", "small", "base"] = "small",
    latent_dim: Annotated[int, Field(ge=1)] = 16,
    decoder_sigma: Annotated[float, Field(gt=0)] | None = None,
    iw_samples: Annotated[int, Field(ge=1)] = 64,
    beta: Annotated[float, Field(ge=0)] = 4.0,
    capacity_max: Annotated[float, Field(ge=0)] = 0.0,
    capacity_steps: Annotated[int, Field(ge=0)] = 0,
    gamma: Annotated[float, Field(ge=0)] = 1000.0,
    latent_channels: Annotated[int, Field(ge=0)] = 0,
    latent_downsample: Annotated[int, Field(ge=1)] = 2,
) -> VAE:
    """Higgins et al. 2017 (beta weights the KL); with capacity_max > 0, Burgess et al. 2018
    (gamma * |KL - C|, C annealed to capacity_max nats over capacity_steps; beta is then unused)."""
    return SIZES[size](image_shape=data.image_shape, latent_dim=latent_dim, decoder_sigma=decoder_sigma,
                       iw_samples=iw_samples, beta=beta, capacity_max=capacity_max,
                       capacity_steps=capacity_steps, gamma=gamma, latent_channels=latent_channels,
                       latent_downsample=latent_downsample)
