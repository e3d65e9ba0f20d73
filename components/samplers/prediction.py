"""What a denoising network outputs, and how to turn that output back into (x0, eps).

x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps (Ho et al. 2020, eq. 4), so any one of these
three, together with x_t, gives the other two:
- ``eps``: the noise (Ho et al. 2020, eq. 12);
- ``x0``: the clean data;
- ``v``: v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0 (Salimans & Ho 2022, sec. 4 and
  appendix D), the velocity on the circle (x0, eps) -> x_t; well-behaved at both ends of the
  schedule, including alpha_bar = 0 (zero terminal SNR).

alpha_bar is a tensor broadcastable against x (e.g. (B, 1, 1, 1)) or a Python float.
"""
from torch import Tensor

PREDICTIONS = ("eps", "x0", "v")


def _check(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")


def eps_to_x0(eps: Tensor, x_t: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar); undefined at alpha_bar = 0."""
    return (x_t - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5


def x0_to_eps(x0: Tensor, x_t: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """eps = (x_t - sqrt(alpha_bar) x0) / sqrt(1 - alpha_bar); 1 - alpha_bar >= beta_0 > 0 always."""
    return (x_t - alpha_bar**0.5 * x0) / (1 - alpha_bar) ** 0.5


def target(prediction: str, x0: Tensor, eps: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """What a network trained with this prediction should output for x_t made from (x0, eps)."""
    _check(prediction)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    # Salimans & Ho 2022, sec. 4: v = alpha eps - sigma x0 with alpha^2 = alpha_bar, sigma^2 = 1 - alpha_bar.
    return alpha_bar**0.5 * eps - (1 - alpha_bar) ** 0.5 * x0


def to_x0_eps(prediction: str, output: Tensor, x_t: Tensor, alpha_bar: Tensor | float) -> tuple[Tensor, Tensor]:
    """(x0_hat, eps_hat) implied by a network output and the x_t it was given."""
    _check(prediction)
    if output.shape != x_t.shape:
        raise ValueError(
            f"the denoiser's output must have x_t's shape {tuple(x_t.shape)}, got {tuple(output.shape)}"
        )
    if prediction == "eps":
        return eps_to_x0(output, x_t, alpha_bar), output
    if prediction == "x0":
        return output, x0_to_eps(output, x_t, alpha_bar)
    # Salimans & Ho 2022, appendix D: x0 = alpha x_t - sigma v, eps = sigma x_t + alpha v.
    sqrt_ab, sqrt_1mab = alpha_bar**0.5, (1 - alpha_bar) ** 0.5
    return sqrt_ab * x_t - sqrt_1mab * output, sqrt_1mab * x_t + sqrt_ab * output
