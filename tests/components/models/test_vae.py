"""VAE and beta-VAE objectives against their published formulas, and a short real training run."""
import inspect
import math

import pydantic
import pytest
import torch
from sklearn.datasets import load_digits
from torch.distributions import Normal, kl_divergence

from genray.components.data import DatasetInfo
from genray.components.models.vae import build_beta_vae, build_vae, gaussian_kl

SHAPE = (1, 8, 8)
NUM_DIMS = 64


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's 8x8 digits (1797 images, pixel values 0..16) scaled to [-1, 1]; train/held-out."""
    x = torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 8 - 1  # (N, 1, 8, 8)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[perm[:1500]], x[perm[1500:]]


def tiny_vae(seed=0, builder=build_vae, **kw):
    torch.manual_seed(seed)
    return builder(data=DatasetInfo.for_images(SHAPE), size="tiny", **kw)


@pytest.fixture(scope="module")
def trained():
    """A tiny VAE after 200 fixed-seed Adam steps on digits, with its held-out loss before/after."""
    train, held = digits()
    model = tiny_vae()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    held_batch = {"x": held[:256]}
    score = lambda: float(model.evaluate(held_batch, generator=torch.Generator().manual_seed(1))["loss"])  # noqa: E731
    start = score()
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        batch = {"x": train[torch.randint(len(train), (64,), generator=g)]}
        opt.zero_grad(set_to_none=True)
        model(batch, "main")[0].backward()
        opt.step()
    return model, held_batch, start, score()


def test_kl_matches_closed_form():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 16, generator=g), torch.randn(5, 16, generator=g)
    closed_form = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1)
    reference = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), closed_form)
    torch.testing.assert_close(gaussian_kl(mu, logvar), reference)

    # Through the model: hand-set the encoder's output and read the logged KL.
    model = tiny_vae()
    model.encoder.forward = lambda x: (mu[: len(x)], logvar[: len(x)])
    _, logs = model({"x": torch.zeros(5, *SHAPE)}, "main")
    torch.testing.assert_close(logs["kl"], closed_form.mean())


def test_iwae_k1_is_the_elbo_in_expectation_and_k64_is_tighter(trained):
    model, held, _, _ = trained
    x = held["x"][:64]
    g = torch.Generator().manual_seed(0)
    repeats = 100
    iw1 = torch.stack([model.log_prob(x, k=1, generator=g) for _ in range(repeats)])  # (R, B)
    elbo = torch.stack([model.evaluate({"x": x}, generator=g)["elbo"] for _ in range(repeats)])  # (R,)
    # Burda et al. 2016: with k = 1 the bound is the ELBO's one-sample estimate, so the two agree
    # within Monte Carlo error (both means over R * B draws).
    se = math.sqrt(iw1.mean(1).var() / repeats + elbo.var() / repeats)
    assert abs(iw1.mean() - elbo.mean()) < 5 * se, (float(iw1.mean()), float(elbo.mean()), se)

    iw64 = model.log_prob(x, k=64, generator=g)  # the constructor default is 64 too
    torch.testing.assert_close(model.log_prob(x, generator=torch.Generator().manual_seed(5)),
                               model.log_prob(x, k=64, generator=torch.Generator().manual_seed(5)))
    # Burda et al. 2016, Theorem 1: the bound only tightens with k.
    assert iw64.mean() > elbo.mean() + 10 * se, (float(iw64.mean()), float(elbo.mean()))


def test_beta_scales_the_kl_exactly():
    vae = tiny_vae()
    beta_vae = tiny_vae(seed=1, builder=build_beta_vae, beta=4.0)
    beta_vae.load_state_dict(vae.state_dict())
    x = digits()[0][:16]
    torch.manual_seed(3)
    loss1, logs1 = vae({"x": x}, "main")
    torch.manual_seed(3)  # the same reparameterisation noise
    loss4, logs4 = beta_vae({"x": x}, "main")
    assert logs1["beta"] == 1.0 and logs4["beta"] == 4.0
    torch.testing.assert_close(logs1["kl"], logs4["kl"])
    # Higgins et al. 2017, eq. 4: recon + beta * KL, per pixel.
    torch.testing.assert_close(loss4 - loss1, 3 * logs1["kl"] / NUM_DIMS)
    torch.testing.assert_close(loss1, (logs1["recon"] + logs1["kl"]) / NUM_DIMS)
    torch.testing.assert_close(logs1["elbo"], -(logs1["recon"] + logs1["kl"]))


def test_capacity_annealing():
    model = tiny_vae(builder=build_beta_vae, capacity_max=10.0, capacity_steps=100, gamma=1000.0)
    # Burgess et al. 2018: C grows linearly from 0 to capacity_max, then stays.
    for step, capacity in [(0, 0.0), (25, 2.5), (50, 5.0), (100, 10.0), (400, 10.0)]:
        model.set_step(step)
        assert math.isclose(float(model.capacity()), capacity, abs_tol=1e-6)

    model.set_step(30)
    torch.manual_seed(0)
    loss, logs = model({"x": digits()[0][:16]}, "main")
    expected = (logs["recon"] + 1000.0 * (logs["kl"] - 3.0).abs()) / NUM_DIMS
    torch.testing.assert_close(loss, expected)
    assert math.isclose(float(logs["capacity"]), 3.0, abs_tol=1e-6)

    # The step lives in the state dict, so a resumed run continues the schedule.
    resumed = tiny_vae(seed=1, builder=build_beta_vae, capacity_max=10.0, capacity_steps=100)
    resumed.load_state_dict(model.state_dict())
    assert math.isclose(float(resumed.capacity()), 3.0, abs_tol=1e-6)

    # No schedule length: the full capacity from the start.
    assert float(tiny_vae(builder=build_beta_vae, capacity_max=7.0).capacity()) == 7.0


def test_fixed_decoder_sigma():
    model = tiny_vae(decoder_sigma=0.1)
    assert "log_sigma_raw" not in dict(model.named_parameters())
    _, logs = model({"x": torch.zeros(2, *SHAPE)}, "main")
    torch.testing.assert_close(logs["sigma"], torch.tensor(0.1))


@pytest.mark.parametrize(
    "arg, bad", [("beta", -1.0), ("latent_dim", 0), ("iw_samples", 0), ("decoder_sigma", 0.0),
                 ("capacity_max", -1.0), ("gamma", -1.0), ("size", "huge")]
)
def test_builder_annotations_reject_out_of_range(arg, bad):
    annotation = inspect.signature(build_beta_vae).parameters[arg].annotation
    with pytest.raises(pydantic.ValidationError):
        pydantic.TypeAdapter(annotation).validate_python(bad)


def test_training_lowers_heldout_loss(trained):
    _, _, start, end = trained
    # Measured: about 1.40 -> 0.64 nats per dim; the margin leaves room for numeric drift.
    assert end < start - 0.4, (start, end)


def test_latent_map_for_latent_diffusion():
    torch.manual_seed(0)
    model = build_beta_vae(data=DatasetInfo.for_images((3, 32, 32)), size="tiny", beta=0.01, latent_channels=4, latent_downsample=2)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    z = model.encode(x)
    assert z.shape == (3, 4, 8, 8) and model.latent_shape == (4, 8, 8) and model.latent_dim == 256
    assert model.decode(z).shape == x.shape
    recon, kl = model.terms(x, torch.zeros(3, 4, 8, 8))
    assert recon.shape == kl.shape == (3,)
    mu, logvar = model.encoder(x)
    torch.testing.assert_close(kl, gaussian_kl(mu.flatten(1), logvar.flatten(1)))
    assert torch.isfinite(model.log_prob(x, k=2)).all()


@pytest.mark.parametrize("downsample", [0, 4])
def test_latent_map_must_stay_at_least_4x4(downsample):
    with pytest.raises(ValueError, match="latent_downsample must be between 1 and 3"):
        build_vae(data=DatasetInfo.for_images((3, 32, 32)), size="tiny", latent_channels=4, latent_downsample=downsample)


def test_temperature_scales_the_prior_draw(trained):
    model = trained[0].eval()
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    z = torch.randn((6, *model.latent_shape), generator=gen())
    # Temperature T decodes T·z for the same noise z: T=0 is the decoded prior mean, T=1 the default.
    assert torch.equal(model.sample(6, generator=gen(), temperature=0.5), model.decode(0.5 * z))
    assert torch.equal(model.sample(6, generator=gen()), model.decode(z))
    cold = model.sample(6, generator=gen(), temperature=0.0)
    assert torch.equal(cold, model.decode(torch.zeros_like(z)))
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        model.sample(2, temperature=-1.0)
