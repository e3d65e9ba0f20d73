"""Steps vs quality of the priors over VQ-VAE codes: MaskGIT at T decoding steps against the
autoregressive prior (one step per token), both trained on the same tokenizer's codes.

    .venv/bin/python benchmarks/vq_prior_steps.py models:/gpt-fashion_mnist/latest \\
        models:/maskgit-fashion_mnist/latest [--steps 4,8,12,16] [--guidance 0] [--num-samples 1000]
        [--batches 1,100] [--threads 2] [--out docs/vq_prior_steps.json]

Quality: `genray eval`'s own scoring (pipelines/evaluate.py, in this process, nothing logged) of
--num-samples samples per setting, classes cycling: FD on the dataset's domain classifier against
the real-vs-real floor, and class consistency (the classifier's agreement with the asked class).
Speed: images per second of `sample` (the prior's tokens decoded to images) at each batch size,
timed in this process on --threads threads after a warm-up, the median of --repeats runs. The
autoregressive prior is timed with its KV cache and, for reference, without it (every step runs
the whole prefix again).

    .venv/bin/python benchmarks/vq_prior_steps.py --untrained 2 [--steps 8] [--guidance 2]

Speed alone, on a grid the trained models do not have: the shipped priors' architectures (GPT
and MaskGIT small, class-conditional, over a codebook of 512) over an untrained VQ-VAE whose
`downsample` is given (2: Fashion-MNIST's 32x32 images as 16x16 = 256 tokens, against the 64 of
the trained downsample 4). Sampling time does not depend on the weights: every pass runs whatever
the logits are, so the images/s are the trained models' on that grid; nothing is scored.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from genray.components.checkpoint import build_model
from genray.pipelines import evaluate, tracking
from genray.pipelines.env import project_home


def load(target: str):
    home = project_home()
    t = evaluate.resolve_target(target, tracking.tracking_uri(home), home)
    model, _ = build_model(t.checkpoint)
    return model.eval()


def images_per_s(fn, n: int, repeats: int) -> float:
    fn(min(n, 2))  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(n)
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times)


def quality(target: str, sampling: dict, num_samples: int) -> dict[str, float]:
    out = evaluate.evaluate(evaluate.EvalRequest(target, num_samples=num_samples, workers=0, sampling=sampling,
                                                 likelihood_rows=100, log=False), say=lambda *a: None)
    m = out.metrics
    fd = next(k for k in m if k.startswith("fd_") and not k.endswith("_floor"))
    return {"fd": m[fd], "fd_floor": m[f"{fd}_floor"], "class_consistency": m.get("class_consistency"),
            **({"bits_per_dim_bound": m["bits_per_dim"]} if "bits_per_dim" in m else {})}


def untrained_priors(downsample: int):
    """GPT and MaskGIT small, class-conditional, over an untrained VQ-VAE (512 codes) of 32x32
    grey images at `downsample`: the shipped priors' architectures on that grid."""
    from genray.components.data import DatasetInfo
    from genray.components.models import build

    data = DatasetInfo.for_images((1, 32, 32), 10)
    tokenizer = {"ref": f"untrained vqvae, downsample {downsample}", "family": "vqvae",
                 "args": {"size": "small", "downsample": downsample}, "data": DatasetInfo.for_images((1, 32, 32)).to_json()}
    torch.manual_seed(0)
    ar = build("gpt", {"size": "small", "conditioning": "class", "tokenizer": tokenizer}, data).eval()
    mg = build("maskgit", {"size": "small", "conditioning": "class", "tokenizer": tokenizer}, data).eval()
    return ar, mg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ar", nargs="?")
    ap.add_argument("maskgit", nargs="?")
    ap.add_argument("--untrained", type=int, metavar="DOWNSAMPLE", default=None,
                    help="speed only: untrained priors over a VQ-VAE of this downsample (2, 4 or 8)")
    ap.add_argument("--steps", default="4,8,12,16")
    ap.add_argument("--guidance", type=float, default=0.0, help="MaskGIT's guidance scale")
    ap.add_argument("--num-samples", type=int, default=1000)
    ap.add_argument("--batches", default="1,100")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    if args.untrained is not None:
        ar, mg = untrained_priors(args.untrained)
        args.ar = args.maskgit = None  # nothing to score
    elif args.ar is None or args.maskgit is None:
        ap.error("give the two trained priors (AR MASKGIT), or --untrained DOWNSAMPLE for speed alone")
    else:
        ar, mg = load(args.ar), load(args.maskgit)
    n_tokens = ar.net.seq_len

    def gen(seed):
        return torch.Generator().manual_seed(seed)

    def ys(n, model):
        return torch.arange(n) % model.num_classes if model.num_classes else None

    rows = []

    def row(name, model, target, sampling, sample_fn, passes):
        speed = {f"images_per_s_batch_{b}": images_per_s(sample_fn, b, args.repeats) for b in batches}
        q = quality(target, sampling, args.num_samples) if target else {}
        rows.append({"prior": name, "network_passes": passes, **sampling, **q, **speed})
        print(json.dumps(rows[-1]))

    with torch.no_grad():
        row("autoregressive (KV cache)", ar, args.ar, {},
            lambda n: ar.sample(n, generator=gen(0), y=ys(n, ar)), n_tokens)
        row("autoregressive (no cache)", ar, None, {},
            lambda n: ar.images(ar.net.generate_naive(n, generator=gen(0), y=ys(n, ar))), n_tokens)
        for t in (int(s) for s in args.steps.split(",")):
            sampling = {"steps": t, "guidance_scale": args.guidance}
            row(f"maskgit T={t}", mg, args.maskgit, sampling,
                lambda n, t=t: mg.sample(n, generator=gen(0), y=ys(n, mg), **sampling), t)

    ref = rows[0]
    for r in rows:
        for b in batches:
            r[f"speedup_vs_ar_batch_{b}"] = r[f"images_per_s_batch_{b}"] / ref[f"images_per_s_batch_{b}"]
        if r.get("fd") is not None and ref.get("fd") is not None:
            r["fd_vs_ar"] = r["fd"] / ref["fd"]
    print(f"\n{'prior':28} {'passes':>6} {'FD':>7} {'floor':>6} {'cls':>5} " +
          " ".join(f"{'img/s@' + str(b):>10} {'x AR':>6}" for b in batches))
    for r in rows:
        fd = f"{r['fd']:7.2f} {r['fd_floor']:6.3f} {r['class_consistency']:5.3f}" if "fd" in r else f"{'':7} {'':6} {'':5}"
        print(f"{r['prior']:28} {r['network_passes']:>6} {fd} " + " ".join(
            f"{r[f'images_per_s_batch_{b}']:10.1f} {r[f'speedup_vs_ar_batch_{b}']:6.2f}" for b in batches))
    if args.out:
        Path(args.out).write_text(json.dumps({
            "command": "benchmarks/vq_prior_steps.py " + " ".join(f"{k}={v}" for k, v in vars(args).items()),
            "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
            "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
