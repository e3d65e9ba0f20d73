"""The training loss and the variational bound against oracles whose answers are known in closed form."""
import math

import pytest
import torch

from genray.components.samplers.objective import nats_to_bits_per_dim, sample_timesteps, training_loss, variational_bound
from genray.components.samplers.prediction import PREDICTIONS, target
from genray.components.samplers.schedules import make_schedule, q_sample

SHAPE = (8, 3, 4, 4)
D = 3 * 4 * 4


def data(seed: int = 0) -> torch.Tensor:
    """8-bit images scaled to [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, SHAPE, generator=g).float() / 127.5 - 1  # (B, C, H, W)


def oracle(prediction, x0, noise, schedule):
    """A denoiser that outputs exactly the target for the (x0, noise) it was trained on."""

    def denoise(x_t, t):
        return target(prediction, x0, noise, schedule.at("alphas_cumprod", t, x0.ndim))

    return denoise


def x0_oracle(x0, schedule, prediction="eps"):
    """An x0-aware denoiser: for any x_t it outputs the prediction implied by the true x0."""

    def denoise(x_t, t):
        ab = schedule.at("alphas_cumprod", t, x_t.ndim)
        eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
        return target(prediction, x0, eps, ab)

    return denoise


# eps with zero terminal SNR is rejected by check_prediction (tested below and in test_schedules).
@pytest.mark.parametrize(
    "prediction, zero_terminal_snr", [(p, False) for p in PREDICTIONS] + [("x0", True), ("v", True)]
)
def test_oracle_denoiser_has_zero_loss(prediction, zero_terminal_snr):
    s = make_schedule("cosine", 50, zero_terminal_snr=zero_terminal_snr)
    x0 = data()
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([0, 1, 7, 20, 33, 48, 49, 49])
    noise = torch.randn(SHAPE, generator=g)
    for gamma in (None, 5.0):
        loss = training_loss(
            oracle(prediction, x0, noise, s), x0, s, prediction=prediction, t=t, noise=noise, min_snr_gamma=gamma
        )
        assert loss.shape == (8,) and torch.equal(loss, torch.zeros(8))
    # A wrong denoiser is not free: the loss is its mean squared error.
    off = training_loss(lambda x_t, t: x_t, x0, s, prediction=prediction, t=t, noise=noise)
    assert bool((off > 0).all())


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_min_snr_gamma_weights_are_hang_et_al(prediction):
    s = make_schedule("linear", 1000)
    x0, gamma = data(), 5.0
    t = torch.tensor([0, 10, 100, 200, 300, 500, 800, 999])
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    exact = oracle(prediction, x0, noise, s)
    # Every output off by exactly 1: the unweighted loss is 1, so the loss is the weight.
    loss = training_loss(
        lambda x_t, t: exact(x_t, t) + 1, x0, s, prediction=prediction, t=t, noise=noise, min_snr_gamma=gamma
    )
    ab = s.alphas_cumprod[t]
    snr = ab / (1 - ab)
    weight = {"eps": snr.clamp(max=gamma) / snr, "x0": snr.clamp(max=gamma), "v": snr.clamp(max=gamma) / (snr + 1)}
    assert torch.allclose(loss, weight[prediction].float(), rtol=1e-5)
    assert float(loss[0]) != float(loss[-1])  # the weights do vary with t for every prediction
    with pytest.raises(ValueError, match="min_snr_gamma"):
        training_loss(exact, x0, s, prediction=prediction, t=t, noise=noise, min_snr_gamma=0.0)


def test_draws_t_then_noise_from_the_generator_and_returns_float32():
    s = make_schedule("linear", 100)
    x0 = data()
    seen = {}

    def net(x_t, t):
        seen["x_t"], seen["t"] = x_t, t
        return torch.zeros_like(x_t, dtype=torch.bfloat16)

    loss = training_loss(net, x0, s, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    t = sample_timesteps(8, 100, device="cpu", generator=g)
    noise = torch.randn(SHAPE, generator=g)
    assert torch.equal(seen["t"], t)
    assert torch.equal(seen["x_t"], q_sample(s, x0, t, noise))
    assert loss.dtype == torch.float32
    assert torch.allclose(loss, noise.pow(2).flatten(1).mean(1))  # eps target, zero output
    assert sample_timesteps(10_000, 7, device="cpu").unique().tolist() == list(range(7))


def test_training_loss_checks_its_inputs():
    s = make_schedule("linear", 10)
    x0 = data()
    with pytest.raises(ValueError, match=r"'eps', 'x0', 'v'"):
        training_loss(lambda x_t, t: x_t, x0, s, prediction="noise")
    with pytest.raises(ValueError, match="prediction='v'"):
        training_loss(lambda x_t, t: x_t, x0, make_schedule("linear", 10, zero_terminal_snr=True))
    with pytest.raises(ValueError, match="shape"):
        training_loss(lambda x_t, t: x_t[:, :1], x0, s)


def gaussian_kl_to_standard(mean: float, var: float) -> float:
    return 0.5 * (var + mean**2 - 1 - math.log(var))


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_bound_for_x0_zero_and_an_oracle_is_closed_form(prediction):
    s = make_schedule("linear", 100)
    x0 = torch.zeros(SHAPE)
    g = torch.Generator().manual_seed(4)
    out = variational_bound(x0_oracle(x0, s, prediction), x0, s, prediction=prediction, generator=g)
    assert set(out) == {"prior", "diffusion", "decoder", "total"}
    assert all(v.shape == (8,) and bool(v.isfinite().all()) for v in out.values())
    # Prior: q(x_T | x0 = 0) = N(0, 1 - alpha_bar_T) against N(0, 1), per dimension.
    ab_T = float(s.alphas_cumprod[-1])
    assert torch.allclose(out["prior"], torch.full((8,), D * gaussian_kl_to_standard(0.0, 1 - ab_T)), rtol=1e-4)
    # The model's reverse step is the true posterior: every diffusion KL vanishes.
    assert float(out["diffusion"].abs().max()) < 1e-3
    # Decoder: the bin of width 2/255 around x0 under N(x0, beta-tilde_1) (the clipped log variance).
    sigma = math.exp(0.5 * float(s.posterior_log_variance_clipped[0]))
    mass = math.erf(1 / 255 / sigma / math.sqrt(2))  # P(|N(0, sigma^2)| < 1/255)
    assert torch.allclose(out["decoder"], torch.full((8,), -D * math.log(mass)), rtol=1e-4)
    assert torch.allclose(out["total"], out["prior"] + out["diffusion"] + out["decoder"])


def test_bound_with_beta_variance_and_subsampled_terms():
    # With the true posterior mean and variance beta_t, each KL is the variance mismatch alone:
    # D/2 (log(beta / beta-tilde) + beta-tilde / beta - 1), so the sum over t is closed form.
    T = 40
    s = make_schedule("cosine", T)
    x0 = torch.zeros(SHAPE)
    b, bt = s.betas, s.posterior_variance
    per_t = 0.5 * D * (torch.log(b / bt) + bt / b - 1)  # (T,), entry 0 is unused (inf)
    full = variational_bound(x0_oracle(x0, s), x0, s, prediction="eps", variance="beta")
    assert torch.allclose(full["diffusion"], per_t[1:].sum().float().expand(8), rtol=1e-4)
    # K evenly spaced terms, scaled by (T-1)/K.
    ts = torch.linspace(1, T - 1, 5, dtype=torch.float64).round().long()
    part = variational_bound(x0_oracle(x0, s), x0, s, prediction="eps", variance="beta", num_timesteps=5)
    assert torch.allclose(part["diffusion"], (per_t[ts].sum() * (T - 1) / 5).float().expand(8), rtol=1e-4)
    # The decoder's scale is sqrt(beta_0) for variance="beta".
    mass = math.erf(1 / 255 / math.sqrt(float(b[0])) / math.sqrt(2))
    assert torch.allclose(full["decoder"], torch.full((8,), -D * math.log(mass)), rtol=1e-4)


def test_bound_is_finite_for_a_poor_model_and_rejects_bad_input():
    s = make_schedule("linear", 200, zero_terminal_snr=True)
    x0 = data(5)  # includes -1 and 1: the open-ended edge bins
    assert float(x0.min()) == -1 and float(x0.max()) == 1
    out = variational_bound(lambda x_t, t: 0.5 * x_t, x0, s, prediction="v", num_timesteps=10)
    assert all(bool(v.isfinite().all()) for v in out.values())
    assert bool((out["diffusion"] > 0).all()) and bool((out["decoder"] > 0).all())
    assert torch.equal(out["prior"], torch.zeros(8))  # zero terminal SNR: q(x_T | x0) = N(0, I)
    bpd = nats_to_bits_per_dim(out["total"], D)
    assert torch.allclose(bpd * D * math.log(2), out["total"])
    with pytest.raises(ValueError, match=r"'posterior', 'beta'"):
        variational_bound(lambda x_t, t: x_t, x0, s, prediction="v", variance="fixedlarge")
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        variational_bound(lambda x_t, t: x_t, x0 * 2, s, prediction="v")
