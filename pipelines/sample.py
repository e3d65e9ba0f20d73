"""`genray sample`: samples from a trained model straight into a file, without a server.

    genray sample models:/diffusion-digits@champion -n 64 -o grid.png --set guidance_scale=3
    genray sample runs:/<RUN_ID> --class-label 7 -o sevens.png

The model is found like any model reference (registry, run, checkpoint directory), rebuilt from
safetensors + JSON, sampled with its typed settings (a checkpoint's sampling_defaults, then
--set), and written the way its data kind is shown: image kinds as a PNG grid.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from components import checkpoint
from components.data import DatasetInfo, image_grid, save_png
from components.errors import UserError
from pipelines import sampling, tracking
from pipelines.env import project_home


@dataclass(frozen=True)
class Sampled:
    path: Path
    n: int
    model: str
    settings: str


def sample_to_file(target: str, out: Path, *, n: int = 64, seed: int = 0, overrides: list[str] | None = None,
                   class_labels: list[int] | None = None, prompt: str | None = None, home: Path | None = None) -> Sampled:
    if n < 1:
        raise UserError(f"-n: at least one sample, got {n}")
    home = home or project_home()
    ckpt = tracking.resolve_checkpoint(target, tracking.tracking_uri(home), home / "cache")
    model, state = checkpoint.build_model(ckpt)
    show = DatasetInfo.from_json(state["model"]["data"]).kind.show
    if show != "grid":
        raise UserError(f"{target}: its samples are shown as {show}; genray sample writes image grids so far")
    if out.suffix.lower() != ".png":
        raise UserError(f"-o {out}: image samples are written as a PNG grid; name a .png file")

    given = sampling.parse_overrides(overrides or [], prefix_required=False)
    settings = sampling.resolve(model, given, state.get("sampling_defaults"), label="--set ")

    kwargs = {}
    if class_labels is not None:
        if model.conditioning != "class":
            raise UserError(f"--class-label: {target} is not class-conditional (conditioning: {model.conditioning})")
        bad = [k for k in class_labels if not 0 <= k < model.num_classes]
        if bad:
            raise UserError(f"--class-label {bad[0]}: this model's classes are 0..{model.num_classes - 1}")
        labels = class_labels * n if len(class_labels) == 1 else class_labels
        if len(labels) != n:
            raise UserError(f"--class-label: give one label, or one per sample ({n}); got {len(class_labels)}")
        kwargs["y"] = torch.tensor(labels, dtype=torch.long)
    if prompt is not None:
        if model.conditioning != "text":
            raise UserError(f"--prompt: {target} is not text-conditional (conditioning: {model.conditioning})")
        kwargs["prompt"] = prompt
    with torch.no_grad():
        x = model.sample(n, generator=torch.Generator().manual_seed(seed), **kwargs, **settings.model_dump())
    if not out.parent.is_dir():
        raise UserError(f"-o {out}: no such folder {out.parent}")
    save_png(image_grid(x), out)
    shown = ", ".join(f"{k}={v}" for k, v in settings.model_dump().items()) or "no settings"
    return Sampled(out, n, target, shown)
