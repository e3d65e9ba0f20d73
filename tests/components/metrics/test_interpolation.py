"""Interpolation smoothness on paths and decoders whose answers are known by hand."""
import math

import numpy as np
import pytest
import torch

from genray.components.metrics import interpolation as interp


def test_an_even_straight_path_scores_one_on_both():
    f = np.linspace([0.0, 0.0], [3.0, 4.0], 9)[None]  # 8 equal steps on a line
    scores = interp.path_scores(f)
    assert scores["evenness"] == pytest.approx(1.0)
    assert scores["detour"] == pytest.approx(1.0)


def test_one_jump_scores_k_evenness_and_no_detour():
    k = 8
    f = np.zeros((1, k + 1, 2))
    f[0, 5:] = [3.0, 4.0]  # all of the change between points 4 and 5
    scores = interp.path_scores(f)
    assert scores["evenness"] == pytest.approx(k)
    assert scores["detour"] == pytest.approx(1.0)


def test_a_path_around_two_sides_of_a_square_by_hand():
    # (0,0) -> (1,0) -> (1,1): steps 1 and 1, total 2, chord sqrt(2); evenness 2 * 2 / 4 = 1
    f = np.array([[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]])
    scores = interp.path_scores(f)
    assert scores["evenness"] == pytest.approx(1.0)
    assert scores["detour"] == pytest.approx(2 / math.sqrt(2))


def test_uneven_steps_against_the_formula():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(5, 7, 3))
    d = np.linalg.norm(np.diff(f, axis=1), axis=2)
    even = 6 * (d**2).sum(1) / d.sum(1) ** 2
    detour = d.sum(1) / np.linalg.norm(f[:, -1] - f[:, 0], axis=1)
    scores = interp.path_scores(f)
    assert scores["evenness"] == pytest.approx(np.median(even))
    assert scores["detour"] == pytest.approx(np.median(detour))


def test_paths_that_never_move_are_left_out():
    f = np.zeros((3, 5, 2))
    f[0] = np.linspace([0.0, 0.0], [1.0, 0.0], 5)
    assert interp.path_scores(f) == pytest.approx({"evenness": 1.0, "detour": 1.0})
    assert all(math.isnan(v) for v in interp.path_scores(np.zeros((2, 4, 2))).values())


def test_a_bad_shape_is_refused():
    with pytest.raises(ValueError, match="paths, points >= 2, dims"):
        interp.path_scores(np.zeros((4, 2)))


class Autoencoder:
    """Identity encode; decode is the identity (smooth) or rounds to a grid of step `snap` (a codebook)."""

    def __init__(self, snap=None):
        self.snap = snap

    def encode(self, x):
        return x.flatten(1) * 2  # any linear map: the path is a straight line in pixel space either way

    def decode(self, z):
        z = z / 2
        if self.snap:
            z = torch.round(z / self.snap) * self.snap
        return z.view(-1, 1, 2, 2)


def flat(x):
    return x.flatten(1).numpy()


def test_points_are_the_decoded_lerp_in_path_order():
    a, b = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    b[1] *= -1
    f = interp.interpolation_features(Autoencoder().encode, Autoencoder().decode, flat, a, b, steps=4, batch_size=3)
    assert f.shape == (2, 5, 4)
    np.testing.assert_allclose(f[0, :, 0], [0, 0.25, 0.5, 0.75, 1.0], rtol=1e-6)
    np.testing.assert_allclose(f[1, :, 0], [0, -0.25, -0.5, -0.75, -1.0], rtol=1e-6)


def test_a_smooth_decoder_beats_a_snapping_one():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(40, 1, 2, 2, generator=gen) * 2 - 1
    smooth = interp.interpolation_smoothness(Autoencoder(), flat, x, pairs=20, steps=16)
    snapped = interp.interpolation_smoothness(Autoencoder(snap=0.5), flat, x, pairs=20, steps=16)
    assert smooth["interp_evenness"] == pytest.approx(1.0, abs=1e-5)
    assert smooth["interp_detour"] == pytest.approx(1.0, abs=1e-5)
    assert snapped["interp_evenness"] > 2.0  # the output moves in a few jumps


def test_real_vae_decodes_the_path():
    from genray.components.data import DatasetInfo
    from genray.components.models.vae import build_vae

    torch.manual_seed(0)
    model = build_vae(data=DatasetInfo.for_images((1, 16, 16)), size="tiny").eval()
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    scores = interp.interpolation_smoothness(model, flat, x, pairs=4, steps=8)
    assert 1.0 <= scores["interp_evenness"] <= 8.0
    assert scores["interp_detour"] >= 1.0
