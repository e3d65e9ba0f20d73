"""Disentanglement scores of a representation, on a dataset with known generative factors.

Mutual information gap (Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs", eq. 6):

    MIG = 1/K sum_k (I(z_j*; v_k) - I(z_j°; v_k)) / H(v_k)

where z_j* and z_j° are the latents with the largest and second-largest mutual information with
factor v_k. It is 1 when every factor is captured by one latent and by no other, 0 when the best
two latents know equally much. Computed here is the variant of Locatello et al. 2019 and
disentanglement_lib: the codes (e.g. the means of q(z|x)) are discretised into equal-width
histogram bins and I is the plug-in estimate from the joint histogram of codes and factors, in
nats like H. This is not Chen et al.'s own estimator, which uses the full q(z_j|x) (Monte Carlo
over its samples) rather than one binned point per x. The plug-in estimate is biased upwards by
about (bins - 1)(values - 1) / (2N) nats, so use N well above bins x values.

β-VAE score (Higgins et al. 2017, "β-VAE", section 3): fix one factor k, draw pairs of factor
vectors that share factor k's value (the other factors drawn independently), encode both, and
average |z1 - z2| over the pairs; a linear classifier predicting k from that average scores well
when the factor lives in its own latents (their difference is then small). Its accuracy on
held-out points is the score; chance is 1/K. As Kim & Mnih 2018 note, it can reach 100% with only
K-1 factors disentangled, so read it alongside MIG.

    codes = encode(x)                                 # (N, D) means of q(z|x)
    mig = mutual_info_gap(codes, factors).score       # factors (N, K) int labels
    bvae = beta_vae_score(encode_factors, sample_factors, num_factors=K).eval_accuracy
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from torch import Tensor

# scikit-learn is imported where it is used: importing it takes ~1 s, and this module is imported
# by every training worker (the quality probe), most of which never score disentanglement.

# Rows per encode call in beta_vae_score: whole points (2 * pairs_per_point rows each) are
# batched together up to this many rows, so a renderer + encoder sees a few large batches.
_ENCODE_ROWS = 4096


def _as_array(x: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().to("cpu").numpy()
    return np.asarray(x)


def _check_positive_int(value: int, name: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def discretize(values: np.ndarray | Tensor, num_bins: int = 20) -> np.ndarray:
    """Equal-width histogram bins over each column's own [min, max] (disentanglement_lib's
    _histogram_discretize): (N,) or (N, D) floats -> int64 labels 0..num_bins-1, same shape.

    The maximum falls in the last bin. A constant column lands in one bin (numpy widens its range
    by 0.5 each side). disentanglement_lib's labels are these plus 1, which changes no MI.
    """
    _check_positive_int(num_bins, "num_bins")
    v = _as_array(values).astype(np.float64)
    if v.ndim not in (1, 2) or v.shape[0] == 0:
        raise ValueError(f"values must be a non-empty (N,) or (N, D) array, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError(f"values has non-finite entries (shape {v.shape}); check the encoder's outputs")
    cols = v.reshape(v.shape[0], -1)  # (N, D)
    out = np.empty(cols.shape, dtype=np.int64)
    for j in range(cols.shape[1]):  # a loop over columns: each has its own range
        edges = np.histogram_bin_edges(cols[:, j], bins=num_bins)  # (num_bins + 1,)
        out[:, j] = np.digitize(cols[:, j], edges[:-1]) - 1
    return out.reshape(v.shape)


@dataclass(frozen=True)
class MIGResult:
    """MIG averaged over factors (score) and each factor's normalised gap (per_factor, (K,))."""

    score: float
    per_factor: np.ndarray


def mutual_info_gap(
    codes: np.ndarray | Tensor,
    factors: np.ndarray | Tensor,
    *,
    num_bins: int = 20,
) -> MIGResult:
    """MIG (Chen et al. 2018, eq. 6) of (N, D) float codes, D >= 2, against (N, K) integer factor
    labels, with codes discretised by `discretize` and plug-in MI from joint histograms (see the
    module docstring for how this differs from Chen et al.'s estimator)."""
    _check_positive_int(num_bins, "num_bins", minimum=2)
    z = _as_array(codes)
    v = _as_array(factors)
    if z.ndim != 2:
        raise ValueError(f"codes must be a 2-D array (N, D), got shape {z.shape}")
    if z.shape[1] < 2:
        raise ValueError(f"codes needs D >= 2 latents for a gap between the top two, got shape {z.shape}")
    if v.ndim != 2:
        raise ValueError(f"factors must be a 2-D array (N, K) of integer labels, got shape {v.shape}")
    if z.shape[0] != v.shape[0]:
        raise ValueError(
            f"codes and factors must have one row per sample, got shapes {z.shape} and {v.shape}"
        )
    if not (np.issubdtype(v.dtype, np.integer) or v.dtype == np.bool_):
        raise ValueError(
            f"factors must hold integer labels, got dtype {v.dtype}; pass discretize(factors) "
            "for continuous factors"
        )
    from sklearn.metrics import mutual_info_score

    z_binned = discretize(z, num_bins)  # (N, D)

    num_latents, num_factors = z.shape[1], v.shape[1]
    mi = np.empty((num_latents, num_factors))
    entropy = np.empty(num_factors)
    for k in range(num_factors):
        entropy[k] = mutual_info_score(v[:, k], v[:, k])  # H(v_k) = I(v_k; v_k), nats
        if entropy[k] <= 0:
            raise ValueError(
                f"factor {k} takes a single value ({v[0, k]}) in these samples, so H(v_{k}) = 0 "
                "and its gap cannot be normalised; drop the factor or sample it more widely"
            )
        for j in range(num_latents):
            mi[j, k] = mutual_info_score(v[:, k], z_binned[:, j])

    # Chen et al. 2018, eq. 6: the gap between the two most informative latents, over H(v_k).
    top2 = -np.sort(-mi, axis=0)[:2]  # (2, K), descending
    per_factor = (top2[0] - top2[1]) / entropy
    return MIGResult(score=float(per_factor.mean()), per_factor=per_factor)


@dataclass(frozen=True)
class BetaVAEResult:
    """Accuracy of the linear classifier on the points it was fit on and on held-out points."""

    train_accuracy: float
    eval_accuracy: float


def _sampled(f: np.ndarray | Tensor, n: int, num_factors: int) -> np.ndarray:
    out = np.array(_as_array(f), dtype=np.float64)  # a copy: the caller's array stays untouched
    if out.shape != (n, num_factors):
        raise ValueError(
            f"sample_factors(n, rng) must return an (n, num_factors) = ({n}, {num_factors}) array, "
            f"got shape {out.shape}"
        )
    return out


def _beta_vae_points(
    encode: Callable[[np.ndarray], np.ndarray | Tensor],
    sample_factors: Callable[[int, np.random.Generator], np.ndarray | Tensor],
    num_factors: int,
    pairs: int,
    num_points: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """num_points (feature, label) pairs of Higgins et al. 2017, section 3."""
    labels = rng.integers(num_factors, size=num_points)  # the factor held fixed, per point
    points_per_call = max(1, _ENCODE_ROWS // (2 * pairs))
    features = []
    for start in range(0, num_points, points_per_call):
        k = labels[start : start + points_per_call]  # (P,)
        n = len(k) * pairs
        f1 = _sampled(sample_factors(n, rng), n, num_factors)  # (P * pairs, K)
        f2 = _sampled(sample_factors(n, rng), n, num_factors)
        rows, cols = np.arange(n), np.repeat(k, pairs)
        f2[rows, cols] = f1[rows, cols]  # each pair shares its point's factor k

        z = np.asarray(_as_array(encode(np.concatenate([f1, f2]))), dtype=np.float64)  # (2n, D)
        if z.ndim != 2 or z.shape[0] != 2 * n:
            raise ValueError(
                f"encode(factors) must return a 2-D array (n, D) with one row per factor vector, "
                f"got shape {z.shape} for {2 * n} factor vectors"
            )
        if not np.isfinite(z).all():
            raise ValueError(f"encode returned non-finite codes (shape {z.shape})")
        diff = np.abs(z[:n] - z[n:]).reshape(len(k), pairs, -1)  # (P, pairs, D)
        features.append(diff.mean(axis=1))  # (P, D)
    return np.concatenate(features), labels


def beta_vae_score(
    encode: Callable[[np.ndarray], np.ndarray | Tensor],
    sample_factors: Callable[[int, np.random.Generator], np.ndarray | Tensor],
    *,
    num_factors: int,
    pairs_per_point: int = 64,
    num_train: int = 500,
    num_eval: int = 250,
    seed: int = 0,
) -> BetaVAEResult:
    """The β-VAE disentanglement metric (Higgins et al. 2017, section 3).

    sample_factors(n, rng) -> (n, num_factors) factor vectors drawn from the dataset's factor
    distribution; encode(factors (n, K)) -> (n, D) codes, the caller rendering the observations
    and encoding them (use the posterior mean for a stochastic encoder). Each point fixes a
    factor k chosen uniformly, draws pairs_per_point pairs sharing factor k, and is the mean over
    pairs of |z1 - z2|. A logistic regression on standardised features is fit on num_train points
    and scored on num_eval fresh ones. Deterministic for a seed when encode is.
    """
    _check_positive_int(num_factors, "num_factors", minimum=2)
    _check_positive_int(pairs_per_point, "pairs_per_point")
    _check_positive_int(num_train, "num_train", minimum=2)
    _check_positive_int(num_eval, "num_eval")

    rng = np.random.default_rng(seed)
    x_train, y_train = _beta_vae_points(encode, sample_factors, num_factors, pairs_per_point, num_train, rng)
    x_eval, y_eval = _beta_vae_points(encode, sample_factors, num_factors, pairs_per_point, num_eval, rng)
    if len(np.unique(y_train)) < 2:
        raise ValueError(
            f"the {num_train} training points all fix the same factor, so there is nothing to "
            "classify; raise num_train"
        )

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    classifier.fit(x_train, y_train)
    return BetaVAEResult(
        train_accuracy=float(classifier.score(x_train, y_train)),
        eval_accuracy=float(classifier.score(x_eval, y_eval)),
    )
