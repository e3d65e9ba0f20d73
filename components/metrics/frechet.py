"""The Fréchet distance between two sets of features, each summarised as a Gaussian.

    d^2 = ||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^{1/2})

is the squared 2-Wasserstein distance between N(mu_a, C_a) and N(mu_b, C_b) (Dowson & Landau
1982); FID is this on Inception features (Heusel et al. 2017, eq. 6). genray uses it on the
features of a small per-dataset classifier (classifier.py), e.g. "FD-digits".

    stats_real = gaussian_stats(extract_features(clf, x_real))
    stats_fake = gaussian_stats(extract_features(clf, x_fake))
    score = frechet_distance(stats_real, stats_fake)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor


@dataclass(frozen=True)
class GaussianStats:
    """Mean (D,) and unbiased covariance (D, D) of N feature vectors, both float64."""

    mean: np.ndarray
    cov: np.ndarray
    n: int


def as_features(features: np.ndarray | Tensor, name: str, *, min_rows: int = 2,
                why: str = "for a covariance") -> np.ndarray:
    """(N, D) features as finite float64, N >= min_rows; every metric on feature sets checks its
    input here, so a wrong shape or a NaN from a diverged model gets the same plain message."""
    if isinstance(features, Tensor):
        features = features.detach().to("cpu").double().numpy()
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, D) of feature vectors, got shape {f.shape}")
    if f.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} feature vectors {why}, got shape {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError(f"{name} has non-finite values (shape {f.shape}); check the model's outputs")
    return f


def gaussian_stats(features: np.ndarray | Tensor) -> GaussianStats:
    """(N, D) features -> their mean and unbiased (N - 1) covariance, in float64."""
    f = as_features(features, "features")
    mean = f.mean(axis=0)
    cov = np.cov(f, rowvar=False, ddof=1).reshape(f.shape[1], f.shape[1])  # D = 1 gives a 0-d array
    return GaussianStats(mean=mean, cov=cov, n=f.shape[0])


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    """The symmetric PSD square root of a symmetric PSD matrix, via its eigendecomposition."""
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """Tr((C_a C_b)^{1/2}).

    C_a C_b is not symmetric, and scipy.linalg.sqrtm of it can return complex noise or fail when
    either covariance is singular (fewer samples than features). But C_a C_b is similar to
    M = C_a^{1/2} C_b C_a^{1/2} (conjugate by C_a^{1/2}), which is symmetric PSD, so the trace of
    the square root is sum_i sqrt(lambda_i(M)), with eigvalsh on a symmetric matrix.
    """
    s = _psd_sqrt(cov_a)
    m = s @ cov_b @ s
    m = 0.5 * (m + m.T)  # remove the rounding asymmetry before eigvalsh
    eig = np.clip(np.linalg.eigvalsh(m), 0.0, None)  # rounding can leave tiny negatives
    return float(np.sqrt(eig).sum())


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """Squared Fréchet distance between N(a.mean, a.cov) and N(b.mean, b.cov) (Heusel et al.
    2017, eq. 6); >= 0, 0 for identical statistics."""
    if a.mean.shape != b.mean.shape or a.cov.shape != b.cov.shape:
        raise ValueError(
            f"frechet_distance needs statistics of the same feature size, got mean {a.mean.shape} / "
            f"cov {a.cov.shape} and mean {b.mean.shape} / cov {b.cov.shape}; were both sets of "
            "features extracted with the same classifier?"
        )
    diff = a.mean - b.mean
    d2 = diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2.0 * _trace_sqrt_product(a.cov, b.cov)
    return max(float(d2), 0.0)


def frechet_distance_features(fa: np.ndarray | Tensor, fb: np.ndarray | Tensor) -> float:
    """frechet_distance of two (N, D) feature sets (N may differ, D may not)."""
    fa, fb = as_features(fa, "fa"), as_features(fb, "fb")
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(
            f"fa and fb must have the same feature size D, got shapes {fa.shape} and {fb.shape}"
        )
    return frechet_distance(gaussian_stats(fa), gaussian_stats(fb))
