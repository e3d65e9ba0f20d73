"""The ADM UNet denoiser: shapes, zero output at init, what the output does and does not depend on,
gradients everywhere, the null label and null context, and bf16 autocast."""
import math

import pytest
import torch

from genray.components.models.unet import UNet, timestep_embedding


def unet(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(in_channels=1, image_size=(8, 8), channels=16, channel_mults=(1, 2), num_res_blocks=1,
               attention_levels=(1,), head_dim=8)
    return UNet(**{**cfg, **kw})


@torch.no_grad()
def perturb(model, seed=1):
    """Randomise every all-zero tensor (the zero-init convs and projections, norm biases), so
    every path through the network carries signal."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if not p.any():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def conditioned(seed=0):
    """A UNet with 10 classes and a 12-dim context, perturbed, with a batch for it."""
    model = perturb(unet(seed, num_classes=10, context_dim=12)).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 1, 8, 8, generator=g)
    t = torch.tensor([0.0, 10.0, 250.5, 999.0])
    y = torch.tensor([0, 3, 7, 10])
    context = torch.randn(4, 5, 12, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    return model, x, t, dict(y=y, context=context, context_mask=mask)


CONFIGS = [
    dict(in_channels=1, image_size=(8, 8)),
    dict(in_channels=3, image_size=(32, 32), channel_mults=(1, 2, 2), attention_levels=(1, 2), num_classes=10),
    dict(in_channels=3, image_size=(8, 8), context_dim=12, num_res_blocks=2),
    dict(in_channels=1, out_channels=2, image_size=(16, 8), num_classes=3, context_dim=6, attention_levels=(0, 1)),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c['in_channels']}x{c['image_size']}")
def test_output_matches_input_shape_and_is_zero_at_init(cfg):
    model = unet(**cfg)
    b, (h, w) = 3, cfg["image_size"]
    x = torch.randn(b, cfg["in_channels"], h, w)
    kw = {}
    if cfg.get("num_classes"):
        kw["y"] = torch.tensor([0, 1, cfg["num_classes"]])
    if cfg.get("context_dim"):
        kw["context"] = torch.randn(b, 4, cfg["context_dim"])
        kw["context_mask"] = torch.tensor([[1, 1, 0, 0]] * b, dtype=torch.bool)
    out = model(x, torch.tensor([1, 500, 999]), **kw)
    assert out.shape == (b, cfg.get("out_channels", cfg["in_channels"]), h, w)
    assert torch.equal(out, torch.zeros_like(out))  # Dhariwal & Nichol 2021: zero-init output conv
    assert perturb(model)(x, torch.tensor([1, 500, 999]), **kw).abs().sum() > 0


@torch.no_grad()
def test_output_depends_on_t_y_and_context_but_not_on_padding():
    model, x, t, kw = conditioned()
    out = model(x, t, **kw)
    assert out.isfinite().all()
    differs = lambda other: (out - other).flatten(1).abs().amax(1) > 1e-4  # noqa: E731  per example
    assert differs(model(x, t + 1.0, **kw)).all()
    assert differs(model(x, t, **{**kw, "y": torch.tensor([1, 4, 8, 2])})).all()
    ctx = kw["context"] + torch.randn(kw["context"].shape, generator=torch.Generator().manual_seed(3))
    # Rows 0-2 have real tokens; row 3 is all padding, so a new context changes nothing there.
    assert differs(model(x, t, **{**kw, "context": ctx})).tolist() == [True, True, True, False]
    # Changing only padded positions leaves every output unchanged.
    pad_only = torch.where(kw["context_mask"][..., None], kw["context"], ctx)
    torch.testing.assert_close(model(x, t, **{**kw, "context": pad_only}), out, rtol=0, atol=1e-6)


@torch.no_grad()
def test_null_label_and_no_label_agree_and_bad_labels_raise():
    model, x, t, kw = conditioned()
    null = torch.full((4,), 10)
    torch.testing.assert_close(model(x, t, **{**kw, "y": None}), model(x, t, **{**kw, "y": null}))
    for bad in ([0, 1, 2, 11], [-1, 0, 0, 0]):
        with pytest.raises(ValueError, match=r"labels must be in \[0, 10\]"):
            model(x, t, **{**kw, "y": torch.tensor(bad)})
    with pytest.raises(ValueError, match="num_classes=0"):
        unet()(x, t, y=null)


@torch.no_grad()
def test_null_context_is_finite_and_equals_no_context():
    model, x, t, kw = conditioned()
    all_pad = torch.zeros(4, 5, dtype=torch.bool)
    out = model(x, t, y=kw["y"], context=kw["context"], context_mask=all_pad)
    assert out.isfinite().all()
    # Both attend to the learned null token alone (see the module docstring).
    torch.testing.assert_close(out, model(x, t, y=kw["y"]), rtol=1e-5, atol=1e-6)
    # A mask of all True is the same as no mask.
    full = torch.ones(4, 5, dtype=torch.bool)
    torch.testing.assert_close(model(x, t, y=kw["y"], context=kw["context"], context_mask=full),
                               model(x, t, y=kw["y"], context=kw["context"]))


def test_gradients_reach_every_parameter():
    model, x, t, kw = conditioned()
    model.train()
    model(x, t, **kw).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.isfinite().all(), name
        assert p.grad.abs().sum() > 0, name
    # The null context (no context, no label) still puts every parameter in the graph, as DDP
    # requires without find_unused_parameters.
    model.zero_grad(set_to_none=True)
    model(x, t).sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_bad_sizes_and_arguments_raise_teaching_errors():
    with pytest.raises(ValueError, match=r"divisible by 2\*\*\(len\(channel_mults\) - 1\) = 4.*got 8x6"):
        unet(image_size=(8, 6), channel_mults=(1, 2, 2))
    with pytest.raises(ValueError, match="divisible by .* = 2.*got 7x8"):
        unet()(torch.randn(1, 1, 7, 8), torch.zeros(1))
    with pytest.raises(ValueError, match=r"attention_levels .* \[0, 1\]"):
        unet(attention_levels=(2,))
    with pytest.raises(ValueError, match="context_dim=None"):
        unet()(torch.randn(2, 1, 8, 8), torch.zeros(2), context=torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match=r"context must be \(B=2, L, context_dim=12\)"):
        unet(context_dim=12)(torch.randn(2, 1, 8, 8), torch.zeros(2), context=torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="context_mask must be bool"):
        unet(context_dim=4)(torch.randn(2, 1, 8, 8), torch.zeros(2), context=torch.randn(2, 3, 4),
                            context_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"x must be \(B, 1, H, W\)"):
        unet()(torch.randn(2, 3, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match=r"t must be one time per example"):
        unet()(torch.randn(2, 1, 8, 8), torch.zeros(3))


@torch.no_grad()
def test_scalar_and_fractional_times():
    model, x, t, kw = conditioned()
    torch.testing.assert_close(model(x, torch.tensor(7.0), **kw), model(x, torch.full((4,), 7.0), **kw))
    torch.testing.assert_close(model(x, torch.full((4,), 7), **kw), model(x, torch.full((4,), 7.0), **kw))
    assert (model(x, t + 0.5, **kw) - model(x, t, **kw)).abs().amax() > 1e-5


@torch.no_grad()
def test_bf16_autocast_is_finite_and_close_to_fp32():
    model, x, t, kw = conditioned()
    ref = model(x, t, **kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, **kw)
    assert out.isfinite().all()
    err = (out.float() - ref).norm() / ref.norm()
    assert err < 0.05, f"bf16 relative error {err:.3f}"


def test_timestep_embedding_matches_the_sinusoid():
    t = torch.tensor([0, 1, 2, 500])
    emb = timestep_embedding(t, 16)
    assert emb.shape == (4, 16) and emb.dtype == torch.float32
    torch.testing.assert_close(emb[0], torch.cat([torch.zeros(8), torch.ones(8)]))  # sin 0, cos 1
    # Vaswani et al. 2017, §3.5: frequency k is max_period^(-k / (dim/2)).
    freqs = torch.tensor([10000.0 ** (-k / 8) for k in range(8)])
    torch.testing.assert_close(emb[3], torch.cat([torch.sin(500 * freqs), torch.cos(500 * freqs)]))
    assert (emb[1] - emb[2]).abs().amax() > 0.1
    frac = timestep_embedding(torch.tensor([0.25]), 16)
    torch.testing.assert_close(frac[0, 0], torch.tensor(math.sin(0.25)))
    odd = timestep_embedding(t, 7)
    assert odd.shape == (4, 7) and torch.equal(odd[:, -1], torch.zeros(4))
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        timestep_embedding(torch.zeros(2, 1), 8)
