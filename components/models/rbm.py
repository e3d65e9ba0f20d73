"""Bernoulli-Bernoulli restricted Boltzmann machine on binarised grey images (Smolensky 1986;
Hinton 2002), trained by CD-k or persistent CD (components/training/contrastive_divergence.py).

    E(v, h) = -b.v - c.h - v.W.h,   v in {0, 1}^D, h in {0, 1}^H,   p(v, h) = exp(-E) / Z
    F(v)    = -b.v - sum_j softplus(c_j + v.W_j)          (h summed out: p(v) = exp(-F(v)) / Z)

Binarisation. Images arrive as x in [-1, 1]; a pixel is on when x > 0, i.e. when its 8-bit value
is >= 128 (the midpoint). It is deterministic, so the held-out likelihood of an image is one
number, not an average over random binarisations. (Salakhutdinov & Murray 2008 sampled each
pixel with its grey level as probability; a fixed threshold is the other common choice, and the
figures of the two are not comparable.)

Likelihood. log p(v) = -F(v) - log Z, with log Z estimated by annealed importance sampling
(Neal 2001; Salakhutdinov & Murray 2008, "On the quantitative analysis of deep belief
networks", §3-4) from a base-rate model: independent pixels with the data's log-odds as biases
(set from a fresh run's first batch, or uniform until then). The estimate runs once per set of
weights on a fixed seed and schedule and is cached, so log_prob is a deterministic function of
the weights; `log_partition()` gives it with its standard error across the AIS runs. The
estimate of Z is unbiased, so log Z tends to be underestimated (Jensen) and log p(v) over-
estimated: `log_prob_kind = "estimate"`, over binarised pixels (`log_prob_space = "binary"`,
components/metrics/likelihood.py).

Samples. Block Gibbs sweeps (h | v, then v | h) from the base-rate model: `gibbs_steps` of
burn-in, then `samples_per_chain` images per chain `thinning` sweeps apart. An image is the
mean-field p(v | h) of its sweep mapped to [-1, 1] (what Salakhutdinov & Murray show), or the
binary states themselves (-1 / +1) with `mean_field=False`. Every random draw is a standard
normal per chain per unit, turned into a Bernoulli by the normal CDF, so serving's stacked
generators give each request the draws it would have alone.

evaluate() scores held-out batches by the AIS log-likelihood (loss: nats per pixel), and logs
log Z and its standard error; at 8x8 digits the AIS run costs about a second, at 28x28 the
builder's `ais_temperatures`/`ais_runs` set what each eval can afford.
"""
import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import Tensor, nn

from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.models.layers import StackedGenerators, randn
from genray.components.models.protocol import SETTINGS_CONFIG
from genray.components.training import ContrastiveDivergence

MAX_ENUMERATED = 24  # exact log Z enumerates 2^min(D, H) states: beyond this it is not a test helper


# ---------------------------------------------------------------------------------------------
# The energy model's math, as plain functions of tensors
# ---------------------------------------------------------------------------------------------


def binarize(x: Tensor) -> Tensor:
    """Images (B, C, H, W) in [-1, 1] -> visible units (B, C*H*W) in {0, 1}: on above the
    midpoint (8-bit value >= 128)."""
    return (x.flatten(1) > 0).float()


def free_energy(v: Tensor, W: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """F(v) = -b.v - sum_j log(1 + exp(c_j + v.W_j)) per row, (B,) (Hinton 2010, §16.1)."""
    return -(v @ b) - F.softplus(v @ W + c).sum(-1)


@torch.no_grad()
def exact_log_partition(W: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """log Z by enumeration of the smaller layer's 2^n states, the other layer summed out in
    closed form: log Z = logsumexp_h [c.h + sum_i softplus(b_i + W_i.h)] (or the same over v with
    -F(v)). For tests and tiny models: n <= 24."""
    W, b, c = W.double(), b.double(), c.double()
    visible, hidden = W.shape
    if min(visible, hidden) > MAX_ENUMERATED:
        raise ValueError(f"exact_log_partition enumerates 2^min(visible, hidden) states; got {visible} visible "
                         f"and {hidden} hidden units (at most {MAX_ENUMERATED} on the smaller side)")
    if hidden <= visible:
        h = all_binary(hidden, W.device)  # (2^H, H)
        return torch.logsumexp(h @ c + F.softplus(h @ W.T + b).sum(-1), 0)
    v = all_binary(visible, W.device)  # (2^D, D)
    return torch.logsumexp(-free_energy(v, W, b, c), 0)


def all_binary(n: int, device=None) -> Tensor:
    """Every binary vector of length n, (2^n, n) float64, in counting order (bit 0 first)."""
    codes = torch.arange(2**n, device=device)
    return ((codes[:, None] >> torch.arange(n, device=device)) & 1).double()


def ais_betas(num_temperatures: int) -> Tensor:
    """Inverse temperatures 0 = beta_0 < ... < beta_K = 1, spaced as Salakhutdinov & Murray 2008
    (§4.1: 500 in [0, 0.5], 4,000 in [0.5, 0.9], 10,000 in [0.9, 1]) scaled to K in all: finer
    where the distributions change fastest, near the RBM."""
    if num_temperatures < 3:
        raise ValueError(f"AIS needs at least 3 intermediate temperatures, got {num_temperatures}")
    n1 = max(1, round(num_temperatures * 500 / 14_500))
    n2 = max(1, round(num_temperatures * 4_000 / 14_500))
    n3 = num_temperatures - n1 - n2
    return torch.cat([torch.linspace(0.0, 0.5, n1 + 1, dtype=torch.float64)[:-1],
                      torch.linspace(0.5, 0.9, n2 + 1, dtype=torch.float64)[:-1],
                      torch.linspace(0.9, 1.0, n3 + 1, dtype=torch.float64)])


def bernoulli(p: Tensor, generator: "torch.Generator | StackedGenerators | None") -> Tensor:
    """Binary draws with probabilities p (rows first): u < p with u = Phi(z), z one standard
    normal per entry, so stacked generators give each request its own rows' draws."""
    z = randn(tuple(p.shape), generator=generator, device=p.device)
    return (torch.special.ndtr(z) < p).to(p.dtype)


@torch.no_grad()
def ais_log_partition(W: Tensor, b: Tensor, c: Tensor, base_bias: Tensor, *, num_temperatures: int, runs: int,
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Annealed importance sampling estimate of log Z and its standard error (Neal 2001;
    Salakhutdinov & Murray 2008, §3.2 and eq. 14-16), float64 scalars.

    The path p_k(v) ∝ p_A(v)^(1 - beta_k) p*(v)^beta_k from the base-rate model p_A(v) (independent
    pixels with biases b_A, Z_A = prod_i (1 + e^{b_A,i}) times 2^H for the H hidden units it leaves
    free) to the RBM. With x = c + v.W,
        log p*_k(v) = (1 - beta_k) b_A.v + beta_k b.v + sum_j softplus(beta_k x_j)
    and T_k is one Gibbs sweep of the RBM at beta_k: h ~ sigmoid(beta_k x), then
    v ~ sigmoid((1 - beta_k) b_A + beta_k (b + W.h)). Each run starts at v_1 ~ p_A and weighs
        log w = sum_k [log p*_k(v_k) - log p*_{k-1}(v_k)],   Z_B / Z_A ≈ mean(w).
    The standard error of log(mean w) is std(w) / (sqrt(runs) mean(w)) (the delta method)."""
    betas = ais_betas(num_temperatures).tolist()
    W, b, c, b_a = W.float(), b.float(), c.float(), base_bias.float()
    visible, hidden = W.shape
    v = bernoulli(torch.sigmoid(b_a).expand(runs, visible), generator)  # (R, D), v_1 ~ p_A
    log_w = torch.zeros(runs, dtype=torch.float64, device=W.device)
    db = b - b_a
    for k in range(1, len(betas)):
        beta, prev = betas[k], betas[k - 1]
        x = v @ W + c  # (R, H)
        log_w += ((beta - prev) * (v @ db) + (F.softplus(beta * x) - F.softplus(prev * x)).sum(-1)).double()
        if k < len(betas) - 1:  # T_k keeps p_k invariant; the last weight needs no move after it
            h = bernoulli(torch.sigmoid(beta * x), generator)  # (R, H)
            v = bernoulli(torch.sigmoid((1 - beta) * b_a + beta * (b + h @ W.T)), generator)  # (R, D)
    log_z_a = F.softplus(b_a.double()).sum() + hidden * math.log(2.0)
    log_z = log_z_a + torch.logsumexp(log_w, 0) - math.log(runs)
    w = torch.exp(log_w - log_w.max())  # scaled weights: the ratio below does not see the scale
    stderr = w.std() / (math.sqrt(runs) * w.mean()) if runs > 1 else torch.zeros((), dtype=torch.float64)
    return log_z, stderr


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class RBMSampling(BaseModel):
    model_config = SETTINGS_CONFIG
    gibbs_steps: int = Field(1000, ge=1, le=100_000, description="burn-in: Gibbs sweeps before the first sample "
                                                                 "of each chain, from the base-rate model")
    thinning: int = Field(10, ge=1, le=10_000, description="Gibbs sweeps between two samples of one chain")
    samples_per_chain: int = Field(1, ge=1, le=1_000, description="samples taken from each chain (1: every "
                                                                  "image from its own chain)")
    mean_field: bool = Field(True, description="images are p(v | h) of the sweep mapped to [-1, 1]; false: the "
                                               "binary states themselves, -1 or +1")


class RBM(nn.Module):
    capabilities = frozenset({"sample", "log_prob"})
    conditioning, num_classes = "none", 0
    sampling_settings = RBMSampling
    # log P of the binarised image, with log Z from AIS: an estimate that may err either way.
    log_prob_space, log_prob_kind = "binary", "estimate"

    def __init__(self, *, image_shape: tuple[int, int, int], hidden: int, k: int = 1, persistent: bool = True,
                 num_chains: int = 100, ais_temperatures: int = 10_000, ais_runs: int = 100, init_std: float = 0.01):
        super().__init__()
        if len(image_shape) != 3 or image_shape[0] != 1:
            raise ValueError(f"rbm: models binarised grey images, image_shape (1, H, W); got image_shape="
                             f"{tuple(image_shape)}. Convert colour images to grey in the data config")
        for name, value, low in (("hidden", hidden, 1), ("k", k, 1), ("num_chains", num_chains, 1),
                                 ("ais_temperatures", ais_temperatures, 3), ("ais_runs", ais_runs, 1)):
            if value < low:
                raise ValueError(f"rbm: {name} must be >= {low}, got {value}")
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_dims = visible = math.prod(self.image_shape)
        self.ais_temperatures, self.ais_runs = ais_temperatures, ais_runs
        # Hinton 2010, §8: small random weights, zero hidden biases; visible biases from the data
        # (init_from_data) on a fresh run.
        self.W = nn.Parameter(init_std * torch.randn(visible, hidden))
        self.b = nn.Parameter(torch.zeros(visible))
        self.c = nn.Parameter(torch.zeros(hidden))
        # The base-rate model (AIS's start, and where sampling chains start): the data's log-odds.
        self.register_buffer("base_bias", torch.zeros(visible))
        # PCD's fantasy particles (Tieleman 2008): a buffer, so checkpoints carry them.
        self.register_buffer("chains", torch.bernoulli(torch.full((num_chains, visible), 0.5)))
        self._log_z_cache: tuple[tuple[Tensor, ...], Tensor, Tensor] | None = None
        self.recipe = ContrastiveDivergence(k=k, persistent=persistent, visible=self.visible,
                                            init=self.init_from_data, free_energy=self.free_energy)

    # -- what ContrastiveDivergence asks of the model --------------------------------------------

    def visible(self, batch: dict[str, Tensor]) -> Tensor:
        """The batch's images as visible units (B, D) in {0, 1}."""
        return binarize(batch["x"]).to(self.W.dtype)

    @torch.no_grad()
    def init_from_data(self, batch: dict[str, Tensor]) -> None:
        """Hinton 2010, §8: visible bias log(p_i / (1 - p_i)), p_i the share of images with pixel
        i on (here with one pseudo-image on and one off, so no bias is infinite); the AIS base rate
        is the same independent-pixel model (Salakhutdinov & Murray 2008, §4.1)."""
        v = self.visible(batch)
        p = (v.sum(0) + 1) / (len(v) + 2)
        self.b.copy_(torch.logit(p))
        self.base_bias.copy_(torch.logit(p))

    def hidden_probs(self, v: Tensor) -> Tensor:
        """p(h_j = 1 | v) = sigmoid(c_j + v.W_j), (B, H)."""
        return torch.sigmoid(v @ self.W + self.c)

    def visible_probs(self, h: Tensor) -> Tensor:
        """p(v_i = 1 | h) = sigmoid(b_i + W_i.h), (B, D)."""
        return torch.sigmoid(h @ self.W.T + self.b)

    @torch.no_grad()
    def gibbs(self, v: Tensor, k: int, generator: torch.Generator | StackedGenerators | None = None) -> Tensor:
        """k block-Gibbs sweeps h ~ p(h | v), v ~ p(v | h) from v (B, D); binary states."""
        for _ in range(k):
            h = bernoulli(self.hidden_probs(v), generator)
            v = bernoulli(self.visible_probs(h), generator)
        return v

    @torch.no_grad()
    def statistics(self, v: Tensor) -> dict[str, Tensor]:
        """E[-dF/dtheta] over the rows of v, with the hidden units summed out (Rao-Blackwellised:
        p(h | v) rather than sampled h, Hinton 2010 §3.3)."""
        ph = self.hidden_probs(v)
        return {"W": v.T @ ph / len(v), "b": v.mean(0), "c": ph.mean(0)}

    def free_energy(self, v: Tensor) -> Tensor:
        """F(v) per row of visible units (B, D) -> (B,)."""
        return free_energy(v, self.W, self.b, self.c)

    # -- the likelihood ---------------------------------------------------------------------------

    @torch.no_grad()
    def log_partition(self) -> tuple[Tensor, Tensor]:
        """(log Z, its standard error across the AIS runs), float64 scalars: the AIS estimate with
        the model's schedule on a fixed seed, run again only when the weights or base rate change."""
        state = (self.W, self.b, self.c, self.base_bias)
        cached = self._log_z_cache
        if cached is not None and all(a.device == t.device and a.dtype == t.dtype and torch.equal(a, t)
                                      for a, t in zip(cached[0], state)):
            return cached[1], cached[2]
        with torch.autocast(self.W.device.type, enabled=False):
            g = torch.Generator(device=self.W.device).manual_seed(0)
            log_z, stderr = ais_log_partition(self.W, self.b, self.c, self.base_bias, generator=g,
                                              num_temperatures=self.ais_temperatures, runs=self.ais_runs)
        self._log_z_cache = (tuple(t.detach().clone() for t in state), log_z, stderr)
        return log_z, stderr

    @torch.no_grad()
    def log_prob(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """log P(v) of each binarised image in x (B, 1, H, W), nats, (B,) float64: -F(v) - log Z,
        log Z from AIS (an estimate; `generator` is unused, the AIS seed is fixed)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise UserError(f"rbm.log_prob: x must be images (B, {', '.join(map(str, self.image_shape))}); "
                            f"got shape {tuple(x.shape)}")
        if not torch.isfinite(x).all() or x.min() < -1 or x.max() > 1:
            raise UserError(f"rbm.log_prob: x must be images in [-1, 1] (the data's range); got values from "
                            f"{float(x.min()):.4g} to {float(x.max()):.4g}")
        with torch.autocast(x.device.type, enabled=False):
            return -self.free_energy(self.visible({"x": x})).double() - self.log_partition()[0]

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Held-out -log P of the binarised images from AIS (loss: nats per pixel), its bits per
        pixel, log Z and its standard error, the mean free energy, and the mean-field
        reconstruction error of one sweep (all deterministic given the weights)."""
        with torch.autocast(batch["x"].device.type, enabled=False):
            v = self.visible(batch)
            log_z, stderr = self.log_partition()
            fe = self.free_energy(v).double()
            nll = (fe + log_z).mean()
            recon = (self.visible_probs(self.hidden_probs(v)) - v).pow(2).mean()
        return {"loss": (nll / self.num_dims).float(), "bits_per_dim": (nll / (self.num_dims * math.log(2))).float(),
                "log_z": log_z.float(), "log_z_stderr": stderr.float(), "free_energy": fe.mean().float(),
                "recon_mse": recon.float()}

    # -- sampling ---------------------------------------------------------------------------------

    sampling_cost_unit = "gibbs_sweeps"  # serve holds these to limits.max_gibbs_sweeps, not max_steps

    def sampling_cost(self, settings: BaseModel) -> int:
        return settings.gibbs_steps + (settings.samples_per_chain - 1) * settings.thinning  # Gibbs sweeps

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | StackedGenerators | None = None,
               gibbs_steps: int = 1000, thinning: int = 10, samples_per_chain: int = 1,
               mean_field: bool = True) -> Tensor:
        """n images (n, 1, H, W) in [-1, 1] by block Gibbs sampling (see the module docstring).
        Chains start at the base-rate model; with samples_per_chain = s, ceil(n / s) chains each
        give s images (chain by chain), `thinning` sweeps apart after `gibbs_steps` of burn-in.
        Under stacked generators each request's rows come from its own chains."""
        if n < 1:
            raise ValueError(f"rbm.sample: n must be >= 1, got {n}")
        settings = RBMSampling(gibbs_steps=gibbs_steps, thinning=thinning, samples_per_chain=samples_per_chain,
                               mean_field=mean_field)  # the limits hold for direct calls too
        s = settings.samples_per_chain
        if isinstance(generator, StackedGenerators):  # each request: its own chains, from its own generator
            parts = [(g, -(-rows // s)) for g, rows in generator.parts]
            chain_gen, keep = StackedGenerators(parts), [(m, rows) for (_, m), (_, rows) in zip(parts, generator.parts)]
        else:
            chain_gen, keep = generator, [(-(-n // s), n)]
        num_chains = sum(m for m, _ in keep)
        with torch.autocast(self.W.device.type, enabled=False):
            v = bernoulli(torch.sigmoid(self.base_bias).expand(num_chains, -1), chain_gen)  # (M, D)
            taken = []
            for i in range(s):
                for _ in range(settings.gibbs_steps if i == 0 else settings.thinning):
                    h = bernoulli(self.hidden_probs(v), chain_gen)
                    p = self.visible_probs(h)
                    v = bernoulli(p, chain_gen)
                taken.append(p if settings.mean_field else v)
        images = torch.stack(taken, 1)  # (M, s, D): chain by chain
        rows, start = [], 0
        for m, r in keep:
            rows.append(images[start:start + m].flatten(0, 1)[:r])
            start += m
        return (2 * torch.cat(rows) - 1).float().view(-1, *self.image_shape)

    @torch.no_grad()
    def eval_samples(self, n: int, *, generator_seed: int, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"": self.sample(n, generator=torch.Generator().manual_seed(generator_seed))}


# ---------------------------------------------------------------------------------------------
# Size presets and the builder (the config's `model:` section maps onto the builder's arguments)
# ---------------------------------------------------------------------------------------------

SIZES = {"tiny": 16, "small": 256, "base": 500}  # hidden units; base: Salakhutdinov & Murray's MNIST RBMs


def build_rbm(
    *,
    data: DatasetInfo,
    size: Literal["tiny", "small", "base"] = "small",
    hidden: Annotated[int, Field(ge=1, le=100_000)] | None = None,
    k: Annotated[int, Field(ge=1, le=1_000)] = 1,
    persistent: bool = False,
    num_chains: Annotated[int, Field(ge=1, le=100_000)] = 100,
    ais_temperatures: Annotated[int, Field(ge=3, le=1_000_000)] = 10_000,
    ais_runs: Annotated[int, Field(ge=1, le=100_000)] = 100,
) -> RBM:
    """Bernoulli-Bernoulli RBM on binarised grey images: `size` sets the hidden units (tiny 16,
    small 256, base 500) unless `hidden` does; k Gibbs sweeps per update, from the data (CD-k,
    Hinton 2002) or, with persistent, from num_chains persistent chains (PCD, Tieleman 2008);
    AIS for log Z with ais_temperatures intermediate distributions and ais_runs runs (the
    momentum, learning rate and weight decay are the trainer's betas[0], lr and weight_decay)."""
    if data.modality != "image":
        raise ValueError(f"rbm trains on image data (binarised grey images); got a {data.modality} dataset")
    return RBM(image_shape=data.image_shape, hidden=SIZES[size] if hidden is None else hidden, k=k,
               persistent=persistent, num_chains=num_chains, ais_temperatures=ais_temperatures, ais_runs=ais_runs)
