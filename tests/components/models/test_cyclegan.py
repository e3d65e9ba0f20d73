"""CycleGAN: the least-squares, cycle and identity losses against Zhu et al. 2017's formulas, the
history pool (Shrivastava et al. 2017), the ResNet generator and PatchGAN shapes, translation both
ways, batches holding one domain, and a few optimizer steps that close the cycle."""
import pytest
import torch

from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.models.cyclegan import (
    CycleGAN, HistoryPool, PatchDiscriminator, ResnetGenerator, build_cyclegan, cycle_loss, discriminator_loss,
    generator_loss, identity_loss,
)
from genray.components.training import Engine, OptimDefaults, StepSettings


def domains(side: int = 8, channels: int = 1) -> DatasetInfo:
    return DatasetInfo("two_domain_image", (side, side, channels), 0, 0, None, ("image", "domain"))


def tiny(side: int = 8, seed: int = 0, **kw) -> CycleGAN:
    torch.manual_seed(seed)
    return build_cyclegan(data=domains(side), size="tiny", **kw)


def batch(n: int = 8, side: int = 8, seed: int = 0, domain: list[int] | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    d = torch.tensor(domain) if domain is not None else torch.arange(n) % 2
    return {"x": torch.rand(len(d), 1, side, side, generator=g) * 2 - 1, "domain": d}


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------


def test_least_squares_losses_by_hand():
    real = torch.tensor([[1.0, 0.5], [0.0, 2.0]])  # D(y) - 1: 0, -0.5, -1, 1 -> squares 0, .25, 1, 1
    fake = torch.tensor([[0.5, -1.0]])  # squares .25, 1
    assert discriminator_loss(real, fake).item() == pytest.approx(0.5 * (2.25 / 4 + 1.25 / 2))
    assert discriminator_loss(real, None).item() == pytest.approx(0.5 * 2.25 / 4)
    assert discriminator_loss(None, fake).item() == pytest.approx(0.5 * 1.25 / 2)
    with pytest.raises(ValueError):
        discriminator_loss(None, None)
    # G: E[(D(G(x)) - 1)^2]: (0.5 - 1)^2 = .25, (-1 - 1)^2 = 4
    assert generator_loss(fake).item() == pytest.approx((0.25 + 4) / 2)
    # A perfect discriminator's loss is 0, a perfectly fooled one's G loss is 0.
    assert discriminator_loss(torch.ones(3), torch.zeros(3)).item() == 0
    assert generator_loss(torch.ones(3)).item() == 0


def test_cycle_and_identity_are_mean_absolute_differences():
    x = torch.tensor([[0.0, 1.0], [-1.0, 0.5]])
    y = torch.tensor([[0.5, 1.0], [1.0, 0.0]])  # |diff| 0.5, 0, 2, 0.5
    assert cycle_loss(y, x).item() == pytest.approx(0.75)
    assert identity_loss(y, x).item() == pytest.approx(0.75)
    assert cycle_loss(x, x).item() == 0


def test_generator_loss_weights_cycle_by_lambda_and_identity_by_its_fraction():
    model = tiny(lambda_cycle=3.0, lambda_identity=0.25)
    b = batch()
    torch.manual_seed(0)
    loss, logs = model(b, "gen")
    expected = (logs["gan_ab"] + logs["gan_ba"] + 3.0 * (logs["cycle_a"] + logs["cycle_b"])
                + 3.0 * 0.25 * (logs["idt_a"] + logs["idt_b"]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # The logged terms are the formulas on the batch's A rows (domain 0) and B rows.
    a, bb = b["x"][b["domain"] == 0], b["x"][b["domain"] == 1]
    with torch.no_grad():
        assert logs["cycle_a"].item() == pytest.approx(cycle_loss(model.g_ba(model.g_ab(a)), a).item(), rel=1e-5)
        assert logs["idt_b"].item() == pytest.approx(identity_loss(model.g_ab(bb), bb).item(), rel=1e-5)
        assert logs["gan_ab"].item() == pytest.approx(generator_loss(model.d_b(model.g_ab(a))).item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# The history pool
# ---------------------------------------------------------------------------------------------


def images(n: int, start: float = 0.0) -> torch.Tensor:
    """n 1x2x2 images, image i filled with start + i (so each is recognisable)."""
    return (start + torch.arange(n, dtype=torch.float32)).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()


def test_pool_returns_new_images_while_filling_then_mixes():
    pool = HistoryPool(4, (1, 2, 2))
    torch.manual_seed(0)
    first = images(3)
    assert torch.equal(pool.query(first), first) and int(pool.count) == 3
    second = images(3, start=10)  # one more fills it; the other two may be swapped
    out = pool.query(second)
    assert int(pool.count) == 4 and torch.equal(out[0], second[0])
    assert {float(v) for v in pool.images[:, 0, 0, 0]} <= {0, 1, 2, 10, 11, 12}
    # Full: each returned image is the new one or one stored before (perhaps earlier in the same
    # query); about half are stored ones.
    seen = {float(v) for v in torch.cat([first, second])[:, 0, 0, 0]}
    returned_old = 0
    for k in range(50):
        new = images(4, start=100 + 10 * k)
        out = pool.query(new)
        seen |= {float(v) for v in new[:, 0, 0, 0]}
        old = (out != new).flatten(1).any(1)  # (4,)
        assert {float(v) for v in out[old][:, 0, 0, 0]} <= seen
        returned_old += int(old.sum())
    assert 0.35 < returned_old / 200 < 0.65


def test_pool_is_deterministic_under_manual_seed_and_size_0_is_no_pool():
    outs = []
    for _ in range(2):
        torch.manual_seed(5)
        pool = HistoryPool(3, (1, 2, 2))
        outs.append(torch.cat([pool.query(images(2, start=10 * k)) for k in range(6)]))
    assert torch.equal(outs[0], outs[1])
    x = images(3)
    assert HistoryPool(0, (1, 2, 2)).query(x) is x


def test_pool_survives_a_state_dict_round_trip():
    model = tiny(pool_size=5)
    torch.manual_seed(0)
    model(batch(), "disc")
    model(batch(seed=1), "disc")
    state = model.state_dict()
    assert int(state["pool_a.count"]) == 5 and int(state["pool_b.count"]) == 5
    fresh = tiny(seed=1, pool_size=5)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.pool_a.images, model.pool_a.images) and int(fresh.pool_b.count) == 5
    # The same draws give the same pooled images afterwards.
    fakes = torch.rand(4, 1, 8, 8)
    torch.manual_seed(3)
    a = model.pool_a.query(fakes)
    torch.manual_seed(3)
    assert torch.equal(fresh.pool_a.query(fakes), a)


# ---------------------------------------------------------------------------------------------
# Networks and translation
# ---------------------------------------------------------------------------------------------


def test_generator_keeps_the_shape_and_range_and_discriminator_scores_patches():
    g = ResnetGenerator(3, width=4, blocks=2)
    y = g(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert y.shape == (2, 3, 32, 32) and y.abs().max() <= 1
    assert sum(isinstance(m, torch.nn.ReflectionPad2d) for m in g.modules()) == 2 + 2 * 2  # c7s1 x2, 2 per block
    d = PatchDiscriminator(3, (32, 32), width=4)
    assert d(torch.rand(2, 3, 32, 32)).shape == (2, 14, 14) and d.receptive_field == 16


def test_translate_both_ways_and_unknown_direction():
    model = tiny()
    x = batch(n=4)["x"]
    for direction in model.directions:
        y = model.translate(x, direction=direction)
        assert y.shape == x.shape and y.abs().max() <= 1
    assert torch.equal(model.translate(x, direction="a_to_b"), model.g_ab(x).clamp(-1, 1))
    assert torch.equal(model.translate(x, direction="b_to_a"), model.g_ba(x).clamp(-1, 1))
    with pytest.raises(UserError, match="sideways.*a_to_b.*b_to_a|a_to_b.*b_to_a.*sideways"):
        model.translate(x, direction="sideways")
    with pytest.raises(UserError, match="translate"):
        model.sample(4)


def test_a_batch_of_one_domain_trains_and_evaluates():
    model = tiny()
    e = Engine(model, defaults=OptimDefaults(lr=1e-3), settings=StepSettings(max_steps=4, grad_clip=None))
    for domain in ([0] * 6, [1] * 6):
        logs = e.train_step(batch(domain=domain))
        assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
        scores = model.evaluate(batch(domain=domain))
        assert set(scores) == {"loss", "cycle_a", "cycle_b", "idt_a", "idt_b"}
        assert all(torch.isfinite(v) for v in scores.values())
        present = "a" if domain[0] == 0 else "b"
        assert torch.equal(scores["loss"], scores[f"cycle_{present}"])
        grids = model.eval_samples(3, generator_seed=0, batch=batch(domain=domain))
        assert set(grids) == ({"a", "a_to_b"} if present == "a" else {"b", "b_to_a"})
    assert "gen/cycle_b" in logs and "gen/cycle_a" not in logs


def test_adam_steps_on_a_tiny_fixed_set_close_the_cycle():
    model = tiny(seed=0)
    b = batch(n=8, seed=4)
    before = model.evaluate(b)["loss"].item()
    e = Engine(model, defaults=OptimDefaults(lr=2e-3, betas=(0.5, 0.999)),
               settings=StepSettings(max_steps=30, grad_clip=None, min_lr_ratio=1.0))
    for step in range(25):
        torch.manual_seed(step)
        e.train_step(b)
    after = model.evaluate(b)["loss"].item()
    assert after < 0.7 * before, (before, after)


def test_builder_rejects_other_kinds_and_bad_shapes():
    with pytest.raises(UserError, match="two_domain_image"):
        build_cyclegan(data=DatasetInfo.for_images((1, 8, 8)), size="tiny")
    with pytest.raises(UserError, match="two_domain_image"):
        build_cyclegan(data=DatasetInfo("paired_image", (8, 8, 1), 0, 0, None, ("image", "image_paired")))
    with pytest.raises(ValueError, match="power of two"):
        build_cyclegan(data=domains(12), size="tiny")
