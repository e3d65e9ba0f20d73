"""What one training step of each GAN costs on this machine: every phase of the adversarial recipe
(discriminator, generator, the lazy R1 step amortised over its interval), one process, one thread,
a batch of 32 at 32x32 (Fashion-MNIST's size), the `small` presets. The figure behind "the same
wall-clock budget": a StyleGAN2 step buys fewer steps than a DCGAN step in the same minutes.

    .venv/bin/python benchmarks/gan_step_cost.py            # writes docs/gan_step_cost.json
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from genray.components.data import DatasetInfo  # noqa: E402
from genray.components.models import build  # noqa: E402
from genray.components.training import Engine, OptimDefaults, StepSettings  # noqa: E402

CASES = {  # name -> (family, arguments, data)
    "dcgan": ("dcgan", {"size": "small", "conditional": True, "latent_dim": 100}, DatasetInfo.for_images((1, 32, 32), 10)),
    "stylegan2": ("stylegan2", {"size": "small", "conditional": True}, DatasetInfo.for_images((1, 32, 32), 10)),
    "pix2pix": ("pix2pix", {"size": "small"},
                DatasetInfo("paired_image", (32, 32, 1), 0, 0, None, ("image", "image_paired"))),
}


def step_ms(family: str, args: dict, data: DatasetInfo, *, batch: int = 32, steps: int = 32) -> tuple[float, int]:
    torch.manual_seed(0)
    model = build(family, args, data)
    engine = Engine(model, defaults=OptimDefaults(lr=2e-4, betas=(0.5, 0.999)),
                    settings=StepSettings(max_steps=10_000, grad_clip=None))
    b = {"x": torch.rand(batch, *data.image_shape) * 2 - 1, "y": torch.randint(10, (batch,)),
         "x_paired": torch.rand(batch, *data.image_shape) * 2 - 1}
    engine.initialize(b)
    for _ in range(4):
        engine.train_step(b)
    started = time.perf_counter()
    for _ in range(steps):  # 32 steps: two lazy R1 steps at StyleGAN2's interval of 16
        engine.train_step(b)
    return 1000 * (time.perf_counter() - started) / steps, sum(p.numel() for p in model.parameters())


def main() -> None:
    torch.set_num_threads(1)
    out = {}
    for name, (family, args, data) in CASES.items():
        ms, params = step_ms(family, args, data)
        out[name] = {"ms_per_step": round(ms, 1), "images_per_s": round(32 / ms * 1000, 1), "parameters": params}
        print(f"{name:10s} {ms:7.1f} ms/step  {32 / ms * 1000:6.1f} images/s  {params:,} parameters", flush=True)
    base = out["dcgan"]["ms_per_step"]
    for v in out.values():
        v["x_dcgan"] = round(v["ms_per_step"] / base, 2)
    path = ROOT / "docs" / "gan_step_cost.json"
    path.write_text(json.dumps({"batch": 32, "threads": 1, "image": "32x32x1", "cases": out}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
