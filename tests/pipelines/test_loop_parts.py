"""The training loop's pieces, checked against their formulas (no Ray needed)."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from genray.components.training import EMA, lr_factor, step_seed
from genray.pipelines.data import permute_rows


def test_lr_warmup_then_cosine_to_the_floor():
    warmup, total, floor = 10, 110, 0.1
    assert lr_factor(0, warmup, total, floor) == pytest.approx(0.1)
    assert lr_factor(9, warmup, total, floor) == pytest.approx(1.0)
    assert lr_factor(10, warmup, total, floor) == pytest.approx(1.0)
    # Halfway through the decay the cosine term is exactly one half.
    assert lr_factor(60, warmup, total, floor) == pytest.approx(floor + (1 - floor) * 0.5)
    assert lr_factor(110, warmup, total, floor) == pytest.approx(floor)
    assert lr_factor(500, warmup, total, floor) == pytest.approx(floor)
    steps = [lr_factor(s, warmup, total, floor) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(steps, steps[1:]))


def test_ema_follows_the_warmup_decay():
    model = torch.nn.Linear(3, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model, step=0)  # decay_0 = min(0.999, 1/10) = 0.1: moves 90% of the way
    assert torch.allclose(ema.model.weight, torch.full((1, 3), 0.9))
    ema.update(model, step=10**6)  # the warmup has ended: decay 0.999
    assert torch.allclose(ema.model.weight, torch.full((1, 3), 0.9 + 0.1 * 0.001))
    assert not ema.model.weight.requires_grad


def test_step_seed_makes_resumed_noise_identical():
    def noise(steps):
        out = []
        for s in steps:
            torch.manual_seed(step_seed(0, 1, s))
            out.append(torch.randn(3))
        return out

    uninterrupted = noise(range(0, 6))
    resumed = noise(range(3, 6))
    assert all(torch.equal(a, b) for a, b in zip(uninterrupted[3:], resumed))
    assert step_seed(0, 0, 5) != step_seed(0, 1, 5)


def test_permute_rows_keeps_rows_together():
    batch = {"x": np.arange(10)[:, None] * np.ones((1, 4)), "y": np.arange(10)}
    out = permute_rows(batch, seed=1)
    assert sorted(out["y"].tolist()) == list(range(10)) and out["y"].tolist() != list(range(10))
    assert np.array_equal(out["x"][:, 0], out["y"])
    assert np.array_equal(permute_rows(batch, seed=1)["y"], out["y"])


def test_permute_rows_repeats_every_row_once_per_copy():
    batch = {"y": np.arange(10)}
    out = permute_rows(batch, seed=3, repeats=4)["y"]
    assert len(out) == 40
    copies = out.reshape(4, 10)
    assert all(sorted(c.tolist()) == list(range(10)) for c in copies)
    assert len({tuple(c) for c in copies}) == 4  # each copy in its own order


def test_linear_schedule_holds_then_decays_to_the_floor():
    # CycleGAN (Zhu et al. 2017, §4): constant for the first half, then linearly to 0.
    total = 110
    f = [lr_factor(k, 10, total, 0.0, "linear", 0.5) for k in range(total + 1)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(v == 1.0 for v in f[10:61])  # progress 0 .. 0.5
    assert f[85] == pytest.approx(0.5) and f[110] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(f[60:], f[61:]))
    assert lr_factor(110, 0, 110, 0.2, "linear", 0.5) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="cosine or linear"):
        lr_factor(20, 10, 100, 0.0, "step")
