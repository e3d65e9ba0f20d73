"""VQ-VAE (van den Oord et al. 2017, "Neural Discrete Representation Learning"): a conv encoder,
a codebook of K vectors that every encoder output snaps to, and a conv decoder, on images
(B, C, H, W) in [-1, 1].

    z_e = E(x)                      (B, D, H/4, W/4): two stride-2 convs and residual blocks (sec. 4.1);
                                    model.downsample 2 or 8 uses one or three (H/2 or H/8)
    k   = argmin_i ||z_e - e_i||    per grid position: the image's tokens, (B, H/4, W/4)
    z_q = e_k                       the quantised latent
    x   ~ N(G(z_q), sigma^2 I)      the decoder of the VAE (vae.py): one learned scale (sigma-VAE)

    loss = -log p(x | z_q) + beta ||z_e - sg(z_q)||^2        (eq. 3 without its codebook term)

The gradient reaches the encoder straight through the quantiser (sec. 3.2): the decoder sees
z_e + sg(z_q - z_e), whose value is z_q and whose gradient is the identity. The codebook term of
eq. 3 is replaced by exponential moving averages (appendix A.1): per code, the EMA of how many
encoder outputs chose it (N_i) and of their sum (m_i), and e_i = m_i / N_i with N_i Laplace-
smoothed so that an unused code's division stays finite (the authors' released implementation;
Razavi et al. 2019 train with the same update). The codebook is therefore buffers, not
parameters: no optimizer touches it, and a checkpoint carries it and its statistics.

Dead codes. A code whose EMA usage falls below `dead_code_threshold` times the uniform share
1/K is restarted onto a random encoder output of the current batch (Dhariwal et al. 2020,
Jukebox's "random restarts"), with the mean usage as its new count, so it gets time to attract
data before it could be restarted again. `restart_dead_codes=False` turns this off (the
with/without measurement).

Data parallel. The EMA update runs inside `forward` in training mode, on every rank, from the
batch's counts and sums all-reduced over the ranks (one all-reduce of a (K, 1 + D) tensor when
torch.distributed is initialised): every rank applies the same update to the same codebook, the
one an update on the union of the ranks' batches gives. Restarted codes are drawn on rank 0 and
broadcast. The engine broadcasts rank 0's buffers after construction and after the data-dependent
init (the codebook set from the first batch's encoder outputs), so the ranks start equal and stay
equal. With gradient accumulation the EMA takes one step per micro-batch.

Likelihood. The prior over codes is the unigram of the EMA code frequencies, independent at
every position: pi_i = (N_i + eps) / (sum N + K eps). The posterior is a point mass at z_q, so

    -log p(x) <= -log p(x | z_q) - log p(z_q),   log p(z_q) = sum over positions of log pi_k

a bound in the VAE's space (a density on [-1, 1]^D, dequantised for bits/dim): `log_prob_kind =
"bound"`. `sample` decodes codes drawn from that prior (decoder means, as the VAE's samples).
A unigram prior ignores where codes sit relative to each other, so its samples are patchworks
of the codebook; a learned prior over the tokens (a PixelCNN or GPT on `tokens(x)`) is the
paper's second stage.

`encode(x)` gives z_q, the quantised latents (B, D, H/4, W/4), and `decode(z)` snaps any latent
to its nearest codes before decoding, so decode(encode(x)) is the reconstruction and a latent
that came from elsewhere (an interpolation, a request) decodes as the model would decode codes.
`tokens(x)` gives the code ids (B, H/4, W/4) and `decode_tokens(ids)` decodes them: the
`tokenize` capability, which `genray data tokenize` runs over a dataset.
"""
import math
from typing import Annotated, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import Tensor, nn

from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.metrics.codebook import perplexity
from genray.components.metrics.likelihood import model_bits_per_dim
from genray.components.models.layers import StackedGenerators, check_image_shape, randn
from genray.components.models.pix2pix import psnr
from genray.components.models.protocol import SETTINGS_CONFIG
from genray.components.models.vae import gaussian_nll, softclip
from genray.components.training import Backprop

DOWNSAMPLE = 4  # two stride-2 convs (sec. 4.1): 8x8 digits -> 2x2 codes, 32x32 -> 8x8, 64x64 -> 16x16
DOWNSAMPLES = (2, 4, 8)  # model.downsample: one, two or three stride-2 convs (32x32 -> 16x16, 8x8, 4x4 codes)


# ---------------------------------------------------------------------------------------------
# The quantiser's math, as plain functions of tensors
# ---------------------------------------------------------------------------------------------


def nearest_codes(z: Tensor, codebook: Tensor) -> Tensor:
    """The index of the nearest code (Euclidean) for each row of z (N, D) among codebook (K, D),
    (N,) long: argmin_i ||z||^2 - 2 z.e_i + ||e_i||^2 (eq. 1)."""
    d = z.pow(2).sum(1, keepdim=True) - 2 * z @ codebook.T + codebook.pow(2).sum(1)  # (N, K)
    return d.argmin(dim=1)


def straight_through(z_e: Tensor, z_q: Tensor) -> Tensor:
    """z_q in value, the identity in gradient to z_e (sec. 3.2: the decoder input's gradient is
    copied to the encoder output)."""
    return z_e + (z_q - z_e).detach()


def commitment(z_e: Tensor, z_q: Tensor) -> Tensor:
    """||z_e - sg(z_q)||^2 summed over each example's latent, (B,): eq. 3's third term without beta;
    it moves only the encoder."""
    return (z_e - z_q.detach()).pow(2).flatten(1).sum(1)


def ema_codebook(cluster_size: Tensor, code_sum: Tensor, counts: Tensor, sums: Tensor, *, decay: float,
                 epsilon: float) -> tuple[Tensor, Tensor, Tensor]:
    """One EMA step of the codebook (appendix A.1) from a batch's per-code counts n_i (K,) and sums
    of the encoder outputs that chose each code (K, D):

        N_i <- decay N_i + (1 - decay) n_i
        m_i <- decay m_i + (1 - decay) sum_j z_e,j
        e_i  = m_i / N~_i,   N~_i = (N_i + epsilon) / (n + K epsilon) * n,   n = sum_i N_i

    N~ is N Laplace-smoothed (its total kept at n), so a code nobody chose divides by a small
    number instead of zero. Returns (N, m, codebook)."""
    size = decay * cluster_size + (1 - decay) * counts
    total = decay * code_sum + (1 - decay) * sums
    n = size.sum()
    smoothed = (size + epsilon) / (n + len(size) * epsilon) * n
    return size, total, total / smoothed[:, None]


def random_rows(z: Tensor, k: int) -> Tensor:
    """k rows of z (N, D) drawn with torch's global generator (which the training loop reseeds
    every step): without replacement when there are enough rows."""
    if k <= len(z):
        return z[torch.randperm(len(z), device=z.device)[:k]]
    return z[torch.randint(len(z), (k,), device=z.device)]


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------


class Residual(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))): the paper's residual block (sec. 4.1)."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(c, c // 2, 3, padding=1), nn.ReLU(), nn.Conv2d(c // 2, c, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def stage_widths(width: int, halvings: int) -> list[int]:
    """Channels after each stride-2 conv of the encoder: the paper's two are width/2 then width
    (sec. 4.1); one halving goes straight to width, a third stays at width."""
    return [width] if halvings == 1 else [width // 2, width] + [width] * (halvings - 2)


class Encoder(nn.Module):
    """x (B, C, H, W) -> z_e (B, code_dim, H/f, W/f), f = 2^halvings (4 by default)."""

    def __init__(self, channels: int, width: int, depth: int, code_dim: int, halvings: int = 2):
        super().__init__()
        convs: list[nn.Module] = []
        for c_in, c_out in zip([channels] + stage_widths(width, halvings)[:-1], stage_widths(width, halvings)):
            convs += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]  # halves H and W
        self.body = nn.Sequential(
            *convs,  # (B, w, H/f, W/f)
            nn.Conv2d(width, width, 3, padding=1),
            *[Residual(width) for _ in range(depth)], nn.ReLU(),
            nn.Conv2d(width, code_dim, 1),  # (B, D, H/f, W/f)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class Decoder(nn.Module):
    """z_q (B, code_dim, H/f, W/f) -> the mean of p(x | z_q), (B, C, H, W); unbounded, so the
    Gaussian is honest. The encoder mirrored, with nearest upsampling + conv where the paper has
    transposed convs (no checkerboard artifacts, Odena et al. 2016; as vae.py)."""

    def __init__(self, channels: int, width: int, depth: int, code_dim: int, halvings: int = 2):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(code_dim, width, 3, padding=1),
                                   *[Residual(width) for _ in range(depth)], nn.ReLU()]
        widths = stage_widths(width, halvings)[::-1] + [channels]  # e.g. w, w/2, C for the paper's two
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1)]
            if i < halvings - 1:
                layers.append(nn.ReLU())
        self.body = nn.Sequential(*layers)  # (B, C, H, W)

    def forward(self, z: Tensor) -> Tensor:
        return self.body(z)


class VectorQuantizer(nn.Module):
    """A codebook of `num_codes` vectors of `code_dim`, learned by EMA (see the module docstring).

    Buffers: `codebook` (K, D), `cluster_size` (K,) the EMA counts N, `code_sum` (K, D) the EMA
    sums m. They start as a random codebook with N = 1 (so m = e); a training run replaces them
    from its first batch (`initialize`)."""

    def __init__(self, num_codes: int, code_dim: int, *, decay: float, epsilon: float, restart: bool,
                 dead_threshold: float):
        super().__init__()
        self.num_codes, self.code_dim = num_codes, code_dim
        self.decay, self.epsilon = decay, epsilon
        self.restart, self.dead_threshold = restart, dead_threshold
        codebook = torch.randn(num_codes, code_dim)
        self.register_buffer("codebook", codebook)
        self.register_buffer("cluster_size", torch.ones(num_codes))
        self.register_buffer("code_sum", codebook.clone())

    def flat(self, z: Tensor) -> Tensor:
        """(B, D, h, w) -> (B*h*w, D) float32, position by position (row-major)."""
        return z.float().permute(0, 2, 3, 1).reshape(-1, self.code_dim)

    def lookup(self, ids: Tensor) -> Tensor:
        """Code ids (B, h, w) -> their vectors (B, D, h, w)."""
        return F.embedding(ids, self.codebook).permute(0, 3, 1, 2)

    def quantize(self, z_e: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest codes of z_e (B, D, h, w): (ids (B, h, w), z_q (B, D, h, w) float32); no gradient
        reaches the codebook (it is a buffer) and none passes through z_q (see straight_through)."""
        b, _, h, w = z_e.shape
        with torch.no_grad(), torch.autocast(z_e.device.type, enabled=False):  # float32: bf16 would tie codes
            ids = nearest_codes(self.flat(z_e), self.codebook).view(b, h, w)
        return ids, self.lookup(ids)

    def log_prior(self) -> Tensor:
        """log pi_i, the unigram prior over codes from the EMA counts, Laplace-smoothed, (K,)."""
        n = self.cluster_size.sum()
        return torch.log((self.cluster_size + self.epsilon) / (n + self.num_codes * self.epsilon))

    @torch.no_grad()
    def initialize(self, z_e: Tensor, world_size: int = 1) -> None:
        """Codes on random encoder outputs of the first batch (k-means' usual start), each with the
        uniform share of the batch as its count (the batch of all `world_size` ranks)."""
        z = self.flat(z_e)
        self.codebook.copy_(random_rows(z, self.num_codes))
        self.cluster_size.fill_(len(z) * world_size / self.num_codes)
        self.code_sum.copy_(self.codebook * self.cluster_size[:, None])

    @torch.no_grad()
    def update(self, z_e: Tensor, ids: Tensor) -> dict[str, Tensor]:
        """One EMA step from a batch's encoder outputs z_e (B, D, h, w) and their codes ids (B, h, w),
        over every rank's batch, then the restart of dead codes. Returns the batch's code counts
        (all ranks, (K,)) and how many codes were dead after the step (restarted if restart is on)."""
        z, ids = self.flat(z_e), ids.reshape(-1)
        stats = torch.zeros(self.num_codes, 1 + self.code_dim, device=z.device)
        stats[:, 0].index_add_(0, ids, torch.ones_like(ids, dtype=stats.dtype))
        stats[:, 1:].index_add_(0, ids, z)
        world = _world_size()
        if world > 1:  # one all-reduce: every rank then takes the same step
            dist.all_reduce(stats)
        counts, sums = stats[:, 0], stats[:, 1:]
        size, total, codebook = ema_codebook(self.cluster_size, self.code_sum, counts, sums,
                                             decay=self.decay, epsilon=self.epsilon)
        self.cluster_size.copy_(size)
        self.code_sum.copy_(total)
        self.codebook.copy_(codebook)

        mean_size = self.cluster_size.sum() / self.num_codes
        dead = self.cluster_size < self.dead_threshold * mean_size  # the same on every rank
        num_dead = int(dead.sum())
        if self.restart and num_dead:
            fresh = random_rows(z, num_dead).contiguous()
            if world > 1:  # rank 0's draw everywhere, so the codebooks stay equal
                dist.broadcast(fresh, src=0)
            self.codebook[dead] = fresh
            self.cluster_size[dead] = mean_size
            self.code_sum[dead] = fresh * mean_size
        return {"counts": counts, "dead_codes": torch.tensor(float(num_dead))}


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class VQVAESampling(BaseModel):
    model_config = SETTINGS_CONFIG
    temperature: float = Field(1.0, ge=0, le=10, description=(
        "codes ~ softmax(log pi / temperature) at each position, independently: 1 is the model's unigram "
        "prior (the one its likelihood bound uses), below 1 favours frequent codes, 0 takes the most "
        "frequent code everywhere"))


class VQVAE(nn.Module):
    capabilities = frozenset({"sample", "encode", "decode", "log_prob", "tokenize"})
    conditioning, num_classes = "none", 0
    sampling_settings = VQVAESampling
    # The VAE's Gaussian density on [-1, 1]^D, with a point-mass posterior: a bound (module docstring).
    log_prob_space, log_prob_kind = "continuous", "bound"

    def __init__(self, *, image_shape: tuple[int, int, int], width: int, depth: int, codebook_size: int = 512,
                 code_dim: int = 64, beta: float = 0.25, ema_decay: float = 0.99, epsilon: float = 1e-5,
                 restart_dead_codes: bool = True, dead_code_threshold: float = 0.1, downsample: int = DOWNSAMPLE):
        super().__init__()
        self.image_shape = check_image_shape(image_shape, "vqvae")
        c, h, w = self.image_shape
        if downsample not in DOWNSAMPLES:  # image sides are powers of two >= 8, so each of these divides them
            raise ValueError(f"vqvae: downsample must be one of {DOWNSAMPLES}, got {downsample}")
        if codebook_size < 2 or code_dim < 1:
            raise ValueError(f"vqvae: codebook_size must be >= 2 and code_dim >= 1, got {codebook_size=}, {code_dim=}")
        if beta < 0 or not 0 <= ema_decay < 1 or epsilon <= 0 or not 0 <= dead_code_threshold <= 1:
            raise ValueError("vqvae: needs beta >= 0, 0 <= ema_decay < 1, epsilon > 0 and 0 <= dead_code_threshold "
                             f"<= 1; got {beta=}, {ema_decay=}, {epsilon=}, {dead_code_threshold=}")
        self.downsample = downsample
        self.grid = (h // downsample, w // downsample)
        self.latent_shape = (code_dim, *self.grid)  # what encode returns per example
        self.num_dims = math.prod(self.image_shape)
        self.beta = beta

        halvings = DOWNSAMPLES.index(downsample) + 1
        self.encoder = Encoder(c, width, depth, code_dim, halvings)
        self.quantizer = VectorQuantizer(codebook_size, code_dim, decay=ema_decay, epsilon=epsilon,
                                         restart=restart_dead_codes, dead_threshold=dead_code_threshold)
        self.decoder = Decoder(c, width, depth, code_dim, halvings)
        # sigma-VAE (Rybkin et al. 2021), as vae.py: one learned scale for every pixel.
        self.log_sigma_raw = nn.Parameter(torch.zeros(()))
        self.recipe = Backprop(init=self.initialize)

    @property
    def codebook_size(self) -> int:
        return self.quantizer.num_codes

    # -- the objective ----------------------------------------------------------------------------

    def log_sigma(self) -> Tensor:
        return softclip(self.log_sigma_raw, -6.0)

    @torch.no_grad()
    def initialize(self, batch: dict[str, Tensor]) -> None:
        """The recipe's init hook: the codebook from the first batch's encoder outputs (the engine
        then broadcasts rank 0's to every rank)."""
        self.quantizer.initialize(self.encoder(batch["x"]), _world_size())

    def terms(self, x: Tensor) -> dict[str, Tensor]:
        """The pieces of eq. 3 for images x: encoder output, codes, quantised latent, decoder mean
        through the straight-through estimator, and per example (B,) the reconstruction NLL (nats)
        and the commitment ||z_e - sg(z_q)||^2."""
        z_e = self.encoder(x).float()  # (B, D, h, w)
        ids, z_q = self.quantizer.quantize(z_e)
        mean = self.decoder(straight_through(z_e, z_q)).float()  # (B, C, H, W)
        return {"z_e": z_e, "ids": ids, "z_q": z_q, "mean": mean,
                "recon": gaussian_nll(x.float(), mean, self.log_sigma()), "commitment": commitment(z_e, z_q)}

    def forward(self, batch: dict[str, Tensor], phase: str = "main") -> tuple[Tensor, dict[str, Tensor]]:
        if phase != "main":
            raise ValueError(f"vqvae has one phase, 'main'; got phase={phase!r}")
        t = self.terms(batch["x"])
        # eq. 3 with the codebook term left to the EMA; per pixel, as vae.py, so one lr suits every size.
        loss = (t["recon"] + self.beta * t["commitment"]).mean() / self.num_dims
        if self.training:  # the codebook's EMA step, over every rank's batch
            stats = self.quantizer.update(t["z_e"].detach(), t["ids"])
            counts, dead = stats["counts"], stats["dead_codes"]
        else:
            counts, dead = torch.bincount(t["ids"].flatten(), minlength=self.codebook_size).float(), None
        logs = {"recon": t["recon"].mean(), "commitment": t["commitment"].mean(), "sigma": self.log_sigma().exp(),
                "usage": (counts > 0).float().mean(), "perplexity": perplexity(counts)}
        if dead is not None:
            logs["dead_codes"] = dead
        return loss, {k: v.detach().float() for k, v in logs.items()}

    # -- using the trained model ----------------------------------------------------------------------

    def check_images(self, x: Tensor, call: str) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise UserError(f"vqvae.{call}: x must be images (B, {', '.join(map(str, self.image_shape))}) in [-1, 1]; "
                            f"got shape {tuple(x.shape)}")

    def check_ids(self, ids: Tensor, call: str) -> None:
        h, w = self.grid
        if ids.dtype == torch.bool or ids.dtype.is_floating_point or ids.dtype.is_complex:
            raise UserError(f"vqvae.{call}: ids must be integer code ids, got dtype {ids.dtype}")
        if ids.ndim != 3 or tuple(ids.shape[1:]) != (h, w):
            raise UserError(f"vqvae.{call}: ids must be a grid of code ids (B, {h}, {w}) for {self.image_shape[1]}x"
                            f"{self.image_shape[2]} images; got shape {tuple(ids.shape)}")
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.codebook_size):
            raise UserError(f"vqvae.{call}: ids must be code ids in [0, {self.codebook_size}) (codebook_size); got "
                            f"values from {int(ids.min())} to {int(ids.max())}")

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Held-out loss (eq. 3's terms per pixel, as in training), reconstruction PSNR (dB on [0, 1]),
        code usage and perplexity over the batch, and the bits/dim bound (dequantised with `generator`)."""
        x = batch["x"]
        t = self.terms(x)
        counts = torch.bincount(t["ids"].flatten(), minlength=self.codebook_size).float()
        return {"loss": (t["recon"] + self.beta * t["commitment"]).mean() / self.num_dims,
                "recon": t["recon"].mean(), "commitment": t["commitment"].mean(),
                "psnr": psnr(t["mean"].clamp(-1.0, 1.0), x),
                "usage": (counts > 0).float().mean(), "perplexity": perplexity(counts),
                "bits_per_dim": model_bits_per_dim(self, x, generator=generator).mean().float()}

    @torch.no_grad()
    def tokens(self, x: Tensor) -> Tensor:
        """The code ids of images x (B, C, H, W): (B, H/4, W/4) long."""
        self.check_images(x, "tokens")
        return self.quantizer.quantize(self.encoder(x))[0]

    @torch.no_grad()
    def decode_tokens(self, ids: Tensor) -> Tensor:
        """Images (B, C, H, W) in [-1, 1] from a grid of code ids (B, H/4, W/4)."""
        self.check_ids(ids, "decode_tokens")
        return self.decoder(self.quantizer.lookup(ids.long())).float().clamp(-1.0, 1.0)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """The quantised latents z_q of images x: (B, *latent_shape), float32."""
        self.check_images(x, "encode")
        return self.quantizer.quantize(self.encoder(x))[1]

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Images from latents (B, *latent_shape), each position snapped to its nearest code first
        (a no-op on encode's output), clamped to [-1, 1]."""
        if z.ndim != 4 or tuple(z.shape[1:]) != self.latent_shape:
            raise UserError(f"vqvae.decode: z must be latents (B, {', '.join(map(str, self.latent_shape))}); "
                            f"got shape {tuple(z.shape)}")
        return self.decoder(self.quantizer.quantize(z)[1]).float().clamp(-1.0, 1.0)

    @torch.no_grad()
    def log_prob(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """log p(x | z_q) + log p(z_q) <= log p(x), nats per example (B,) of the density on [-1, 1]^D;
        deterministic (`generator` is unused)."""
        self.check_images(x, "log_prob")
        t = self.terms(x)
        log_pz = self.quantizer.log_prior()[t["ids"]].flatten(1).sum(1)  # (B,)
        return -t["recon"] + log_pz

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | StackedGenerators | None = None, y: Tensor | None = None,
               temperature: float = 1.0) -> Tensor:
        """Decoder means of codes drawn from the unigram prior at `temperature`, (n, C, H, W).

        Draws: one standard normal per position, (n, h, w) row-major, made uniform by the normal
        CDF and turned into a code by the inverse CDF of the prior, so a seed gives the same
        images whatever the batch (serving's stacked generators) and device."""
        if y is not None:
            raise ValueError("vqvae is unconditional (no 'condition' capability); call sample without y")
        return self.decode_tokens(self.sample_tokens(n, generator=generator, temperature=temperature))

    @torch.no_grad()
    def sample_tokens(self, n: int, *, generator: torch.Generator | StackedGenerators | None = None,
                      temperature: float = 1.0) -> Tensor:
        """n grids of code ids (n, H/4, W/4) from the unigram prior at `temperature` (see sample)."""
        if not temperature >= 0:
            raise ValueError(f"vqvae.sample: temperature must be >= 0, got {temperature}")
        device = self.quantizer.codebook.device
        log_pi = self.quantizer.log_prior().double()
        if temperature == 0:
            return torch.full((n, *self.grid), int(log_pi.argmax()), device=device)
        cdf = torch.softmax(log_pi / temperature, 0).cumsum(0)  # (K,)
        u = torch.special.ndtr(randn((n, *self.grid), generator=generator, device=device).double())
        ids = torch.searchsorted(cdf, u.flatten(), right=True)  # cdf[i-1] <= u < cdf[i]
        return ids.clamp_max(self.codebook_size - 1).view(n, *self.grid)

    def sampling_cost(self, settings: BaseModel) -> int:
        return 1  # one decoder pass

    @torch.no_grad()
    def eval_samples(self, n: int, *, generator_seed: int, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Samples from the unigram prior, and "recon": held-out images, each followed by its
        reconstruction."""
        x = batch["x"]
        x = x[torch.arange((n + 1) // 2, device=x.device) % len(x)]
        pairs = torch.stack([x.float().clamp(-1.0, 1.0), self.decode(self.encode(x))], 1).flatten(0, 1)[:n]
        return {"": self.sample(n, generator=torch.Generator().manual_seed(generator_seed)), "recon": pairs}


# ---------------------------------------------------------------------------------------------
# Size presets and the builder (the config's `model:` section maps onto the builder's arguments)
# ---------------------------------------------------------------------------------------------


def vqvae_tiny(**kw): return VQVAE(width=16, depth=1, **kw)
def vqvae_small(**kw): return VQVAE(width=64, depth=2, **kw)
def vqvae_base(**kw): return VQVAE(width=128, depth=2, **kw)


SIZES = {"tiny": vqvae_tiny, "small": vqvae_small, "base": vqvae_base}


def build_vqvae(
    *,
    data: DatasetInfo,
    size: Literal["tiny", "small", "base"] = "small",
    codebook_size: Annotated[int, Field(ge=2, le=65_536)] = 512,
    code_dim: Annotated[int, Field(ge=1, le=1_024)] = 64,
    beta: Annotated[float, Field(ge=0, le=100)] = 0.25,
    ema_decay: Annotated[float, Field(ge=0, lt=1)] = 0.99,
    epsilon: Annotated[float, Field(gt=0, le=1)] = 1e-5,
    restart_dead_codes: bool = True,
    dead_code_threshold: Annotated[float, Field(ge=0, le=1)] = 0.1,
    downsample: Literal[2, 4, 8] = DOWNSAMPLE,
) -> VQVAE:
    """VQ-VAE with an EMA codebook (van den Oord et al. 2017): codebook_size codes K of code_dim D
    on a grid of H/f x W/f (f = downsample: 4 is the paper's two stride-2 convs; 2 gives four
    times the tokens, for a prior whose parallel decoding pays off on long grids), commitment
    weight beta, EMA decay gamma and Laplace epsilon of the
    codebook; with restart_dead_codes, a code used less than dead_code_threshold times the uniform
    share 1/K (its EMA count) moves onto a random encoder output of the batch. Labels are ignored."""
    if data.modality != "image":
        raise ValueError(f"vqvae trains on image data; got a {data.modality} dataset")
    return SIZES[size](image_shape=data.image_shape, codebook_size=codebook_size, code_dim=code_dim, beta=beta,
                       ema_decay=ema_decay, epsilon=epsilon, restart_dead_codes=restart_dead_codes,
                       dead_code_threshold=dead_code_threshold, downsample=downsample)
