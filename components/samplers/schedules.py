"""Noise schedules: how much noise each of the T forward steps adds, and everything derived from it.

Timesteps are 0-indexed, t in [0, T-1]. Step t takes x_{t-1} to x_t with variance beta_t, and
x_{-1} is the data x0, so alpha_bar_t = prod_{s<=t} (1 - beta_s) and alpha_bar_0 = 1 - beta_0:
index t here is step t+1 in Ho et al. 2020's 1-indexed notation.

Four ways to get betas:
- ``linear``: Ho et al. 2020, sec. 4 (1e-4 to 0.02 over T = 1000);
- ``cosine``: Nichol & Dhariwal 2021, eq. 17;
- ``sigmoid``: Jabri et al. 2022 / Chen 2023, "On the importance of noise scheduling", Algorithm 1;
- any of them with ``zero_terminal_snr=True``: Lin et al. 2024, Algorithm 1, so x_{T-1} is pure
  noise and the sampler starts from exactly the distribution it was trained on.

Schedule arrays live on the CPU in float64; ``NoiseSchedule.at`` gathers them at a batch of
timesteps as float32 on the timesteps' device, ready to broadcast against x.
"""
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from genray.components.samplers.prediction import PREDICTIONS

SCHEDULES = ("linear", "cosine", "sigmoid")

# Nichol & Dhariwal 2021, sec. 3.2: clip betas below 1 so the last steps stay invertible.
MAX_BETA = 0.999

_ARRAYS = (
    "betas",
    "alphas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


# ---------------------------------------------------------------------------------------------
# Betas
# ---------------------------------------------------------------------------------------------


def _check_num_timesteps(num_timesteps: int) -> int:
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be an integer >= 1 (1000 is usual), got {num_timesteps!r}")
    return num_timesteps


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Ho et al. 2020, sec. 4: betas evenly spaced from beta_start to beta_end -> float64 (T,).

    The published values are for T = 1000. For other T both ends are scaled by 1000 / T, as
    improved-diffusion's ``get_named_beta_schedule`` does, so sum(betas) (and so alpha_bar at the
    last step, roughly exp(-sum betas)) does not depend on T. Below T = 21 the scaled end passes
    1; betas are then clipped at 0.999 and the chain reaches near-pure noise before its last step.
    """
    T = _check_num_timesteps(num_timesteps)
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")
    scale = 1000 / T
    betas = torch.linspace(scale * beta_start, scale * beta_end, T, dtype=torch.float64)  # (T,)
    return betas.clamp(max=MAX_BETA)


def betas_from_alpha_bar(num_timesteps: int, alpha_bar, max_beta: float = MAX_BETA) -> Tensor:
    """Discretise a continuous alpha_bar(u), u in [0, 1] with alpha_bar(0) = 1, into T betas.

    Nichol & Dhariwal 2021, sec. 3.2: beta_t = 1 - alpha_bar(u_{t+1}) / alpha_bar(u_t) with
    u_t = t / T, clipped at max_beta. So our 0-indexed alpha_bar_t = alpha_bar((t + 1) / T) for
    every t whose beta was not clipped.
    """
    T = _check_num_timesteps(num_timesteps)
    if not 0 < max_beta <= 1:
        raise ValueError(f"max_beta must be in (0, 1], got {max_beta}")
    u = torch.arange(T + 1, dtype=torch.float64) / T  # (T+1,)
    a = alpha_bar(u)  # (T+1,)
    return (1 - a[1:] / a[:-1]).clamp(min=0.0, max=max_beta)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = MAX_BETA) -> Tensor:
    """Nichol & Dhariwal 2021, eq. 17: alpha_bar(u) = f(u) / f(0), f(u) = cos((u + s)/(1 + s) pi/2)^2.

    The offset s keeps beta_0 from being vanishingly small. With our 0-indexing,
    alpha_bar_t = f((t + 1) / T) / f(0) (up to the clipping of the last betas at max_beta).
    """
    if s <= 0:
        raise ValueError(f"cosine schedule offset s must be > 0 (0.008 in the paper), got {s}")

    def f(u: Tensor) -> Tensor:
        return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    f0 = f(torch.zeros((), dtype=torch.float64))
    return betas_from_alpha_bar(num_timesteps, lambda u: f(u) / f0, max_beta)


def sigmoid_betas(
    num_timesteps: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0, max_beta: float = MAX_BETA
) -> Tensor:
    """Chen 2023, Algorithm 1 (sigmoid_schedule), after Jabri et al. 2022.

    alpha_bar(u) = (sigmoid(end/tau) - sigmoid((u (end - start) + start)/tau))
                   / (sigmoid(end/tau) - sigmoid(start/tau)),
    which falls from 1 at u = 0 to 0 at u = 1; a larger tau spends more steps at low noise.
    Betas come from ratios of consecutive alpha_bar, as for the cosine schedule.
    """
    if not start < end:
        raise ValueError(f"sigmoid schedule needs start < end, got start={start}, end={end}")
    if tau <= 0:
        raise ValueError(f"sigmoid schedule temperature tau must be > 0, got {tau}")
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))

    def alpha_bar(u: Tensor) -> Tensor:
        return (v_end - torch.sigmoid((u * (end - start) + start) / tau)) / (v_end - v_start)

    return betas_from_alpha_bar(num_timesteps, alpha_bar, max_beta)


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Lin et al. 2024, Algorithm 1: shift and scale sqrt(alpha_bar) so its last value is exactly 0.

    sqrt(alpha_bar) is shifted down by its last value, then scaled back so its first value is
    unchanged; the new betas give alpha_bar_{T-1} = 0 (SNR 0: x_{T-1} is pure noise) and
    beta_{T-1} = 1. Pair this with prediction='v' (eps is not enough to recover x0 at SNR 0).
    """
    if betas.ndim != 1 or len(betas) < 2:
        raise ValueError(
            f"zero terminal SNR needs at least 2 timesteps (it pins the first and last alpha_bar), "
            f"got betas of shape {tuple(betas.shape)}"
        )
    betas = betas.to(torch.float64)
    sqrt_ab = torch.cumprod(1 - betas, dim=0).sqrt()  # (T,)
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)  # (T,)
    alpha_bar = sqrt_ab**2  # (T,)
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])  # (T,)
    return 1 - alphas


# ---------------------------------------------------------------------------------------------
# The schedule and what it implies
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """Betas and the per-timestep float64 arrays derived from them (Ho et al. 2020, eqs. 4, 6, 7).

    alphas_cumprod is alpha_bar; alphas_cumprod_prev is alpha_bar_{t-1} with alpha_bar_{-1} = 1.
    posterior_variance is beta-tilde_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t), 0 at
    t = 0; posterior_log_variance_clipped replaces that 0 by beta-tilde_1, as improved-diffusion
    does, so its log is finite. The posterior mean is coef1 * x0 + coef2 * x_t (eq. 7).
    """

    betas: Tensor  # float64 (T,)
    alphas: Tensor = field(init=False, repr=False)
    alphas_cumprod: Tensor = field(init=False, repr=False)
    alphas_cumprod_prev: Tensor = field(init=False, repr=False)
    posterior_variance: Tensor = field(init=False, repr=False)
    posterior_log_variance_clipped: Tensor = field(init=False, repr=False)
    posterior_mean_coef1: Tensor = field(init=False, repr=False)
    posterior_mean_coef2: Tensor = field(init=False, repr=False)

    def __post_init__(self):
        betas = torch.as_tensor(self.betas).detach().to("cpu", torch.float64)
        if betas.ndim != 1 or len(betas) == 0:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
        # Every beta in (0, 1); only the last may be exactly 1 (zero terminal SNR).
        if not (bool((betas[:-1] > 0).all()) and bool((betas[:-1] < 1).all()) and 0 < float(betas[-1]) <= 1):
            raise ValueError(
                f"betas must lie in (0, 1) (the last may be 1, for zero terminal SNR), "
                f"got min {float(betas.min())}, max {float(betas.max())}"
            )
        alphas = 1 - betas
        ab = torch.cumprod(alphas, dim=0)  # (T,)
        ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])  # (T,)
        # Ho et al. 2020, eq. 7: q(x_{t-1} | x_t, x0) = N(coef1 x0 + coef2 x_t, beta-tilde_t I).
        post_var = betas * (1 - ab_prev) / (1 - ab)  # (T,)
        post_log_var = torch.log(torch.cat([post_var[1:2] if len(betas) > 1 else betas[:1], post_var[1:]]))
        values = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": ab,
            "alphas_cumprod_prev": ab_prev,
            "posterior_variance": post_var,
            "posterior_log_variance_clipped": post_log_var,
            "posterior_mean_coef1": betas * ab_prev.sqrt() / (1 - ab),
            "posterior_mean_coef2": (1 - ab_prev) * alphas.sqrt() / (1 - ab),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    @property
    def zero_terminal_snr(self) -> bool:
        """True when alpha_bar_{T-1} is exactly 0 (Lin et al. 2024)."""
        return float(self.alphas_cumprod[-1]) == 0.0

    def at(self, name: str, t: Tensor, ndim: int) -> Tensor:
        """The array `name` at timesteps t (long (B,)) as float32 (B, 1, ..., 1) with ndim dims, on t's device."""
        if name not in _ARRAYS:
            raise ValueError(f"unknown schedule array {name!r}; choose one of {_ARRAYS}")
        return _gather(getattr(self, name), t).reshape(-1, *([1] * (ndim - 1)))

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) at timesteps t -> float32 (B,) on t's device."""
        ab = self.alphas_cumprod
        return _gather(ab / (1 - ab), t)


def _gather(values: Tensor, t: Tensor) -> Tensor:
    if t.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"timesteps must be an integer (long) tensor, got dtype {t.dtype}")
    # Cast before moving: float64 is not available on every accelerator (e.g. MPS).
    return values.to(torch.float32).to(t.device)[t.long()]  # t.shape


def make_schedule(name: str, num_timesteps: int, *, zero_terminal_snr: bool = False) -> NoiseSchedule:
    """The named schedule with T = num_timesteps steps, optionally rescaled to zero terminal SNR."""
    builders = {"linear": linear_betas, "cosine": cosine_betas, "sigmoid": sigmoid_betas}
    if name not in builders:
        raise ValueError(f"unknown noise schedule {name!r}; choose one of {SCHEDULES}")
    betas = builders[name](num_timesteps)
    if zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return NoiseSchedule(betas)


def q_sample(schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """Draw x_t ~ q(x_t | x0) = N(sqrt(alpha_bar_t) x0, (1 - alpha_bar_t) I) (Ho et al. 2020, eq. 4)."""
    if noise.shape != x0.shape:
        raise ValueError(f"noise must have x0's shape {tuple(x0.shape)}, got {tuple(noise.shape)}")
    alpha_bar = schedule.at("alphas_cumprod", t, x0.ndim)  # (B, 1, ..., 1)
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise  # x0.shape


def check_prediction(schedule: NoiseSchedule, prediction: str) -> None:
    """Raise unless `prediction` is a known parameterisation that works with this schedule.

    With zero terminal SNR, x_{T-1} is pure noise, so a predicted eps says nothing about x0
    (x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) divides by 0). Lin et al. 2024
    pair that schedule with v-prediction; x0-prediction also works.
    """
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")
    if prediction == "eps" and schedule.zero_terminal_snr:
        raise ValueError(
            "prediction='eps' cannot be used with a zero-terminal-SNR schedule: at the last step "
            "alpha_bar = 0 and x0 cannot be recovered from eps. Use prediction='v' (Lin et al. 2024) "
            "or turn zero_terminal_snr off."
        )
