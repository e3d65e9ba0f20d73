"""Two-object scenes with relational captions, for compositional text-to-image: "a red square left
of a blue heart", "a green ellipse below a yellow square".

Each 32x32 image holds two of the `shapes` dataset's objects (shape x colour: 18 kinds), drawn
with its renderer, side by side or one above the other, never touching. The stored factors say
what is where, in a canonical order: object a is the left one (horizontal scenes) or the top one
(vertical scenes), object b the other:

    factor_relation      0 horizontal (a left of b), 1 vertical (a above b)
    factor_shape_a/_b    index into shapes.SHAPES
    factor_color_a/_b    index into shapes.COLOR_NAMES
    factor_x_a, _y_a, factor_x_b, _y_b    centres, in [0, 1] of the image
    held_out             1 for a row whose pair of object kinds never appears in training

The caption names the two objects in either order, the first as its subject, with the relation
that order needs ("left of" or "right of"; "above" or "below"), so the words and not the layout
alone say which is where. label is object a's shape.

Parts, for composed prompts. PART_SHARE of the training rows are captioned with one of their two
objects and its place only ("a red square on the left", "a blue heart at the bottom";
`part_caption`), so a text-conditioned model also learns each object on its own. The test split
keeps full captions; `composed_prompt` writes a scene as its two parts joined by " AND ", the
prompt of composed guidance (Liu et al. 2022; components/samplers/guidance.py).

Held-out combinations. Of the 171 unordered pairs of object kinds (153 of two different kinds and
18 of one kind twice), HELD_OUT_SHARE are drawn once with a fixed seed (`held_out_pairs`, the
same for every dataset seed) and never rendered in the training split. The test split holds
scenes of seen and held-out pairs alike, and says which in `held_out`: a model that composes
what it learned about each object draws held-out pairs as well as seen ones.
"""
from __future__ import annotations

from itertools import combinations_with_replacement
from pathlib import Path

import numpy as np

from . import shapes
from .parquet import DEFAULT_ROW_GROUP_SIZE, DatasetWriter

SIZES = {"tiny": (512, 128), "full": (60_000, 10_000)}
IMAGE_SIZE = 32
SCALE = 0.6  # radius 0.2 * 32 * 0.6 = 3.8 px; a rotated square reaches 5.4 px from its centre
# Centres in pixels: the near object within NEAR of the image's edge on its axis, the far one
# mirrored, so two objects are at least 32 - 2 * 10 = 12 px apart (> 2 * 5.4: never touching);
# on the other axis anywhere within 6..26 px.
NEAR = (6.0, 10.0)
ACROSS = (6.0, 26.0)
RELATIONS = ("horizontal", "vertical")
HELD_OUT_SHARE = 0.15
PART_SHARE = 0.3  # of the training rows, captioned with one object and its place
PLACES = (("on the left", "on the right"), ("at the top", "at the bottom"))  # [relation][a or b]
HELD_OUT_SEED = 20_241
KINDS = [(s, c) for s in range(len(shapes.SHAPES)) for c in range(len(shapes.COLOR_NAMES))]  # 18 object kinds
VALUE_NAMES = {"label": shapes.SHAPES, "factor_shape_a": shapes.SHAPES, "factor_shape_b": shapes.SHAPES,
               "factor_color_a": shapes.COLOR_NAMES, "factor_color_b": shapes.COLOR_NAMES,
               "factor_relation": RELATIONS}


def kind_index(shape: np.ndarray, color: np.ndarray) -> np.ndarray:
    return np.asarray(shape) * len(shapes.COLOR_NAMES) + np.asarray(color)


def held_out_pairs() -> frozenset[tuple[int, int]]:
    """The unordered pairs (i <= j) of object kinds (kind_index) that training never shows."""
    pairs = list(combinations_with_replacement(range(len(KINDS)), 2))
    rng = np.random.default_rng(HELD_OUT_SEED)
    chosen = rng.choice(len(pairs), size=round(HELD_OUT_SHARE * len(pairs)), replace=False)
    return frozenset(pairs[i] for i in sorted(chosen))


def is_held_out(kind_a: np.ndarray, kind_b: np.ndarray) -> np.ndarray:
    held = held_out_pairs()
    lo, hi = np.minimum(kind_a, kind_b), np.maximum(kind_a, kind_b)
    return np.array([(int(i), int(j)) in held for i, j in zip(lo, hi)], dtype=bool)


def sample_scenes(n: int, rng: np.random.Generator, *, held_out: bool | None) -> dict[str, np.ndarray]:
    """n scenes' factors. held_out False: only pairs training may show; None: any pair."""
    out: dict[str, list[np.ndarray]] = {}
    have = 0
    while have < n:
        m = 2 * (n - have) + 16
        f = {
            "relation": rng.integers(0, 2, m),
            "shape_a": rng.integers(0, len(shapes.SHAPES), m), "color_a": rng.integers(0, len(shapes.COLOR_NAMES), m),
            "shape_b": rng.integers(0, len(shapes.SHAPES), m), "color_b": rng.integers(0, len(shapes.COLOR_NAMES), m),
            "near": rng.uniform(*NEAR, size=(m, 2)), "across": rng.uniform(*ACROSS, size=(m, 2)),
            "rotation": rng.uniform(0.0, 2 * np.pi, size=(m, 2)), "subject_b": rng.integers(0, 2, m),
        }
        f["held_out"] = is_held_out(kind_index(f["shape_a"], f["color_a"]), kind_index(f["shape_b"], f["color_b"]))
        keep = np.ones(m, bool) if held_out is None else f["held_out"] == held_out
        for k, v in f.items():
            out.setdefault(k, []).append(v[keep])
        have += int(keep.sum())
    f = {k: np.concatenate(v)[:n] for k, v in out.items()}
    # Pixel centres: on the relation's axis, a near the start and b mirrored near the end.
    along_a, along_b = f["near"][:, 0], IMAGE_SIZE - f["near"][:, 1]
    horizontal = f["relation"] == 0
    f["x_a"] = np.where(horizontal, along_a, f["across"][:, 0]) / IMAGE_SIZE
    f["y_a"] = np.where(horizontal, f["across"][:, 0], along_a) / IMAGE_SIZE
    f["x_b"] = np.where(horizontal, along_b, f["across"][:, 1]) / IMAGE_SIZE
    f["y_b"] = np.where(horizontal, f["across"][:, 1], along_b) / IMAGE_SIZE
    return f


def _unit(centre_px: np.ndarray) -> np.ndarray:
    """A pixel centre as shapes.render's x or y (0..1 between its margins; beyond them is fine here)."""
    span = IMAGE_SIZE * (1.0 - 2.0 * shapes.MARGIN)
    return ((centre_px - IMAGE_SIZE * shapes.MARGIN) / span).astype(np.float32)


def render(f: dict[str, np.ndarray]) -> np.ndarray:
    """The scenes of sample_scenes' factors: (N, 32, 32, 3) uint8, the two objects' pixels maxed."""
    n = len(f["relation"])
    scale = np.full(n, SCALE, np.float32)
    images = []
    for o, k in (("a", 0), ("b", 1)):
        images.append(shapes.render(f[f"shape_{o}"], scale, f["rotation"][:, k].astype(np.float32),
                                    _unit(f[f"x_{o}"] * IMAGE_SIZE), _unit(f[f"y_{o}"] * IMAGE_SIZE), f[f"color_{o}"],
                                    IMAGE_SIZE))
    return np.maximum(*images)


def object_words(shape: int, color: int) -> str:
    return f"{shapes.COLOR_NAMES[color]} {shapes.SHAPES[shape]}"


def caption(relation: int, shape_a: int, color_a: int, shape_b: int, color_b: int, subject_b: bool) -> str:
    """"a red square left of a blue heart": object a first, or object b first with the converse
    relation ("right of", "below")."""
    a, b = object_words(shape_a, color_a), object_words(shape_b, color_b)
    if not subject_b:
        return f"a {a} {'left of' if relation == 0 else 'above'} a {b}"
    return f"a {b} {'right of' if relation == 0 else 'below'} a {a}"


def part_caption(relation: int, shape: int, color: int, second: bool) -> str:
    """One object and its place: "a red square on the left" (object a of a horizontal scene)."""
    return f"a {object_words(shape, color)} {PLACES[relation][int(second)]}"


def composed_prompt(relation: int, shape_a: int, color_a: int, shape_b: int, color_b: int) -> str:
    """A scene as the two parts composed guidance sums: "a red square on the left AND a blue heart
    on the right"."""
    return f"{part_caption(relation, shape_a, color_a, False)} AND {part_caption(relation, shape_b, color_b, True)}"


def _captions(part: dict[str, np.ndarray], parts: np.ndarray) -> list[str]:
    """Each row's caption: the full one, or where `parts` is 1 (object a) or 2 (object b) one part."""
    out = []
    for i in range(len(part["relation"])):
        r, sa, ca, sb, cb = (int(part[k][i]) for k in ("relation", "shape_a", "color_a", "shape_b", "color_b"))
        if parts[i] == 0:
            out.append(caption(r, sa, ca, sb, cb, bool(part["subject_b"][i])))
        else:
            second = parts[i] == 2
            out.append(part_caption(r, sb if second else sa, cb if second else ca, second))
    return out


def prepare(out_dir: Path, *, seed: int = 0, size: str = "full") -> dict[str, Path]:
    """Write out_dir/train.parquet (seen pairs only) and out_dir/test.parquet (any pair, flagged)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    seeds = np.random.SeedSequence([seed, 7]).spawn(2)
    paths = {}
    for split, n, ss, held in zip(("train", "test"), SIZES[size], seeds, (False, None)):
        rng = np.random.default_rng(ss)
        f = sample_scenes(n, rng, held_out=held)
        # 0: the full caption; 1 or 2: object a's or b's part (training rows only).
        f["caption_part"] = np.where(rng.random(n) < (PART_SHARE if split == "train" else 0.0),
                                     rng.integers(1, 3, n), 0)
        path = Path(out_dir) / f"{split}.parquet"
        with DatasetWriter(path, "image", [IMAGE_SIZE, IMAGE_SIZE, 3]) as writer:
            for start in range(0, n, DEFAULT_ROW_GROUP_SIZE):
                rows = slice(start, min(start + DEFAULT_ROW_GROUP_SIZE, n))
                part = {k: v[rows] for k, v in f.items()}
                writer.write({
                    "image": render(part),
                    "label": part["shape_a"],
                    "caption": _captions(part, part["caption_part"]),
                    **{f"factor_{k}": part[k] for k in ("relation", "shape_a", "color_a", "shape_b", "color_b")},
                    **{f"factor_{k}": part[k].astype(np.float32) for k in ("x_a", "y_a", "x_b", "y_b")},
                    "held_out": part["held_out"].astype(np.int64),
                })
        paths[split] = path
    return paths
