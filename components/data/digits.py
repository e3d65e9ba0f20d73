"""Handwritten digits: the 1,797 real 8x8 images bundled with scikit-learn (UCI optdigits test set).

The smallest real image dataset that needs no download, so every image family can be smoke-trained
on real data offline. `genray data prepare digits` writes it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .parquet import write_table

SHAPE = (8, 8, 1)
NUM_TEST = 297  # 1,797 = 1,500 train + 297 test
SIZES = {"tiny": (256, 64), "full": (None, None)}  # None: everything the split holds


def load() -> tuple[np.ndarray, np.ndarray]:
    """The raw data: images (1797, 8, 8) float in 0..16 and labels (1797,) int64.

    Reads scikit-learn's bundled CSV directly when it can: `import sklearn.datasets` alone takes
    seconds, which would dominate a test that prepares the tiny split. Same file load_digits reads.
    """
    spec = importlib.util.find_spec("sklearn")
    csv = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if csv is not None and csv.is_file():
        table = np.loadtxt(csv, delimiter=",")  # (1797, 65): 64 pixels then the label
        return table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)
    from sklearn.datasets import load_digits  # layout changed: take the slow, supported route

    digits = load_digits()
    return digits.images, digits.target.astype(np.int64)


def prepare(out_dir: Path, *, seed: int = 0, size: str = "full") -> dict[str, Path]:
    """Write out_dir/train.parquet and out_dir/test.parquet; the seed picks the split."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    images, labels = load()
    # The bundled pixels are counts 0..16 of on-bits in 4x4 blocks; stretch them to the 0..255
    # range every other image dataset uses so models can share the [-1, 1] decode.
    pixels = np.rint(images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # (1797, 8, 8, 1)

    order = np.random.default_rng(seed).permutation(len(labels))
    splits = {"train": order[:-NUM_TEST], "test": order[-NUM_TEST:]}
    limits = dict(zip(("train", "test"), SIZES[size]))

    out_dir = Path(out_dir)
    paths = {}
    for split, idx in splits.items():
        idx = idx[: limits[split]]
        paths[split] = write_table(
            out_dir / f"{split}.parquet",
            "image",
            {
                "image": pixels[idx],
                "label": labels[idx],
                "caption": [f"a handwritten {d}" for d in labels[idx]],
            },
            shape=SHAPE,
        )
    return paths
