"""Improved precision and recall on toy manifolds whose answers are known: identical, disjoint,
half-overlapping and mode-dropping sets; plus batching and memory."""
import tracemalloc

import numpy as np
import pytest
import torch

from genray.components.metrics.precision_recall import precision_recall


def naive_precision_recall(real, fake, k):
    """The definition with full distance matrices and a sort (no batching, no norm expansion)."""
    d_rr = np.linalg.norm(real[:, None] - real[None], axis=-1)
    d_ff = np.linalg.norm(fake[:, None] - fake[None], axis=-1)
    d_fr = np.linalg.norm(fake[:, None] - real[None], axis=-1)  # (M, N)
    r_real, r_fake = np.sort(d_rr, axis=1)[:, k], np.sort(d_ff, axis=1)[:, k]
    return (d_fr <= r_real[None]).any(1).mean(), (d_fr <= r_fake[:, None]).any(0).mean()


def blobs(rng, n, centres, scale=0.3):
    """n points split evenly over Gaussian blobs at the given (C, D) centres."""
    idx = np.arange(n) % len(centres)
    return centres[idx] + scale * rng.normal(size=(n, centres.shape[1]))


def test_matches_the_definition_computed_naively():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(150, 3)), rng.normal(0.7, 1.2, size=(120, 3))
    for k in (1, 3, 5):
        p, r = precision_recall(real, fake, k=k)
        p_ref, r_ref = naive_precision_recall(real, fake, k)
        assert (p, r) == pytest.approx((p_ref, r_ref), abs=1e-12)
        assert 0.2 < p < 1 and 0.2 < r < 1  # a partial overlap, so neither comparison is trivial


def test_identical_sets_score_one_and_one():
    f = np.random.default_rng(1).normal(size=(500, 8))
    assert precision_recall(f, f) == (1.0, 1.0)
    assert precision_recall(f, f[::-1].copy()) == (1.0, 1.0)


def test_disjoint_far_apart_sets_score_zero_and_zero():
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(400, 4)), rng.normal(size=(300, 4)) + 100.0
    assert precision_recall(real, fake) == (0.0, 0.0)


def test_half_overlapping_squares_score_about_one_half_each():
    # real ~ U([0,1]^2), fake ~ U([0.5,1.5] x [0,1]): half of each lies in the other's support.
    # The k-NN balls reach about sqrt(k / (pi n)) ~ 0.02 past each square's edge, adding ~0.01;
    # at n = 3000 the sampling noise is ~0.01 too.
    rng = np.random.default_rng(3)
    real = rng.uniform(size=(3000, 2))
    fake = rng.uniform(size=(3000, 2)) + np.array([0.5, 0.0])
    p, r = precision_recall(real, fake)
    assert 0.45 < p < 0.58 and 0.45 < r < 0.58


def test_mode_dropping_keeps_precision_and_loses_recall():
    rng = np.random.default_rng(4)
    centres = 10.0 * np.eye(4)  # four well-separated modes in 4-D
    real = blobs(rng, 4000, centres)
    # Even a perfect generator loses a few per cent of each score to the sparse tails of 4-D
    # Gaussians, whose points fall outside the other set's k-NN balls.
    p_all, r_all = precision_recall(real, blobs(rng, 4000, centres))
    assert p_all > 0.93 and r_all > 0.93
    p1, r1 = precision_recall(real, blobs(rng, 1000, centres[:1]))  # covers one mode of four
    p2, r2 = precision_recall(real, blobs(rng, 2000, centres[:2]))  # two of four
    assert p1 > 0.93 and p2 > 0.93
    assert 0.25 * r_all - 0.02 < r1 <= 0.25
    assert 0.5 * r_all - 0.02 < r2 <= 0.5


def test_batching_does_not_change_the_result():
    rng = np.random.default_rng(5)
    real, fake = rng.normal(size=(300, 5)), rng.normal(0.5, 1.0, size=(257, 5))
    whole = precision_recall(real, fake, batch_size=10_000)
    for batch_size in (1, 7, 64, 300):
        assert precision_recall(real, fake, batch_size=batch_size) == whole


def test_torch_input_gives_the_numpy_result():
    rng = np.random.default_rng(6)
    real, fake = rng.normal(size=(200, 4)).astype(np.float32), rng.normal(size=(150, 4)).astype(np.float32)
    assert precision_recall(torch.from_numpy(real), torch.from_numpy(fake)) == precision_recall(real, fake)


def test_ten_thousand_by_ten_thousand_stays_within_batch_memory():
    # A full 10k x 10k float64 distance matrix would take 800 MB; a 256-row batch takes 20 MB.
    rng = np.random.default_rng(7)
    real, fake = rng.normal(size=(10_000, 2)), rng.normal(size=(10_000, 2))
    tracemalloc.start()
    try:
        p, r = precision_recall(real, fake, batch_size=256)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100e6
    assert p > 0.95 and r > 0.95  # same distribution: only the sparse tails fall outside


def test_bad_inputs_raise_value_errors_that_name_the_problem():
    rng = np.random.default_rng(8)
    good = rng.normal(size=(10, 4))
    with pytest.raises(ValueError, match=r"real must be a 2-D .*\(10,\)"):
        precision_recall(rng.normal(size=10), good)
    with pytest.raises(ValueError, match=r"fake needs at least 4 feature vectors \(k \+ 1 = 4\).*\(3, 4\)"):
        precision_recall(good, rng.normal(size=(3, 4)))
    with pytest.raises(ValueError, match=r"\(10, 4\) and \(10, 5\)"):
        precision_recall(good, rng.normal(size=(10, 5)))
    with pytest.raises(ValueError, match="non-finite"):
        precision_recall(good, np.full((10, 4), np.nan))
    with pytest.raises(ValueError, match="k must be a positive integer.*0"):
        precision_recall(good, good, k=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer.*0"):
        precision_recall(good, good, batch_size=0)
