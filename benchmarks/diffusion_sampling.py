"""Sampling speed and quality of one trained class-conditional diffusion model on digits, per
sampler, number of steps, timestep spacing and guidance scale.

    .venv/bin/python benchmarks/diffusion_sampling.py CHECKPOINT_DIR [--num-samples 2000]
        [--steps ddpm,100,50,20,10] [--guidance 0,1,2,3,5] [--spacings trailing,leading]

CHECKPOINT_DIR is a genray checkpoint (e.g. genray-runs/ray_results/<run>/checkpoint_*), or a
reference `genray` resolves (models:/NAME@ALIAS, runs:/ID). Quality is measured with a digits
classifier trained here on the train split (cached under GENRAY_HOME/cache/classifiers):

    class acc    fraction of samples the classifier assigns to the requested class (y cycles 0..9)
    FD           Fréchet distance of classifier features, generated (N) vs every real image (1797)
    FD@test      generated vs the held-out test split (297), in draws of 297 generated images ...
    floor        ... and the same for the train split: FD(297 train images, test split), the
                 real-vs-real FD at that sample size. Both averaged over 5 draws; a model that
                 reproduced the training images exactly would score the floor.

Times are wall-clock for the whole batch on this machine's threads (torch.get_num_threads()),
per image. Results go to stdout as a Markdown table and to --out as JSON plus sample grids.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def load_digits_splits(home: Path) -> dict[str, dict[str, np.ndarray]]:
    from genray.components.data import DATASETS
    from genray.pipelines.data import read_decoded

    root = home / "data" / "digits-full-seed0"
    if not (root / "test.parquet").exists():
        DATASETS["digits"](root, seed=0, size="full")
    return {s: read_decoded(str(root / f"{s}.parquet"), ["image", "label"], "image", (8, 8, 1)) for s in ("train", "test")}


def digits_classifier(home: Path, splits):
    from genray.components.metrics import classifier as clf

    path = home / "cache" / "classifiers" / "digits"
    if (path / "config.json").exists():
        return clf.load_classifier(path), clf.classifier_id(path)
    model = clf.train_classifier(splits["train"]["x"], splits["train"]["y"], num_classes=10, seed=0)
    clf.save_classifier(model, path)
    return model, clf.classifier_id(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--num-samples", type=int, default=2000)
    ap.add_argument("--ddpm-samples", type=int, default=500, help="DDPM-1000 is slow: fewer samples for it")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--steps", default="ddpm,100,50,20,10")
    ap.add_argument("--guidance", default="1")
    ap.add_argument("--guidance-steps", default="10,20", help="steps at which to sweep --guidance")
    ap.add_argument("--spacings", default="trailing")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results/diffusion_sampling")
    args = ap.parse_args()

    from genray.components.checkpoint import build_model
    from genray.components.data import image_grid, save_png
    from genray.components.metrics import classifier as clf
    from genray.components.metrics.frechet import frechet_distance, gaussian_stats
    from genray.pipelines import tracking
    from genray.pipelines.env import project_home

    if args.threads:
        torch.set_num_threads(args.threads)
    home = project_home()
    ckpt = tracking.resolve_checkpoint(args.checkpoint, tracking.tracking_uri(home), home / "cache")
    model, state = build_model(ckpt)
    splits = load_digits_splits(home)
    classifier, classifier_id = digits_classifier(home, splits)
    test_acc = clf.accuracy(classifier, splits["test"]["x"], splits["test"]["y"])
    feats = {s: clf.extract_features(classifier, splits[s]["x"]) for s in splits}
    all_real = gaussian_stats(np.concatenate([feats["train"], feats["test"]]))
    test_stats = gaussian_stats(feats["test"])
    n_test = len(feats["test"])

    def fd_vs_test(f: np.ndarray, draws: int = 5) -> float:
        rng = np.random.default_rng(0)
        return float(np.mean([frechet_distance(gaussian_stats(f[rng.choice(len(f), n_test, replace=False)]), test_stats)
                              for _ in range(draws)]))

    floor = fd_vs_test(feats["train"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"checkpoint {ckpt} (step {state['step']}); classifier {classifier_id}: test accuracy {test_acc:.4f}; "
          f"threads {torch.get_num_threads()}; floor FD({n_test} train vs {n_test} test) = {floor:.3f}")

    settings = []
    for spacing in args.spacings.split(","):
        for steps in args.steps.split(","):
            if steps == "ddpm" and spacing != args.spacings.split(",")[0]:
                continue  # DDPM takes every step: spacing does not apply
            settings.append({"steps": steps, "spacing": spacing, "guidance_scale": None})
        for steps in args.guidance_steps.split(","):
            for g in args.guidance.split(","):
                settings.append({"steps": steps, "spacing": spacing, "guidance_scale": float(g)})
    seen, rows = set(), []
    for s in settings:
        key = (s["steps"], s["spacing"], s["guidance_scale"] if s["guidance_scale"] is not None else model.defaults["guidance_scale"])
        if key in seen:
            continue
        seen.add(key)
        n = args.ddpm_samples if s["steps"] == "ddpm" else args.num_samples
        kw = {"sampler": "ddpm"} if s["steps"] == "ddpm" else {"sampler": "ddim", "num_inference_steps": int(s["steps"]), "spacing": s["spacing"]}
        if s["guidance_scale"] is not None:
            kw["guidance_scale"] = s["guidance_scale"]
        y = torch.arange(n) % model.num_classes
        gen = torch.Generator().manual_seed(0)
        samples, start = [], time.perf_counter()
        for i in range(0, n, args.batch):
            samples.append(model.sample(len(y[i : i + args.batch]), generator=gen, y=y[i : i + args.batch], **kw))
        seconds = time.perf_counter() - start
        x = torch.cat(samples)
        f = clf.extract_features(classifier, x)
        pred = torch.as_tensor(_predict(classifier, x))
        row = {
            "sampler": "DDPM-1000" if s["steps"] == "ddpm" else f"DDIM-{s['steps']}",
            "spacing": "-" if s["steps"] == "ddpm" else s["spacing"],
            "guidance": key[2],
            "n": n,
            "ms_per_image": 1000 * seconds / n,
            "class_acc": float((pred == y).float().mean()),
            "fd_all_real": frechet_distance(gaussian_stats(f), all_real),
            "fd_at_test_size": fd_vs_test(f),
            "floor": floor,
        }
        rows.append(row)
        name = f"{row['sampler']}_{row['spacing']}_g{row['guidance']:g}".replace("-", "")
        save_png(image_grid(x[:100].cpu()), out / f"{name}.png")
        print(f"{row['sampler']:>9} {row['spacing']:>8} g={row['guidance']:<4g} n={n:<5} "
              f"{row['ms_per_image']:7.2f} ms/img  acc {row['class_acc']:.4f}  FD {row['fd_all_real']:.3f}  "
              f"FD@{n_test} {row['fd_at_test_size']:.3f} (floor {floor:.3f})", flush=True)

    print("\n| sampler | spacing | guidance | n | ms/image | class acc | FD vs all real | FD@test size | floor |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sampler']} | {r['spacing']} | {r['guidance']:g} | {r['n']} | {r['ms_per_image']:.2f} | "
              f"{100 * r['class_acc']:.1f}% | {r['fd_all_real']:.2f} | {r['fd_at_test_size']:.2f} | {r['floor']:.2f} |")
    (out / "results.json").write_text(json.dumps({
        "checkpoint": str(ckpt), "step": state["step"], "classifier": classifier_id,
        "classifier_test_acc": test_acc, "threads": torch.get_num_threads(), "rows": rows,
    }, indent=2))


def _predict(classifier, x: torch.Tensor, batch: int = 1024) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([classifier(x[i : i + batch]).argmax(1).numpy() for i in range(0, len(x), batch)])


if __name__ == "__main__":
    main()
