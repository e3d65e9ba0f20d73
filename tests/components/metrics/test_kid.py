"""KID against an explicit double loop, its unbiasedness (against the biased V-statistic), and its
response to a mean shift."""
import numpy as np
import pytest
import torch

from genray.components.metrics.kid import kid, mmd2_unbiased


def naive_mmd2(fa, fb, degree=3, gamma=None, coef0=1.0) -> float:
    """Gretton et al. 2012, eq. 3, written out term by term."""
    gamma = 1.0 / fa.shape[1] if gamma is None else gamma
    k = lambda x, y: (gamma * float(np.dot(x, y)) + coef0) ** degree  # noqa: E731
    m, n = len(fa), len(fb)
    aa = sum(k(fa[i], fa[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    bb = sum(k(fb[i], fb[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    ab = sum(k(fa[i], fb[j]) for i in range(m) for j in range(n)) / (m * n)
    return aa + bb - 2 * ab


def biased_mmd2(fa, fb) -> float:
    """The V-statistic: the same sums with the i == j terms kept, over m^2 and n^2."""
    k = lambda x, y: (x @ y.T / fa.shape[1] + 1.0) ** 3  # noqa: E731
    return float(k(fa, fa).mean() + k(fb, fb).mean() - 2 * k(fa, fb).mean())


@pytest.mark.parametrize(
    "kernel", [{}, {"degree": 2, "gamma": 0.3, "coef0": 0.5}, {"degree": 1, "gamma": 1.0, "coef0": 0.0}]
)
def test_matches_a_naive_double_loop(kernel):
    rng = np.random.default_rng(0)
    fa, fb = rng.normal(size=(7, 4)), rng.normal(0.3, 1.2, size=(9, 4))
    expected = naive_mmd2(fa, fb, **kernel)
    assert mmd2_unbiased(fa, fb, **kernel) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_linear_kernel_is_the_unbiased_squared_mean_distance():
    # With k(x, y) = x.y the U-statistic is ||mean a||^2 + ||mean b||^2 - 2 mean a . mean b with
    # each squared norm's diagonal removed: an independent closed form for the vectorised sums.
    rng = np.random.default_rng(1)
    fa, fb = rng.normal(size=(30, 5)), rng.normal(1.0, 1.0, size=(40, 5))

    def sq_norm_u(f):
        s = f.sum(0)
        return (s @ s - (f * f).sum()) / (len(f) * (len(f) - 1))

    expected = sq_norm_u(fa) + sq_norm_u(fb) - 2 * fa.mean(0) @ fb.mean(0)
    assert mmd2_unbiased(fa, fb, degree=1, gamma=1.0, coef0=0.0) == pytest.approx(expected, rel=1e-10)


def test_torch_float32_input_gives_the_numpy_result_in_float64():
    rng = np.random.default_rng(2)
    fa, fb = rng.normal(size=(20, 6)).astype(np.float32), rng.normal(size=(25, 6)).astype(np.float32)
    expected = naive_mmd2(fa.astype(np.float64), fb.astype(np.float64))
    assert mmd2_unbiased(torch.from_numpy(fa), torch.from_numpy(fb)) == pytest.approx(expected, rel=1e-10)


def test_unbiased_for_two_samples_of_one_distribution_where_the_v_statistic_is_not():
    rng = np.random.default_rng(3)
    draws = 400
    u, v = np.empty(draws), np.empty(draws)
    for i in range(draws):
        fa, fb = rng.normal(size=(20, 4)), rng.normal(size=(20, 4))
        u[i], v[i] = mmd2_unbiased(fa, fb), biased_mmd2(fa, fb)
    se_u, se_v = u.std(ddof=1) / np.sqrt(draws), v.std(ddof=1) / np.sqrt(draws)
    assert abs(u.mean()) < 3 * se_u
    assert (u < 0).mean() > 0.2  # a U-statistic of a zero quantity takes both signs
    # The V-statistic keeps k(x, x) > E k(x, y): a positive bias of about 2 (E k(x,x) - E k(x,y)) / m.
    assert v.mean() > 20 * se_v
    assert v.mean() > u.mean() + 10 * se_u


def test_positive_and_growing_with_the_mean_shift():
    rng = np.random.default_rng(4)
    fa = rng.normal(size=(400, 8))
    noise = rng.normal(size=(400, 8))
    shifts = [0.0, 0.25, 0.5, 1.0]
    mmds = [mmd2_unbiased(fa, noise + s) for s in shifts]
    assert abs(mmds[0]) < 0.1 * mmds[1]
    assert 0 < mmds[1] < mmds[2] < mmds[3]
    means = [kid(fa, noise + s, num_subsets=10, subset_size=200)[0] for s in shifts[1:]]
    assert 0 < means[0] < means[1] < means[2]


def test_kid_of_disjoint_halves_of_one_set_is_near_zero():
    rng = np.random.default_rng(5)
    f = rng.normal(size=(2000, 8)) * rng.uniform(0.5, 1.5, size=8)
    f = f[rng.permutation(len(f))]
    mean, std = kid(f[:1000], f[1000:], num_subsets=20, subset_size=300)
    shifted, shifted_std = kid(f[:1000], f[1000:] + 0.5, num_subsets=20, subset_size=300)
    assert 0 < std < 0.1 * shifted
    assert abs(mean) < std  # well inside one subset's spread around 0 ...
    assert abs(mean) < 0.02 * shifted  # ... and tiny next to a shift of half a standard deviation
    assert shifted > 5 * shifted_std


def test_deterministic_for_a_seed_and_varies_with_it():
    rng = np.random.default_rng(6)
    fa, fb = rng.normal(size=(300, 5)), rng.normal(0.2, 1.0, size=(250, 5))
    a = kid(fa, fb, num_subsets=8, subset_size=100, seed=3)
    assert kid(fa, fb, num_subsets=8, subset_size=100, seed=3) == a
    assert kid(fa, fb, num_subsets=8, subset_size=100, seed=4) != a


def test_subsets_larger_than_the_sets_use_all_of_the_smaller_one():
    # Equal sizes and subset_size >= N: every subset is a permutation of the whole set, and the
    # U-statistic does not depend on order.
    rng = np.random.default_rng(7)
    fa, fb = rng.normal(size=(50, 3)), rng.normal(0.5, 1.0, size=(50, 3))
    mean, std = kid(fa, fb, num_subsets=5, subset_size=10_000)
    assert mean == pytest.approx(mmd2_unbiased(fa, fb), rel=1e-10)
    assert std < 1e-10 * abs(mean)


def test_bad_inputs_raise_value_errors_that_name_the_problem():
    rng = np.random.default_rng(8)
    good = rng.normal(size=(10, 4))
    with pytest.raises(ValueError, match=r"2-D .*\(10,\)"):
        mmd2_unbiased(rng.normal(size=10), good)
    with pytest.raises(ValueError, match=r"fb needs at least 2 .*\(1, 4\)"):
        mmd2_unbiased(good, rng.normal(size=(1, 4)))
    with pytest.raises(ValueError, match=r"\(10, 4\) and \(10, 5\)"):
        kid(good, rng.normal(size=(10, 5)))
    with pytest.raises(ValueError, match="non-finite"):
        mmd2_unbiased(good, np.full((3, 4), np.inf))
    with pytest.raises(ValueError, match="degree must be a positive integer.*0"):
        mmd2_unbiased(good, good, degree=0)
    with pytest.raises(ValueError, match="gamma must be > 0.*-1"):
        mmd2_unbiased(good, good, gamma=-1.0)
    with pytest.raises(ValueError, match="num_subsets must be a positive integer.*0"):
        kid(good, good, num_subsets=0)
    with pytest.raises(ValueError, match="subset_size must be an integer >= 2.*1"):
        kid(good, good, subset_size=1)
