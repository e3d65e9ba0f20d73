"""DDPM (Ho et al. 2020) and DDIM (Song et al. 2021) against their closed forms and each other.

Gaussian data N(mu, s^2) make every sampler exactly checkable: the optimal denoiser is affine
in x_t, so each step is an affine map plus Gaussian noise and the samples are Gaussian with
moments given by a short recursion over the steps, written here from the papers' formulas.
"""
import math

import pytest
import torch

from genray.components.samplers.ddim import SPACINGS, ddim_sample, ddim_step, ddim_timesteps
from genray.components.samplers.ddpm import ddpm_sample, ddpm_step
from genray.components.samplers.prediction import PREDICTIONS, eps_to_x0, target
from genray.components.samplers.schedules import make_schedule

MU, S = 0.3, 0.5  # the 1-D data distribution N(MU, S^2)


def gaussian_eps(schedule):
    """The optimal eps-predictor for data N(MU, S^2): E[eps | x_t] in closed form."""

    def denoise(x_t, t):
        ab = schedule.at("alphas_cumprod", t, x_t.ndim)
        return (1 - ab).sqrt() * (x_t - ab.sqrt() * MU) / (ab * S**2 + 1 - ab)

    return denoise


def toy(schedule, prediction):
    """A deterministic, nonlinear denoiser with outputs for any prediction (x0 may leave [-1, 1])."""
    optimal = gaussian_eps(schedule)

    def denoise(x_t, t):
        ab = schedule.at("alphas_cumprod", t, x_t.ndim)
        eps = optimal(x_t, t) + 0.3 * torch.sin(3 * x_t)
        return target(prediction, eps_to_x0(eps, x_t, ab), eps, ab)

    return denoise


def exact_moments(schedule, steps, eta=None, variance="posterior"):
    """Mean and std of the samples for Gaussian data, from x_T ~ N(0, 1), in float64.

    steps: descending timesteps. eta=None runs DDPM's step (Ho et al. 2020, eq. 7 and Algorithm 2);
    a number runs DDIM's (Song et al. 2021, eqs. 12 and 16).
    """
    abar = torch.cumprod(1 - schedule.betas, 0).tolist()
    m, v = 0.0, 1.0
    for t, t_prev in zip(steps, steps[1:] + [-1]):
        ab, ab_p = abar[t], (abar[t_prev] if t_prev >= 0 else 1.0)
        # E[x0 | x_t] = k x_t + c for Gaussian data.
        k = S**2 * math.sqrt(ab) / (ab * S**2 + 1 - ab)
        c = MU - k * math.sqrt(ab) * MU
        if eta is None:
            beta = 1 - ab / ab_p
            coef1, coef2 = math.sqrt(ab_p) * beta / (1 - ab), math.sqrt(1 - beta) * (1 - ab_p) / (1 - ab)
            a, b = coef1 * k + coef2, coef1 * c
            var = (beta * (1 - ab_p) / (1 - ab) if variance == "posterior" else beta) if t > 0 else 0.0
        else:
            e1, e0 = (1 - math.sqrt(ab) * k) / math.sqrt(1 - ab), -math.sqrt(ab) * c / math.sqrt(1 - ab)
            var = eta**2 * (1 - ab_p) / (1 - ab) * (1 - ab / ab_p)
            d = math.sqrt(1 - ab_p - var)
            a, b = math.sqrt(ab_p) * k + d * e1, math.sqrt(ab_p) * c + d * e0
        m, v = a * m + b, a * a * v + var
    return m, math.sqrt(v)


# ---------------------------------------------------------------------------------------------
# Timesteps
# ---------------------------------------------------------------------------------------------


def test_ddim_timesteps_known_values():
    # Lin et al. 2024, Table 2, for T = 1000 and 10 steps.
    assert ddim_timesteps(1000, 10, "trailing") == list(range(999, 0, -100))
    assert ddim_timesteps(1000, 10, "leading") == list(range(900, -1, -100))
    assert ddim_timesteps(1000, 10, "linspace") == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert ddim_timesteps(10, 3, "trailing") == [9, 6, 2]  # round(10, 6.67, 3.33) - 1
    assert ddim_timesteps(10, 3, "leading") == [6, 3, 0]
    assert ddim_timesteps(10, 3, "linspace") == [9, 4, 0]  # round(4.5) = 4, numpy's half-to-even


@pytest.mark.parametrize("spacing", SPACINGS)
def test_ddim_timesteps_are_distinct_descending_and_in_range(spacing):
    for T in (1, 7, 10, 50, 999, 1000):
        for S in sorted({S for S in (1, 2, 3, T // 3, T // 2, T - 1, T) if 1 <= S <= T}):
            ts = ddim_timesteps(T, S, spacing)
            assert len(ts) == S and len(set(ts)) == S, (T, S)
            assert ts == sorted(ts, reverse=True) and 0 <= ts[-1] and ts[0] <= T - 1, (T, S)
        assert ddim_timesteps(T, T, spacing) == list(range(T - 1, -1, -1))
    with pytest.raises(ValueError, match=r"'leading', 'trailing', 'linspace'"):
        ddim_timesteps(100, 10, "uniform")
    with pytest.raises(ValueError, match="num_steps"):
        ddim_timesteps(100, 101, spacing)


# ---------------------------------------------------------------------------------------------
# Single steps
# ---------------------------------------------------------------------------------------------


def one_step_case(t, seed=0):
    s = make_schedule("linear", 100)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(4, 1, 3, 3, generator=g) * 2 - 1
    eps, z = torch.randn(4, 1, 3, 3, generator=g), torch.randn(4, 1, 3, 3, generator=g)
    abar = torch.cumprod(1 - s.betas, 0).tolist()
    x_t = math.sqrt(abar[t]) * x0 + math.sqrt(1 - abar[t]) * eps
    return s, abar, x0, eps, z, x_t


def test_ddpm_step_with_the_true_eps_is_the_posterior_of_eq_7():
    t = 40
    s, abar, x0, eps, z, x_t = one_step_case(t)
    ab, ab_p, beta = abar[t], abar[t - 1], float(s.betas[t])
    mean = math.sqrt(ab_p) * beta / (1 - ab) * x0 + math.sqrt(1 - beta) * (1 - ab_p) / (1 - ab) * x_t
    for variance, var in (("posterior", beta * (1 - ab_p) / (1 - ab)), ("beta", beta)):
        x_prev = ddpm_step(eps, x_t, t, s, prediction="eps", variance=variance, noise=z)
        torch.testing.assert_close(x_prev, mean + math.sqrt(var) * z, rtol=1e-5, atol=1e-5)
    # t = 0: no noise, the result is x0_hat (clamped to [-1, 1] by default).
    _, _, x0, eps, _, x_0 = one_step_case(0)
    torch.testing.assert_close(ddpm_step(eps, x_0, 0, s, prediction="eps", noise=None), x0, rtol=1e-4, atol=1e-4)
    assert float(ddpm_step(3 * x_0, x_0, 0, s, prediction="x0", noise=None).abs().max()) <= 1.0
    with pytest.raises(ValueError, match="noise"):
        ddpm_step(eps, x_t, t, s, prediction="eps", noise=None)
    with pytest.raises(ValueError, match=r"'posterior', 'beta'"):
        ddpm_step(eps, x_t, t, s, prediction="eps", variance="fixedlarge", noise=z)


def test_ddim_step_with_the_true_eps_lands_on_the_same_trajectory():
    # Song et al. 2021, eq. 12 with sigma = 0: x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev) eps.
    t, t_prev = 70, 30
    s, abar, x0, eps, z, x_t = one_step_case(t)
    x_prev = ddim_step(eps, x_t, t, t_prev, s, prediction="eps", eta=0.0, noise=None)
    torch.testing.assert_close(x_prev, math.sqrt(abar[t_prev]) * x0 + math.sqrt(1 - abar[t_prev]) * eps)
    # eta = 0.5: sigma from eq. 16, and the direction term shrinks to keep the variance.
    sigma = 0.5 * math.sqrt((1 - abar[t_prev]) / (1 - abar[t]) * (1 - abar[t] / abar[t_prev]))
    expected = math.sqrt(abar[t_prev]) * x0 + math.sqrt(1 - abar[t_prev] - sigma**2) * eps + sigma * z
    torch.testing.assert_close(ddim_step(eps, x_t, t, t_prev, s, prediction="eps", eta=0.5, noise=z), expected)
    # The final step goes to x0.
    x_0 = ddim_step(eps, x_t, t, -1, s, prediction="eps", eta=1.0, noise=None)
    torch.testing.assert_close(x_0, x0, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="t_prev"):
        ddim_step(eps, x_t, t, t, s, prediction="eps", eta=0.0, noise=None)


# ---------------------------------------------------------------------------------------------
# Whole samplers
# ---------------------------------------------------------------------------------------------


def test_ddim_eta0_is_deterministic_given_the_seed():
    s = make_schedule("cosine", 100)
    net = toy(s, "eps")

    def run(seed, **kw):
        return ddim_sample(net, (4, 1, 4, 4), s, num_steps=10, generator=torch.Generator().manual_seed(seed), **kw)

    assert torch.equal(run(0), run(0))
    assert not torch.allclose(run(0), run(1))
    # eta = 0 draws nothing after x_T: with x_T given, the generator no longer matters.
    x_T = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(9))
    assert torch.equal(run(0, x_T=x_T), run(1, x_T=x_T))
    assert torch.equal(run(5), run(7, x_T=torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(5))))
    a = ddpm_sample(net, (4, 1, 4, 4), s, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, ddpm_sample(net, (4, 1, 4, 4), s, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("clip_x0", [False, True])
def test_ddim_with_every_step_and_eta1_is_ddpm(prediction, clip_x0):
    # sigma^2 at eta = 1 is beta-tilde and the DDIM mean equals the posterior mean at (x0_hat,
    # x_t) whenever eps_hat is consistent with x0_hat, which re-deriving eps from the clipped
    # x0 keeps true: the two samplers agree with and without clipping, draw for draw.
    s = make_schedule("linear", 100)
    net = toy(s, prediction)
    shape = (8, 1, 4, 4)
    kw = dict(prediction=prediction, clip_x0=clip_x0)
    a = ddpm_sample(net, shape, s, generator=torch.Generator().manual_seed(3), **kw)
    b = ddim_sample(net, shape, s, num_steps=100, eta=1.0, generator=torch.Generator().manual_seed(3), **kw)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    if clip_x0:
        assert float(a.abs().max()) <= 1.0
    # A different variance or seed gives different samples, so the match above is not vacuous.
    c = ddpm_sample(net, shape, s, variance="beta", generator=torch.Generator().manual_seed(3), **kw)
    assert not torch.allclose(a, c, atol=1e-3)


def sample_moments(x):
    return float(x.mean()), float(x.std())


N = 100_000  # 1-D samples: standard error of the mean ~ S / 316, of the std ~ 0.22 %


@pytest.mark.parametrize(
    "sampler",
    ["ddpm", "ddpm-beta", "ddim-eta0", "ddim-eta1", "ddim-eta0-leading"],
)
def test_samplers_produce_exactly_their_gaussian_for_gaussian_data(sampler):
    s = make_schedule("cosine", 100)
    g = torch.Generator().manual_seed(11)
    if sampler.startswith("ddpm"):
        variance = "beta" if sampler == "ddpm-beta" else "posterior"
        x = ddpm_sample(gaussian_eps(s), (N, 1), s, variance=variance, generator=g, clip_x0=False)
        m, sd = exact_moments(s, list(range(99, -1, -1)), variance=variance)
    else:
        eta = 1.0 if sampler == "ddim-eta1" else 0.0
        spacing = "leading" if sampler.endswith("leading") else "trailing"
        x = ddim_sample(gaussian_eps(s), (N, 1), s, num_steps=20, eta=eta, spacing=spacing, generator=g, clip_x0=False)
        m, sd = exact_moments(s, ddim_timesteps(100, 20, spacing), eta=eta)
    mean, std = sample_moments(x)
    assert mean == pytest.approx(m, abs=5 * sd / math.sqrt(N))
    assert std == pytest.approx(sd, rel=5 / math.sqrt(2 * N))


def test_samplers_recover_gaussian_data():
    # Fewer, larger steps bias the spread: with T = 100 steps DDPM's std is 2.8 % low (the fixed
    # reverse variance ignores the uncertainty in x0), and 20-step DDIM's is 7 % (eta = 0) or
    # 14 % (eta = 1) low; those exact values are checked above. Here, samplers with enough steps.
    s = make_schedule("cosine", 100)
    net, g = gaussian_eps(s), torch.Generator().manual_seed(0)
    for name, x in (
        ("ddpm T=100", ddpm_sample(net, (N, 1), s, generator=g, clip_x0=False)),
        ("ddim 100 eta=0", ddim_sample(net, (N, 1), s, num_steps=100, generator=g, clip_x0=False)),
    ):
        mean, std = sample_moments(x)
        assert mean == pytest.approx(MU, abs=0.01), name
        assert std == pytest.approx(S, rel=0.04), name
    long = make_schedule("linear", 1000)
    m, sd = exact_moments(long, list(range(999, -1, -1)))
    assert (m, sd) == pytest.approx((MU, S), rel=0.01)  # Ho et al.'s T = 1000: within 1 %


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_zero_terminal_snr_samples_are_finite_and_eps_is_refused(prediction):
    s = make_schedule("linear", 50, zero_terminal_snr=True)
    net = toy(make_schedule("linear", 50), prediction)  # any smooth network will do
    g = torch.Generator().manual_seed(0)
    x = ddpm_sample(net, (4, 1, 4, 4), s, prediction=prediction, generator=g)
    y = ddim_sample(net, (4, 1, 4, 4), s, prediction=prediction, num_steps=10, eta=1.0, generator=g)
    assert bool(x.isfinite().all()) and bool(y.isfinite().all())
    for sample in (ddpm_sample, ddim_sample):
        with pytest.raises(ValueError, match="prediction='v'"):
            sample(net, (4, 1, 4, 4), s, prediction="eps")


def test_sampler_arguments_are_checked():
    s = make_schedule("linear", 20)
    net = toy(s, "eps")
    with pytest.raises(ValueError, match=r"'posterior', 'beta'"):
        ddpm_sample(net, (2, 1), s, variance="learned")
    with pytest.raises(ValueError, match=r"'leading', 'trailing', 'linspace'"):
        ddim_sample(net, (2, 1), s, spacing="even")
    with pytest.raises(ValueError, match="num_steps"):
        ddim_sample(net, (2, 1), s, num_steps=50)
    with pytest.raises(ValueError, match="x_T"):
        ddpm_sample(net, (2, 1), s, x_T=torch.zeros(3, 1))
    with pytest.raises(ValueError, match="shape"):
        ddim_sample(lambda x_t, t: x_t[:1], (2, 1), s, num_steps=5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_seed_same_samples_on_cpu_and_gpu():
    s = make_schedule("cosine", 50)
    net = toy(s, "v")
    kw = dict(prediction="v", eta=1.0, num_steps=10)
    a = ddim_sample(net, (4, 1, 4, 4), s, generator=torch.Generator().manual_seed(0), **kw)
    b = ddim_sample(net, (4, 1, 4, 4), s, generator=torch.Generator().manual_seed(0), device="cuda", **kw)
    assert b.device.type == "cuda"
    torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-4)
