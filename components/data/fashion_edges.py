"""Fashion-MNIST edges -> items: aligned pairs for image-to-image translation (Pix2Pix, Isola et
al. 2017), kind `paired_image`, made from the Fashion-MNIST photos (fashion_mnist.py).

Isola et al. 2017 (§4, "edges -> shoes", "edges -> handbags") train on photos paired with edge
maps that a detector drew (HED); this is the same task at 32x32 grey, with a fixed NumPy
detector instead of a learned one, so the pairs are exactly reproducible and `edges` makes the
input for any item a user brings:

    image         the edge map, 0 or 255      -> batch key x         (the model's input)
    image_paired  the item, as fashion_mnist  -> batch key x_paired  (the target)
    label         the item's class (int64), caption as fashion_mnist's row

The rows are fashion_mnist's rows for the same seed and size (the official split, padded to
32x32 with the background value 0, ordered by the seed), so row i here is row i there. The
edges are drawn on the padded 32x32 item, so `edges(item)` on a stored item gives its stored
edge map exactly; `genray data prepare fashion_edges --from DIR` reads the four IDX files from
DIR as fashion_mnist does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import fashion_mnist
from .parquet import write_table

SHAPE = fashion_mnist.SHAPE  # (32, 32, 1)
SIZES = fashion_mnist.SIZES  # tiny: 512 train / 128 test rows; full: 60,000 / 10,000

# The detector's constants (see `edges`).
BLUR = np.outer([1, 2, 1], [1, 2, 1]) / 16.0  # 3x3 binomial: a Gaussian of sigma ~0.7 px
SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)  # d/dx, columns
SOBEL_Y = SOBEL_X.T  # d/dy, rows
THRESHOLD = 0.25  # an edge: gradient magnitude above this fraction of the image's largest


def _correlate3x3(a: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """(N, H, W) float64 correlated with a 3x3 kernel, zero outside the image (the background
    value every Fashion-MNIST image is padded with) -> (N, H, W)."""
    h, w = a.shape[1:]
    p = np.pad(a, ((0, 0), (1, 1), (1, 1)))
    return sum(kernel[i, j] * p[:, i:i + h, j:j + w] for i in range(3) for j in range(3))


def edges(images: np.ndarray) -> np.ndarray:
    """Binary edge maps of grey uint8 images: (N, H, W) or (N, H, W, 1) -> the same shape, uint8
    0 (no edge) or 255 (edge).

    Deterministic, per image, in float64:
      1. scale to [0, 1] and blur with BLUR, the 3x3 binomial kernel [1, 2, 1]^T [1, 2, 1] / 16;
      2. gradient magnitude sqrt(gx^2 + gy^2) with the 3x3 Sobel kernels SOBEL_X and SOBEL_Y;
      3. an edge wherever the magnitude is above THRESHOLD = 0.25 of that image's largest
         magnitude (an all-zero image has none).
    Both filters read zeros (the background) outside the image, so an item touching the frame
    gets an outline there too. Relative thresholds make the maps independent of an item's brightness: a dark
    coat and a white sneaker both get their outline.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"edges expects uint8 pixels (0..255), got dtype {images.dtype}")
    grey = images[..., 0] if images.ndim == 4 and images.shape[-1] == 1 else images
    if grey.ndim != 3:
        raise ValueError(f"edges expects grey images (N, H, W) or (N, H, W, 1), got shape {images.shape}")
    blurred = _correlate3x3(grey.astype(np.float64) / 255.0, BLUR)  # (N, H, W)
    magnitude = np.hypot(_correlate3x3(blurred, SOBEL_X), _correlate3x3(blurred, SOBEL_Y))  # (N, H, W)
    peak = magnitude.max(axis=(1, 2), keepdims=True)  # (N, 1, 1)
    on = (magnitude > THRESHOLD * peak) & (peak > 0)
    return (on * np.uint8(255)).astype(np.uint8).reshape(images.shape)


def prepare(out_dir: Path, *, seed: int = 0, size: str = "full", source: Path | None = None) -> dict[str, Path]:
    """Write out_dir/train.parquet and out_dir/test.parquet: edge maps (image) and items
    (image_paired) of fashion_mnist's rows for this seed and size."""
    out_dir = Path(out_dir)
    paths = {}
    rng = fashion_mnist.caption_rng(seed)
    for split, (items, labels) in fashion_mnist.padded_splits(seed=seed, size=size, source=source).items():
        # test last (dicts keep their order): its file marks a complete dataset
        paths[split] = write_table(
            out_dir / f"{split}.parquet", "paired_image",
            {"image": edges(items), "image_paired": items, "label": labels,
             "caption": fashion_mnist.captions(labels, rng)},
            shape=SHAPE,
        )
    return paths
