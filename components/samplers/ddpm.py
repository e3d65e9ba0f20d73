"""Ancestral sampling: Ho et al. 2020, Algorithm 2 (one reverse step is eq. 11, written via eq. 7).

    x = ddpm_sample(denoise, (16, 3, 32, 32), schedule, prediction="eps", generator=g)

Each step predicts x0 from the network output, clamps it to the data range [-1, 1], and draws
x_{t-1} from the posterior q(x_{t-1} | x_t, x0_hat) with variance beta-tilde_t ("posterior",
Ho's sigma^2 = beta-tilde) or beta_t ("beta", Ho's sigma^2 = beta). The last step (t = 0) adds
no noise and returns the posterior mean, which is x0_hat.
"""
import torch
from torch import Tensor

from genray.components.models.layers import randn
from genray.components.samplers.objective import Denoiser, check_variance
from genray.components.samplers.prediction import to_x0_eps
from genray.components.samplers.schedules import NoiseSchedule, check_prediction


def ddpm_step(
    output: Tensor,
    x_t: Tensor,
    t: int,
    schedule: NoiseSchedule,
    *,
    prediction: str,
    variance: str = "posterior",
    noise: Tensor | None,
    clip_x0: bool = True,
) -> Tensor:
    """x_{t-1} from x_t and the network's output at t; noise (x_t's shape) is needed for t > 0 only."""
    check_variance(variance)
    t = int(t)
    if not 0 <= t < schedule.num_timesteps:
        raise ValueError(f"t must be in [0, {schedule.num_timesteps - 1}], got {t}")
    alpha_bar = float(schedule.alphas_cumprod[t])
    if prediction == "eps" and alpha_bar == 0.0:
        check_prediction(schedule, prediction)  # explains why eps cannot be used at zero SNR
    x0_hat, _ = to_x0_eps(prediction, output, x_t, alpha_bar)  # (B, ...)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
    # Ho et al. 2020, eq. 7: the mean of q(x_{t-1} | x_t, x0) with x0 -> x0_hat.
    mean = float(schedule.posterior_mean_coef1[t]) * x0_hat + float(schedule.posterior_mean_coef2[t]) * x_t
    if t == 0:
        return mean
    if noise is None:
        raise ValueError(f"ddpm_step needs noise (standard normal, x_t's shape) for t > 0, got None at t={t}")
    var = schedule.posterior_variance[t] if variance == "posterior" else schedule.betas[t]
    return mean + float(var) ** 0.5 * noise


@torch.no_grad()
def ddpm_sample(
    denoise: Denoiser,
    shape: tuple[int, ...],
    schedule: NoiseSchedule,
    *,
    prediction: str = "eps",
    variance: str = "posterior",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    x_T: Tensor | None = None,
    clip_x0: bool = True,
) -> Tensor:
    """Run all T reverse steps from x_T ~ N(0, I) -> float32 samples of `shape`.

    Random draws, in order: x_T (unless given), then one z per step for t = T-1, ..., 1, each
    from layers.randn(shape, generator=generator, device=device), so one seed gives the same
    samples on any device (and the same draws as ddim_sample with num_steps = T and eta = 1).
    device defaults to x_T's device, else the CPU.
    """
    check_prediction(schedule, prediction)
    check_variance(variance)
    shape = tuple(shape)
    if x_T is not None and tuple(x_T.shape) != shape:
        raise ValueError(f"x_T must have shape {shape}, got {tuple(x_T.shape)}")
    device = torch.device(device) if device is not None else (x_T.device if x_T is not None else torch.device("cpu"))

    x = randn(shape, generator=generator, device=device) if x_T is None else x_T.to(device, torch.float32)  # shape
    for t in reversed(range(schedule.num_timesteps)):
        t_batch = torch.full((shape[0],), t, dtype=torch.long, device=device)  # (B,)
        output = denoise(x, t_batch)  # shape
        z = randn(shape, generator=generator, device=device) if t > 0 else None
        x = ddpm_step(
            output.float(), x, t, schedule, prediction=prediction, variance=variance, noise=z, clip_x0=clip_x0
        )  # shape
    return x
