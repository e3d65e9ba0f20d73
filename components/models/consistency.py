"""Consistency models (Song et al. 2023, "Consistency Models"): a network f(x, sigma) that maps any
point of a probability-flow ODE trajectory straight to the trajectory's origin, so one network
evaluation turns noise into a sample, and a few more refine it.

    parameterisation (appendix C)  f(x, s) = c_skip(s) x + c_out(s) F(c_in(s) x, c_noise(s)),
                                   c_skip = sd^2 / ((s - eps)^2 + sd^2), c_out = (s - eps) sd / sqrt(s^2 + sd^2),
                                   so f(x, eps) = x exactly (the boundary condition, eq. 5)
    noise levels (sec. 5)          N Karras levels eps = s_1 < ... < s_N = sigma_max, rho = 7 (Karras et al. 2022, eq. 5)
    distillation, CD (Alg. 2)      x_hi = x + s_{n+1} z; x_lo = one ODE step of a frozen diffusion teacher from
                                   (x_hi, s_{n+1}) to s_n; loss = d(f_theta(x_hi, s_{n+1}), f_theta-(x_lo, s_n))
    training, CT (Alg. 3)          no teacher: x_hi = x + s_{n+1} z and x_lo = x + s_n z with the same z
    sampling (Alg. 1)              x = f(sigma_max z, sigma_max); then per extra step at level s:
                                   x = f(x + sqrt(s^2 - eps^2) z, s)

with eps = sigma_min = 0.002 and sd = sigma_data = 0.5 (images in [-1, 1]), n uniform in 1..N-1,
and theta- the EMA *target* of the online weights theta (the EMATarget recipe,
components/training/distill.py: `model(batch, "main", target=target)`).

The network F is diffusion's UNet (components/models/unet.py) on c_in(s) x and c_noise(s) =
1000 * 0.25 ln s: EDM's c_in and c_noise (Karras et al. 2022, table 1), times 1000 because the
UNet's sinusoidal time embedding resolves DDPM-scale times (unet.timestep_embedding), as the
paper's released code scales it.

The teacher of CD is a trained genray "diffusion" model in pixel space (unconditional or
class-conditional), a ModelRef the pipeline resolves like latent diffusion's autoencoder; its
frozen weights are a submodule, so a checkpoint rebuilds on its own. It is a VP model,
x_t = sqrt(ab) x0 + sqrt(1 - ab) eps, while f lives in VE coordinates x = x0 + s eps: the two
are the same point with s = sqrt(1 - ab) / sqrt(ab) and x = x_t / sqrt(ab). The teacher's step
from s to s' is its own deterministic DDIM step (Song et al. 2021, eq. 12, eta = 0; x0 clipped to
[-1, 1] as its sampler does), which in VE coordinates reads x' = x0_hat + s' eps_hat: an Euler
step of the probability-flow ODE dx/ds = (x - x0_hat) / s (Karras et al. 2022, sec. 3). The
teacher is queried at the fractional timestep whose sigma is s (t linear in log sigma between
its table's entries, clamped to [0, T-1]: below its smallest sigma it is asked at t = 0).

Choices, and why:
- sigma in [0.002, 80]: the paper's (EDM's) range; at 80 an image of std 0.5 is pure noise.
  sigma_max is a builder argument; with a teacher it must lie within the teacher's noise levels.
- N = 18 levels: the paper's CD setting on CIFAR-10. Its CT grows N from 2 to 150 and adapts
  the target's decay mu(k) over training; here N and the decay are fixed (EMATarget has one
  decay and the forward does not see the step): a simplification, as the paper finds its
  schedule trains faster and to better samples than fixed values.
- distance: pseudo-Huber, sqrt(|a - b|^2 + c^2) - c with c = 0.00054 sqrt(dim) (Song & Dhariwal
  2023, sec. 3.3), or the squared L2 (l2). The paper's LPIPS needs a pretrained VGG that genray
  does not have offline.
- two averages of the weights, as in the paper: the target theta- (EMATarget, target_decay,
  0.95 as the paper's mu for CD) inside the loss, and the sampling EMA, which is the training
  engine's EMA of the online weights (trainer.ema_decay; components/training/engine.py), the
  weights that evaluation, checkpoints' build_model and serving sample from.
- init "teacher" starts the student from the teacher's weights, as the paper does (its CD
  starts from the EDM teacher). A genray teacher's network takes another input scale, time input
  and output than EDM's F (VP x_t, DDPM timesteps, eps/x0/v), so such a student keeps the
  teacher's parameterisation inside f (as latent consistency models do, Luo et al. 2023):
      f(x, s) = c_skip(s) x + (1 - c_skip(s)) x0_theta(x, s),
  x0_theta the copied network's x0 estimate at x_t = x / sqrt(1 + s^2) and the teacher's
  fractional timestep of s (the same conversion as the teacher's step below). c_skip is
  appendix C's, so f(x, eps) = x still holds exactly; 1 - c_skip plays c_out's role for an output
  already on the data's scale. At step 0, f is the teacher's one-step denoiser, and distillation
  only has to make it consistent. init "scratch" is a fresh UNet of F (any size), as before.
- a CD step runs three networks (teacher, online, target), a CT step two; copies of the model
  (the target, the sampling EMA) carry the frozen teacher too.

Randomness. Training draws the pair index n (B,) and then the noise z (x's shape) from the global
generator (the training loop seeds every step); evaluate draws the same from its `generator`.
Sampling draws x_T (n, C, H, W) and then one (n, C, H, W) normal per step after the first, in that
order, through `layers.randn`: a seed's first draw is the same for every step count, and a
StackedGenerators makes a row's sample independent of its batch.
"""
import copy
import math
from typing import Annotated, Any, Callable, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field, create_model
from torch import Tensor, nn

from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.models.diffusion import SIZES, levels_for
from genray.components.models.layers import StackedGenerators, check_image_shape, randn
from genray.components.models.protocol import SETTINGS_CONFIG
from genray.components.models.refs import ModelRef, frozen_module
from genray.components.models.unet import UNet
from genray.components.samplers.objective import sample_timesteps
from genray.components.samplers.prediction import to_x0_eps, x0_to_eps
from genray.components.training import EMATarget

SIGMA_MIN = 0.002  # eps of the paper: f(x, eps) = x
SIGMA_DATA = 0.5  # the std of images in [-1, 1], roughly (EDM's value)
RHO = 7.0  # Karras et al. 2022, eq. 5
DISTANCES = ("pseudo_huber", "l2")
WEIGHTINGS = ("uniform", "ict")
MODES = ("auto", "distill", "train")
INITS = ("scratch", "teacher")


# ---------------------------------------------------------------------------------------------
# Noise levels, the parameterisation, the distance and the teacher's step, as plain functions
# ---------------------------------------------------------------------------------------------


def karras_sigmas(num_levels: int, sigma_min: float = SIGMA_MIN, sigma_max: float = 80.0,
                  rho: float = RHO) -> Tensor:
    """Song et al. 2023, sec. 5 (Karras et al. 2022, eq. 5): the N levels
    s_i = (eps^(1/rho) + (i - 1)/(N - 1) (sigma_max^(1/rho) - eps^(1/rho)))^rho, i = 1..N, ascending,
    float64 (N,). The ends are set to exactly sigma_min and sigma_max (the power can miss them by
    an ulp, and f(x, s_1) = x needs s_1 to be eps itself)."""
    if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 2:
        raise ValueError(f"consistency: num_levels (N) must be an integer >= 2, got {num_levels!r}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"consistency: need 0 < sigma_min < sigma_max, got {sigma_min=}, {sigma_max=}")
    i = torch.arange(num_levels, dtype=torch.float64)  # i - 1 of the paper
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (lo + i / (num_levels - 1) * (hi - lo)) ** rho  # (N,)
    sigmas[0], sigmas[-1] = sigma_min, sigma_max
    return sigmas


def scalings(sigma: Tensor, sigma_min: float = SIGMA_MIN,
             sigma_data: float = SIGMA_DATA) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in, c_noise) at noise levels sigma, each sigma's shape. c_skip and c_out:
    Song et al. 2023, appendix C, which vanish/equal 1 at sigma_min so that f(x, sigma_min) = x
    exactly; c_in and c_noise: EDM's (Karras et al. 2022, table 1), c_noise times 1000 for the
    UNet's DDPM-scale time embedding."""
    c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
    c_out = (sigma - sigma_min) * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma**2 + sigma_data**2).sqrt()
    c_noise = 1000 * 0.25 * sigma.log()
    return c_skip, c_out, c_in, c_noise


def pseudo_huber(a: Tensor, b: Tensor) -> Tensor:
    """Song & Dhariwal 2023, sec. 3.3: sqrt(|a - b|^2 + c^2) - c per example, c = 0.00054 sqrt(dim):
    like L2 near 0, like the L2 norm (robust to outliers) far from it -> (B,)."""
    c = 0.00054 * math.sqrt(a[0].numel())
    sq = (a.float() - b.float()).pow(2).flatten(1).sum(1)  # (B,)
    return (sq + c * c).sqrt() - c


def squared_l2(a: Tensor, b: Tensor) -> Tensor:
    """|a - b|^2 per example (B,): the paper's L2 metric."""
    return (a.float() - b.float()).pow(2).flatten(1).sum(1)


def distance(name: str, a: Tensor, b: Tensor) -> Tensor:
    if name == "pseudo_huber":
        return pseudo_huber(a, b)
    if name == "l2":
        return squared_l2(a, b)
    raise ValueError(f"consistency: distance must be one of {DISTANCES}, got {name!r}")


def pair_weights(sigmas: Tensor, weighting: str) -> Tensor:
    """lambda(sigma_n) of each pair (sigma_n, sigma_{n+1}), (N - 1,) float32, averaging 1 over the
    pairs (training draws n uniformly, so the loss keeps its scale): "uniform" is 1 everywhere, as in
    Song et al. 2023's experiments; "ict" is 1 / (sigma_{n+1} - sigma_n) (Song & Dhariwal 2023, sec.
    3.4), which weighs the closely spaced low levels most: there the two points of a pair differ
    little, and without it the high levels' updates swamp them."""
    if weighting == "uniform":
        return torch.ones(len(sigmas) - 1)
    if weighting == "ict":
        lam = 1.0 / (sigmas[1:] - sigmas[:-1]).double()
        return (lam / lam.mean()).float()
    raise ValueError(f"consistency: weighting must be one of {WEIGHTINGS}, got {weighting!r}")


def sampling_levels(num_levels: int, steps: int) -> list[int]:
    """The levels (indices into the N ascending Karras levels) that Algorithm 1 visits with
    `steps` network evaluations: evenly spaced in index from the top, round((N - 1)(1 - k/steps))
    for k = 0..steps-1. So the first is sigma_max, all are levels the model was trained at (a
    Karras grid of their own, subsampled), never s_1 (where f is the identity), and they are
    distinct for steps <= N - 1: the largest step count."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= num_levels - 1:
        raise ValueError(f"consistency: steps must be an integer in [1, N - 1 = {num_levels - 1}] (each step is one "
                         f"of the N - 1 noise levels above sigma_min), got {steps!r}")
    return [int(math.floor((num_levels - 1) * (1 - k / steps) + 0.5)) for k in range(steps)]


def teacher_table(alphas_cumprod: Tensor) -> tuple[Tensor, Tensor]:
    """The teacher's (log sigma_t, t), float64, ascending in t: sigma_t = sqrt((1 - ab_t) / ab_t)
    for t = 0..T-1, a zero-terminal-SNR last step (ab = 0, sigma infinite) left out."""
    ab = alphas_cumprod.to(torch.float64)
    finite = ab > 0
    return 0.5 * ((1 - ab[finite]) / ab[finite]).log(), torch.arange(len(ab), dtype=torch.float64)[finite]


def teacher_timesteps(sigmas: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """The fractional teacher timestep of each noise level: t linear in log sigma between the
    entries of teacher_table, clamped to [0, T-1] outside it. float64 (len(sigmas),)."""
    log_sigma_t, t = teacher_table(alphas_cumprod)
    return torch.from_numpy(np.interp(sigmas.to(torch.float64).log().numpy(), log_sigma_t.numpy(), t.numpy()))


def interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """np.interp in torch: piecewise linear through (xp, fp), xp ascending (K,), constant beyond
    the ends; x any shape, on xp's device."""
    idx = torch.searchsorted(xp, x.contiguous()).clamp(1, len(xp) - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    w = ((x - x0) / (x1 - x0)).clamp(0.0, 1.0)
    return fp[idx - 1] + w * (fp[idx] - fp[idx - 1])


def teacher_ddim_step(denoise: Callable[[Tensor, Tensor], Tensor], x: Tensor, sigma: Tensor, sigma_next: Tensor,
                      t: Tensor, *, prediction: str, clip_x0: bool = True) -> Tensor:
    """A VP teacher's deterministic DDIM step in VE coordinates: x at noise sigma -> x at sigma_next.

    x = x_t / sqrt(ab) with ab = 1 / (1 + sigma^2); the teacher sees x_t at its timestep t (B,)
    and its output gives (x0_hat, eps_hat) (prediction: eps, x0 or v); DDIM's x_prev = sqrt(ab')
    x0_hat + sqrt(1 - ab') eps_hat (Song et al. 2021, eq. 12, eta = 0) divided by sqrt(ab') is
    x0_hat + sigma_next eps_hat. clip_x0 clips x0_hat to [-1, 1] and recomputes eps_hat from it,
    as the teacher's own DDIM sampler does for pixels (samplers/ddim.py). sigma, sigma_next:
    broadcastable against x, e.g. (B, 1, 1, 1)."""
    alpha_bar = 1 / (1 + sigma**2)  # sigma^2 = (1 - ab) / ab
    x_t = x * alpha_bar.sqrt()  # (B, C, H, W), the teacher's input
    x0_hat, eps_hat = to_x0_eps(prediction, denoise(x_t, t).float(), x_t, alpha_bar)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
        eps_hat = x0_to_eps(x0_hat, x_t, alpha_bar)
    return x0_hat + sigma_next * eps_hat


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


def sampling_settings_type(num_levels: int, steps: int) -> type[BaseModel]:
    """This model's sampling settings: 1..N-1 steps of Algorithm 1 (the levels: sampling_levels)."""
    return create_model("ConsistencySampling", __config__=SETTINGS_CONFIG, steps=(int, Field(
        steps, ge=1, le=num_levels - 1,
        description=f"network evaluations (Song et al. 2023, Algorithm 1): 1 is one-step generation; more "
                    f"re-noise and denoise at lower levels of the training grid (1..{num_levels - 1})")))


class Consistency(nn.Module):
    def __init__(
        self,
        *,
        net: UNet,
        image_shape: tuple[int, int, int],
        num_classes: int = 0,
        teacher: nn.Module | None = None,
        num_levels: int = 18,
        sigma_max: float = 80.0,
        distance: str = "pseudo_huber",
        target_decay: float = 0.95,
        steps: int = 2,
        init: str = "scratch",
        weighting: str = "uniform",
    ):
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ValueError(f"consistency: weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if init not in INITS:
            raise ValueError(f"consistency: init must be one of {INITS}, got {init!r}")
        if init == "teacher" and teacher is None:
            raise ValueError("consistency: init 'teacher' needs the teacher")
        if distance not in DISTANCES:
            raise ValueError(f"consistency: distance must be one of {DISTANCES}, got {distance!r}")
        if not 0.0 <= target_decay < 1.0:
            raise ValueError(f"consistency: target_decay (the target's EMA rate mu) must be in [0, 1), got {target_decay}")
        self.image_shape = tuple(image_shape)
        self.net = net
        self.num_classes = num_classes
        self.distance = distance
        self.num_levels = num_levels
        self.sigmas = karras_sigmas(num_levels, SIGMA_MIN, sigma_max)  # float64 (N,), on the CPU
        self.sigma_max = float(self.sigmas[-1])
        self.weighting = weighting
        self.pair_weights = pair_weights(self.sigmas, weighting)  # float32 (N - 1,), on the CPU
        self.teacher = teacher
        self.mode = "train" if teacher is None else "distill"
        if teacher is not None:
            # Frozen: distillation reads the teacher, never moves it.
            teacher.requires_grad_(False).eval()
            self.teacher_t = teacher_timesteps(self.sigmas, teacher.schedule.alphas_cumprod)  # float64 (N,)
        self.init = init
        if init == "teacher":
            # The teacher's table of (log sigma, t), for the copied network's time input at any sigma.
            log_sigma_t, t = teacher_table(teacher.schedule.alphas_cumprod)
            self.register_buffer("table_log_sigma", log_sigma_t.float(), persistent=False)
            self.register_buffer("table_t", t.float(), persistent=False)
        self.conditioning = "class" if num_classes > 0 else "none"
        self.capabilities = frozenset({"sample"} | ({"condition"} if num_classes > 0 else set()))
        self.sampling_settings = sampling_settings_type(num_levels, min(steps, num_levels - 1))
        self.recipe = EMATarget(decay=target_decay)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen, whatever the rest is doing
        return self

    def sampling_cost(self, settings: BaseModel) -> int:
        return settings.steps  # one network evaluation per step

    # -- the consistency function ---------------------------------------------------------------

    def sigma_at(self, level: Tensor, ndim: int) -> Tensor:
        """The noise levels of level indices (B,) as float32 (B, 1, ..., 1) on their device."""
        return self.sigmas.to(torch.float32).to(level.device)[level].reshape(-1, *([1] * (ndim - 1)))

    def consistency_fn(self, x: Tensor, sigma: Tensor, y: Tensor | None = None) -> Tensor:
        """f_theta(x, sigma): x (B, C, H, W) at noise levels sigma (B, 1, 1, 1) -> (B, C, H, W), the
        trajectory's estimated origin (appendix C's parameterisation; f(x, sigma_min) = x)."""
        c_skip, c_out, c_in, c_noise = scalings(sigma)
        if self.init == "teacher":
            # The teacher's parameterisation (module docstring): its x0 estimate on the data's scale.
            alpha_bar = 1 / (1 + sigma**2)  # (B, 1, 1, 1)
            x_t = x * alpha_bar.sqrt()
            t = interp(sigma.flatten().log(), self.table_log_sigma, self.table_t)  # (B,) fractional timesteps
            out = self.net(x_t, t, **self.net_condition(y, x.shape[0], x.device))
            x0, _ = to_x0_eps(self.teacher.prediction, out.float(), x_t, alpha_bar)
            return c_skip * x + (1 - c_skip) * x0
        cond = {"y": y} if self.num_classes > 0 else {}
        out = self.net(c_in * x, c_noise.flatten(), **cond)  # (B, C, H, W): F
        return c_skip * x + c_out * out.float()

    def net_condition(self, y: Tensor | None, n: int, device) -> dict[str, Tensor]:
        """A teacher-shaped network's condition: the labels y, or its null label (the unconditional
        branch) for an unconditional student of a class-conditional teacher."""
        if self.teacher.num_classes == 0:
            return {}
        if y is None:
            y = torch.full((n,), self.teacher.num_classes, dtype=torch.long, device=device)
        return {"y": y}

    def teacher_denoiser(self, y: Tensor | None, n: int, device) -> Callable[[Tensor, Tensor], Tensor]:
        """The teacher's network on (x_t, t): on the labels y when both are class-conditional, on the
        null label (its unconditional branch) when only the teacher is."""
        cond = self.net_condition(y, n, device)
        return lambda x_t, t: self.teacher.net(x_t, t, **cond)

    def training_pair(self, x: Tensor, level: Tensor, z: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(x at s_{n+1}, x at s_n) for the pair levels n (B,) (0-indexed: s_n < s_{n+1}) and noise z:
        the online network's input and the target's. Training (Alg. 3): x + s_n z with the same z.
        Distillation (Alg. 2): one teacher ODE step from x + s_{n+1} z down to s_n."""
        sigma_hi, sigma_lo = self.sigma_at(level + 1, x.ndim), self.sigma_at(level, x.ndim)  # (B, 1, 1, 1)
        x_hi = x + sigma_hi * z  # (B, C, H, W)
        if self.teacher is None:
            return x_hi, x + sigma_lo * z
        t = self.teacher_t.to(torch.float32).to(x.device)[level + 1]  # (B,) fractional teacher timesteps
        with torch.no_grad():
            x_lo = teacher_ddim_step(self.teacher_denoiser(y, x.shape[0], x.device), x_hi, sigma_hi, sigma_lo, t,
                                     prediction=self.teacher.prediction)
        return x_hi, x_lo

    def pair_outputs(self, x: Tensor, y: Tensor | None, target: "Consistency", level: Tensor,
                     z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(f_theta(x_hi, s_{n+1}), f_theta-(x_lo, s_n) without gradient, x_hi): what the distance compares."""
        x_hi, x_lo = self.training_pair(x, level, z, y)
        online = self.consistency_fn(x_hi, self.sigma_at(level + 1, x.ndim), y)
        with torch.no_grad():
            goal = target.consistency_fn(x_lo, target.sigma_at(level, x.ndim), y)
        return online, goal, x_hi

    def labels(self, batch: dict[str, Tensor]) -> Tensor | None:
        if self.num_classes == 0:
            return None  # an unconditional model ignores labels the data may carry
        if "y" not in batch:
            raise ValueError("consistency is class-conditional, so its batches need integer labels 'y'")
        return batch["y"].to(batch["x"].device)

    # -- training -------------------------------------------------------------------------------

    def forward(self, batch: dict[str, Tensor], phase: str = "main",
                target: "Consistency | None" = None) -> tuple[Tensor, dict[str, Tensor]]:
        if phase != "main":
            raise ValueError(f"consistency has one phase, 'main'; got phase={phase!r}")
        if target is None:
            raise ValueError("consistency trains against an EMA target: call model(batch, 'main', target=...) with "
                             "its recipe's target (the EMATarget recipe, model.recipe, does this)")
        x = batch["x"]
        level = sample_timesteps(x.shape[0], self.num_levels - 1, device=x.device)  # (B,) n uniform in 1..N-1
        z = torch.randn_like(x)
        online, goal, _ = self.pair_outputs(x, self.labels(batch), target, level, z)
        weight = self.pair_weights.to(x.device)[level]  # (B,) lambda(sigma_n): 1, or iCT's (pair_weights)
        return (weight * distance(self.distance, online, goal)).mean(), {}

    # -- using the trained model ----------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """At seeded (n, z) draws, in eval mode: "loss", the training distance with this model as its
        own target (theta- = theta); "denoise_mse", the mean squared error of f(x + s_{n+1} z, s_{n+1})
        against the clean x (how well one step from that level recovers the data)."""
        x = batch["x"]
        level = sample_timesteps(x.shape[0], self.num_levels - 1, device=x.device, generator=generator)
        z = randn(tuple(x.shape), generator=generator, device=x.device)
        was_training = self.training
        self.eval()
        try:
            online, goal, _ = self.pair_outputs(x, self.labels(batch), self, level, z)
        finally:
            self.train(was_training)
        return {"loss": distance(self.distance, online, goal).mean(), "denoise_mse": (online - x).pow(2).mean()}

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | StackedGenerators | None = None,
               y: Tensor | None = None, steps: int | None = None) -> Tensor:
        """(n, C, H, W) images in [-1, 1] by multistep consistency sampling (Algorithm 1) at the
        levels sampling_levels(N, steps) picks; steps None takes the model's default.
        Class-conditional: y (n,) picks classes; without y they cycle 0, 1, ..."""
        s = self.sampling_settings.model_validate({} if steps is None else {"steps": steps})
        if n < 1:
            raise ValueError(f"consistency.sample: n must be >= 1, got {n}")
        device = next(self.net.parameters()).device
        if self.num_classes == 0:
            if y is not None:
                raise ValueError("consistency was built unconditional (no 'condition' capability); call sample without y")
        else:
            y = torch.arange(n, device=device) % self.num_classes if y is None else torch.as_tensor(y, device=device)
            if y.shape != (n,) or int(y.min()) < 0 or int(y.max()) >= self.num_classes:
                raise ValueError(f"consistency.sample: y must be ({n},) labels in [0, {self.num_classes}), got "
                                 f"{y.tolist()}")
        shape = (n, *self.image_shape)
        was_training = self.training
        self.eval()
        try:
            x = None
            for k, level in enumerate(sampling_levels(self.num_levels, s.steps)):
                sigma = float(self.sigmas[level])
                if k == 0:
                    x = sigma * randn(shape, generator=generator, device=device)  # x_T = T z, T = sigma_max
                else:
                    # Alg. 1, line 5: back up to level sigma with fresh noise (the data part keeps sigma_min).
                    z = randn(shape, generator=generator, device=device)
                    x = x + math.sqrt(sigma**2 - SIGMA_MIN**2) * z
                x = self.consistency_fn(x, torch.full((n, 1, 1, 1), sigma, device=device), y).clamp(-1.0, 1.0)
        finally:
            self.train(was_training)
        return x.float()

    @torch.no_grad()
    def eval_samples(self, n: int, *, generator_seed: int, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """One grid per step count in {1, the default}, from the same seed: one-step generation beside
        the default multistep one (classes cycling for a conditional model)."""
        default = self.sampling_settings().steps
        return {f"steps_{k}": self.sample(n, generator=torch.Generator().manual_seed(generator_seed), steps=k)
                for k in sorted({1, default})}


# ---------------------------------------------------------------------------------------------
# The builder (the UNet's size presets are diffusion's: components/models/diffusion.py)
# ---------------------------------------------------------------------------------------------


def build_consistency(
    *,
    data: DatasetInfo,
    size: Literal["tiny", "small", "base"] = "small",
    channels: Annotated[int, Field(ge=8)] | None = None,
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0,
    conditioning: Literal["auto", "none", "class"] = "auto",
    mode: Literal["auto", "distill", "train"] = "auto",
    num_levels: Annotated[int, Field(ge=2, le=10_000)] = 18,
    sigma_max: Annotated[float, Field(gt=SIGMA_MIN, le=100_000)] = 80.0,
    distance: Literal["pseudo_huber", "l2"] = "pseudo_huber",
    target_decay: Annotated[float, Field(ge=0, lt=1)] = 0.95,
    steps: Annotated[int, Field(ge=1)] = 2,
    teacher: ModelRef | None = None,
    init: Literal["scratch", "teacher"] = "scratch",
    weighting: Literal["uniform", "ict"] = "uniform",
) -> Consistency:
    """A consistency model (Song et al. 2023) on images: distilled from `teacher` (a trained genray
    diffusion model in pixel space; consistency distillation) or trained alone (consistency
    training). mode "auto" is "distill" with a teacher and "train" without one.

    conditioning: "auto" is "class" when the data have labels (and the teacher, if any, is
    class-conditional), else "none". num_levels is N, the Karras noise levels in [0.002,
    sigma_max]; steps the default sampling steps (at most N - 1); target_decay the target's EMA
    rate mu. The UNet's size presets are diffusion's. init "teacher" (distillation only) starts
    from a copy of the teacher's network in the teacher's parameterisation; size, channels and
    dropout are then the teacher's, and other values than the defaults are refused. weighting is
    the loss weight per noise level, lambda (pair_weights).
    """
    c, h, w = check_image_shape(data.image_shape, "consistency")
    if mode not in MODES:
        raise ValueError(f"consistency: mode must be one of {MODES}, got {mode!r}")
    if mode == "distill" and teacher is None:
        raise UserError("consistency: mode 'distill' (consistency distillation) needs a trained diffusion model as "
                        "model.teacher, e.g. models:/diffusion-digits/latest; without a teacher use mode 'train' "
                        "(consistency training)")
    if mode == "train" and teacher is not None:
        raise UserError(f"consistency: mode 'train' (consistency training) uses no teacher, but model.teacher is "
                        f"{teacher.ref}; drop the teacher, or use mode 'distill' (or 'auto')")
    if not SIGMA_MIN < sigma_max:
        raise ValueError(f"consistency: sigma_max must be > sigma_min = {SIGMA_MIN}, got {sigma_max}")
    tm = _teacher_module(teacher, (c, h, w), sigma_max) if teacher is not None else None

    labelled = data.num_classes > 0
    if conditioning == "auto":
        conditioning = "class" if labelled and (tm is None or tm.num_classes > 0) else "none"
    if conditioning == "class":
        if not labelled:
            raise UserError("consistency: conditioning='class' needs labelled data (a 'label' column); "
                            "use conditioning='none'")
        if tm is not None and tm.num_classes != data.num_classes:
            raise UserError(f"consistency: a class-conditional student needs a teacher conditioned on the same "
                            f"{data.num_classes} classes; model.teacher {teacher.ref} has {tm.num_classes} "
                            "(0: unconditional). Use conditioning='none' or a class-conditional teacher")
    num_classes = data.num_classes if conditioning == "class" else 0

    if init == "teacher":
        if tm is None:
            raise UserError("consistency: init 'teacher' starts the student from the teacher's weights, so it needs "
                            "model.teacher (consistency distillation); consistency training uses init 'scratch'")
        if size != "small" or channels is not None or dropout != 0.0:
            raise UserError("consistency: with init 'teacher' the network is a copy of the teacher's, so model.size, "
                            "model.channels and model.dropout are the teacher's; leave them at their defaults")
        net = copy.deepcopy(tm.net).requires_grad_(True).train()
        return Consistency(net=net, image_shape=(c, h, w), num_classes=num_classes, teacher=tm,
                           num_levels=num_levels, sigma_max=sigma_max, distance=distance, target_decay=target_decay,
                           steps=min(steps, num_levels - 1), init="teacher", weighting=weighting)

    unet_args = SIZES[size]()
    if channels is not None:
        unet_args["channels"] = channels
    levels, attention = levels_for(len(unet_args["channel_mults"]), (h, w))
    unet_args["channel_mults"] = unet_args["channel_mults"][:levels]
    net = UNet(**unet_args, in_channels=c, image_size=(h, w), attention_levels=attention, dropout=dropout,
               num_classes=num_classes)
    return Consistency(net=net, image_shape=(c, h, w), num_classes=num_classes, teacher=tm, num_levels=num_levels,
                       sigma_max=sigma_max, distance=distance, target_decay=target_decay,
                       steps=min(steps, num_levels - 1), weighting=weighting)


def _teacher_module(ref: ModelRef, image_shape: tuple[int, int, int], sigma_max: float) -> nn.Module:
    """The frozen teacher `ref` names, checked: a pixel-space diffusion model of these images, not
    text-conditional, whose noise levels reach sigma_max."""
    teacher = frozen_module(ref, "consistency", "teacher", ("diffusion",), "a genray diffusion model")
    if teacher.autoencoder is not None:
        raise UserError(f"consistency: model.teacher {ref.ref} is latent diffusion; distillation here runs in pixel "
                        "space, so the teacher must be a pixel-space diffusion model (no autoencoder)")
    if teacher.text_encoder is not None:
        raise UserError(f"consistency: model.teacher {ref.ref} is text-conditional; a consistency model here is "
                        "unconditional or class-conditional, so use an unconditional or class-conditional teacher")
    if tuple(teacher.image_shape) != tuple(image_shape):
        raise UserError(f"consistency: model.teacher {ref.ref} was trained on images {tuple(teacher.image_shape)}, "
                        f"this data is {tuple(image_shape)}")
    ab = teacher.schedule.alphas_cumprod
    ab = ab[ab > 0]
    reach = float(((1 - ab[-1]) / ab[-1]).sqrt())
    if sigma_max > reach:
        raise UserError(f"consistency: sigma_max={sigma_max:g} is beyond the teacher's noisiest level (sigma "
                        f"{reach:.4g} = sqrt(1 - alpha_bar) / sqrt(alpha_bar) at its last step); set sigma_max <= "
                        f"{reach:.4g}")
    return teacher
