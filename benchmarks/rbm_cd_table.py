"""CD-1, CD-10 and PCD at one budget on binarised digits: held-out log-likelihood by AIS.

    .venv/bin/python benchmarks/rbm_cd_table.py [--steps 3000] [--hidden 100] [--out docs/rbm_cd_table.json]

The ordering depends on the step size (docs/rbm_cd_sweep.json, lr x momentum): PCD's chains
must follow the weights, so it leads only while the effective step lr / (1 - momentum) stays
moderate (lr 0.3 without momentum, the default here; lr 0.05 at momentum 0.5); at momentum 0.9
the chains lag and PCD comes last, while CD-10 gives the best figure of the sweep (lr 0.1).

Salakhutdinov & Murray 2008 (table 2) trained 500-hidden RBMs on binarised MNIST with CD-1,
CD-3 and CD-25 and found the held-out log-likelihood improve with k; Tieleman 2008 found PCD
better still at the same number of updates. This measures the same ordering on scikit-learn's
8x8 digits (genray's `digits`: 1,500 train, 297 test, the same split, pixels on above the
midpoint), where it runs in minutes on two CPU cores.

The budget is the number of parameter updates (same batches, same order, same learning-rate
schedule, same initialisation for every variant), not wall-clock: CD-10 makes ten Gibbs
sweeps per update, so it also costs about ten times the sampling; the seconds are reported.
Each model trains through genray's own Engine and ContrastiveDivergence recipe (SGD with
momentum = betas[0], weight decay on W only), the loop `genray train` runs without Ray.

The held-out figure is the mean log P(v) of the test images with log Z from AIS (the model's
schedule: Salakhutdinov & Murray's spacing over `--ais-temperatures`, `--ais-runs` runs, from the
base-rate model of the training pixels), repeated with `--ais-repeats` independent seeds: the
table gives the mean over repeats and its standard error, and each repeat's own standard error
of log Z across its runs (the delta method). Training log-likelihood the same way, to see
overfitting. Writes a JSON with every figure, the settings and the machine.
"""
import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from genray.components.data import digits
from genray.components.models.rbm import RBM, ais_log_partition
from genray.components.training import Engine, OptimDefaults, StepSettings, step_seed

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"CD-1": dict(k=1, persistent=False), "CD-10": dict(k=10, persistent=False),
            "PCD": dict(k=1, persistent=True)}


def digit_split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """genray's digits split (components/data/digits.py: prepare), as images in [-1, 1]."""
    images, _ = digits.load()
    pixels = np.rint(images * (255.0 / 16.0)).astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(pixels))
    x = torch.as_tensor(pixels, dtype=torch.float32).unsqueeze(1) / 127.5 - 1.0  # (N, 1, 8, 8)
    return x[order[:-digits.NUM_TEST]], x[order[-digits.NUM_TEST:]]


def train(variant: dict, train_x: torch.Tensor, args) -> tuple[RBM, float]:
    torch.manual_seed(args.seed)  # the same initial weights and chains for every variant
    model = RBM(image_shape=(1, 8, 8), hidden=args.hidden, num_chains=args.batch_size, **variant)
    engine = Engine(model, defaults=OptimDefaults(lr=args.lr, betas=(args.momentum, 0.999),
                                                  weight_decay=args.weight_decay),
                    settings=StepSettings(max_steps=args.steps, grad_clip=None, min_lr_ratio=0.0))
    order = torch.Generator().manual_seed(args.seed)
    perm, pos = torch.randperm(len(train_x), generator=order), 0
    engine.initialize({"x": train_x})  # visible biases and AIS base rate: the training pixels' log-odds
    started = time.perf_counter()
    for _ in range(args.steps):
        if pos + args.batch_size > len(perm):
            perm, pos = torch.randperm(len(train_x), generator=order), 0
        batch = {"x": train_x[perm[pos:pos + args.batch_size]]}
        pos += args.batch_size
        torch.manual_seed(step_seed(args.seed, 0, engine.step))
        engine.train_step(batch)
    return model, time.perf_counter() - started


@torch.no_grad()
def scores(model: RBM, train_x: torch.Tensor, test_x: torch.Tensor, args) -> dict:
    """Mean log P(v) of each split with log Z from `ais_repeats` independent AIS estimates."""
    fe_train = model.free_energy(model.visible({"x": train_x})).double().mean()
    fe_test = model.free_energy(model.visible({"x": test_x})).double().mean()
    log_zs, stderrs = [], []
    started = time.perf_counter()
    for r in range(args.ais_repeats):
        log_z, se = ais_log_partition(model.W, model.b, model.c, model.base_bias,
                                      num_temperatures=args.ais_temperatures, runs=args.ais_runs,
                                      generator=torch.Generator().manual_seed(1000 + r))
        log_zs.append(float(log_z))
        stderrs.append(float(se))
    ais_s = (time.perf_counter() - started) / args.ais_repeats
    test = [-float(fe_test) - z for z in log_zs]
    train_ll = [-float(fe_train) - z for z in log_zs]
    sem = lambda xs: statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else 0.0  # noqa: E731
    return {
        "test_log_likelihood": round(statistics.mean(test), 4), "test_log_likelihood_sem": round(sem(test), 4),
        "train_log_likelihood": round(statistics.mean(train_ll), 4),
        "test_bits_per_pixel": round(-statistics.mean(test) / (64 * math.log(2)), 5),
        "log_z": round(statistics.mean(log_zs), 4), "log_z_per_repeat": [round(z, 4) for z in log_zs],
        "log_z_stderr_within_repeat": [round(s, 4) for s in stderrs], "ais_seconds_per_repeat": round(ais_s, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3000, help="parameter updates per variant (the budget)")
    p.add_argument("--hidden", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.3)
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ais-temperatures", type=int, default=10_000)
    p.add_argument("--ais-runs", type=int, default=100)
    p.add_argument("--ais-repeats", type=int, default=5)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "rbm_cd_table.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    train_x, test_x = digit_split()
    # Independent pixels with the training log-odds: the floor any RBM should beat.
    v_train, v_test = (train_x.flatten(1) > 0).double(), (test_x.flatten(1) > 0).double()
    p_on = (v_train.sum(0) + 1) / (len(v_train) + 2)
    base_ll = float((v_test * p_on.log() + (1 - v_test) * (1 - p_on).log()).sum(1).mean())
    rows = {}
    for name in args.variants:
        model, seconds = train(VARIANTS[name], train_x, args)
        rows[name] = {"train_seconds": round(seconds, 1), **scores(model, train_x, test_x, args)}
        r = rows[name]
        print(f"{name:6s} test log p {r['test_log_likelihood']:9.3f} ± {r['test_log_likelihood_sem']:.3f} nats "
              f"({r['test_bits_per_pixel']:.4f} bits/pixel)   train {r['train_log_likelihood']:9.3f}   "
              f"log Z {r['log_z']:.3f}   {seconds:.1f} s training", flush=True)
    print(f"{'pixels':6s} test log p {base_ll:9.3f} nats (independent pixels, training log-odds)")
    out = {
        "what": "held-out mean log P(v) of binarised 8x8 digits (nats per image) under RBMs trained by CD-1, "
                "CD-10 and PCD for the same number of parameter updates; log Z by AIS "
                "(Salakhutdinov & Murray 2008), mean and standard error over independent AIS repeats",
        "command": "python benchmarks/rbm_cd_table.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out", "variants")),
        "budget": f"{args.steps} parameter updates of batch {args.batch_size} each (not wall-clock)",
        "data": f"genray digits split: {len(train_x)} train, {len(test_x)} test, 64 pixels on above the midpoint",
        "independent_pixels_test_log_likelihood": round(base_ll, 4),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "results": rows,
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
