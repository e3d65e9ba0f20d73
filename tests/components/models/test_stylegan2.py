"""StyleGAN2's pieces against the paper's formulas (Karras et al. 2020, §2.2; 2019, §3.1 and
appendix B; 2018, §3), fixed seeds throughout."""
import math

import pydantic
import pytest
import torch

from genray.components.data import DatasetInfo
from genray.components.models import build
from genray.components.models.layers import StackedGenerators
from genray.components.models.stylegan2 import (
    EqualLinear, minibatch_stddev, modulated_conv2d, modulated_conv2d_grouped, widths,
)


def model(conditional=True, **kw):
    torch.manual_seed(0)
    info = DatasetInfo.for_images((1, 16, 16), 10 if conditional else 0)
    return build("stylegan2", {"size": "tiny", "conditional": conditional, **kw}, info)


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("k", [1, 3])
def test_modulated_conv_equals_per_example_weights(demodulate, k):
    g = gen(0)
    x, weight, styles = torch.randn(5, 6, 7, 7, generator=g), torch.randn(4, 6, k, k, generator=g), torch.randn(5, 6, generator=g)
    fast = modulated_conv2d(x, weight, styles, demodulate=demodulate, padding=k // 2)
    ref = modulated_conv2d_grouped(x, weight, styles, demodulate=demodulate, padding=k // 2)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)


def test_modulated_conv_by_hand_for_one_example():
    # eqs. 1 and 3 for a 1x1 conv: w' = s w, w'' = w' / sqrt(sum_i w'^2 + 1e-8), y = w'' x.
    x = torch.tensor([[[[1.0]], [[2.0]]]])  # (1, 2, 1, 1)
    weight = torch.tensor([[[[3.0]], [[4.0]]]])  # (1, 2, 1, 1)
    styles = torch.tensor([[2.0, 0.5]])
    w1 = torch.tensor([6.0, 2.0])
    expected = (w1 / math.sqrt(36 + 4 + 1e-8) * torch.tensor([1.0, 2.0])).sum()
    out = modulated_conv2d(x, weight, styles, demodulate=True, padding=0)
    assert out.shape == (1, 1, 1, 1)
    assert out.item() == pytest.approx(expected.item(), rel=1e-6)


def test_demodulation_restores_unit_variance():
    # The paper's premise for eq. 3: with i.i.d. unit-variance inputs, each output channel of
    # the demodulated conv has unit standard deviation, whatever the style's scale.
    g = gen(1)
    x = torch.randn(2, 32, 64, 64, generator=g)
    weight = torch.randn(8, 32, 3, 3, generator=g)
    styles = 10 * torch.rand(2, 32, generator=g)
    out = modulated_conv2d(x, weight, styles, demodulate=True, padding=1)[:, :, 1:-1, 1:-1]
    std = out.std(dim=(2, 3))  # (2, 8)
    assert torch.allclose(std, torch.ones_like(std), atol=0.05), std


def test_equalised_linear_keeps_unit_variance_and_slows_by_lr_mul():
    torch.manual_seed(0)
    layer = EqualLinear(256, 256, lr_mul=0.01)
    y = layer(torch.randn(4096, 256))
    assert y.std().item() == pytest.approx(1.0, abs=0.05)  # He's constant applied at run time
    # Stored at 1 / lr_mul scale, so the gradient on the stored weight is lr_mul times smaller
    # per unit of effective change: Adam's normalised step moves the effective weight lr_mul as far.
    assert layer.weight.std().item() == pytest.approx(100.0, rel=0.05)


def test_minibatch_stddev_by_hand():
    x = torch.zeros(4, 2, 1, 1)
    x[:, 0, 0, 0] = torch.tensor([0.0, 1.0, 2.0, 3.0])
    x[:, 1, 0, 0] = torch.tensor([1.0, 1.0, 1.0, 1.0])
    out = minibatch_stddev(x, group=2)  # groups are rows {0, 2} and {1, 3}
    # Channel 0: rows 0 and 2 differ by 2 -> std 1; rows 1 and 3 the same; channel 1: std 0.
    # Averaged over the 2 channels: 0.5 (+ the sqrt(1e-8) floor).
    assert out.shape == (4, 3, 1, 1)
    torch.testing.assert_close(out[:, 2].flatten(), torch.full((4,), 0.5 + 1e-4 / 2), rtol=0, atol=1e-6)
    torch.testing.assert_close(out[:, :2], x)
    assert minibatch_stddev(torch.randn(6, 2, 3, 3), group=4).shape == (6, 3, 3, 3)  # group 3 divides 6


def test_layer_count_and_widths():
    m = model()
    assert m.num_ws == 1 + 2 * 2 + 1  # 4x4 conv, two convs at 8 and 16, ToRGB's index after the last
    assert widths(3, 128, 32) == [128, 128, 64, 32]


def test_truncation_formula():
    m = model()
    y = torch.tensor([3, 7])
    ws = torch.randn(2, m.num_ws, 32, generator=gen(0))
    centre = m.w_avg(y)  # (2, w_dim)
    assert torch.equal(m.truncate(ws, y, 1.0, None), ws)
    zero = m.truncate(ws, y, 0.0, None)
    torch.testing.assert_close(zero, centre[:, None].expand_as(ws))
    half = m.truncate(ws, y, 0.5, 2)
    torch.testing.assert_close(half[:, :2], centre[:, None] + 0.5 * (ws[:, :2] - centre[:, None]))
    assert torch.equal(half[:, 2:], ws[:, 2:])
    # The centre is a class's own mean, fixed by the weights: the same on every call.
    assert torch.equal(m.w_avg(y), centre) and not torch.allclose(centre[0], centre[1])


def test_psi_zero_gives_one_image_per_class_up_to_noise():
    m = model()
    m.synthesis.convs.apply(lambda mod: setattr(mod, "noise_strength", torch.nn.Parameter(torch.zeros(())))
                            if hasattr(mod, "noise_strength") else None)
    y = torch.tensor([2, 2, 5])
    out = m.sample(3, generator=gen(0), y=y, truncation_psi=0.0)
    torch.testing.assert_close(out[0], out[1])
    assert not torch.allclose(out[0], out[2])


def test_style_mix_ends():
    m = model()
    y = torch.tensor([1, 4])
    a = m.sample(2, generator=gen(1), y=y)
    assert torch.equal(m.style_mix(2, generator_a=gen(1), generator_b=gen(2), crossover=m.num_ws, y=y), a)
    mixed = m.style_mix(2, generator_a=gen(1), generator_b=gen(2), crossover=2, y=y)
    assert not torch.allclose(mixed, a)
    with pytest.raises(ValueError, match="crossover"):
        m.style_mix(2, generator_a=gen(1), generator_b=gen(2), crossover=m.num_ws + 1, y=y)


def test_style_mixing_regularisation_splits_the_layers():
    m = model(mixing_prob=1.0)
    torch.manual_seed(3)
    ws = m._mixed_ws(4, torch.zeros(4, dtype=torch.long), "cpu")
    same = [torch.allclose(ws[:, 0], ws[:, k]) for k in range(m.num_ws)]
    cut = same.index(False)  # the first layer with the second z's styles
    assert 1 <= cut < m.num_ws and all(same[:cut]) and not any(same[cut:])
    m0 = model(mixing_prob=0.0)
    ws0 = m0._mixed_ws(4, torch.zeros(4, dtype=torch.long), "cpu")
    assert torch.equal(ws0, ws0[:, :1].expand_as(ws0))


def test_lazy_r1_phase_schedule_and_scale():
    m = model(r1_every=4, r1_gamma=2.0)
    names = [[p.name for p in m.recipe.phases_at(s)] for s in range(5)]
    assert names[0] == ["disc", "disc_reg", "gen"] and names[1] == ["disc", "gen"] and names[4][1] == "disc_reg"
    batch = {"x": torch.rand(4, 1, 16, 16, generator=gen(0)) * 2 - 1, "y": torch.arange(4)}
    loss, logs = m(batch, "disc_reg")
    assert loss.item() == pytest.approx(0.5 * 2.0 * logs["r1"].item() * 4, rel=1e-5)
    assert model(r1_gamma=0.0).recipe.r1_every == 0  # no penalty, no phase


def test_settings_ranges():
    m = model()
    s = m.sampling_settings
    assert s().truncation_psi == 1.0 and s().truncation_cutoff is None
    for bad in ({"truncation_psi": -0.1}, {"truncation_psi": 1.6}, {"truncation_cutoff": 0},
                {"truncation_cutoff": m.num_ws + 1}, {"psi": 0.5}):
        with pytest.raises(pydantic.ValidationError):
            s(**bad)
    s(truncation_psi=1.5, truncation_cutoff=m.num_ws)


def test_a_seeds_first_images_do_not_depend_on_n():
    m = model()
    four = m.sample(4, generator=gen(3), y=torch.tensor([0, 1, 2, 3]))
    torch.testing.assert_close(m.sample(2, generator=gen(3), y=torch.tensor([0, 1])), four[:2])


def test_a_batched_request_draws_what_it_draws_alone():
    # Serve batches requests with StackedGenerators: each request's rows come from its own seed.
    m = model()
    y = torch.tensor([0, 1, 2])
    alone = [m.sample(1, generator=gen(5), y=y[:1], truncation_psi=0.7),
             m.sample(2, generator=gen(6), y=y[1:], truncation_psi=0.7)]
    together = m.sample(3, generator=StackedGenerators([(gen(5), 1), (gen(6), 2)]), y=y, truncation_psi=0.7)
    torch.testing.assert_close(together, torch.cat(alone), rtol=1e-5, atol=1e-5)
