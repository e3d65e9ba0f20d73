"""WaveNet generation: the fast algorithm (per-layer queues, Paine et al. 2016: `sample`) vs.
the network run over the last receptive field for every sample (`sample_naive`).

    .venv/bin/python benchmarks/wavenet_sampling.py [--size small] [--seconds 1] [--rate 8000]
        [--n 1] [--threads 1] [--out docs/wavenet_sampling.json]

A randomly initialised, class-conditional model of the given size preset (small: 10 dilated
layers, a receptive field of 1,024 samples): speed does not depend on the weights. Both ways
generate --n clips of --seconds at --rate from the same seed; the script checks that they are
equal sample for sample, then prints audio samples/s, the real-time factor and the speed-up.
Wall-clock of one run each on --threads threads.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from genray.components.data import DatasetInfo
from genray.components.models.wavenet import build_wavenet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="small", choices=["tiny", "small", "base"])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--rate", type=int, default=8000)
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "wavenet_sampling.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = DatasetInfo("audio", (int(args.seconds * args.rate),), 0, 10, None, ("waveform", "sample_rate", "label"),
                       sample_rate=args.rate)
    model = build_wavenet(data=data, size=args.size, conditioning="class").eval()
    times, clips = {}, {}
    for name in ("sample", "sample_naive"):
        t0 = time.perf_counter()
        clips[name] = getattr(model, name)(args.n, generator=torch.Generator().manual_seed(0))
        times[name] = time.perf_counter() - t0
        print(f"{name}: {times[name]:.1f} s", flush=True)
    assert torch.equal(clips["sample"], clips["sample_naive"]), "fast generation drew other audio"
    samples = args.n * clips["sample"].shape[1]
    result = {
        "size": args.size, "seconds": args.seconds, "sample_rate": args.rate, "n": args.n, "threads": args.threads,
        "layers": len(model.layers), "receptive_field": model.receptive_field,
        "parameters": sum(p.numel() for p in model.parameters()),
        "fast_samples_per_s": samples / times["sample"], "naive_samples_per_s": samples / times["sample_naive"],
        "fast_real_time_factor": samples / times["sample"] / args.rate,
        "speedup": times["sample_naive"] / times["sample"], "identical": True,
        "machine": f"{platform.machine()}, torch {torch.__version__}",
    }
    print(f"{args.size} WaveNet (receptive field {model.receptive_field}), {args.n} clip(s) of {args.seconds:g} s at "
          f"{args.rate} Hz: fast {result['fast_samples_per_s']:,.0f} samples/s "
          f"({result['fast_real_time_factor']:.2f}x real time), naive {result['naive_samples_per_s']:,.0f} samples/s, "
          f"{result['speedup']:.1f}x, same audio")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
