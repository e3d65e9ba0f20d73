"""The Fréchet distance against its closed forms and an independent scipy.linalg.sqrtm computation."""
import numpy as np
import pytest
import scipy.linalg
import torch

from genray.components.metrics.frechet import (
    GaussianStats,
    frechet_distance,
    frechet_distance_features,
    gaussian_stats,
)


def random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    m = rng.normal(size=(d, d))
    return m @ m.T / d + 0.1 * np.eye(d)


def correlated_features(rng: np.random.Generator, n: int, d: int, shift: float = 0.0) -> np.ndarray:
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + shift


def reference_fd(mu_a, cov_a, mu_b, cov_b) -> float:
    """The textbook computation (as in pytorch-fid): sqrtm of the non-symmetric product."""
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean).real)


def test_gaussian_stats_are_mean_and_unbiased_covariance_in_float64():
    f = correlated_features(np.random.default_rng(0), 300, 5)
    stats = gaussian_stats(torch.tensor(f, dtype=torch.float32))
    assert stats.mean.dtype == np.float64 and stats.cov.dtype == np.float64
    assert stats.mean.shape == (5,) and stats.cov.shape == (5, 5) and stats.n == 300
    f32 = f.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(stats.mean, f32.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, (f32 - f32.mean(0)).T @ (f32 - f32.mean(0)) / 299, rtol=1e-10)


def test_one_feature_dimension_gives_a_1x1_covariance():
    stats = gaussian_stats(np.array([[1.0], [3.0]]))
    assert stats.cov.shape == (1, 1) and stats.cov[0, 0] == pytest.approx(2.0)


def test_distance_of_a_set_to_itself_is_zero():
    f = correlated_features(np.random.default_rng(1), 500, 16, shift=3.0)
    stats = gaussian_stats(f)
    scale = np.trace(stats.cov)
    assert frechet_distance(stats, stats) < 1e-6 * scale
    assert frechet_distance_features(f, f) < 1e-6 * scale


def test_diagonal_covariances_match_the_closed_form():
    rng = np.random.default_rng(2)
    d = 12
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
    var_a, var_b = rng.uniform(0.1, 3.0, size=d), rng.uniform(0.1, 3.0, size=d)
    a = GaussianStats(mean=mu_a, cov=np.diag(var_a), n=100)
    b = GaussianStats(mean=mu_b, cov=np.diag(var_b), n=100)
    # Commuting covariances: (C_a C_b)^{1/2} = diag(sqrt(a_i b_i)).
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-10)


def test_equal_covariances_leave_only_the_mean_term():
    rng = np.random.default_rng(3)
    cov = random_spd(rng, 8)
    mu_a, mu_b = rng.normal(size=8), rng.normal(size=8)
    fd = frechet_distance(GaussianStats(mu_a, cov, 10), GaussianStats(mu_b, cov, 10))
    assert fd == pytest.approx(np.sum((mu_a - mu_b) ** 2), rel=1e-8)


@pytest.mark.parametrize("d", [2, 10, 32])
def test_full_spd_covariances_match_scipy_sqrtm(d):
    rng = np.random.default_rng(d)
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
    cov_a, cov_b = random_spd(rng, d), random_spd(rng, d)
    fd = frechet_distance(GaussianStats(mu_a, cov_a, 50), GaussianStats(mu_b, cov_b, 50))
    assert fd == pytest.approx(reference_fd(mu_a, cov_a, mu_b, cov_b), rel=1e-8)
    # ... and the trace term is not trivially zero, so the comparison tests the matrix root.
    assert fd > np.sum((mu_a - mu_b) ** 2) + 1e-3


def test_random_features_match_an_independent_computation():
    rng = np.random.default_rng(4)
    fa = correlated_features(rng, 400, 20)
    fb = correlated_features(rng, 300, 20, shift=0.5)
    expected = reference_fd(fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False))
    assert frechet_distance_features(fa, fb) == pytest.approx(expected, rel=1e-8)


def test_symmetric_and_invariant_to_a_common_translation():
    rng = np.random.default_rng(5)
    fa, fb = correlated_features(rng, 200, 8), correlated_features(rng, 250, 8, shift=1.0)
    fd = frechet_distance_features(fa, fb)
    assert fd > 1.0
    assert frechet_distance_features(fb, fa) == pytest.approx(fd, rel=1e-10)
    offset = rng.normal(size=8) * 100
    assert frechet_distance_features(fa + offset, fb + offset) == pytest.approx(fd, rel=1e-8)


def test_grows_with_the_mean_shift():
    rng = np.random.default_rng(6)
    fa = correlated_features(rng, 300, 6)
    fds = [frechet_distance_features(fa, fa + s) for s in (0.0, 0.5, 1.0)]
    # A shift by s in every coordinate moves only the mean: exactly 6 s^2.
    np.testing.assert_allclose(fds, [0.0, 6 * 0.25, 6 * 1.0], atol=1e-8)


def test_singular_covariances_stay_finite_and_non_negative():
    # Fewer samples than features, as with a small sample set: both covariances are rank 9.
    rng = np.random.default_rng(7)
    fa, fb = rng.normal(size=(10, 64)), rng.normal(size=(10, 64))
    fd = frechet_distance_features(fa, fb)
    assert np.isfinite(fd) and fd > 0
    assert frechet_distance_features(fa, fa) < 1e-6 * np.trace(np.cov(fa, rowvar=False))


def test_bad_inputs_raise_value_errors_that_name_the_shapes():
    rng = np.random.default_rng(8)
    with pytest.raises(ValueError, match=r"at least 2 .*\(1, 4\)"):
        gaussian_stats(rng.normal(size=(1, 4)))
    with pytest.raises(ValueError, match=r"2-D .*\(5,\)"):
        gaussian_stats(rng.normal(size=5))
    with pytest.raises(ValueError, match=r"\(10, 4\) and \(10, 5\)"):
        frechet_distance_features(rng.normal(size=(10, 4)), rng.normal(size=(10, 5)))
    with pytest.raises(ValueError, match=r"\(4,\).*\(5,\)"):
        frechet_distance(gaussian_stats(rng.normal(size=(10, 4))), gaussian_stats(rng.normal(size=(10, 5))))
    with pytest.raises(ValueError, match="non-finite"):
        gaussian_stats(np.array([[0.0, np.nan], [1.0, 2.0]]))
