"""Every family's training step and sampling on one accelerator, from components/ alone (no Ray,
no MLflow): what the GPU machine is lent for. Each case builds a family at its `small` preset on
data shaped like its shipped configs' (32x32 images, 256-token rows, 4,000-sample clips), runs
genray's own Engine step (the recipe's every phase, gradient clipping, EMA where the config has
one), and reports:

    images/s (tokens/s, clips/s)    training examples per second over the timed steps
    step ms                         median of the timed steps (torch.cuda.synchronize around each)
    peak GiB                        torch.cuda.max_memory_allocated over the case
    MFU                             model FLOPs utilisation, for the transformer (gpt) and UNet
                                    (diffusion) steps: FLOPs of one step, counted by
                                    torch.utils.flop_counter.FlopCounterMode on the eager model
                                    (matmuls and convolutions, forward and backward), times
                                    steps/s, over the device's dense bf16 peak (PEAK_TFLOPS, or
                                    --peak-tflops)
    samples/s                       `sample(n)` with the default sampling settings, after a
                                    warm-up call

On CUDA every step autocasts to bfloat16 (the Engine's `bf16` setting, as `trainer.bf16: true`
does), AdamW is the fused kernel (components/training/recipe.py picks it on CUDA), convolutional
families run channels_last, and `--compile` compiles the gpt and diffusion networks
(`nn.Module.compile`, in place; a case whose compile fails is timed eager and says so). The
whole run is meant to finish in under 5 minutes on one H100/H200-class GPU, so one 15-minute
device budget holds a run and a rerun.

    python benchmarks/gpu.py --out $OUT/gpu.json                     # on the GPU machine
    python benchmarks/gpu.py --compile --out $OUT/gpu.json
    python benchmarks/gpu.py --device cpu --families vae,gpt --steps 1 --quick   # a smoke run here

It needs only torch, safetensors, pydantic and numpy (what the GPU machine has): run it from the
repository root, which it puts on sys.path (genray/ in a checkout maps components/ under that name),
as the project's other benchmarks do; nothing needs installing.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # genray/ in a checkout maps components/ and pipelines/ under its name

from genray.components.data import DatasetInfo  # noqa: E402
from genray.components.models import build  # noqa: E402
from genray.components.training import Engine, OptimDefaults, StepSettings  # noqa: E402

# Dense bf16 tensor-core peaks (vendor datasheets, SXM parts, no sparsity), matched on the name.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
FASHION = (1, 32, 32)  # Fashion-MNIST padded to 32x32, as the shipped configs train it
COLOUR = (3, 32, 32)  # shapes and scenes


@dataclass(frozen=True)
class Case:
    family: str
    args: dict[str, Any]
    kind: str  # image | paired | two_domain | tokens | audio | captioned
    shape: tuple[int, ...]  # (C, H, W) images; (T,) tokens or audio
    batch: int
    classes: int = 0
    vocab: int = 0
    text_len: int = 0
    sample_n: int = 64
    unit: str = "images"
    mfu: bool = False  # report MFU: the transformer and UNet steps
    compile: bool = False  # compiled under --compile
    channels_last: bool = True
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    ema: float | None = None


GAN = {"betas": (0.5, 0.999)}  # the GAN configs' Adam
CASES: dict[str, Case] = {
    "vae": Case("vae", {"size": "small", "latent_dim": 16}, "image", FASHION, 128),
    "beta_vae": Case("beta_vae", {"size": "small", "latent_dim": 10, "beta": 4.0}, "image", FASHION, 128),
    "vqvae": Case("vqvae", {"size": "small"}, "image", FASHION, 128),
    "dcgan": Case("dcgan", {"size": "small", "conditional": True, "latent_dim": 100}, "image", FASHION, 64,
                  classes=10, **GAN),
    "stylegan2": Case("stylegan2", {"size": "small", "conditional": True}, "image", FASHION, 64, classes=10,
                      lr=2e-3, betas=(0.0, 0.99), ema=0.9956),
    "pix2pix": Case("pix2pix", {"size": "small"}, "paired", FASHION, 64, **GAN),
    "cyclegan": Case("cyclegan", {"size": "small"}, "two_domain", FASHION, 32, **GAN),
    "diffusion": Case("diffusion", {"size": "small"}, "image", FASHION, 128, classes=10, mfu=True, compile=True,
                      ema=0.999),
    "diffusion_text": Case("diffusion", {"size": "small", "conditioning": "text", "text_len": 64}, "captioned", COLOUR,
                           128, text_len=64, mfu=True, compile=True, ema=0.999),
    "consistency": Case("consistency", {"size": "small"}, "image", FASHION, 128, classes=10),
    "realnvp": Case("realnvp", {"size": "small"}, "image", FASHION, 128, channels_last=False),
    "glow": Case("glow", {"size": "small"}, "image", FASHION, 128, channels_last=False),
    "pixelcnn": Case("pixelcnn", {"size": "small"}, "image", FASHION, 64, sample_n=16),
    "rbm": Case("rbm", {}, "image", FASHION, 128, channels_last=False, lr=0.01),
    "gpt": Case("gpt", {"size": "small", "block_size": 256}, "tokens", (256,), 64, vocab=256, unit="tokens",
                mfu=True, compile=True, channels_last=False, sample_n=8),
    "maskgit": Case("maskgit", {"size": "small"}, "tokens", (64,), 128, vocab=512, unit="tokens", mfu=True,
                    compile=True, channels_last=False),
    "wavenet": Case("wavenet", {"size": "small"}, "audio", (4000,), 16, unit="audio samples", channels_last=False,
                    sample_n=2),
    "clip": Case("clip", {"size": "small", "text_len": 64}, "captioned", FASHION, 256, text_len=64, classes=10,
                 unit="pairs", channels_last=False),
}
# Families with no case: they are built on other trained models (frozen references), whose
# networks the cases above already time.
NOT_TIMED = {
    "unclip": "a prior between a trained CLIP and a trained decoder; the decoder is the diffusion case's UNet",
    "latent diffusion": "the diffusion UNet on a frozen autoencoder's latents: the diffusion case at a smaller shape",
    "token prior": "gpt or maskgit over a frozen VQ-VAE's codes: the gpt and maskgit cases",
    "consistency distillation": "the consistency network plus a frozen teacher UNet (the diffusion case)",
}


def data_info(case: Case) -> DatasetInfo:
    if case.kind == "tokens":
        vocab = tuple(chr(0x100 + i) for i in range(case.vocab))
        return DatasetInfo("tokens", case.shape, 0, 0, vocab, ("tokens",))
    if case.kind == "audio":
        return DatasetInfo("audio", case.shape, 0, 0, None, ("waveform", "sample_rate"), sample_rate=8000)
    c, h, w = case.shape
    if case.kind == "paired":
        return DatasetInfo("paired_image", (h, w, c), 0, 0, None, ("image", "image_paired"))
    if case.kind == "two_domain":
        return DatasetInfo("two_domain_image", (h, w, c), 0, 0, None, ("image", "domain"))
    info = DatasetInfo.for_images(case.shape, case.classes)
    return replace(info, columns=info.columns + ("caption",)) if case.kind == "captioned" else info


def make_batch(case: Case, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = case.batch
    if case.kind == "tokens":
        b = {"x": torch.randint(case.vocab, (n, *case.shape), generator=g)}
    else:
        b = {"x": torch.rand(n, *case.shape, generator=g) * 2 - 1}
    if case.family == "rbm":
        b["x"] = (b["x"] > 0).float() * 2 - 1  # binary pixels
    if case.kind == "paired":
        b["x_paired"] = torch.rand(n, *case.shape, generator=g) * 2 - 1
    if case.kind == "two_domain":
        b["domain"] = torch.arange(n) % 2
    if case.classes:
        b["y"] = torch.randint(case.classes, (n,), generator=g)
    if case.text_len:
        b["text"] = torch.randint(1, 257, (n, case.text_len), generator=g)
        b["text"][:, case.text_len // 2 :] = 0  # zero-padded captions, as encode_captions pads
    out = {k: v.to(device) for k, v in b.items()}
    if case.channels_last and out["x"].ndim == 4:
        out["x"] = out["x"].contiguous(memory_format=torch.channels_last)
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_flops(engine: Engine, batch: dict[str, torch.Tensor]) -> float:
    """FLOPs of one full Engine step (every phase, forward and backward), counted eagerly."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        engine.train_step(batch)
    return float(counter.get_total_flops())


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given is not None:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def run_case(name: str, case: Case, device: torch.device, *, steps: int, warmup: int, compile_: bool,
             peak: float | None, quick: bool) -> dict[str, Any]:
    torch.manual_seed(0)
    if quick:  # a smoke run: the tiny preset, small batches
        case = replace(case, args={**case.args, "size": "tiny"} if "size" in case.args else case.args,
                       batch=min(case.batch, 8), sample_n=min(case.sample_n, 2))
    model = build(case.family, case.args, data_info(case)).to(device)
    if case.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    settings = StepSettings(max_steps=10**6, grad_clip=1.0 if case.family not in {"dcgan", "stylegan2", "cyclegan",
                                                                                  "pix2pix"} else None,
                            ema_decay=case.ema, bf16=device.type == "cuda", min_lr_ratio=1.0)
    engine = Engine(model, defaults=OptimDefaults(lr=case.lr, betas=case.betas), settings=settings)
    batch = make_batch(case, device)
    engine.initialize(batch)
    out: dict[str, Any] = {"family": case.family, "batch": case.batch, "unit": case.unit,
                           "parameters": sum(p.numel() for p in model.parameters()),
                           "args": case.args, "shape": list(case.shape)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    flops = step_flops(engine, batch) if case.mfu else None
    compiled = "no"
    if compile_ and case.compile:
        try:
            model.compile()
            engine.train_step(batch)  # compile here, outside the timed steps
            compiled = "yes"
        except Exception as e:  # noqa: BLE001: timed eager instead, and said
            compiled = f"failed, eager: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
    for _ in range(warmup):
        engine.train_step(batch)
    times = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        engine.train_step(batch)
        sync(device)
        times.append(time.perf_counter() - t0)
    ms = 1000 * statistics.median(times)
    per_example = case.shape[0] if case.unit in {"tokens", "audio samples"} else 1
    out.update({"compiled": compiled, "step_ms": round(ms, 3),
                f"train_{case.unit.replace(' ', '_')}_per_s": round(case.batch * per_example / (ms / 1000), 1)})
    if flops is not None:
        out["step_tflop"] = round(flops / 1e12, 4)
        out["achieved_tflops"] = round(flops / (ms / 1000) / 1e12, 2)
        if peak:
            out["mfu"] = round(flops / (ms / 1000) / (peak * 1e12), 4)
    if "sample" in model.capabilities:
        model.eval()
        kw = {"y": torch.arange(case.sample_n, device=device) % case.classes} if case.classes and \
            "condition" in model.capabilities and model.conditioning == "class" else {}
        if getattr(model, "conditioning", None) == "text":
            kw = {"text": make_batch(replace(case, batch=case.sample_n), device)["text"]}
        gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
        with torch.no_grad(), (torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda"
                               else contextlib.nullcontext()):
            model.sample(min(2, case.sample_n), generator=gen(),
                         **{k: v[: min(2, case.sample_n)] for k, v in kw.items()})  # warm-up
            sync(device)
            t0 = time.perf_counter()
            model.sample(case.sample_n, generator=gen(), **kw)
            sync(device)
        out["sample_n"] = case.sample_n
        out["samples_per_s"] = round(case.sample_n / (time.perf_counter() - t0), 2)
    if device.type == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--families", default=",".join(CASES), help=f"cases to run (default all: {','.join(CASES)})")
    p.add_argument("--steps", type=int, default=10, help="timed steps per case (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before them (default 3)")
    p.add_argument("--compile", action="store_true", help="compile the gpt, maskgit and diffusion networks")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, for MFU")
    p.add_argument("--quick", action="store_true", help="tiny presets and batches: check the script runs")
    p.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.families.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        print(f"gpu.py: error: --families {','.join(unknown)}: unknown; cases: {','.join(CASES)}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    peak = peak_tflops(device, args.peak_tflops)
    report: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__, "bf16_autocast": device.type == "cuda", "compile": args.compile,
        "peak_tflops": peak, "steps": args.steps, "warmup": args.warmup, "quick": args.quick,
        "not_timed": NOT_TIMED, "cases": {},
    }
    started = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        try:
            row = run_case(name, CASES[name], device, steps=args.steps, warmup=args.warmup, compile_=args.compile,
                           peak=peak, quick=args.quick)
        except Exception as e:  # noqa: BLE001: one case failing must not lose the others' figures
            row = {"family": CASES[name].family, "error": f"{type(e).__name__}: {e}",
                   "traceback": traceback.format_exc(limit=4)}
        row["case_s"] = round(time.perf_counter() - t0, 1)
        report["cases"][name] = row
        shown = {k: v for k, v in row.items() if k not in {"args", "traceback", "shape", "family"}}
        print(f"{name:15s} {json.dumps(shown)}", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["total_s"] = round(time.perf_counter() - started, 1)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    failed = [n for n, r in report["cases"].items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
