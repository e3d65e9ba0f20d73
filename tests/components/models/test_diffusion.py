"""The diffusion family end to end: a short real training run on digits, classifier-free guidance
through the model, latent diffusion's frozen autoencoder, text conditioning, and settings checks.
(The schedules, objective and samplers have their own formula tests in tests/components/samplers.)"""
import math

import pytest
import torch
from sklearn.datasets import load_digits

from genray.components.data import DatasetInfo
from genray.components.models import build
from genray.components.models.diffusion import build_diffusion
from genray.components.models.refs import ModelRef
from genray.components.training import OptimDefaults
from genray.components.training.recipe import optimizer_parameters
from genray.components.models.vae import build_beta_vae
from genray.components.samplers import ddim

SHAPE = (1, 8, 8)


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """sklearn's 8x8 digits scaled to [-1, 1]: train and held-out images and labels."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8 - 1  # (N, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[perm[:1500]], y[perm[:1500]], x[perm[1500:]], y[perm[1500:]]


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    args = {"size": "tiny", "num_timesteps": 100, "num_inference_steps": 10, "vlb_timesteps": 10, **kw}
    return build_diffusion(data=DatasetInfo.for_images(SHAPE, 10), **args)


@pytest.fixture(scope="module")
def trained():
    """A tiny class-conditional model after 300 fixed-seed AdamW steps on digits, with its
    held-out scores before and after."""
    x, y, xh, yh = digits()
    model = tiny()
    held = {"x": xh[:200], "y": yh[:200]}
    score = lambda: {k: float(v) for k, v in model.evaluate(held, generator=torch.Generator().manual_seed(1)).items()}  # noqa: E731
    before = score()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    for _ in range(300):
        idx = torch.randint(len(x), (64,), generator=g)
        opt.zero_grad(set_to_none=True)
        model({"x": x[idx], "y": y[idx]}, "main")[0].backward()
        opt.step()
    model.eval()
    return model, held, before, score()


def test_training_lowers_the_held_out_denoising_loss_and_the_bound(trained):
    _, _, before, after = trained
    assert after["loss"] < 0.6 * before["loss"], (before, after)
    assert after["eps_mse"] < before["eps_mse"]
    # The bound is finite, and the model beats its own untrained self by a wide margin.
    assert math.isfinite(after["bits_per_dim"]) and after["bits_per_dim"] < before["bits_per_dim"] / 2


def test_log_prob_is_a_bound_in_nats_per_example(trained):
    model, held, _, _ = trained
    x = held["x"][:16]
    lp = model.log_prob(x, generator=torch.Generator().manual_seed(0))
    assert lp.shape == (16,) and torch.isfinite(lp).all()
    # Every term (num_timesteps >= T - 1) is deterministic given the seed, and the conditional
    # bound log p(x | y) is a different number from the unconditional one.
    lp_all = model.log_prob(x, num_timesteps=500, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(lp_all).all()
    assert torch.equal(lp_all, model.log_prob(x, num_timesteps=99, generator=torch.Generator().manual_seed(0)))
    lp_y = model.log_prob(x, num_timesteps=99, y=held["y"][:16], generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(lp_y).all() and not torch.equal(lp_y, lp_all)


def test_guidance_scale_one_is_conditional_and_zero_is_unconditional(trained):
    model, _, _, _ = trained
    n = 10
    y = torch.arange(n)
    null = torch.full((n,), model.num_classes)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    uncond = model.sample(n, generator=gen(), y=null, guidance_scale=1.0)
    assert torch.equal(model.sample(n, generator=gen(), y=y, guidance_scale=0.0), uncond)

    # Scale 1 is the conditional model alone: sample it by hand with only the conditional branch.
    cond = model.condition(n, torch.device("cpu"), y=y)
    by_hand = ddim.ddim_sample(model.denoiser(cond), (n, *SHAPE), model.schedule, prediction=model.prediction,
                               num_steps=10, eta=0.0, spacing="trailing", generator=gen())
    torch.testing.assert_close(model.sample(n, generator=gen(), y=y, guidance_scale=1.0), by_hand.clamp(-1, 1))
    # And guidance changes the samples (the labels matter after training).
    assert not torch.allclose(model.sample(n, generator=gen(), y=y, guidance_scale=3.0), uncond)


def test_ddpm_and_ddim_settings_per_call(trained):
    model, _, _, _ = trained
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = model.sample(4, generator=gen(), sampler="ddpm")
    b = model.sample(4, generator=gen(), sampler="ddim", num_inference_steps=5, eta=1.0, spacing="leading")
    assert a.shape == b.shape == (4, *SHAPE) and not torch.equal(a, b)
    for bad, match in [({"sampler": "euler"}, "sampler"), ({"spacing": "random"}, "spacing"),
                       ({"num_inference_steps": 101}, "num_inference_steps"), ({"guidance_scale": -1.0}, "guidance_scale")]:
        with pytest.raises(ValueError, match=match):
            model.sample(2, **bad)
    with pytest.raises(ValueError, match="y must be"):
        model.sample(2, y=torch.tensor([0, 11]))


def test_condition_dropout_replaces_labels_with_the_null_label():
    model = tiny(p_uncond=1.0)
    seen = {}
    forward = model.net.forward
    model.net.forward = lambda x, t, **kw: seen.update(kw) or forward(x, t, **kw)
    model({"x": torch.zeros(6, *SHAPE), "y": torch.arange(6)}, "main")
    assert torch.equal(seen["y"], torch.full((6,), 10))
    model.p_uncond = 0.0
    model({"x": torch.zeros(6, *SHAPE), "y": torch.arange(6)}, "main")
    assert torch.equal(seen["y"], torch.arange(6))


def test_class_conditioning_needs_labels():
    with pytest.raises(ValueError, match="labelled data"):
        build_diffusion(data=DatasetInfo.for_images(SHAPE), conditioning="class", size="tiny")
    with pytest.raises(ValueError, match="model.autoencoder"):
        build_diffusion(data=DatasetInfo.for_images(SHAPE), autoencoder=ModelRef("models:/ae@champion"), size="tiny")
    with pytest.raises(ValueError, match="not resolved"):  # the one construction path resolves first
        build("diffusion", {"autoencoder": "models:/ae@champion", "size": "tiny"}, DatasetInfo.for_images(SHAPE))


def _perturb(module: torch.nn.Module, seed: int = 0) -> None:
    """Zero-initialised output layers make a fresh network ignore its inputs; nudge every weight."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_text_conditioning_follows_the_prompt():
    torch.manual_seed(0)
    model = build_diffusion(data=DatasetInfo.for_images((3, 8, 8)), conditioning="text", text_len=16, size="tiny",
                            num_timesteps=20, num_inference_steps=4)
    assert "condition" in model.capabilities
    _perturb(model)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    red = model.sample(2, generator=gen(), prompt="a red heart")
    assert torch.equal(red, model.sample(2, generator=gen(), prompt=["a red heart"] * 2))
    assert not torch.allclose(red, model.sample(2, generator=gen(), prompt="a blue square"))
    # No prompt is the unconditional model, the same as guidance scale 0 with any prompt.
    torch.testing.assert_close(model.sample(2, generator=gen()),
                               model.sample(2, generator=gen(), prompt="a red heart", guidance_scale=0.0))
    with pytest.raises(ValueError, match="not class-conditional"):
        model.sample(2, y=torch.tensor([0, 1]))


def test_a_prompt_with_and_composes_its_parts():
    """'A AND B' samples with composed guidance (Liu et al. 2022), each part's term summed: the
    same images as composing the two prompts' conditions by hand."""
    from genray.components.samplers import ddim, guidance
    from genray.components.models.text_encoder import encode_text

    torch.manual_seed(0)
    model = build_diffusion(data=DatasetInfo.for_images((3, 8, 8)), conditioning="text", text_len=16, size="tiny",
                            num_timesteps=20, num_inference_steps=4)
    _perturb(model)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    both = model.sample(2, generator=gen(), prompt="a red heart AND a blue square", guidance_scale=2.0)
    assert not torch.allclose(both, model.sample(2, generator=gen(), prompt="a red heart", guidance_scale=2.0))
    conds = [model.condition(2, torch.device("cpu"), text=encode_text([p] * 2, 16)) for p in ("a red heart", "a blue square")]
    by_hand = guidance.composed_denoiser(model.net, conds, model.condition(2, torch.device("cpu")), torch.full((2, 2), 2.0))
    z = ddim.ddim_sample(by_hand, (2, *model.latent_shape), model.schedule, prediction=model.prediction, num_steps=4,
                         eta=model.sampling_settings().eta, spacing=model.sampling_settings().spacing, generator=gen(),
                         clip_x0=True)
    torch.testing.assert_close(both, z.clamp(-1, 1))
    # A batch mixing one-part and two-part prompts: the one-part sample is plain guidance.
    mixed = model.sample(2, generator=gen(), prompt=["a red heart", "a red heart AND a blue square"], guidance_scale=2.0)
    plain = model.sample(2, generator=gen(), prompt="a red heart", guidance_scale=2.0)
    torch.testing.assert_close(mixed[0], plain[0])
    torch.testing.assert_close(mixed[1], both[1])


def test_latent_diffusion_keeps_its_autoencoder_frozen():
    torch.manual_seed(0)
    data = DatasetInfo.for_images((3, 16, 16))
    ae = build_beta_vae(data=data, size="tiny", latent_channels=4, latent_downsample=1, beta=0.01)
    ref = ModelRef("runs:/x", "beta_vae", {"size": "tiny", "latent_channels": 4, "latent_downsample": 1, "beta": 0.01},
                   data.to_json())
    model = build("diffusion", {"size": "tiny", "autoencoder": ref, "num_timesteps": 20, "num_inference_steps": 3}, data)
    model.autoencoder.load_state_dict(ae.state_dict())
    model.latent_scale.fill_(2.0)
    assert model.latent_shape == (4, 8, 8) and model.capabilities == {"sample"}
    assert any(k.startswith("autoencoder.") for k in model.state_dict())  # the checkpoint is self-contained
    opts = model.recipe.configure_optimizers(model, OptimDefaults())
    trainable = {id(p) for p in optimizer_parameters(opts["main"])}
    assert not any(id(p) in trainable for p in model.autoencoder.parameters())

    x = torch.rand(4, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        mu, logvar = ae.encoder(x)
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(0))
    z = model.to_latent(x, torch.Generator().manual_seed(0))
    # A posterior sample, times the latent scale (Rombach et al. 2022, appendix G).
    torch.testing.assert_close(z, 2.0 * (mu + torch.exp(0.5 * logvar) * eps))
    before = {k: v.clone() for k, v in model.autoencoder.state_dict().items()}
    model.train()
    assert not model.autoencoder.training
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model({"x": x}, "main")[0].backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in model.autoencoder.state_dict().items())
    out = model.sample(2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 16, 16) and out.abs().max() <= 1


def test_eval_samples_gives_one_grid_per_guidance_scale(trained):
    model, held, _, _ = trained
    grids = model.eval_samples(12, generator_seed=0, batch=held)
    assert sorted(grids) == ["guidance_0", "guidance_1", "guidance_3"]
    assert all(g.shape == (12, *SHAPE) for g in grids.values())
    uncond = tiny(conditioning="none")
    assert list(uncond.eval_samples(4, generator_seed=0, batch=held)) == [""]
