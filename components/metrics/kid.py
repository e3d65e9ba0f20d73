"""Kernel Inception Distance: the unbiased squared MMD between two sets of features.

    k(x, y)  = (gamma x.y + coef0)^degree,   by default (x.y / D + 1)^3
    MMD^2_u  = 1/(m(m-1)) sum_{i != j} k(a_i, a_j) + 1/(n(n-1)) sum_{i != j} k(b_i, b_j)
               - 2/(m n) sum_{i, j} k(a_i, b_j)

is the unbiased U-statistic estimate of the squared maximum mean discrepancy (Gretton et al. 2012,
eq. 3); KID is this with the cubic polynomial kernel on Inception features, averaged over random
subsets (Bińkowski et al. 2018, "Demystifying MMD GANs", section 2.3 and appendix D). Unlike the
Fréchet distance it assumes no Gaussian form and its estimate is unbiased, so it is comparable
across sample sizes; being a U-statistic it can come out slightly negative when the sets match.

    mean, std = kid(extract_features(clf, x_real), extract_features(clf, x_fake))
    mmd2 = mmd2_unbiased(fa, fb)  # one estimate on all of both sets
"""
from __future__ import annotations

import numpy as np
from torch import Tensor

from .frechet import as_features


def _check_pair(fa: np.ndarray | Tensor, fb: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
    why = "for the unbiased MMD (it leaves out i == j)"
    fa, fb = as_features(fa, "fa", why=why), as_features(fb, "fb", why=why)
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(
            f"fa and fb must have the same feature size D, got shapes {fa.shape} and {fb.shape}"
        )
    return fa, fb


def _check_kernel(degree: int, gamma: float | None, coef0: float) -> None:
    if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)) or degree < 1:
        raise ValueError(f"degree must be a positive integer (3 for KID), got {degree!r}")
    if gamma is not None and not gamma > 0:
        raise ValueError(f"gamma must be > 0, or None for 1 / D, got {gamma!r}")
    if not np.isfinite(coef0):
        raise ValueError(f"coef0 must be finite, got {coef0!r}")


def _mmd2(fa: np.ndarray, fb: np.ndarray, degree: int, gamma: float, coef0: float) -> float:
    """The U-statistic on validated float64 features; all three kernel matrices by matmul."""
    m, n = fa.shape[0], fb.shape[0]
    k_aa = (gamma * (fa @ fa.T) + coef0) ** degree  # (m, m)
    k_bb = (gamma * (fb @ fb.T) + coef0) ** degree  # (n, n)
    k_ab = (gamma * (fa @ fb.T) + coef0) ** degree  # (m, n)
    # Gretton et al. 2012, eq. 3: the within-set sums leave out the i == j terms.
    term_aa = (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
    term_bb = (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
    return float(term_aa + term_bb - 2.0 * k_ab.mean())


def mmd2_unbiased(
    fa: np.ndarray | Tensor,
    fb: np.ndarray | Tensor,
    *,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
) -> float:
    """Unbiased MMD^2 between (m, D) and (n, D) features (m, n >= 2) under the polynomial kernel
    (gamma x.y + coef0)^degree, gamma = 1 / D when None; computed in float64. Its expectation is
    0 when both sets come from the same distribution, so single values can be slightly negative."""
    _check_kernel(degree, gamma, coef0)
    fa, fb = _check_pair(fa, fb)
    g = 1.0 / fa.shape[1] if gamma is None else float(gamma)
    return _mmd2(fa, fb, degree, g, coef0)


def kid(
    fa: np.ndarray | Tensor,
    fb: np.ndarray | Tensor,
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): mean and standard deviation of mmd2_unbiased over num_subsets
    pairs of random subsets, each drawn without replacement, of size
    min(subset_size, len(fa), len(fb)).

    The std is the population std (ddof=0) of the per-subset estimates, as torch-fidelity reports
    it: the spread of one subset's estimate, not the standard error of the mean. The same seed
    gives the same subsets and so the same result.
    """
    _check_kernel(degree, gamma, coef0)
    fa, fb = _check_pair(fa, fb)
    if isinstance(num_subsets, bool) or not isinstance(num_subsets, (int, np.integer)) or num_subsets < 1:
        raise ValueError(f"num_subsets must be a positive integer, got {num_subsets!r}")
    if isinstance(subset_size, bool) or not isinstance(subset_size, (int, np.integer)) or subset_size < 2:
        raise ValueError(
            f"subset_size must be an integer >= 2 (the unbiased MMD leaves out i == j), got {subset_size!r}"
        )
    g = 1.0 / fa.shape[1] if gamma is None else float(gamma)
    m = min(subset_size, fa.shape[0], fb.shape[0])

    rng = np.random.default_rng(seed)
    mmds = np.empty(num_subsets)
    for s in range(num_subsets):  # a loop over subsets; each estimate is three matmuls
        ia = rng.choice(fa.shape[0], size=m, replace=False)
        ib = rng.choice(fb.shape[0], size=m, replace=False)
        mmds[s] = _mmd2(fa[ia], fb[ib], degree, g, coef0)
    return float(mmds.mean()), float(mmds.std())
