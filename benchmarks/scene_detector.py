"""How well the scenes domain classifier reads two-object scenes back (issue 24, part 2): its
factor heads on the real test scenes, seen and held-out pairs apart. This is the ceiling for the
composition scores `genray eval` gives a text-to-image model on scenes (composition_real_* there).

    .venv/bin/python benchmarks/scene_detector.py [--size full] [--out docs/scene_detector.json]

The classifier is the one `genray eval` trains on first use (pipelines/quality.py,
CLASSIFIER_RECIPE: the label head plus one head per factor column), cached under GENRAY_HOME.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="full")
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    from genray.components.metrics import composition
    from genray.pipelines import evaluate
    from genray.pipelines.data import prepared
    from genray.pipelines.env import project_home
    from genray.pipelines.quality import domain_classifier, read_split

    home = project_home()
    train, test = prepared("scenes", args.size, 0, home)
    started = time.perf_counter()
    net = domain_classifier("auto", train_path=train, dataset="scenes", home=home)
    trained_s = time.perf_counter() - started
    reference = read_split(test, None, factors=True)
    wanted = {f: np.asarray(reference.factors[f"factor_{f}"]).astype(np.int64) for f in composition.SCENE_FACTORS}
    read = evaluate.scene_factors(net, reference.x)
    scores = composition.scene_scores(read, wanted, evaluate.held_out_flags(test))
    out = {"size": args.size, "test_rows": len(reference.x), "classifier": net.id,
           "classifier_seconds": round(trained_s, 1), "scores": scores}
    print(json.dumps(out, indent=2))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
