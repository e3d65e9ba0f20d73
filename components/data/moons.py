"""Two interleaving half-moons: the 2-D toy density every flow and score-model paper draws.

Small enough to train in seconds on a CPU, and a learned density can be judged by eye.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .parquet import write_table

SHAPE = (2,)
NOISE = 0.1  # standard deviation of the Gaussian jitter around each arc
SIZES = {"tiny": (512, 128), "full": (20_000, 4_000)}
# Shift so the pair of moons is centred on the origin (their joint bounding box is x in [-1, 2],
# y in [-0.5, 1]); models with a standard-normal base then start close to the data.
CENTER = np.array([0.5, 0.25])


def arc(t: np.ndarray, moon: np.ndarray) -> np.ndarray:
    """Noise-free point at angle t in [0, pi] on moon 0 (upper arc) or moon 1 (lower arc), centred."""
    upper = np.stack([np.cos(t), np.sin(t)], axis=-1)  # (N, 2)
    lower = np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], axis=-1)  # (N, 2)
    return np.where(moon[:, None] == 0, upper, lower) - CENTER


def sample(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n noisy points and their moon index."""
    moon = rng.integers(0, 2, size=n)
    t = rng.uniform(0.0, np.pi, size=n)
    points = arc(t, moon) + rng.normal(0.0, NOISE, size=(n, 2))
    return points.astype(np.float32), moon.astype(np.int64)


def prepare(out_dir: Path, *, seed: int = 0, size: str = "full") -> dict[str, Path]:
    """Write out_dir/train.parquet and out_dir/test.parquet of moon points."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    # Independent streams per split, so the test set does not shift when the train size changes.
    rngs = dict(zip(("train", "test"), (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))))
    out_dir = Path(out_dir)
    paths = {}
    for split, n in zip(("train", "test"), SIZES[size]):
        points, moon = sample(n, rngs[split])
        paths[split] = write_table(out_dir / f"{split}.parquet", "points", {"point": points, "label": moon}, shape=SHAPE)
    return paths
