"""What every training recipe offers, and the pieces recipes share.

A family names its training method by holding a recipe object (`model.recipe`), made in its
constructor with its own settings (a GAN's learning rates and n_critic, an RBM's Gibbs steps).
The engine (engine.py) runs whichever recipe it is handed and knows nothing else about the
family; the Ray loop in pipelines/training/ knows only the engine.

    configure_optimizers(model, defaults)  {name: optimizer}, per network (nanoGPT's shape)
    phases_at(step)                        the phases to run at step k, in order
    loss(model, batch, phase, step)        a backprop phase's loss and logs
    update(model, batch, phase, step, w)   a non-backprop phase: adds w * its update to .grad
    data_init(model, batch)                before the first step of a fresh run
    after_step(model, step)                after the optimizers stepped (weights are in sync)
    state_dict() / load_state_dict(d)      the recipe's own state, in the checkpoint
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterable, Protocol, Sequence

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import get_ema_multi_avg_fn


@dataclass(frozen=True)
class Phase:
    """One optimizer step inside a training step: `name` is what the model's forward is asked
    for, `optimizer` which optimizer steps, `backprop` whether its gradients come from
    loss.backward() (False: the recipe's `update` writes them, e.g. contrastive divergence)."""

    name: str
    optimizer: str
    backprop: bool = True


@dataclass(frozen=True)
class OptimDefaults:
    """The trainer's optimizer settings; a recipe may override them per network."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0


class Recipe(Protocol):
    def configure_optimizers(self, model: nn.Module, defaults: OptimDefaults) -> dict[str, torch.optim.Optimizer]: ...

    def phases_at(self, step: int) -> Sequence[Phase]: ...

    def loss(self, model: nn.Module, batch: dict[str, Tensor], phase: Phase, step: int) -> tuple[Tensor, dict[str, Tensor]]: ...

    def update(self, model: nn.Module, batch: dict[str, Tensor], phase: Phase, step: int, weight: float) -> dict[str, Tensor]: ...

    def data_init(self, model: nn.Module, batch: dict[str, Tensor]) -> None: ...

    def after_step(self, model: nn.Module, step: int) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def adamw(params: Iterable[nn.Parameter], *, lr: float, betas: tuple[float, float], weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and kernels only: biases, norm scales and other
    vectors are not decayed (nanoGPT's configure_optimizers; Loshchilov & Hutter 2019). On a GPU
    the fused kernel (one launch for every parameter's update) is used."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [g for g in ({"params": decay, "weight_decay": weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def submodule_parameters(model: nn.Module, names: Sequence[str]) -> list[nn.Parameter]:
    """The trainable parameters of the named submodules (a network), each once."""
    seen: dict[int, nn.Parameter] = {}
    for name in names:
        for p in model.get_submodule(name).parameters():
            if p.requires_grad:
                seen.setdefault(id(p), p)
    if not seen:
        raise ValueError(f"submodules {list(names)} have no trainable parameters")
    return list(seen.values())


def optimizer_parameters(opt: torch.optim.Optimizer) -> list[nn.Parameter]:
    return [p for g in opt.param_groups for p in g["params"]]


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with no gradients, for averaged weights; without the model's
    recipe, which trains nothing in a copy (and may hold such a copy itself)."""
    recipe = model.__dict__.pop("recipe", None)
    try:
        return copy.deepcopy(model).eval().requires_grad_(False)
    finally:
        if recipe is not None:
            model.recipe = recipe


@torch.no_grad()
def ema_step(average: nn.Module, model: nn.Module, decay: float) -> None:
    """average <- decay * average + (1 - decay) * model for the parameters (torch's public EMA
    function); buffers such as BatchNorm statistics are copied, not averaged."""
    get_ema_multi_avg_fn(decay)(list(average.parameters()), [p.detach() for p in model.parameters()], None)
    for b_avg, b in zip(average.buffers(), model.buffers()):
        b_avg.copy_(b)
