"""The eps / x0 / v parameterisations agree with each other and with Salimans & Ho 2022."""
import math

import pytest
import torch

from genray.components.samplers.prediction import PREDICTIONS, eps_to_x0, target, to_x0_eps, x0_to_eps

# From almost no noise to almost pure noise, and pure noise (zero terminal SNR) where defined.
ALPHA_BARS = [1 - 1e-6, 0.9999, 0.7, 0.3, 1e-4, 1e-8]


def draw(alpha_bar: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(6, 2, 3, 3, generator=g, dtype=torch.float64) * 2 - 1  # (B, C, H, W)
    eps = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)
    ab = torch.full((6, 1, 1, 1), alpha_bar, dtype=torch.float64)
    return x0, eps, ab, ab.sqrt() * x0 + (1 - ab).sqrt() * eps  # Ho et al. 2020, eq. 4


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("alpha_bar", ALPHA_BARS)
def test_target_then_to_x0_eps_recovers_x0_and_eps(prediction, alpha_bar):
    x0, eps, ab, x_t = draw(alpha_bar)
    x0_hat, eps_hat = to_x0_eps(prediction, target(prediction, x0, eps, ab), x_t, ab)
    # eps -> x0 divides by sqrt(alpha_bar), x0 -> eps by sqrt(1 - alpha_bar): each loses
    # precision at its own end of the schedule; v loses it at neither.
    x0_tol = 1e-6 if prediction != "eps" else 1e-14 / math.sqrt(alpha_bar)
    eps_tol = 1e-6 if prediction != "x0" else 1e-14 / math.sqrt(1 - alpha_bar)
    assert torch.allclose(x0_hat, x0, rtol=0, atol=max(x0_tol, 1e-12))
    assert torch.allclose(eps_hat, eps, rtol=0, atol=max(eps_tol, 1e-12))


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_x0_and_v_are_defined_at_zero_snr(prediction):
    x0, eps, ab, x_t = draw(0.0)
    assert torch.equal(x_t, eps)
    x0_hat, eps_hat = to_x0_eps(prediction, target(prediction, x0, eps, ab), x_t, ab)
    assert torch.equal(eps_hat, eps)
    assert torch.allclose(x0_hat, x0, atol=1e-15)
    assert torch.equal(target("v", x0, eps, ab), -x0)  # Salimans & Ho: v = -x0 at alpha = 0


def test_v_is_the_velocity_of_the_angular_parameterisation():
    # Salimans & Ho 2022, sec. 4: x_phi = cos(phi) x0 + sin(phi) eps and v = d x_phi / d phi.
    x0, eps, _, _ = draw(0.5, seed=1)
    phi = torch.tensor(0.9, dtype=torch.float64)
    dx_dphi = torch.autograd.functional.jacobian(lambda p: torch.cos(p) * x0 + torch.sin(p) * eps, phi)  # x0.shape
    v = target("v", x0, eps, torch.cos(phi) ** 2)
    assert torch.allclose(v, dx_dphi, rtol=0, atol=1e-15)
    x_phi = torch.cos(phi) * x0 + torch.sin(phi) * eps
    ab = torch.cos(phi) ** 2
    # eps and x0 from (x_t, v): Salimans & Ho 2022, appendix D.
    x0_hat, eps_hat = to_x0_eps("v", v, x_phi, ab)
    assert torch.allclose(x0_hat, x0, atol=1e-14) and torch.allclose(eps_hat, eps, atol=1e-14)


def test_helpers_are_inverse_and_take_floats():
    x0, eps, _, x_t = draw(0.3, seed=2)
    assert torch.allclose(eps_to_x0(x0_to_eps(x0, x_t, 0.3), x_t, 0.3), x0, atol=1e-14)
    assert torch.allclose(x0_to_eps(x0, x_t, 0.3), eps, atol=1e-14)
    assert torch.allclose(eps_to_x0(eps, x_t, 0.3), x0, atol=1e-14)
    # Fixed numbers: x0 = 1, eps = 0.5, alpha_bar = 0.64 -> x_t = 0.8 + 0.3, v = 0.4 - 0.6.
    one = torch.tensor([1.0])
    assert float(target("v", one, 0.5 * one, 0.64)) == pytest.approx(0.8 * 0.5 - 0.6 * 1.0)


def test_bad_prediction_and_shape_raise():
    x0, eps, ab, x_t = draw(0.5)
    with pytest.raises(ValueError, match=r"'eps', 'x0', 'v'"):
        target("score", x0, eps, ab)
    with pytest.raises(ValueError, match=r"'eps', 'x0', 'v'"):
        to_x0_eps("epsilon", eps, x_t, ab)
    with pytest.raises(ValueError, match="shape"):
        to_x0_eps("eps", eps[:, :1], x_t, ab)
