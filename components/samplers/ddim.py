"""DDIM: Song et al. 2021, eq. 12, on a subsequence of the training timesteps (sec. 4.2).

    x = ddim_sample(denoise, (16, 3, 32, 32), schedule, num_steps=50, eta=0.0, generator=g)

One step from t to t_prev (< t) reads

    x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps_hat + sigma z,
    sigma  = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev)       (eq. 16)

eta = 0 is the deterministic DDIM; eta = 1 with every timestep is DDPM's ancestral sampler
with sigma^2 = beta-tilde (the two updates are algebraically the same; see the tests).
"""
import numpy as np
import torch
from torch import Tensor

from genray.components.models.layers import randn
from genray.components.samplers.objective import Denoiser
from genray.components.samplers.prediction import to_x0_eps, x0_to_eps
from genray.components.samplers.schedules import NoiseSchedule, check_prediction

SPACINGS = ("leading", "trailing", "linspace")


def ddim_timesteps(num_timesteps: int, num_steps: int, spacing: str = "trailing") -> list[int]:
    """The num_steps timesteps a sampler visits, descending, distinct, in [0, T-1].

    Lin et al. 2024, Table 2 (with diffusers' rounding, numpy's half-to-even):
    - leading:  arange(S) * (T // S), e.g. T=1000, S=10: 900, 800, ..., 0 (no steps_offset);
    - trailing: round(T - arange(S) * T / S) - 1, e.g. 999, 899, ..., 99 (starts at the
      noisiest step, which Lin et al. recommend, and is what zero terminal SNR needs);
    - linspace: round(linspace(0, T-1, S)), e.g. 999, 888, ..., 0.
    With num_steps = T every spacing gives T-1, ..., 0.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {SPACINGS}")
    T, S = num_timesteps, num_steps
    if isinstance(S, bool) or not isinstance(S, int) or not 1 <= S <= T:
        raise ValueError(f"num_steps must be an integer in [1, num_timesteps={T}], got {S!r}")
    if spacing == "leading":
        ts = np.arange(S) * (T // S)
    elif spacing == "trailing":
        ts = np.round(T - np.arange(S) * (T / S)) - 1
    else:
        ts = np.round(np.linspace(0, T - 1, S))
    return sorted((int(t) for t in ts), reverse=True)


def ddim_step(
    output: Tensor,
    x_t: Tensor,
    t: int,
    t_prev: int,
    schedule: NoiseSchedule,
    *,
    prediction: str,
    eta: float,
    noise: Tensor | None,
    clip_x0: bool = True,
) -> Tensor:
    """x_{t_prev} from x_t and the network's output at t; t_prev = -1 is the final step to x0.

    noise (x_t's shape) is needed only when sigma > 0, i.e. eta > 0 and t_prev >= 0.
    """
    t, t_prev = int(t), int(t_prev)
    if not -1 <= t_prev < t < schedule.num_timesteps:
        raise ValueError(f"need -1 <= t_prev < t <= {schedule.num_timesteps - 1}, got t={t}, t_prev={t_prev}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0 (0: deterministic DDIM, 1: DDPM-like), got {eta}")
    ab_t = float(schedule.alphas_cumprod[t])
    ab_prev = float(schedule.alphas_cumprod[t_prev]) if t_prev >= 0 else 1.0
    if prediction == "eps" and ab_t == 0.0:
        check_prediction(schedule, prediction)  # explains why eps cannot be used at zero SNR
    x0_hat, eps_hat = to_x0_eps(prediction, output, x_t, ab_t)  # (B, ...), (B, ...)
    if clip_x0:
        # Recompute eps from the clipped x0 (as diffusers does), so (x0_hat, eps_hat) still
        # reproduce x_t; this is also what keeps eta = 1 equal to DDPM's clipped posterior mean.
        x0_hat = x0_hat.clamp(-1.0, 1.0)
        eps_hat = x0_to_eps(x0_hat, x_t, ab_t)
    # Song et al. 2021, eq. 16.
    sigma = eta * ((1 - ab_prev) / (1 - ab_t)) ** 0.5 * (1 - ab_t / ab_prev) ** 0.5
    # eta > 1 would make this negative; clamp so the direction term just vanishes.
    dir_coef = max(1 - ab_prev - sigma**2, 0.0) ** 0.5
    x_prev = ab_prev**0.5 * x0_hat + dir_coef * eps_hat  # (B, ...)  Song et al. 2021, eq. 12
    if sigma > 0:
        if noise is None:
            raise ValueError(f"ddim_step with eta={eta} needs noise (x_t's shape) from t={t} to t_prev={t_prev}")
        x_prev = x_prev + sigma * noise
    return x_prev


@torch.no_grad()
def ddim_sample(
    denoise: Denoiser,
    shape: tuple[int, ...],
    schedule: NoiseSchedule,
    *,
    prediction: str = "eps",
    num_steps: int = 50,
    eta: float = 0.0,
    spacing: str = "trailing",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    x_T: Tensor | None = None,
    clip_x0: bool = True,
) -> Tensor:
    """Sample with num_steps DDIM steps from x_T ~ N(0, I) -> float32 samples of `shape`.

    Random draws, in order: x_T (unless given), then one z per step only when sigma > 0 and
    t_prev >= 0, each from layers.randn(shape, generator=generator, device=device). So eta = 0
    draws nothing after x_T, and num_steps = T with eta = 1 draws exactly what ddpm_sample does.
    device defaults to x_T's device, else the CPU.
    """
    check_prediction(schedule, prediction)
    shape = tuple(shape)
    timesteps = ddim_timesteps(schedule.num_timesteps, num_steps, spacing)
    if x_T is not None and tuple(x_T.shape) != shape:
        raise ValueError(f"x_T must have shape {shape}, got {tuple(x_T.shape)}")
    device = torch.device(device) if device is not None else (x_T.device if x_T is not None else torch.device("cpu"))

    x = randn(shape, generator=generator, device=device) if x_T is None else x_T.to(device, torch.float32)  # shape
    for t, t_prev in zip(timesteps, timesteps[1:] + [-1]):
        t_batch = torch.full((shape[0],), t, dtype=torch.long, device=device)  # (B,)
        output = denoise(x, t_batch)  # shape
        z = randn(shape, generator=generator, device=device) if eta > 0 and t_prev >= 0 else None
        x = ddim_step(output.float(), x, t, t_prev, schedule, prediction=prediction, eta=eta, noise=z, clip_x0=clip_x0)
    return x
