"""Pix2Pix: the U-Net's shapes and skips, the PatchGAN's grid and receptive field, the losses
against Isola et al. 2017's formulas, translations fixed by a seed, and a short real training run."""
import math

import numpy as np
import pytest
import torch

from genray.components.data import DatasetInfo
from genray.components.data.fashion_edges import edges
from genray.components.errors import UserError
from genray.components.models.layers import StackedGenerators
from genray.components.models.pix2pix import (
    PatchDiscriminator, UNet, build_pix2pix, discriminator_loss, dropout_mask, generator_loss, l1_loss,
    patch_halvings, patch_layers, psnr, receptive_field,
)
from genray.components.training import Engine, OptimDefaults, StepSettings


def pairs(side: int = 8, channels: int = 1) -> DatasetInfo:
    return DatasetInfo("paired_image", (side, side, channels), 0, 0, None, ("image", "image_paired"))


def tiny(side: int = 8, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_pix2pix(data=pairs(side), size="tiny", **kw)


def batch(n: int = 4, side: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.rand(n, 1, side, side, generator=g) * 2 - 1,
            "x_paired": torch.rand(n, 1, side, side, generator=g) * 2 - 1}


def seed(s: int) -> torch.Generator:
    return torch.Generator().manual_seed(s)


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------


def test_unet_goes_down_to_1x1_and_every_skip_joins_its_own_resolution():
    net = UNet(1, 3, (32, 32), width=4).eval()
    assert len(net.down) == 5 and len(net.up) == 4  # 32 -> 16 -> 8 -> 4 -> 2 -> 1 and back
    assert net.dropout_blocks == 3
    seen: dict[str, torch.Tensor] = {}
    for i, down in enumerate(net.down):
        down.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(f"down{i}", out))
    for j, up in enumerate(net.up):
        up.register_forward_pre_hook(lambda m, a, j=j: seen.__setitem__(f"up{j}", a[0]))
    net.out.register_forward_pre_hook(lambda m, a: seen.__setitem__("out", a[0]))
    y = net(torch.rand(2, 1, 32, 32) * 2 - 1, dropout=False)
    assert y.shape == (2, 3, 32, 32) and y.abs().max() <= 1
    assert seen["down4"].shape == (2, 32, 1, 1)  # widths 4, 8, 16, 32, 32: capped at 8 x width
    assert torch.equal(seen["up0"], seen["down4"])  # the innermost up block reads the bottleneck alone
    # Every later block (and the output layer) reads [decoder features, encoder features] of one
    # resolution: the encoder's half is exactly the encoder's activation there.
    for j, level in ((1, 3), (2, 2), (3, 1), ("out", 0)):
        joined, skip = seen[f"up{j}" if j != "out" else "out"], seen[f"down{level}"]
        assert joined.shape[1] == 2 * skip.shape[1] and joined.shape[2:] == skip.shape[2:]
        assert torch.equal(joined[:, skip.shape[1]:], skip)


def test_dropout_masks_are_fair_coins_scaled_by_two():
    m = dropout_mask((4, 1000), seed(0), torch.device("cpu"))
    assert set(m.unique().tolist()) == {0.0, 2.0}
    assert abs(float(m.mean()) - 1.0) < 0.05
    assert torch.equal(m, dropout_mask((4, 1000), seed(0), torch.device("cpu")))


def test_receptive_field_of_the_papers_patchgan_and_ours():
    assert receptive_field(patch_layers(3)) == 70  # Isola et al. 2017, §4.4: the 70x70 PatchGAN
    assert [receptive_field(patch_layers(n)) for n in range(5)] == [7, 16, 34, 70, 142]
    assert receptive_field([(3, 1)] * 3) == 7 and receptive_field([(2, 2)] * 3) == 8
    # The most stride-2 layers whose field is at most half the side: the paper's 3 at 256.
    assert {side: patch_halvings(side) for side in (8, 16, 32, 64, 128, 256)} == {
        8: 0, 16: 0, 32: 1, 64: 1, 128: 2, 256: 3}


@pytest.mark.parametrize("side, grid, field", [(8, 6, 7), (32, 14, 16), (256, 30, 70)])
def test_patchgan_grid_and_measured_receptive_field(side, grid, field):
    torch.manual_seed(0)
    d = PatchDiscriminator(1, 1, (side, side), width=4).eval()
    assert d.receptive_field == field
    x = torch.rand(1, 1, side, side)
    assert d(x, x).shape == (1, grid, grid)  # (side / 2^n - 2) logits a side
    # Measure it: the pixels one logit depends on, on a canvas large enough that its patch is whole.
    canvas = torch.rand(1, 1, 3 * field, 3 * field, requires_grad=True)
    logits = d(canvas, canvas)
    logits[0, logits.shape[1] // 2, logits.shape[2] // 2].backward()
    rows, cols = (canvas.grad[0, 0] != 0).nonzero(as_tuple=True)
    assert rows.min() > 0 and cols.min() > 0 and rows.max() < 3 * field - 1  # not clipped by the border
    assert int(rows.max() - rows.min()) + 1 == field and int(cols.max() - cols.min()) + 1 == field


def test_discriminator_sees_the_input_beside_the_output():
    model = tiny()
    x, y = batch()["x"], batch()["x_paired"]
    model.eval()
    # The same output judged beside a different input is a different pair (§2: D observes x).
    assert not torch.allclose(model.discriminator(x, y), model.discriminator(-x, y))
    assert model.discriminator.body[0].in_channels == 2


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------


def test_losses_match_the_papers_formulas():
    real = torch.tensor([[[2.0, -1.0], [0.5, 3.0]]])  # (B=1, 2, 2) patch logits
    fake = torch.tensor([[[-2.0, 0.3], [1.0, -0.5]]])
    # §3.3: D's objective (eq. 1, as a loss over every patch) halved; G maximises log D(x, G(x)).
    d_expected = 0.5 * (-torch.log(torch.sigmoid(real)).mean() - torch.log(1 - torch.sigmoid(fake)).mean())
    g_expected = -torch.log(torch.sigmoid(fake)).mean()
    torch.testing.assert_close(discriminator_loss(real, fake), d_expected)
    torch.testing.assert_close(generator_loss(fake), g_expected)
    a, b = torch.tensor([[0.5, -1.0], [1.0, 0.0]]), torch.tensor([[0.0, -1.0], [-1.0, 0.25]])
    torch.testing.assert_close(l1_loss(a, b), torch.tensor((0.5 + 0 + 2 + 0.25) / 4))  # eq. 3

    # Through the model, with hand-set networks: the disc phase sees the real pair first.
    model = tiny(lambda_l1=100.0)
    b8 = batch(n=1)
    target, translated = b8["x_paired"], torch.zeros(1, 1, 8, 8)
    calls = iter([real, fake])
    model.generator.forward = lambda x, **kw: translated
    model.discriminator.forward = lambda x, y: next(calls)
    loss, logs = model(b8, "disc")
    torch.testing.assert_close(loss, d_expected)
    torch.testing.assert_close(logs["d_real"], torch.sigmoid(real).mean())
    torch.testing.assert_close(logs["d_fake"], torch.sigmoid(fake).mean())
    model.discriminator.forward = lambda x, y: fake
    loss, logs = model(b8, "gen")
    l1_expected = target.abs().mean()  # |y - 0|
    torch.testing.assert_close(logs["g_adv"], g_expected)
    torch.testing.assert_close(logs["g_l1"], l1_expected)
    torch.testing.assert_close(loss, g_expected + 100.0 * l1_expected)  # eq. 4, lambda = 100
    assert set(logs) == {"g_adv", "g_l1"}  # the loss itself the engine logs as gen/loss


def test_psnr_in_db_on_unit_range_images_per_image():
    zeros, ones = torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)
    # 0 and 1 in [-1, 1] are 0.5 and 1 in [0, 1]: MSE 0.25, 10 log10(4) dB.
    torch.testing.assert_close(psnr(zeros, ones), torch.tensor(10 * math.log10(4.0)))
    near = torch.full((1, 1, 4, 4), 0.8)  # 0.9 vs 1: MSE 0.01, 20 dB
    torch.testing.assert_close(psnr(torch.cat([zeros, near]), torch.cat([ones, ones])),
                               torch.tensor((10 * math.log10(4.0) + 20.0) / 2))
    assert psnr(ones, ones) == pytest.approx(100.0)  # a perfect match is capped, not infinite


# ---------------------------------------------------------------------------------------------
# Translating
# ---------------------------------------------------------------------------------------------


def test_translate_is_fixed_by_the_seed_and_without_dropout_by_nothing():
    model = tiny()
    model({**batch(8)}, "disc")  # move the BatchNorm statistics off init
    x = batch()["x"]
    a, b, c = (model.translate(x, generator=seed(s)) for s in (1, 1, 2))
    assert a.shape == (4, 1, 8, 8) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.allclose(a, c)
    fixed = model.translate(x, dropout=False)
    assert torch.equal(fixed, model.translate(x, dropout=False))
    assert torch.equal(fixed, model.translate(x, generator=seed(3), dropout=False))
    assert not torch.allclose(fixed, a)
    # Running statistics: an image's translation does not depend on its batch, and requests
    # batched together with one generator each translate as they would alone (serve).
    torch.testing.assert_close(model.translate(x[:1], dropout=False), fixed[:1])
    stacked = model.translate(x[:2], generator=StackedGenerators([(seed(5), 1), (seed(6), 1)]))
    torch.testing.assert_close(stacked, torch.cat([model.translate(x[:1], generator=seed(5)),
                                                   model.translate(x[1:2], generator=seed(6))]))
    with pytest.raises(UserError, match=r"\(B, 1, 8, 8\)"):
        model.translate(torch.zeros(2, 3, 8, 8))


def test_sample_translates_given_inputs_and_explains_itself_without():
    model = tiny()
    x = batch()["x"]
    assert torch.equal(model.sample(4, generator=seed(0), x=x), model.translate(x, generator=seed(0)))
    assert torch.equal(model.sample(4, x=x, dropout=False), model.translate(x, dropout=False))
    with pytest.raises(UserError, match="translates an input image.*translate"):
        model.sample(4, generator=seed(0))
    assert model.sampling_settings().dropout is True
    assert model.sampling_cost(model.sampling_settings()) == 1


def test_translate_and_evaluate_leave_the_model_as_they_found_it():
    model = tiny()
    model(batch(8), "disc")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    model.translate(batch()["x"], generator=seed(0))
    scores = model.evaluate(batch(), generator=seed(0))
    assert model.training and model.generator.training and model.discriminator.training
    model.eval()
    model.translate(batch()["x"], generator=seed(0))
    model.evaluate(batch(), generator=seed(0))
    assert not model.generator.training and not model.discriminator.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"
    assert set(scores) == {"loss", "l1", "psnr", "d_real", "d_fake"}
    assert torch.equal(scores["loss"], scores["l1"])
    fake = model.translate(batch()["x"], generator=seed(0))
    torch.testing.assert_close(scores["l1"], l1_loss(fake, batch()["x_paired"]))
    torch.testing.assert_close(scores["psnr"], psnr(fake, batch()["x_paired"]))


def test_eval_samples_line_up_input_translation_and_target():
    model = tiny()
    b = batch(n=3)
    grids = model.eval_samples(5, generator_seed=0, batch=b)
    assert list(grids) == ["input", "translation", "target"]
    rows = torch.tensor([0, 1, 2, 0, 1])  # more tiles than examples: the inputs repeat
    assert torch.equal(grids["input"], b["x"][rows]) and torch.equal(grids["target"], b["x_paired"][rows])
    assert torch.equal(grids["translation"], model.translate(b["x"][rows], generator=seed(0)))
    assert not torch.allclose(grids["translation"][0], grids["translation"][3])  # other dropout masks


# ---------------------------------------------------------------------------------------------
# Builder and training
# ---------------------------------------------------------------------------------------------


def test_builder_wants_paired_images():
    with pytest.raises(UserError, match="paired_image.*got image data"):
        build_pix2pix(data=DatasetInfo.for_images((1, 8, 8)))
    with pytest.raises(UserError, match="got tokens data"):
        build_pix2pix(data=DatasetInfo("tokens", (16,), 10, 0, ("a", "b"), ("tokens",)))
    model = build_pix2pix(data=pairs(32, channels=3), size="tiny")
    assert model.translate(torch.zeros(1, 3, 32, 32), dropout=False).shape == (1, 3, 32, 32)
    assert model.capabilities == {"translate"} and model.conditioning == "none"


def test_a_few_adam_steps_on_fixed_pairs_lower_the_l1():
    """Edges -> digits: sklearn's 8x8 digits as targets, their edge maps (fashion_edges.edges)
    as inputs; Adam with the paper's beta1 0.5 (§3.3) through the adversarial recipe, at 5x the
    paper's lr 2e-4 so that 40 steps show it."""
    from sklearn.datasets import load_digits

    digits = (load_digits().images[:16] * 255 / 16).round().astype(np.uint8)  # (16, 8, 8)
    to_model = lambda u8: torch.tensor(u8, dtype=torch.float32).unsqueeze(1) / 127.5 - 1  # noqa: E731
    pairs16 = {"x": to_model(edges(digits)), "x_paired": to_model(digits)}
    model = tiny()
    engine = Engine(model, defaults=OptimDefaults(lr=1e-3, betas=(0.5, 0.999)),
                    settings=StepSettings(max_steps=40, grad_clip=None, min_lr_ratio=1.0))
    score = lambda: float(model.evaluate(pairs16, generator=seed(1))["l1"])  # noqa: E731
    start = score()
    for _ in range(40):
        engine.train_step(pairs16)
    end = score()
    # Measured over seeds 0-1: 0.79 -> 0.42; the ratio leaves room for drift.
    assert end < 0.7 * start, (start, end)
