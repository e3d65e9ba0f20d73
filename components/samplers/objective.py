"""The diffusion training loss and the variational bound, as functions of a denoiser.

The network never sees its loss (DiT's ``training_losses(model, x, t)`` split): it is any
``denoise(x_t, t) -> output`` with output of x_t's shape, and ``prediction`` says what that
output means (see ``prediction.py``).

    loss = training_loss(lambda x_t, t: net(x_t, t, y=y), x0, schedule, prediction="v").mean()
"""
import math
from typing import Callable

import torch
from torch import Tensor

from genray.components.models.layers import randn
from genray.components.samplers.prediction import target, to_x0_eps
from genray.components.samplers.schedules import NoiseSchedule, check_prediction, q_sample

Denoiser = Callable[[Tensor, Tensor], Tensor]  # (x_t (B, ...), t long (B,)) -> output (B, ...)

VARIANCES = ("posterior", "beta")


def check_variance(variance: str) -> None:
    """The reverse-process variance: beta-tilde_t ("posterior") or beta_t ("beta"), Ho et al. 2020, sec. 3.2."""
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {VARIANCES}")


def sample_timesteps(
    batch_size: int, num_timesteps: int, *, device: torch.device | str, generator: torch.Generator | None = None
) -> Tensor:
    """Uniform timesteps in [0, T-1] -> long (B,); drawn on the generator's device, like layers.randn."""
    if generator is None:
        return torch.randint(0, num_timesteps, (batch_size,), device=device)
    return torch.randint(0, num_timesteps, (batch_size,), generator=generator, device=generator.device).to(device)


# ---------------------------------------------------------------------------------------------
# Training loss
# ---------------------------------------------------------------------------------------------


def min_snr_weight(snr: Tensor, gamma: float, prediction: str) -> Tensor:
    """Hang et al. 2023 (Min-SNR-gamma), per example (B,).

    The x0-space loss weighted by min(snr, gamma), rewritten for each parameterisation:
    eps: min(snr, gamma) / snr; x0: min(snr, gamma); v: min(snr, gamma) / (snr + 1).
    """
    if gamma <= 0:
        raise ValueError(f"min_snr_gamma must be > 0 (5 in Hang et al. 2023), got {gamma}")
    if prediction == "eps":
        # min(snr, g)/snr = min(1, g/snr), which is also right at snr = 0 (g/0 = inf).
        return (gamma / snr).clamp(max=1.0)
    if prediction == "x0":
        return snr.clamp(max=gamma)
    return snr.clamp(max=gamma) / (snr + 1)


def training_loss(
    denoise: Denoiser,
    x0: Tensor,
    schedule: NoiseSchedule,
    *,
    prediction: str = "eps",
    min_snr_gamma: float | None = None,
    t: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-example denoising loss (B,): mean squared error to the prediction's target (Ho et al. 2020, eq. 14).

    t (uniform) then noise (standard normal) are drawn from `generator` when not given. The
    loss is computed in float32 whatever the network's output dtype (e.g. bf16 under autocast).
    """
    check_prediction(schedule, prediction)
    B = x0.shape[0]
    if t is None:
        t = sample_timesteps(B, schedule.num_timesteps, device=x0.device, generator=generator)
    if t.shape != (B,):
        raise ValueError(f"t must be a long tensor of shape (B,) = ({B},), got {tuple(t.shape)}")
    if noise is None:
        noise = randn(tuple(x0.shape), generator=generator, device=x0.device)
    x0, noise = x0.float(), noise.float()
    x_t = q_sample(schedule, x0, t, noise)  # (B, ...)
    alpha_bar = schedule.at("alphas_cumprod", t, x0.ndim)  # (B, 1, ..., 1)
    output = denoise(x_t, t).float()  # (B, ...)
    if output.shape != x0.shape:
        raise ValueError(f"the denoiser's output must have x0's shape {tuple(x0.shape)}, got {tuple(output.shape)}")
    loss = (output - target(prediction, x0, noise, alpha_bar)).pow(2).flatten(1).mean(dim=1)  # (B,)
    if min_snr_gamma is not None:
        loss = loss * min_snr_weight(schedule.snr(t), min_snr_gamma, prediction)
    return loss


# ---------------------------------------------------------------------------------------------
# Variational bound (Ho et al. 2020, eq. 5), in nats, for 8-bit images scaled to [-1, 1]
# ---------------------------------------------------------------------------------------------


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) per element, in nats."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2).pow(2) * torch.exp(-logvar2) - 1)


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) per element under N(mean, exp(log_scale)^2) integrated over x's 8-bit bin.

    Ho et al. 2020, eq. 13: bins of width 2/255 centred on x in [-1, 1]; the first and last
    bins extend to -inf and +inf so the probabilities sum to 1.
    """
    inv_scale = torch.exp(-log_scale)
    upper = inv_scale * (x - mean + 1 / 255)
    lower = inv_scale * (x - mean - 1 / 255)
    log_cdf_upper = torch.special.log_ndtr(upper)  # log P(X <= upper edge)
    log_sf_lower = torch.special.log_ndtr(-lower)  # log P(X > lower edge)
    mid = torch.log((torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, mid))


def variational_bound(
    denoise: Denoiser,
    x0: Tensor,
    schedule: NoiseSchedule,
    *,
    prediction: str,
    num_timesteps: int | None = None,
    variance: str = "posterior",
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Terms of -log p(x0) <= L_T + sum_t L_{t-1} + L_0 (Ho et al. 2020, eq. 5), each (B,) in nats.

    - "prior": L_T = KL(q(x_{T-1} | x0) || N(0, I)) (our last index is T-1);
    - "diffusion": sum over t = 1..T-1 of KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)), with the
      model's mean the posterior mean at (x0_hat, x_t) and variance beta-tilde_t or beta_t.
      With num_timesteps = K < T-1, only K evenly spaced t are evaluated and the sum is scaled
      by (T-1)/K (unbiased when the terms are spread evenly);
    - "decoder": L_0 = -log p(x0 | x_0) under the discretized Gaussian (eq. 13) at t = 0, log
      variance posterior_log_variance_clipped[0] (beta-tilde_0 = 0 would make it a point mass)
      for "posterior", log beta_0 for "beta";
    - "total": their sum, the bound on -log p(x0) in nats per example (see nats_to_bits_per_dim).

    x0 must be data scaled to [-1, 1]. Each t gets fresh noise from `generator` (the global RNG
    when None), drawn for t = 0 first, then for the diffusion t in increasing order. x0_hat is
    not clipped. Runs without gradients.
    """
    check_prediction(schedule, prediction)
    check_variance(variance)
    if float(x0.min()) < -1 - 1e-6 or float(x0.max()) > 1 + 1e-6:
        raise ValueError(
            f"variational_bound's decoder is for 8-bit images scaled to [-1, 1]; got values in "
            f"[{float(x0.min()):.3g}, {float(x0.max()):.3g}]"
        )
    T = schedule.num_timesteps
    if num_timesteps is not None and num_timesteps < 1:
        raise ValueError(
            f"num_timesteps (how many diffusion terms to evaluate) must be >= 1, or None for all; got {num_timesteps}"
        )
    # K evenly spaced t in [1, T-1]; distinct after rounding because their spacing is >= 1.
    K = T - 1 if num_timesteps is None else min(int(num_timesteps), T - 1)
    ts = torch.linspace(1, T - 1, K, dtype=torch.float64).round().long().tolist() if K > 0 else []
    B, ndim, device = x0.shape[0], x0.ndim, x0.device
    x0 = x0.float()

    def at(name: str, t: Tensor) -> Tensor:
        return schedule.at(name, t, ndim)  # (B, 1, ..., 1)

    def model_x0(t: int) -> tuple[Tensor, Tensor, Tensor]:
        """x_t ~ q(x_t | x0) and the model's x0_hat at one timestep, for the whole batch."""
        t_batch = torch.full((B,), t, dtype=torch.long, device=device)
        x_t = q_sample(schedule, x0, t_batch, randn(tuple(x0.shape), generator=generator, device=device))
        x0_hat, _ = to_x0_eps(prediction, denoise(x_t, t_batch).float(), x_t, at("alphas_cumprod", t_batch))
        return t_batch, x_t, x0_hat

    with torch.no_grad():
        # Prior L_T: q(x_{T-1} | x0) = N(sqrt(ab) x0, (1 - ab) I) against N(0, I).
        t_last = torch.full((B,), T - 1, dtype=torch.long, device=device)
        ab_last = at("alphas_cumprod", t_last)
        prior = normal_kl(ab_last.sqrt() * x0, torch.log(1 - ab_last), torch.zeros_like(x0), torch.zeros_like(x0))
        prior = prior.flatten(1).sum(dim=1)  # (B,)

        # Decoder L_0: the model mean at t = 0 is coef1 x0_hat + coef2 x_0 = x0_hat (coef2_0 = 0).
        t0, x_t, x0_hat = model_x0(0)
        mean = at("posterior_mean_coef1", t0) * x0_hat + at("posterior_mean_coef2", t0) * x_t
        if variance == "posterior":
            log_var = at("posterior_log_variance_clipped", t0)
        else:
            log_var = at("betas", t0).log()
        decoder = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var).flatten(1).sum(dim=1)  # (B,)

        # Diffusion terms L_{t-1}, t = 1..T-1: both Gaussians share the posterior's form, so the
        # mean gap is coef1 (x0 - x0_hat) (Ho et al. 2020, eq. 8 before dropping constants).
        diffusion = torch.zeros(B, device=device)
        for t in ts:
            t_batch, x_t, x0_hat = model_x0(t)
            log_var_q = torch.log(at("posterior_variance", t_batch))
            log_var_p = log_var_q if variance == "posterior" else torch.log(at("betas", t_batch))
            gap = at("posterior_mean_coef1", t_batch) * (x0 - x0_hat)  # (B, ...)
            kl = normal_kl(gap, log_var_q, torch.zeros_like(gap), log_var_p)
            diffusion += kl.flatten(1).sum(dim=1)
        if ts:
            diffusion *= (T - 1) / len(ts)  # K of the T-1 terms stand for all of them

    return {"prior": prior, "diffusion": diffusion, "decoder": decoder, "total": prior + diffusion + decoder}


def nats_to_bits_per_dim(nats: Tensor, num_dims: int) -> Tensor:
    """Nats per example -> bits per dimension (divide by num_dims * ln 2), the usual image NLL unit."""
    if num_dims < 1:
        raise ValueError(f"num_dims must be >= 1 (C * H * W for images), got {num_dims}")
    return nats / (num_dims * math.log(2))
