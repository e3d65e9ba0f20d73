"""Improved precision and recall: how much of the fake set lies on the real manifold, and how much
of the real manifold the fake set covers.

Each set's manifold is estimated as the union of balls around its points, each ball's radius being
the distance to the point's k-th nearest neighbour within its own set (Kynkäänniemi et al. 2019,
"Improved Precision and Recall Metric for Assessing Generative Models", eqs. 1-2):

    f(x, S)   = 1 if ||x - s|| <= ||s - NN_k(s, S)|| for some s in S, else 0
    precision = mean over fake x of f(x, real)
    recall    = mean over real x of f(x, fake)

Fidelity and diversity come apart: a generator that drops modes keeps precision near 1 while its
recall falls to the fraction of the real set it still covers. The balls slightly inflate each
manifold, more so for small k and few points, so two sets that overlap on half of their supports
score a little above 0.5.

    precision, recall = precision_recall(extract_features(clf, x_real), extract_features(clf, x_fake))
"""
from __future__ import annotations

import numpy as np
from torch import Tensor

from .frechet import as_features


def _sq_dists(a: np.ndarray, sq_a: np.ndarray, b: np.ndarray, sq_b: np.ndarray) -> np.ndarray:
    """(B, D), (N, D) -> (B, N) squared Euclidean distances by one matmul, clipped at 0."""
    d2 = sq_a[:, None] + sq_b[None, :] - 2.0 * (a @ b.T)  # (B, N)
    return np.maximum(d2, 0.0, out=d2)  # cancellation can leave tiny negatives


def _knn_sq_radii(f: np.ndarray, sq: np.ndarray, k: int, batch_size: int) -> np.ndarray:
    """Squared distance from each point to its k-th nearest neighbour in f, the point excluded."""
    n = f.shape[0]
    radii = np.empty(n)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        d2 = _sq_dists(f[start:stop], sq[start:stop], f, sq)  # (B, N)
        d2[np.arange(stop - start), np.arange(start, stop)] = 0.0  # the point itself, exactly
        # The point itself sits at sorted index 0, so index k is its k-th neighbour; duplicates
        # of the point count as neighbours at distance 0, as in the reference implementation.
        radii[start:stop] = np.partition(d2, k, axis=1)[:, k]
    return radii


def precision_recall(
    real: np.ndarray | Tensor,
    fake: np.ndarray | Tensor,
    *,
    k: int = 3,
    batch_size: int = 1024,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of (M, D) fake features against
    (N, D) real ones, with k-th-nearest-neighbour balls (k = 3 as in the paper).

    A point on a ball's boundary counts as inside (<=). Distances are computed in float64 in
    batches of batch_size rows, so memory is O(batch_size * max(N, M)): about 80 MB of distances
    for the default batch against 10,000 points. float64 because ||a||^2 + ||b||^2 - 2 a.b
    cancels badly in float32 for close neighbours of large-norm features, and the radii are
    exactly those close distances.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer (the paper uses 3), got {k!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    why = f"(k + 1 = {k + 1}) for a k-th nearest neighbour other than the point itself"
    real, fake = (as_features(f, name, min_rows=k + 1, why=why) for f, name in ((real, "real"), (fake, "fake")))
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"real and fake must have the same feature size D, got shapes {real.shape} and {fake.shape}"
        )

    # Setup: each set's ball radii, squared like the distances they are compared with.
    sq_real, sq_fake = (real * real).sum(1), (fake * fake).sum(1)
    r2_real = _knn_sq_radii(real, sq_real, k, batch_size)  # (N,)
    r2_fake = _knn_sq_radii(fake, sq_fake, k, batch_size)  # (M,)

    # One pass over fake-vs-real distances decides both: a row says whether that fake point is in
    # some real ball (precision); a column, OR-ed over batches, whether that real point is in
    # some fake ball (recall).
    fake_in_real = np.empty(fake.shape[0], dtype=bool)
    real_in_fake = np.zeros(real.shape[0], dtype=bool)
    for start in range(0, fake.shape[0], batch_size):
        stop = min(start + batch_size, fake.shape[0])
        d2 = _sq_dists(fake[start:stop], sq_fake[start:stop], real, sq_real)  # (B, N)
        fake_in_real[start:stop] = (d2 <= r2_real[None, :]).any(axis=1)
        real_in_fake |= (d2 <= r2_fake[start:stop, None]).any(axis=0)
    return float(fake_in_real.mean()), float(real_in_fake.mean())
