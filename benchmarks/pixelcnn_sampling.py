"""Gated PixelCNN sampling, three ways that draw the same images: the vertical stack once per row
and the horizontal stack on one row per pixel (`sample`, the row cache); both stacks on the rows
a pixel's logits can depend on (`sample_windowed`); the whole image for every pixel
(`sample_naive`).

    .venv/bin/python benchmarks/pixelcnn_sampling.py [--size small] [--image 32] [--n 16]
        [--threads 1] [--out docs/pixelcnn_sampling.json]

A randomly initialised model of the given size preset on grey images of --image x --image
pixels (Fashion-MNIST as genray stores it is 32x32): speed does not depend on the weights. Each
way samples --n images from the same seed; the script checks that they are equal, then prints
images/s and the speed-ups over the naive pass. Wall-clock of one run each on --threads threads.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from genray.components.data import DatasetInfo
from genray.components.models.pixelcnn import build_pixelcnn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="small", choices=["tiny", "small", "base"])
    ap.add_argument("--image", type=int, default=32)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "pixelcnn_sampling.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_pixelcnn(data=DatasetInfo.for_images((1, args.image, args.image)), size=args.size).eval()
    times, images = {}, {}
    for name in ("sample", "sample_windowed", "sample_naive"):
        t0 = time.perf_counter()
        images[name] = getattr(model, name)(args.n, generator=torch.Generator().manual_seed(0))
        times[name] = time.perf_counter() - t0
        print(f"{name}: {times[name]:.1f} s", flush=True)
    for name in ("sample", "sample_windowed"):
        assert torch.equal(images[name], images["sample_naive"]), f"{name} drew other images"
    result = {
        "size": args.size, "image": [1, args.image, args.image], "n": args.n, "threads": args.threads,
        "layers": len(model.layers), "reach_rows": model.reach,
        "cached_images_per_s": args.n / times["sample"],
        "windowed_images_per_s": args.n / times["sample_windowed"],
        "naive_images_per_s": args.n / times["sample_naive"],
        "cached_speedup": times["sample_naive"] / times["sample"],
        "windowed_speedup": times["sample_naive"] / times["sample_windowed"],
        "identical": True, "machine": f"{platform.machine()}, torch {torch.__version__}",
    }
    print(f"{args.size} PixelCNN, {args.n} images of {args.image}x{args.image}: row cache "
          f"{result['cached_images_per_s']:.2f} images/s ({result['cached_speedup']:.1f}x), windowed "
          f"{result['windowed_images_per_s']:.2f} ({result['windowed_speedup']:.2f}x), whole image "
          f"{result['naive_images_per_s']:.3f}; same images")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
