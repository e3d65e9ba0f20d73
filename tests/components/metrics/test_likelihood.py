"""Bits/dim on the 8-bit grid, checked against densities whose discrete likelihood is known."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from genray.components.metrics.likelihood import (
    BIN_WIDTH,
    bits_per_dim,
    dequantize,
    dequantized_nll,
    likelihood_of,
    model_bits_per_dim,
)
from genray.components.models import FAMILIES, build, example_args, example_data


class GaussianDensity(nn.Module):
    """p(x) = prod N(x_i; 0, sigma^2): a continuous density with an exactly known bin mass."""

    log_prob_space, log_prob_kind = "continuous", "exact"

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = sigma
        self.seen: list[torch.Tensor] = []

    def log_prob(self, x, *, generator=None):
        self.seen.append(x)
        return torch.distributions.Normal(0.0, self.sigma).log_prob(x.double()).flatten(1).sum(1)

    def exact_discrete_nll(self, x):
        """-log P(v): the Gaussian's mass over each pixel's bin, by its CDF."""
        n = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), self.sigma)
        x = x.double()
        mass = n.cdf(x + BIN_WIDTH / 2) - n.cdf(x - BIN_WIDTH / 2)
        return -mass.log().flatten(1).sum(1)


class UniformDensity(nn.Module):
    """Uniform on the union of all 256 bins, [-1 - Δ/2, 1 + Δ/2]^D: exactly 8 bits/dim."""

    log_prob_space, log_prob_kind = "continuous", "exact"

    def log_prob(self, x, *, generator=None):
        assert (x.abs() <= 1 + BIN_WIDTH / 2).all()
        return torch.full((x.shape[0],), -x[0].numel() * math.log(2 + BIN_WIDTH), dtype=torch.float64)


class UniformPixels(nn.Module):
    """A discrete model: every 8-bit value equally likely."""

    log_prob_space, log_prob_kind = "discrete", "exact"

    def __init__(self):
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def log_prob(self, x, *, generator=None):
        self.seen.append(x)
        return torch.full((x.shape[0],), -x[0].numel() * math.log(256.0), dtype=torch.float64)


def grid_images(n: int, shape=(1, 4, 4), seed: int = 0) -> torch.Tensor:
    v = torch.randint(0, 256, (n, *shape), generator=torch.Generator().manual_seed(seed))
    return v.float() / 127.5 - 1.0


def test_dequantize_stays_inside_each_pixels_bin_and_fills_it():
    x = grid_images(2000)
    x_deq = dequantize(x, generator=torch.Generator().manual_seed(1))
    offset = (x_deq - x) / BIN_WIDTH  # uniform on [-1/2, 1/2)
    assert offset.min() >= -0.5 and offset.max() < 0.5
    assert abs(float(offset.mean())) < 0.01
    assert abs(float(offset.var()) - 1 / 12) < 0.003
    # Rounding back to the grid recovers every pixel value.
    assert torch.equal(torch.round((x_deq + 1) * 127.5), torch.round((x + 1) * 127.5))


def test_uniform_density_over_the_bins_is_exactly_8_bits_per_dim():
    x = grid_images(16)
    bpd = model_bits_per_dim(UniformDensity(), x, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(bpd, torch.full_like(bpd, 8.0), atol=1e-9)


def test_discrete_model_is_scored_on_the_grid_without_dequantization():
    x = grid_images(8)
    model = UniformPixels()
    bpd = model_bits_per_dim(model, x)
    assert torch.allclose(bpd, torch.full_like(bpd, 8.0), atol=1e-12)
    assert torch.equal(model.seen[0], x)  # never dequantized


@pytest.mark.parametrize("sigma", [0.3, 0.05])
def test_gaussian_density_bits_per_dim_match_the_exact_bin_masses(sigma):
    """Dequantized bits/dim bound the exact discrete bits/dim from above (Jensen) and, averaged
    over the noise, come within the bound's small gap when the density is smooth on a bin."""
    model = GaussianDensity(sigma)
    x = grid_images(64, seed=3).clamp(-3 * sigma, 3 * sigma)
    x = torch.round((x + 1) * 127.5) / 127.5 - 1  # back on the grid after clamping
    d = x[0].numel()
    exact = bits_per_dim(model.exact_discrete_nll(x), d)
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([model_bits_per_dim(model, x, generator=gen) for _ in range(400)])  # (400, B)
    mean, se = draws.mean(0), draws.std(0) / 400**0.5
    # Jensen's gap, to second order in Δ: E_u[-log p(x~)] - (-log of the bin's mass)
    # = Δ^2/24 (1/σ^2) - Δ^2/24 (p''/p)(x) = Δ^2 x^2 / (24 σ^4) nats per dimension.
    gap = bits_per_dim((BIN_WIDTH**2 * x.double() ** 2 / (24 * sigma**4)).flatten(1).sum(1), d)
    assert (mean >= exact - 4 * se).all()  # an upper bound, up to Monte Carlo error
    assert ((mean - exact - gap).abs() < 4 * se + 1e-4).all()
    # The continuous model saw dequantized, not grid, inputs.
    assert not torch.equal(model.seen[0], x)


def test_dequantized_nll_adds_the_bin_volume():
    nll = torch.tensor([10.0])
    assert float(dequantized_nll(nll, 3)) == pytest.approx(10.0 - 3 * math.log(2 / 255))
    assert float(bits_per_dim(torch.tensor([math.log(2.0) * 12]), 3)) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="num_dims"):
        bits_per_dim(nll, 0)


def test_every_family_with_log_prob_declares_its_space_and_kind():
    checked = 0
    for name in FAMILIES:
        model = build(name, example_args(name), example_data(name))
        if "log_prob" in model.capabilities:
            likelihood_of(model)
            checked += 1
    assert checked >= 4  # vae, beta_vae, diffusion, gpt at least


def test_undeclared_likelihood_is_refused_with_the_allowed_values():
    class Bare(nn.Module):
        def log_prob(self, x, *, generator=None):
            return x.flatten(1).sum(1)

    with pytest.raises(ValueError, match="log_prob_space must be one of discrete, continuous"):
        model_bits_per_dim(Bare(), grid_images(2))
