"""How smoothly a model's latent space interpolates: a perceptual-path-length-style score.

Perceptual path length (Karras et al. 2019, StyleGAN, sec. 4.2) cuts a latent interpolation into
small pieces and sums a perceptual distance between the images at their ends: a decoder whose
output changes in sudden jumps, or that takes detours through images unlike either end, gets a
long path. Its raw value depends on the latent's scale and dimension, so it does not compare
families whose latents differ. Here the same path is measured in two scale-free ways.

For a pair of images a, b with latents z_a = encode(a), z_b = encode(b), the path is
x_k = decode((1 - k/K) z_a + (k/K) z_b), k = 0..K, and f_k = phi(x_k) are the features of a
fixed network (the dataset's domain classifier). With step lengths d_k = |f_k - f_{k-1}|:

    evenness = K * sum_k d_k^2 / (sum_k d_k)^2     1 when every step moves the features equally;
                                                   K when the whole change happens in one step
    detour   = sum_k d_k / |f_K - f_0|              1 when the features move in a straight line
                                                   from one end to the other; more when the path
                                                   wanders

evenness is PPL's sum of squared steps, divided by what it would be for the same total length
spread evenly (Cauchy-Schwarz makes that the least it can be). A continuous latent space with a
smooth decoder scores near 1 on both; a decoder that snaps latents to a codebook (VQ-VAE) scores
high evenness, since its output changes only where the nearest code changes.

Both are medians over pairs: one pair whose ends nearly coincide in feature space gives an
unbounded detour, which a mean would follow.
"""
import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

INTERP_STEPS = 16  # K: segments per path
INTERP_PAIRS = 200  # pairs of reference images


def path_scores(features: np.ndarray | Tensor) -> dict[str, float]:
    """evenness and detour (module docstring) of paths of features (P, K + 1, D): medians over the
    P paths. Paths of length 0 (every point equal) are left out; with none left both are nan."""
    f = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    if f.ndim != 3 or f.shape[1] < 2:
        raise ValueError(f"path_scores: features must be (paths, points >= 2, dims), got {tuple(f.shape)}")
    steps = (f[:, 1:] - f[:, :-1]).norm(dim=2)  # (P, K)
    total = steps.sum(dim=1)
    chord = (f[:, -1] - f[:, 0]).norm(dim=1)
    keep = total > 0
    if not bool(keep.any()):
        return {"evenness": math.nan, "detour": math.nan}
    k = steps.shape[1]
    evenness = k * steps[keep].pow(2).sum(dim=1) / total[keep].pow(2)
    detour = total[keep] / chord[keep]  # inf where the ends coincide: a median copes
    return {"evenness": float(evenness.median()), "detour": float(detour.median())}


def interpolation_features(encode: Callable[[Tensor], Tensor], decode: Callable[[Tensor], Tensor],
                           features: Callable[[Tensor], np.ndarray | Tensor], a: Tensor, b: Tensor, *,
                           steps: int = INTERP_STEPS, batch_size: int = 256) -> np.ndarray:
    """Features (P, steps + 1, D) of decode(lerp(encode(a), encode(b), k / steps)), k = 0..steps,
    for the P pairs (a[i], b[i])."""
    if a.shape != b.shape or a.shape[0] < 1:
        raise ValueError(f"interpolation_features: a and b must be equal non-empty batches, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    if steps < 1:
        raise ValueError(f"interpolation_features: steps must be >= 1, got {steps}")
    with torch.no_grad():
        za, zb = encode(a), encode(b)
        t = torch.linspace(0.0, 1.0, steps + 1, dtype=za.dtype, device=za.device)
        shape = (1, -1) + (1,) * (za.ndim - 1)
        # (P, K + 1, *latent) -> rows in path order: path i's points are rows i*(K+1) .. i*(K+1)+K
        z = (za[:, None] * (1 - t.view(shape)) + zb[:, None] * t.view(shape)).flatten(0, 1)
        out = [np.asarray(torch.as_tensor(features(decode(z[i : i + batch_size]).float().clamp(-1, 1))).cpu())
               for i in range(0, len(z), batch_size)]
    return np.concatenate(out).reshape(len(a), steps + 1, -1)


def interpolation_smoothness(model, features: Callable[[Tensor], np.ndarray | Tensor], x: Tensor, *,
                             pairs: int = INTERP_PAIRS, steps: int = INTERP_STEPS) -> dict[str, float]:
    """`interp_evenness` and `interp_detour` of a model that encodes and decodes, over the pairs
    (x[i], x[pairs + i]) of its first 2 * pairs images (fewer when x is shorter)."""
    p = min(pairs, len(x) // 2)
    if p < 1:
        raise ValueError(f"interpolation_smoothness: needs at least 2 images, got {len(x)}")
    f = interpolation_features(model.encode, model.decode, features, x[:p], x[p : 2 * p], steps=steps)
    scores = path_scores(f)
    return {"interp_evenness": scores["evenness"], "interp_detour": scores["detour"]}
