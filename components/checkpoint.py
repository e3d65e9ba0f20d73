"""Checkpoints: a directory anyone can load without running pickled code.

    model.safetensors      the weights
    ema.safetensors        the EMA weights (when training keeps them)
    optimizer.pt           optimizer + LR-schedule states, loaded with weights_only=True
    state.json             step, epoch, RNG state, the resolved config

safetensors holds tensors only, so the optimizer state (nested dicts of tensors and numbers)
goes through torch.save; `weights_only=True` restricts loading to tensors and primitive
containers, which is what makes it safe to open a checkpoint someone else wrote.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from genray.components.errors import UserError

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"


@dataclass
class Checkpoint:
    model: dict[str, torch.Tensor]
    state: dict[str, Any]
    ema: dict[str, torch.Tensor] | None = None
    optimizer: dict[str, Any] = field(default_factory=dict)


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses views and shared storage; a detached contiguous copy is always safe.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def save(path: str | os.PathLike, ckpt: Checkpoint) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(_contiguous(ckpt.model), str(path / MODEL_FILE))
    if ckpt.ema is not None:
        save_file(_contiguous(ckpt.ema), str(path / EMA_FILE))
    if ckpt.optimizer:
        torch.save(ckpt.optimizer, path / OPTIMIZER_FILE)
    # Write state.json last: its presence marks a complete checkpoint.
    (path / STATE_FILE).write_text(json.dumps(ckpt.state, indent=2, sort_keys=True))
    return path


def load(path: str | os.PathLike, *, map_location: str | torch.device = "cpu", with_optimizer: bool = True) -> Checkpoint:
    """with_optimizer=False leaves optimizer.pt unread: serving needs weights only, and reads no
    file but safetensors and JSON."""
    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(f"{path} is not a genray checkpoint: {STATE_FILE} is missing")
    device = str(map_location)
    try:
        model = load_file(str(path / MODEL_FILE), device=device)
        ema = load_file(str(path / EMA_FILE), device=device) if (path / EMA_FILE).exists() else None
    except SafetensorError as e:
        raise UserError(f"{path}: the weights are not a safetensors file ({e}); genray loads no pickled weights") from None
    optimizer: dict[str, Any] = {}
    if with_optimizer and (path / OPTIMIZER_FILE).exists():
        optimizer = torch.load(path / OPTIMIZER_FILE, map_location=map_location, weights_only=True)
    return Checkpoint(model=model, state=json.loads(state_file.read_text()), ema=ema, optimizer=optimizer)


def get_rng_state() -> dict[str, Any]:
    """CPU (and CUDA) RNG states as JSON-friendly lists of bytes."""
    out: dict[str, Any] = {"torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        out["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(rng["torch"], dtype=torch.uint8))
    if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in rng["cuda"]])


def build_model(path: str | os.PathLike, *, use_ema: bool = True, map_location: str = "cpu",
                with_optimizer: bool = False):
    """Rebuild the trained model from a checkpoint alone: the family, its arguments and the
    data description come from state.json, the weights from safetensors. Returns (model in eval
    mode, state)."""
    from genray.components.data import DatasetInfo
    from genray.components.models import build  # here, not at the top: models import nothing of this

    ckpt = load(path, map_location=map_location, with_optimizer=with_optimizer)
    spec = ckpt.state["model"]
    if "data" not in spec:
        raise UserError(f"{path}: a checkpoint from before genray's model-description change (state.json has "
                        "data_args, not data); retrain it or load it with the genray version that wrote it")
    model = build(spec["family"], spec["args"], DatasetInfo.from_json(spec["data"]))
    weights = ckpt.ema if (use_ema and ckpt.ema is not None) else ckpt.model
    model.load_state_dict(weights)
    return model.to(map_location).eval(), ckpt.state


def model_state(family: str, args: dict[str, Any], data: Any) -> dict[str, Any]:
    """state.json's "model": what build_model needs (model references without their weights)."""
    from genray.components.models.refs import as_json

    return {"family": family, "args": as_json(args), "data": data.to_json()}
