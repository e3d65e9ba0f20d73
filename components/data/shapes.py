"""Procedural sprites with known generative factors, in the spirit of dSprites (Matthey et al. 2017).

One coloured shape on a black background per image. Every factor that produced the image is
stored beside it (factor_shape, factor_scale, factor_rotation, factor_x, factor_y, factor_color),
so disentanglement metrics can compare a model's latents with the truth, and a caption spells the
discrete factors out in words for text-conditioned models:

    "a small red heart at the top left"

Rendering is vectorised numpy: every sample point of a chunk of images is tested against the
shape's implicit equation at once, with 2x2 supersampling for anti-aliased edges.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .parquet import DEFAULT_ROW_GROUP_SIZE, DatasetWriter

SHAPES = ("square", "ellipse", "heart")
SCALES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
SIZE_WORDS = ("small", "small", "medium", "medium", "large", "large")  # one per scale
COLORS = {
    "red": (1, 0, 0),
    "green": (0, 1, 0),
    "blue": (0, 0, 1),
    "yellow": (1, 1, 0),
    "magenta": (1, 0, 1),
    "cyan": (0, 1, 1),
}
COLOR_NAMES = tuple(COLORS)
# What the integer columns' values name (components.data.value_names); label is the shape.
VALUE_NAMES = {"label": SHAPES, "factor_shape": SHAPES, "factor_color": COLOR_NAMES}
ROWS_WORDS = ("top", "middle", "bottom")  # factor_y = 0 is the top row of the image
COLS_WORDS = ("left", "center", "right")

# A shape at scale 1 spans a radius of RADIUS * image_size pixels. Centres keep MARGIN (the
# radius of a square's corner at scale 1 under any rotation) from the border, so no shape is
# ever cut off and factor_x/factor_y are exactly the normalised centre between the margins.
RADIUS = 0.2
MARGIN = RADIUS * np.sqrt(2.0)
SUPERSAMPLE = 2
SIZES = {"tiny": (512, 128), "full": (120_000, 10_000)}
RENDER_CHUNK = 2_000  # images rendered at once: ~30 MB per float32 temporary at 32x32


def _inside_square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= 1.0


def _inside_ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # 2:1 axes, so rotation changes the picture (a circle would make factor_rotation invisible).
    return u * u + 4.0 * v * v <= 1.0


def _inside_heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # The heart curve (x^2 + y^2 - 1)^3 - x^2 y^3 = 0 spans x in [-1.14, 1.14], y in [-1, 1.24];
    # scale by 1.25 and shift so it fits the unit disc, tip pointing down (v grows downwards).
    x = 1.25 * u
    y = 0.12 - 1.25 * v
    a = x * x + y * y - 1.0
    return a * a * a - x * x * y * y * y <= 0.0


_INSIDE = (_inside_square, _inside_ellipse, _inside_heart)  # indexed by factor_shape


def render(
    shape: np.ndarray,
    scale: np.ndarray,
    rotation: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    color: np.ndarray,
    image_size: int = 32,
) -> np.ndarray:
    """Factors, each (N,) -> images (N, S, S, 3) uint8. Indices for shape/color, values otherwise."""
    n, s, k = len(shape), image_size, SUPERSAMPLE
    grid = (np.arange(k * s, dtype=np.float32) + 0.5) / k  # sample positions in pixel units, (kS,)
    radius = (np.asarray(scale, np.float32) * RADIUS * s)[:, None, None]  # (N, 1, 1)
    span = s * (1.0 - 2.0 * MARGIN)
    cx = (s * MARGIN + np.asarray(x, np.float32) * span)[:, None, None]
    cy = (s * MARGIN + np.asarray(y, np.float32) * span)[:, None, None]
    dx = (grid[None, None, :] - cx) / radius  # (N, 1, kS)
    dy = (grid[None, :, None] - cy) / radius  # (N, kS, 1)
    cos = np.cos(rotation).astype(np.float32)[:, None, None]
    sin = np.sin(rotation).astype(np.float32)[:, None, None]
    u = cos * dx + sin * dy  # (N, kS, kS): shape-frame coordinates, unit = radius
    v = cos * dy - sin * dx

    inside = np.zeros((n, k * s, k * s), dtype=bool)
    for index, test in enumerate(_INSIDE):
        sel = shape == index
        if sel.any():
            inside[sel] = test(u[sel], v[sel])
    coverage = inside.reshape(n, s, k, s, k).mean(axis=(2, 4), dtype=np.float32)  # (N, S, S)
    rgb = np.asarray(list(COLORS.values()), np.float32)[color]  # (N, 3)
    return np.rint(coverage[..., None] * rgb[:, None, None, :] * 255.0).astype(np.uint8)  # (N, S, S, 3)


def caption(shape: int, scale_index: int, x: float, y: float, color: int) -> str:
    """Words for the discrete factors; position words split each axis into thirds."""
    row = ROWS_WORDS[min(int(y * 3), 2)]
    col = COLS_WORDS[min(int(x * 3), 2)]
    return f"a {SIZE_WORDS[scale_index]} {COLOR_NAMES[color]} {SHAPES[shape]} at the {row} {col}"


def sample_factors(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Independent uniform factors, the way dSprites enumerates its factor grid."""
    return {
        "shape": rng.integers(0, len(SHAPES), size=n),
        "scale_index": rng.integers(0, len(SCALES), size=n),
        "rotation": rng.uniform(0.0, 2 * np.pi, size=n).astype(np.float32),
        "x": rng.uniform(0.0, 1.0, size=n).astype(np.float32),
        "y": rng.uniform(0.0, 1.0, size=n).astype(np.float32),
        "color": rng.integers(0, len(COLORS), size=n),
    }


def prepare(out_dir: Path, *, seed: int = 0, size: str = "full", image_size: int = 32) -> dict[str, Path]:
    """Write out_dir/train.parquet and out_dir/test.parquet, one row group per 10k images."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 pixels for a recognisable shape, got {image_size}")
    seeds = np.random.SeedSequence(seed).spawn(2)
    out_dir = Path(out_dir)
    paths = {}
    for split, n, ss in zip(("train", "test"), SIZES[size], seeds):
        f = sample_factors(n, np.random.default_rng(ss))
        scale = np.asarray(SCALES, np.float32)[f["scale_index"]]
        path = out_dir / f"{split}.parquet"
        with DatasetWriter(path, "image", [image_size, image_size, 3]) as writer:
            for start in range(0, n, DEFAULT_ROW_GROUP_SIZE):
                rows = slice(start, min(start + DEFAULT_ROW_GROUP_SIZE, n))
                images = np.concatenate(
                    [
                        render(
                            f["shape"][c], scale[c], f["rotation"][c], f["x"][c], f["y"][c], f["color"][c], image_size
                        )
                        for c in (slice(i, min(i + RENDER_CHUNK, rows.stop)) for i in range(rows.start, rows.stop, RENDER_CHUNK))
                    ]
                )
                writer.write(
                    {
                        "image": images,
                        "label": f["shape"][rows],
                        "caption": [
                            caption(*args)
                            for args in zip(
                                f["shape"][rows].tolist(),
                                f["scale_index"][rows].tolist(),
                                f["x"][rows].tolist(),
                                f["y"][rows].tolist(),
                                f["color"][rows].tolist(),
                            )
                        ],
                        "factor_shape": f["shape"][rows],
                        "factor_scale": scale[rows],
                        "factor_rotation": f["rotation"][rows],
                        "factor_x": f["x"][rows],
                        "factor_y": f["y"][rows],
                        "factor_color": f["color"][rows],
                    }
                )
        paths[split] = path
    return paths
