"""Noise schedules against their published closed forms, and q(x_t | x0) against its moments."""
import math

import pytest
import torch

from genray.components.samplers.schedules import (
    SCHEDULES,
    NoiseSchedule,
    check_prediction,
    cosine_betas,
    linear_betas,
    make_schedule,
    q_sample,
    rescale_zero_terminal_snr,
    sigmoid_betas,
)


def test_linear_betas_match_ho_et_al_and_scale_with_T():
    betas = linear_betas(1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    # Ho et al. 2020, sec. 4: beta_1 = 1e-4 to beta_T = 0.02, linear in between.
    assert float(betas[0]) == pytest.approx(1e-4, rel=1e-12)
    assert float(betas[999]) == pytest.approx(0.02, rel=1e-12)
    assert float(betas[400]) == pytest.approx(1e-4 + 400 * (0.02 - 1e-4) / 999, rel=1e-12)
    # Other T: both ends scaled by 1000 / T, so the total noise sum(betas) does not change.
    b250 = linear_betas(250)
    assert float(b250[0]) == pytest.approx(4e-4, rel=1e-12) and float(b250[-1]) == pytest.approx(0.08, rel=1e-12)
    for T in (250, 4000):
        assert float(linear_betas(T).sum()) == pytest.approx(float(betas.sum()), rel=1e-9)
    # Very short chains would need beta > 1: clipped at 0.999.
    assert float(linear_betas(10).max()) == pytest.approx(0.999)


def test_derived_arrays_follow_ho_et_al_eqs_4_to_7():
    s = make_schedule("linear", 50)
    b = s.betas
    assert torch.allclose(s.alphas_cumprod, torch.cumprod(1 - b, 0), rtol=0, atol=0)
    assert float(s.alphas_cumprod_prev[0]) == 1.0
    assert torch.equal(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1])
    for t in (0, 1, 17, 49):
        ab, ab_prev, beta = (float(a[t]) for a in (s.alphas_cumprod, s.alphas_cumprod_prev, b))
        # eq. 7: beta-tilde and the posterior mean's coefficients.
        assert float(s.posterior_variance[t]) == pytest.approx(beta * (1 - ab_prev) / (1 - ab), rel=1e-12, abs=1e-300)
        assert float(s.posterior_mean_coef1[t]) == pytest.approx(math.sqrt(ab_prev) * beta / (1 - ab), rel=1e-12)
        coef2 = math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)
        assert float(s.posterior_mean_coef2[t]) == pytest.approx(coef2, abs=1e-15)
    assert float(s.posterior_variance[0]) == 0.0
    # improved-diffusion's clipped log variance: beta-tilde_1 stands in for the 0 at t = 0.
    assert float(s.posterior_log_variance_clipped[0]) == pytest.approx(math.log(float(s.posterior_variance[1])))
    assert float(s.posterior_log_variance_clipped[7]) == pytest.approx(math.log(float(s.posterior_variance[7])))
    # The posterior of x0 given at t = 0 is x0 itself: coef1_0 = 1, coef2_0 = 0.
    assert float(s.posterior_mean_coef1[0]) == pytest.approx(1.0, rel=1e-10)
    assert float(s.posterior_mean_coef2[0]) == 0.0


@pytest.mark.parametrize("T", [10, 100, 1000])
def test_cosine_alpha_bar_is_nichol_dhariwal_eq_17(T):
    s_off = 0.008

    def f(u):
        return math.cos((u + s_off) / (1 + s_off) * math.pi / 2) ** 2

    ab = torch.cumprod(1 - cosine_betas(T), 0)
    # Our 0-indexed alpha_bar_t is f((t + 1) / T) / f(0); only the last beta is clipped (at 0.999).
    for t in sorted({0, 1, T // 3, T // 2, T - 2}):
        assert float(ab[t]) == pytest.approx(f((t + 1) / T) / f(0), rel=1e-10)
    assert float(cosine_betas(T)[-1]) == pytest.approx(0.999)


@pytest.mark.parametrize("T", [10, 100, 1000])
@pytest.mark.parametrize("start, end, tau", [(-3.0, 3.0, 1.0), (0.0, 3.0, 0.7), (-3.0, 3.0, 2.0)])
def test_sigmoid_alpha_bar_is_chen_2023_algorithm_1(T, start, end, tau):
    def sig(z):
        return 1 / (1 + math.exp(-z))

    def gamma(u):  # Chen 2023, Algorithm 1, sigmoid_schedule
        return (sig(end / tau) - sig((u * (end - start) + start) / tau)) / (sig(end / tau) - sig(start / tau))

    ab = torch.cumprod(1 - sigmoid_betas(T, start, end, tau), 0)
    for t in sorted({0, 1, T // 3, T // 2, T - 2}):
        assert float(ab[t]) == pytest.approx(gamma((t + 1) / T), rel=1e-10)
    if start == -end:  # symmetric: half the signal is gone halfway, at u = (t + 1) / T = 1/2
        assert float(ab[T // 2 - 1]) == pytest.approx(0.5, rel=1e-12)


@pytest.mark.parametrize("name", SCHEDULES)
def test_zero_terminal_snr_is_lin_et_al_algorithm_1(name):
    plain = make_schedule(name, 100)
    zero = make_schedule(name, 100, zero_terminal_snr=True)
    assert float(zero.alphas_cumprod[-1]) == 0.0 and float(zero.betas[-1]) == 1.0 and zero.zero_terminal_snr
    assert not plain.zero_terminal_snr
    old, new = plain.alphas_cumprod.sqrt(), zero.alphas_cumprod.sqrt()
    assert float(new[0]) == pytest.approx(float(old[0]), rel=1e-12)
    # Shift by the last value, then scale so the first is unchanged: an affine map of sqrt(alpha_bar).
    expected = (old - old[-1]) * old[0] / (old[0] - old[-1])
    assert torch.allclose(new, expected, rtol=1e-10, atol=1e-14)
    assert float(zero.snr(torch.tensor([99]))[0]) == 0.0


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("T", [10, 100, 1000])
@pytest.mark.parametrize("zero_terminal_snr", [False, True])
def test_alpha_bar_decreases_and_arrays_are_finite(name, T, zero_terminal_snr):
    s = make_schedule(name, T, zero_terminal_snr=zero_terminal_snr)
    ab = s.alphas_cumprod
    assert s.num_timesteps == T and ab.dtype == torch.float64
    assert bool((ab[1:] < ab[:-1]).all()) and 0 < float(ab[0]) < 1
    assert bool(((s.betas > 0) & (s.betas <= 1)).all())
    for array in ("posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"):
        assert bool(getattr(s, array).isfinite().all()), array


def test_q_sample_has_the_mean_and_variance_of_eq_4():
    s = make_schedule("linear", 1000)
    g = torch.Generator().manual_seed(0)
    n, x0 = 200_000, 0.7
    for t in (0, 250, 999):
        noise = torch.randn(n, 1, generator=g)
        x_t = q_sample(s, torch.full((n, 1), x0), torch.full((n,), t), noise)  # (n, 1)
        ab = float(s.alphas_cumprod[t])
        sd = math.sqrt(1 - ab)
        # 5 standard errors: of the mean sd / sqrt(n), of the variance var * sqrt(2 / n).
        assert float(x_t.mean()) == pytest.approx(math.sqrt(ab) * x0, abs=5 * sd / math.sqrt(n))
        assert float(x_t.var()) == pytest.approx(1 - ab, rel=5 * math.sqrt(2 / n))


def test_at_and_snr_gather_float32_broadcastable_values():
    s = make_schedule("cosine", 20)
    t = torch.tensor([0, 5, 19])
    ab = s.at("alphas_cumprod", t, 4)
    assert ab.shape == (3, 1, 1, 1) and ab.dtype == torch.float32 and ab.device == t.device
    assert torch.equal(ab.flatten(), s.alphas_cumprod[t].float())
    expected = s.alphas_cumprod[t] / (1 - s.alphas_cumprod[t])
    assert torch.allclose(s.snr(t), expected.float(), rtol=1e-6) and s.snr(t).dtype == torch.float32
    with pytest.raises(ValueError, match="alphas_cumprod"):
        s.at("alpha_bar", t, 4)
    with pytest.raises(ValueError, match="integer"):
        s.at("betas", t.float(), 4)


def test_bad_schedule_arguments_raise_and_teach():
    with pytest.raises(ValueError, match=r"'linear', 'cosine', 'sigmoid'"):
        make_schedule("quadratic", 100)
    with pytest.raises(ValueError, match="num_timesteps"):
        make_schedule("linear", 0)
    with pytest.raises(ValueError, match="at least 2"):
        make_schedule("cosine", 1, zero_terminal_snr=True)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        NoiseSchedule(torch.tensor([0.1, 1.0, 0.2], dtype=torch.float64))
    assert make_schedule("linear", 1).num_timesteps == 1
    # The rescale also works on betas given directly.
    assert float(torch.cumprod(1 - rescale_zero_terminal_snr(linear_betas(10)), 0)[-1]) == 0.0


def test_check_prediction_rejects_eps_with_zero_terminal_snr():
    zero = make_schedule("linear", 50, zero_terminal_snr=True)
    with pytest.raises(ValueError, match="prediction='v'"):
        check_prediction(zero, "eps")
    check_prediction(zero, "v")
    check_prediction(zero, "x0")
    check_prediction(make_schedule("linear", 50), "eps")
    with pytest.raises(ValueError, match=r"'eps', 'x0', 'v'"):
        check_prediction(zero, "score")
