"""Compositional accuracy on two-object scenes (issue 24, part 2; components/data/scenes.py).

A sample drawn for a scene's caption is right when a detector reads back what the caption asked
for: both objects' shapes and colours, each on its side (the relation and the canonical order:
object a is the left or the top one). The detector here is the scenes domain classifier's factor
heads (pipelines/quality.py trains one head per factor_* column), so its own accuracy on real
test scenes for the same captions is the ceiling to read the samples' scores against.

    scores = scene_scores(predicted, wanted, held_out)
    scores["held_out_all_right"], scores["seen_all_right"]

Scores are shares of rows, split by whether the caption's pair of objects was held out of training
(`held_out`): a model that composes draws held-out pairs as well as seen ones.
"""
from __future__ import annotations

import numpy as np

SCENE_FACTORS = ("relation", "shape_a", "color_a", "shape_b", "color_b")
OBJECT_FACTORS = ("shape_a", "color_a", "shape_b", "color_b")


def is_scene(factor_names) -> bool:
    """Whether data with these factor columns (with or without the factor_ prefix) are scenes."""
    names = {n.removeprefix("factor_") for n in factor_names}
    return set(SCENE_FACTORS) <= names


def scene_scores(predicted: dict[str, np.ndarray], wanted: dict[str, np.ndarray],
                 held_out: np.ndarray) -> dict[str, float]:
    """predicted, wanted: factor name (SCENE_FACTORS) -> (N,) ints; held_out (N,) bools.

    Returns, for the rows of each group ("seen", "held_out") that has any:
      <group>_all_right      every factor right: both objects, each where the caption puts it
      <group>_objects_right  both objects' shape and colour right, in the right order
      <group>_relation_right the relation (side by side or one above the other) right
    and <factor>_accuracy over all rows, with `held_out_share` (the share of held-out rows).
    """
    missing = [f for f in SCENE_FACTORS if f not in predicted or f not in wanted]
    if missing:
        raise ValueError(f"scene_scores: no {', '.join(missing)} (needs {', '.join(SCENE_FACTORS)})")
    held_out = np.asarray(held_out, dtype=bool)
    n = len(held_out)
    right = {}
    for f in SCENE_FACTORS:
        p, w = np.asarray(predicted[f]), np.asarray(wanted[f])
        if p.shape != (n,) or w.shape != (n,):
            raise ValueError(f"scene_scores: {f} must be ({n},) like held_out, got {p.shape} and {w.shape}")
        right[f] = p == w
    objects = np.logical_and.reduce([right[f] for f in OBJECT_FACTORS])
    every = objects & right["relation"]
    out = {f"{f}_accuracy": float(right[f].mean()) for f in SCENE_FACTORS}
    out["held_out_share"] = float(held_out.mean())
    for group, rows in (("seen", ~held_out), ("held_out", held_out)):
        if rows.any():
            out[f"{group}_all_right"] = float(every[rows].mean())
            out[f"{group}_objects_right"] = float(objects[rows].mean())
            out[f"{group}_relation_right"] = float(right["relation"][rows].mean())
    return out
