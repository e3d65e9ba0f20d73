"""MIG and the β-VAE score on synthetic codes whose disentanglement is known by construction, an
exact small MIG case, and the histogram discretisation they rest on."""
import numpy as np
import pytest
import torch

from genray.components.metrics.disentanglement import (
    BetaVAEResult,
    MIGResult,
    beta_vae_score,
    discretize,
    mutual_info_gap,
)

N, K, VALUES = 5000, 4, 10


@pytest.fixture(scope="module")
def factors() -> np.ndarray:
    return np.random.default_rng(0).integers(0, VALUES, size=(N, K))  # (N, K) independent factors


def binary_entropy(p: float) -> float:
    return -p * np.log(p) - (1 - p) * np.log(1 - p)


# --- discretize -------------------------------------------------------------------------------


def test_discretize_uses_equal_width_bins_over_each_columns_range():
    rng = np.random.default_rng(1)
    values = np.stack([rng.normal(size=1000), 100 + 5 * rng.exponential(size=1000)], axis=1)
    labels = discretize(values, num_bins=7)
    assert labels.shape == (1000, 2) and labels.dtype == np.int64
    for j in range(2):
        assert labels[:, j].min() == 0 and labels[:, j].max() == 6  # min in the first, max in the last
        counts, _ = np.histogram(values[:, j], bins=7)  # numpy's equal-width histogram of the column
        np.testing.assert_array_equal(np.bincount(labels[:, j], minlength=7), counts)


def test_discretize_known_values_1d_and_constant_columns():
    labels = discretize(np.array([0.0, 0.24, 0.25, 0.5, 0.99, 1.0]), num_bins=4)  # edges 0, .25, .5, .75, 1
    np.testing.assert_array_equal(labels, [0, 0, 1, 2, 3, 3])
    constant = discretize(np.full((5, 1), 3.0), num_bins=4)
    assert len(np.unique(constant)) == 1
    assert discretize(torch.arange(6.0), num_bins=3).tolist() == [0, 0, 1, 1, 2, 2]


# --- MIG --------------------------------------------------------------------------------------


def test_mig_matches_a_hand_computed_binary_case():
    # v = 0 0 0 0 1 1 1 1; z0 copies v, z1 flips one sample in each class. The empirical joint of
    # (z1, v) is (3/8, 1/8; 1/8, 3/8): I(z1; v) = ln 2 - h(1/4) and the gap is h(1/4) / ln 2.
    v = np.array([[0, 0, 0, 0, 1, 1, 1, 1]]).T
    z = np.array([[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 0]], dtype=float).T
    result = mutual_info_gap(z, v)
    assert isinstance(result, MIGResult) and result.per_factor.shape == (1,)
    assert result.score == pytest.approx(binary_entropy(0.25) / np.log(2), rel=1e-12)


def test_mig_is_near_one_for_codes_that_copy_the_factors(factors):
    rng = np.random.default_rng(2)
    codes = np.concatenate([factors + 0.01 * rng.normal(size=(N, K)), rng.normal(size=(N, 3))], axis=1)
    result = mutual_info_gap(codes, factors)
    assert result.score > 0.9
    assert result.per_factor.shape == (K,) and (result.per_factor > 0.9).all()
    assert result.score == pytest.approx(result.per_factor.mean())
    # Permuting and rescaling the latents changes nothing: MIG looks at each latent's bins only.
    perm = rng.permutation(codes.shape[1])
    moved = mutual_info_gap(3.0 * codes[:, perm] - 1.0, factors)
    assert moved.score == pytest.approx(result.score, rel=1e-12)


def test_mig_is_near_zero_for_codes_independent_of_the_factors(factors):
    codes = np.random.default_rng(3).normal(size=(N, 6))
    result = mutual_info_gap(codes, factors)
    assert 0 <= result.score < 0.05


def test_mixing_two_factors_into_one_latent_lowers_mig(factors):
    rng = np.random.default_rng(4)
    clean = factors + 0.01 * rng.normal(size=(N, K))
    mixed = clean.copy()
    mixed[:, 0] = clean[:, 0] + clean[:, 1]  # z0 now knows about v0 and v1, neither cleanly
    pure, entangled = mutual_info_gap(clean, factors), mutual_info_gap(mixed, factors)
    assert entangled.score < pure.score - 0.15
    assert entangled.per_factor[0] < 0.5 and entangled.per_factor[1] < pure.per_factor[1] - 0.1
    # v2 and v3 keep their latents; only their runner-up (plug-in bias of an unrelated latent) moves.
    np.testing.assert_allclose(entangled.per_factor[2:], pure.per_factor[2:], atol=0.01)
    rotated = clean.copy()
    rotated[:, 0], rotated[:, 1] = clean[:, 0] + clean[:, 1], clean[:, 0] - clean[:, 1]
    assert mutual_info_gap(rotated, factors).per_factor[:2].max() < 0.1  # split evenly: no gap


def test_mig_bad_inputs_raise_value_errors_that_name_the_problem(factors):
    codes = np.random.default_rng(5).normal(size=(N, 3))
    constant = factors.copy()
    constant[:, 2] = 7
    with pytest.raises(ValueError, match=r"factor 2 takes a single value \(7\)"):
        mutual_info_gap(codes, constant)
    with pytest.raises(ValueError, match=r"D >= 2 .*\(5000, 1\)"):
        mutual_info_gap(codes[:, :1], factors)
    with pytest.raises(ValueError, match=r"one row per sample.*\(5000, 3\) and \(4999, 4\)"):
        mutual_info_gap(codes, factors[:-1])
    with pytest.raises(ValueError, match="integer labels, got dtype float64.*discretize"):
        mutual_info_gap(codes, factors.astype(float))
    with pytest.raises(ValueError, match=r"codes must be a 2-D .*\(5000,\)"):
        mutual_info_gap(codes[:, 0], factors)
    with pytest.raises(ValueError, match="num_bins must be an integer >= 2"):
        mutual_info_gap(codes, factors, num_bins=1)
    with pytest.raises(ValueError, match="non-finite"):
        discretize(np.array([[0.0], [np.nan]]))


# --- β-VAE score ------------------------------------------------------------------------------


def sample_factors(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, VALUES, size=(n, 5)).astype(float)  # (n, 5)


def test_beta_vae_score_is_high_for_a_noisy_copy_of_the_factors():
    noise = np.random.default_rng(6)
    result = beta_vae_score(lambda f: f + 0.1 * noise.normal(size=f.shape), sample_factors, num_factors=5)
    assert isinstance(result, BetaVAEResult)
    assert result.train_accuracy > 0.95 and result.eval_accuracy > 0.95


def test_beta_vae_score_is_near_chance_for_a_random_code():
    noise = np.random.default_rng(7)
    result = beta_vae_score(lambda f: noise.normal(size=(len(f), 8)), sample_factors, num_factors=5)
    assert result.eval_accuracy < 1 / 5 + 0.15


def test_beta_vae_pairs_share_exactly_the_chosen_factor_and_encode_is_batched():
    calls = []

    def encode(f):
        calls.append(f.copy())
        return torch.tensor(np.tanh(f @ np.arange(1.0, 16.0).reshape(3, 5)))  # (n, 5), a torch output

    def continuous(n, rng):  # continuous factors: two draws agree only where the metric copied
        return rng.uniform(size=(n, 3))

    kw = dict(num_factors=3, pairs_per_point=16, num_train=100, num_eval=50)
    result = beta_vae_score(encode, continuous, **kw)
    assert 0 <= result.eval_accuracy <= 1
    assert len(calls) <= 4  # whole points batched together, not 150 calls of one point each
    for f in calls:
        assert f.shape[0] % (2 * 16) == 0 and f.shape[0] > 2 * 16
        f1, f2 = np.split(f, 2)
        shared = f1 == f2  # (n, K)
        assert (shared.sum(1) == 1).all()
        # Consecutive runs of 16 pairs belong to one point and share the same factor.
        np.testing.assert_array_equal(shared.reshape(-1, 16, 3).argmax(2).std(1), 0)
    # The same seed with a deterministic encoder gives the same result.
    assert beta_vae_score(encode, continuous, **kw) == result


def test_beta_vae_bad_inputs_raise_value_errors_that_name_the_problem():
    enc = lambda f: f  # noqa: E731
    with pytest.raises(ValueError, match="num_factors must be an integer >= 2, got 1"):
        beta_vae_score(enc, sample_factors, num_factors=1)
    with pytest.raises(ValueError, match="pairs_per_point must be an integer >= 1, got 0"):
        beta_vae_score(enc, sample_factors, num_factors=5, pairs_per_point=0)
    small = dict(num_train=2, num_eval=1, pairs_per_point=32)  # one call of 2 x 2 x 32 factor vectors
    with pytest.raises(ValueError, match=r"\(n, num_factors\) = \(64, 4\) .*\(64, 5\)"):
        beta_vae_score(enc, sample_factors, num_factors=4, **small)
    with pytest.raises(ValueError, match=r"one row per factor vector, got shape \(64, 5\) for 128"):
        beta_vae_score(lambda f: f[: len(f) // 2], sample_factors, num_factors=5, **small)
