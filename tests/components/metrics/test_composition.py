"""Compositional accuracy on two-object scenes: shares of rows read back right, seen and held-out
pairs apart, and the evaluate wiring that scores samples, real scenes and composed prompts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from genray.components.metrics import composition
from genray.pipelines import evaluate
from genray.pipelines.quality import Split


def test_scene_scores_count_every_factor_and_split_seen_from_held_out():
    wanted = {"relation": np.array([0, 1, 0, 1]), "shape_a": np.array([0, 1, 2, 0]), "color_a": np.array([1, 1, 1, 1]),
              "shape_b": np.array([2, 2, 2, 2]), "color_b": np.array([0, 3, 5, 0])}
    predicted = {k: v.copy() for k, v in wanted.items()}
    predicted["relation"][1] = 0  # row 1: objects right, relation wrong
    predicted["color_b"][2] = 4  # row 2: an object wrong
    held = np.array([False, False, True, True])
    s = composition.scene_scores(predicted, wanted, held)
    assert s["seen_all_right"] == 0.5 and s["seen_objects_right"] == 1.0 and s["seen_relation_right"] == 0.5
    assert s["held_out_all_right"] == 0.5 and s["held_out_objects_right"] == 0.5 and s["held_out_relation_right"] == 1.0
    assert s["relation_accuracy"] == 0.75 and s["color_b_accuracy"] == 0.75 and s["held_out_share"] == 0.5
    only_seen = composition.scene_scores(predicted, wanted, np.zeros(4, bool))
    assert "held_out_all_right" not in only_seen and only_seen["seen_all_right"] == 0.5
    with pytest.raises(ValueError, match="no relation"):
        composition.scene_scores({k: v for k, v in predicted.items() if k != "relation"}, wanted, held)
    assert composition.is_scene([f"factor_{f}" for f in composition.SCENE_FACTORS] + ["factor_x_a"])
    assert not composition.is_scene(["factor_shape", "factor_color"])


class PixelReader(nn.Module):
    """A stand-in detector: each factor head reads one pixel's red value, so the test controls
    what it sees."""

    def __init__(self):
        super().__init__()
        self.aux_heads = nn.ModuleDict({f: _Head(i) for i, f in enumerate(composition.SCENE_FACTORS)})

    def features(self, x):
        return x[:, 0, 0, :8]  # (B, 8): the first row's red values


class _Head(nn.Module):
    def __init__(self, i):
        super().__init__()
        self.i = i

    def forward(self, h):
        value = ((h[:, self.i] + 1) * 2.5).round().long()  # [-1, 1] -> 0..5
        return nn.functional.one_hot(value.clamp(0, 5), 6).float()


def image_of(factors):
    x = torch.full((1, 3, 4, 8), -1.0)
    for i, v in enumerate(factors):
        x[0, 0, 0, i] = v / 2.5 - 1
    return x


def test_scene_composition_scores_samples_real_scenes_and_composed_prompts():
    rows_factors = [(0, 0, 0, 2, 2), (1, 1, 3, 0, 1), (0, 2, 5, 1, 4)]
    factors = {f"factor_{f}": np.array([r[i] for r in rows_factors]) for i, f in enumerate(composition.SCENE_FACTORS)}
    real = torch.cat([image_of(r) for r in rows_factors])
    reference = Split(real, None, ["c0", "c1", "c2"], factors)
    rows = np.array([0, 1, 2, 0])
    fake = torch.cat([image_of(rows_factors[0]), image_of((0, 1, 3, 0, 1)), image_of(rows_factors[2]),
                      image_of(rows_factors[0])])  # sample 1 has the right objects on the wrong axis
    asked = []

    def generate_for(prompts):
        asked.extend(prompts)
        return real[rows]  # the composed samples come out right

    classifier = type("Net", (), {"model": PixelReader(), "id": "stub"})()
    s = evaluate.scene_composition(classifier, fake, reference, rows, np.array([False, True, False]), generate_for)
    assert asked[0] == "a red square on the left AND a blue heart on the right"
    assert asked[1] == "a yellow ellipse at the top AND a green square at the bottom"
    assert s["composition_seen_all_right"] == 1.0 and s["composition_held_out_all_right"] == 0.0
    assert s["composition_held_out_objects_right"] == 1.0  # right objects, wrong relation
    assert s["composition_real_held_out_all_right"] == 1.0 and s["composition_composed_held_out_all_right"] == 1.0
    with pytest.raises(Exception, match="no head for"):
        bare = type("Net", (), {"model": type("M", (nn.Module,), {})(), "id": "x"})()
        bare.model.aux_heads = nn.ModuleDict()
        evaluate.scene_composition(bare, fake, reference, rows, np.zeros(3, bool), generate_for)
