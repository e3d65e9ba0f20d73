"""Normalizing flows (components/models/flow_layers.py, realnvp.py, glow.py): every layer and
every whole flow is a bijection whose log-determinant is the true one, and their densities are
densities.

    invertibility   inverse(forward(x)) = x to 1e-4, per layer and for the whole flow, with
                    every parameter perturbed so no zero-initialised layer is the identity
    log-det         each layer's log-det = log|det| of its autograd Jacobian on small inputs
                    (torch.autograd.functional.jacobian), and the whole flow's too (x -> the
                    flattened latents, whose splits only reorder numbers)
    density         exp(log p) sums to about 1 over a grid on the 2-D moons, after a short fit
    shown           points as a scatter, a 2-D density as a heat map (components/data/show.py)
    init            ActNorm's data-dependent init: zero mean and unit variance per channel at
                    its output, for every ActNorm of a Glow
    LU              the 1x1 convolution's log-det is H W log|det W| (slogdet of its weight)
    bad input       wrong latent shapes, images outside the data range, temperature <= 0:
                    errors that name the field
"""
import math

import numpy as np
import pydantic
import pytest
import torch
from torch.autograd.functional import jacobian

from genray.components.data import DatasetInfo, moons
from genray.components.data.show import PLOT_SIZE, density, render
from genray.components.errors import UserError
from genray.components.metrics.likelihood import model_bits_per_dim
from genray.components.models import build
from genray.components.models.flow_layers import (ActNorm, AffineCoupling, ConvNet, InvConv1x1, Logit, MLPNet,
                                                  Split, Squeeze, channel_mask, checkerboard_mask)
from genray.components.models.protocol import settings_for

torch.set_default_dtype(torch.float32)
POINTS = DatasetInfo("points", (2,), 0, 0, None, ("point",))
DIGITS = DatasetInfo.for_images((1, 8, 8))


def perturb(module: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Every parameter moved by a little noise: zero-initialised last layers stop being zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return module


def layers(dtype=torch.float32):
    """(name, layer, input shape) for every kind of bijection, each in a non-trivial state."""
    g = torch.Generator().manual_seed(1)
    cases = [
        ("logit", Logit(0.05), (2, 2, 4, 4)),
        ("actnorm-image", ActNorm(2), (2, 2, 4, 4)),
        ("actnorm-vector", ActNorm(3), (2, 3)),
        ("invconv-image", InvConv1x1(3, generator=g), (2, 3, 4, 4)),
        ("invconv-vector", InvConv1x1(4, generator=g), (2, 4)),
        ("coupling-checkerboard-tanh", AffineCoupling(ConvNet(2, 8), checkerboard_mask(2, 4, 4, 0)), (2, 2, 4, 4)),
        ("coupling-checkerboard-odd", AffineCoupling(ConvNet(1, 8), checkerboard_mask(1, 4, 4, 1)), (2, 1, 4, 4)),
        ("coupling-channel-tanh", AffineCoupling(ConvNet(4, 8), channel_mask(4, 1, (2, 2))), (2, 4, 2, 2)),
        ("coupling-channel-sigmoid", AffineCoupling(ConvNet(4, 8), channel_mask(4, 0, (2, 2)), scale="sigmoid"),
         (2, 4, 2, 2)),
        ("coupling-mlp-tanh", AffineCoupling(MLPNet(2, 16), channel_mask(2, 1)), (2, 2)),
        ("coupling-mlp-sigmoid", AffineCoupling(MLPNet(3, 16), channel_mask(3, 0), scale="sigmoid"), (2, 3)),
        ("squeeze", Squeeze(), (2, 2, 4, 4)),
    ]
    return [(name, perturb(layer.to(dtype), seed=i, scale=0.3), shape) for i, (name, layer, shape) in enumerate(cases)]


def inputs(name: str, shape, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if name == "logit":  # pixels in [-1, 1]
        return (torch.rand(shape, generator=g) * 1.9 - 0.95).to(dtype)
    return torch.randn(shape, generator=g).to(dtype)


def perturbed_model(family: str, data: DatasetInfo, **kw):
    torch.manual_seed(0)
    model = build(family, {"size": "tiny", **kw}, data)
    return perturb(model, seed=3, scale=0.05).eval()


MODELS = [("realnvp", DIGITS, {}), ("glow", DIGITS, {}), ("realnvp", POINTS, {}), ("glow", POINTS, {}),
          ("glow", DatasetInfo.for_images((3, 8, 8)), {"levels": 3}), ("glow", DIGITS, {"logit": 0.05})]
MODEL_IDS = ["realnvp-digits", "glow-digits", "realnvp-points", "glow-points", "glow-colour-3-levels",
             "glow-digits-logit"]


def data_batch(data: DatasetInfo, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if data.modality == "points":
        return torch.randn(n, *data.shape, generator=g)
    return torch.rand(n, *data.image_shape, generator=g) * 1.9 - 0.95


# ---------------------------------------------------------------------------------------------
# Invertibility
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, layer, shape", layers(), ids=lambda v: v if isinstance(v, str) else "")
def test_each_layer_inverts(name, layer, shape):
    x = inputs(name, shape)
    with torch.no_grad():
        y, logdet = layer(x)
        assert y.shape[0] == x.shape[0] and logdet.shape == (x.shape[0],)
        assert name == "squeeze" or (y - x).abs().max() > 1e-3, "the layer should not be the identity here"
        assert torch.allclose(layer.inverse(y), x, atol=1e-4)


def test_split_inverts_with_its_latent_and_draws_without_one():
    split = perturb(Split(4, learned=True), scale=0.3)
    x = torch.randn(3, 4, 2, 2)
    with torch.no_grad():
        kept, z, log_p = split(x)
        assert kept.shape == (3, 2, 2, 2) and z.shape == (3, 2, 2, 2) and log_p.shape == (3,)
        assert torch.equal(split.inverse(kept, z), x)
        eps = torch.randn(3, 2, 2, 2, generator=torch.Generator().manual_seed(0))
        drawn = split.inverse(kept, eps=eps)
        assert torch.equal(drawn[:, :2], kept) and not torch.allclose(drawn[:, 2:], z)
        # The draw is the prior's mean plus T times its scale times the noise.
        mean, log_scale = split.mean_log_scale(kept, z)
        cool = split.inverse(kept, eps=eps, temperature=0.5)
        torch.testing.assert_close(cool[:, 2:], mean + 0.5 * log_scale.exp() * eps)


@pytest.mark.parametrize("family", ["realnvp", "glow"])
def test_a_seed_names_the_same_samples_whatever_n(family):
    model = perturb(build(family, {"size": "tiny"}, DIGITS), scale=0.1).eval()
    with torch.no_grad():
        three = model.sample(3, generator=torch.Generator().manual_seed(4))
        five = model.sample(5, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(three, five[:3])


@pytest.mark.parametrize("family, data, kw", MODELS, ids=MODEL_IDS)
def test_the_whole_flow_inverts(family, data, kw):
    model = perturbed_model(family, data, **kw)
    x = data_batch(data, 4)
    z = model.encode(x)
    assert z.shape == (4, math.prod(model.flow.data_shape))
    x_back = model.flow.from_latents(model.flow.unflatten(z), 4)
    assert torch.allclose(x_back, x, atol=1e-4), (x_back - x).abs().max()


# ---------------------------------------------------------------------------------------------
# Log-determinants against autograd
# ---------------------------------------------------------------------------------------------


def autograd_logdet(f, x: torch.Tensor) -> torch.Tensor:
    """log|det| of the Jacobian of f at each example of x (each one alone), float64."""
    out = []
    for xi in x:
        jac = jacobian(lambda v: f(v.view(1, *xi.shape)).flatten(), xi.flatten(), vectorize=True)  # (D, D)
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


@pytest.mark.parametrize("name, layer, shape", layers(torch.float64), ids=lambda v: v if isinstance(v, str) else "")
def test_each_layers_logdet_is_its_jacobians(name, layer, shape):
    x = inputs(name, shape, seed=1, dtype=torch.float64)
    _, logdet = layer(x)
    expected = autograd_logdet(lambda v: layer(v)[0], x)
    assert torch.allclose(logdet, expected, atol=1e-6), (logdet, expected)


@pytest.mark.parametrize("family, data, kw", MODELS[:4] + MODELS[5:], ids=MODEL_IDS[:4] + MODEL_IDS[5:])
def test_the_whole_flows_logdet_is_its_jacobians(family, data, kw):
    """x -> every latent flattened is a bijection of R^D (a split only reorders numbers), so its
    Jacobian's log|det| is the sum of the layers' log-dets the flow reports."""
    model = perturbed_model(family, data, **kw).double()
    x = data_batch(data, 2, seed=2).double()
    _, logdet, _ = model.flow.to_latents(x)
    expected = autograd_logdet(lambda v: model.flow.flatten(model.flow.to_latents(v)[0]), x)
    assert torch.allclose(logdet, expected, atol=1e-6), (logdet, expected)


def test_lu_convolution_logdet_is_slogdet_of_its_weight_times_pixels():
    conv = perturb(InvConv1x1(6, generator=torch.Generator().manual_seed(0)), scale=0.2)
    x = torch.randn(2, 6, 3, 5)
    _, logdet = conv(x)
    expected = 3 * 5 * torch.linalg.slogdet(conv.weight())[1]
    assert torch.allclose(logdet, expected.expand(2), atol=1e-5)
    # The weight is P L (U + diag s) and acts as a 1x1 convolution.
    w = conv.weight().detach()
    assert torch.allclose(conv(x)[0], torch.einsum("oc,bchw->bohw", w, x), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Data-dependent init
# ---------------------------------------------------------------------------------------------


def test_actnorm_init_gives_zero_mean_unit_variance_per_channel():
    x = 3.0 + 2.5 * torch.randn(64, 4, 5, 5) * torch.arange(1, 5).view(1, 4, 1, 1)
    norm = ActNorm(4)
    norm.initialize(x)
    y, _ = norm(x)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(y.std(dim=(0, 2, 3), unbiased=False), torch.ones(4), atol=1e-4)


def test_glows_recipe_init_normalises_every_actnorm_on_the_first_batch():
    torch.manual_seed(0)
    model = build("glow", {"size": "tiny"}, DIGITS)
    perturb(model, scale=0.2)  # so later ActNorms see non-normalised inputs
    seen = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append(out[0].detach()))
             for m in model.modules() if isinstance(m, ActNorm)]
    batch = {"x": data_batch(DIGITS, 256, seed=5)}
    model.recipe.data_init(model, batch)  # what the engine calls on a fresh run's first batch
    assert len(seen) == 4  # 2 levels x 2 steps: each initialised as the batch reaches it
    for y in seen:
        assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(y.shape[1]), atol=1e-4)
        assert torch.allclose(y.std(dim=(0, 2, 3), unbiased=False), torch.ones(y.shape[1]), atol=1e-3)
    for h in hooks:
        h.remove()


# ---------------------------------------------------------------------------------------------
# Densities
# ---------------------------------------------------------------------------------------------


def fit_moons(family: str, steps: int = 60):
    torch.manual_seed(0)
    model = build(family, {"size": "tiny"}, POINTS)
    x, _ = moons.sample(256, np.random.default_rng(0))
    x = torch.as_tensor(x)
    model.recipe.data_init(model, {"x": x})
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    first = None
    for _ in range(steps):
        loss, _ = model({"x": x})
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = float(loss.detach()) if first is None else first
    return model.eval(), first, float(model.evaluate({"x": x})["loss"])


@pytest.mark.parametrize("family", ["realnvp", "glow"])
def test_the_density_on_moons_integrates_to_one(family):
    model, first, last = fit_moons(family)
    assert last < first - 0.3, f"a short fit should lower the NLL: {first:.3f} -> {last:.3f} nats/point"
    # A grid wide enough for the Gaussian tails, fine enough for the fitted arcs.
    side = torch.linspace(-6, 6, 241)
    xx, yy = torch.meshgrid(side, side, indexing="xy")
    grid = torch.stack([xx.flatten(), yy.flatten()], dim=1)
    p = model.log_prob(grid).exp()
    mass = float(p.sum()) * float(side[1] - side[0]) ** 2
    assert abs(mass - 1.0) < 0.02, mass


def test_points_show_as_a_scatter_and_a_density_map():
    """What the training loop logs for a 2-D flow: its samples as a scatter (show.render of the
    points kind) and exp(log p) over the data's box (show.density), darkest where p is largest."""
    model = build("glow", {"size": "tiny"}, POINTS).eval()  # at init: N(0, I)
    data = np.array([[-2.0, -2.0], [2.0, 2.0]], dtype=np.float32)  # a box centred on the origin
    shown = render(model.sample(500, generator=torch.Generator().manual_seed(0)), POINTS)
    assert shown.suffix == ".png" and shown.grid.shape == (PLOT_SIZE, PLOT_SIZE, 3) and (shown.grid < 255).any()
    heat = density(lambda p: model.log_prob(torch.as_tensor(p)).numpy(), data)
    shade = heat.grid.sum(axis=2)
    darkest = np.argwhere(shade == shade.min()).mean(axis=0)  # the centre of the flat top after rounding
    assert heat.data.startswith(b"\x89PNG") and np.abs(darkest - (PLOT_SIZE - 1) / 2).max() <= 1


def test_image_bits_per_dim_are_finite_and_exact():
    for family in ("realnvp", "glow"):
        model = perturbed_model(family, DIGITS)
        x = torch.round((torch.rand(8, 1, 8, 8) * 2 - 1) * 127.5) / 127.5  # on the 8-bit grid
        bpd = model_bits_per_dim(model, x, generator=torch.Generator().manual_seed(0))
        assert bpd.shape == (8,) and torch.isfinite(bpd).all() and (bpd > 0).all()
        assert model.log_prob_kind == "exact" and model.log_prob_space == "continuous"


def test_temperature_scales_the_latents():
    """At init every prior is N(0, I), so a sample at T has latents of standard deviation T."""
    model = build("glow", {"size": "tiny"}, POINTS).eval()
    for t in (0.5, 1.0):
        x = model.sample(4000, generator=torch.Generator().manual_seed(0), temperature=t)
        assert abs(float(model.encode(x).std()) - t) < 0.03 * t


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["realnvp", "glow"])
def test_bad_input_names_the_field(family):
    model = build(family, {"size": "tiny"}, DIGITS).eval()
    with pytest.raises(UserError, match=r"z \(latents\) must be \(B, 64\)"):
        model.decode(torch.zeros(2, 63))
    with pytest.raises(UserError, match=r"x \(images\) must lie in \[-1, 1\]"):
        model.log_prob(torch.full((2, 1, 8, 8), 1.5))
    with pytest.raises(UserError, match=r"x must be \(B, 1, 8, 8\)"):
        model.log_prob(torch.zeros(2, 1, 4, 4))
    with pytest.raises(UserError, match="temperature must be > 0"):
        model.sample(2, temperature=0.0)
    with pytest.raises(pydantic.ValidationError, match="temperature"):
        settings_for(model, {"temperature": 0})
    with pytest.raises(pydantic.ValidationError, match="temperature"):
        settings_for(model, {"temperature": -1.0})
    assert settings_for(model, {"temperature": 0.7}).temperature == 0.7


def test_levels_that_do_not_fit_the_image_are_explained():
    with pytest.raises(ValueError, match=r"levels <= 3"):
        build("realnvp", {"size": "tiny", "levels": 4}, DIGITS)
    with pytest.raises(ValueError, match=r"levels <= 3"):
        build("glow", {"size": "tiny", "levels": 4}, DIGITS)
    with pytest.raises(ValueError, match="points"):
        build("glow", {"size": "tiny"}, DatasetInfo("points", (1,), 0, 0, None, ("point",)))
