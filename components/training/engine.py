"""The training step, for any recipe: phases, gradient accumulation, gradient sync across
workers, clipping, the LR schedule and the EMA weights. Pure torch (torch.distributed when a
process group is up), so it runs the same in one process, in Ray Train's local mode and on N
workers; pipelines/training/loop.py feeds it batches and checkpoints it.

Gradient sync. Each phase all-reduces (averages) the gradients of exactly the parameters its
optimizer steps, in one flat buffer per dtype, after the last micro-batch: a network that a
phase does not step is neither differentiated (its parameters stop requiring grad for the phase)
nor communicated. DDP would overlap the all-reduce with backward, but it reduces every
parameter it wraps in every backward, which is wrong for multi-network recipes, and it cannot
express a non-backprop update; one explicit all-reduce per phase serves them all.

Every rank starts from rank 0's weights (broadcast after construction and after data-dependent
initialisation) and applies the same averaged gradients, so weights, the EMA and a recipe's
EMA target stay identical on every rank without further communication.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from genray.components.training.recipe import OptimDefaults, Phase, ema_step, frozen_copy, optimizer_parameters


@dataclass(frozen=True)
class StepSettings:
    max_steps: int
    grad_accum: int = 1
    grad_clip: float | None = 1.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    lr_schedule: str = "cosine"  # "cosine" | "linear" (constant, then linear from lr_decay_start)
    lr_decay_start: float = 0.5
    ema_decay: float | None = None
    bf16: bool = False  # autocast the forward in bfloat16 (GPUs)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float, schedule: str = "cosine",
              decay_start: float = 0.5) -> float:
    """Linear warmup, then cosine decay to min_ratio (Loshchilov & Hutter 2017), or with schedule
    "linear" the lr held until `decay_start` of the steps after warmup and then decayed linearly
    to min_ratio (CycleGAN's: constant for 100 epochs, linearly to 0 over the next 100, Zhu et
    al. 2017, §4)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        if progress <= decay_start:
            return 1.0
        return 1.0 - (1 - min_ratio) * (progress - decay_start) / (1 - decay_start)
    if schedule != "cosine":
        raise ValueError(f"lr schedule must be cosine or linear, got {schedule!r}")
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def step_seed(seed: int, rank: int, step: int) -> int:
    # Reseeding every step makes a resumed run draw exactly the noise the uninterrupted run would.
    return (seed * 1_000_003 + rank * 10_007 + step) % (2**63)


class EMA:
    """Exponential moving average of the weights, with the usual warmup so short runs are not
    dominated by the initialisation: decay_t = min(decay, (1 + t) / (10 + t)). Buffers (e.g.
    BatchNorm statistics) are copied, not averaged."""

    def __init__(self, model: nn.Module, decay: float):
        self.model = frozen_copy(model)
        self.decay = decay

    def update(self, model: nn.Module, step: int) -> None:
        ema_step(self.model, model, min(self.decay, (1 + step) / (10 + step)))


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def broadcast_state(model: nn.Module) -> None:
    """Every rank takes rank 0's parameters and buffers."""
    if world_size() == 1:
        return
    for t in [*model.parameters(), *model.buffers()]:
        dist.broadcast(t.data, src=0)


@torch.no_grad()
def sync_gradients(params: list[nn.Parameter]) -> None:
    """Average the gradients of `params` over all ranks: one all-reduce per dtype."""
    world = world_size()
    if world == 1:
        return
    by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
    for p in params:
        if p.grad is None:  # unused this step on this rank: contributes zeros, keeps sizes equal
            p.grad = torch.zeros_like(p)
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        dist.all_reduce(flat)
        flat /= world
        for p, g in zip(group, flat.split([p.numel() for p in group])):
            p.grad.copy_(g.view_as(p.grad))


class Engine:
    """One model, its recipe's optimizers and schedules, the EMA, and the step counter."""

    def __init__(self, model: nn.Module, *, defaults: OptimDefaults, settings: StepSettings):
        self.model, self.recipe, self.settings = model, model.recipe, settings
        self.ema = EMA(model, settings.ema_decay) if settings.ema_decay is not None else None
        self.optimizers = self.recipe.configure_optimizers(model, defaults)
        s = settings
        self.schedulers = {
            name: torch.optim.lr_scheduler.LambdaLR(
                opt, lambda k: lr_factor(k, s.warmup_steps, s.max_steps, s.min_lr_ratio, s.lr_schedule, s.lr_decay_start))
            for name, opt in self.optimizers.items()
        }
        self.params = {name: optimizer_parameters(opt) for name, opt in self.optimizers.items()}
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.step = 0
        self.device = next(model.parameters()).device
        broadcast_state(model)

    # -- the step ------------------------------------------------------------------------------

    def initialize(self, batch: dict[str, Tensor]) -> None:
        """Data-dependent initialisation on the first batch of a fresh run, then rank 0's result
        everywhere."""
        with torch.no_grad(), self.autocast():
            self.recipe.data_init(self.model, batch)
        broadcast_state(self.model)
        if self.ema is not None:
            self.ema.model.load_state_dict(self.model.state_dict())

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """One optimizer step of every phase the recipe schedules now; returns the step's mean
        losses and logs ("loss" for the main phase, "<phase>_loss" for others)."""
        s, accum = self.settings, self.settings.grad_accum
        size = next(iter(batch.values())).shape[0]
        if size % accum:
            raise ValueError(f"a batch of {size} rows does not split into grad_accum={accum} micro-batches")
        micro = size // accum
        out: dict[str, float] = {}
        counts: dict[str, int] = {}
        for phase in self.recipe.phases_at(self.step):
            opt, params = self.optimizers[phase.optimizer], self.params[phase.optimizer]
            stepped = {id(p) for p in params}
            for p in self.trainable:
                p.requires_grad_(id(p) in stepped)
            opt.zero_grad(set_to_none=True)
            logs: dict[str, float] = {}
            for i in range(accum):
                mb = {k: v[i * micro : (i + 1) * micro] for k, v in batch.items()}
                if phase.backprop:
                    with self.autocast():
                        loss, extra = self.recipe.loss(self.model, mb, phase, self.step)
                    (loss / accum).backward()
                    extra = {"loss": loss.detach(), **extra}
                else:
                    with self.autocast():
                        extra = self.recipe.update(self.model, mb, phase, self.step, 1.0 / accum)
                # Keyed by phase ("disc/loss", "gen/g_adv"): each network's figures apart in MLflow.
                # A single-phase recipe ("main") keeps plain keys.
                for k, v in extra.items():
                    k = k if phase.name == "main" else f"{phase.name}/{k}"
                    logs[k] = logs.get(k, 0.0) + float(v) / accum
            sync_gradients(params)
            if s.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
            opt.step()
            for k, v in logs.items():  # a phase run n_critic times is averaged
                out[k] = out.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
        for p in self.trainable:
            p.requires_grad_(True)
        for sched in self.schedulers.values():
            sched.step()
        self.step += 1
        self.recipe.after_step(self.model, self.step)
        if self.ema is not None:
            self.ema.update(self.model, self.step)
        return {k: v / counts[k] for k, v in out.items()}

    def lr(self) -> float:
        return next(iter(self.schedulers.values())).get_last_lr()[0]

    # -- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Optimizers, schedules and the recipe's own state (weights and EMA are saved apart)."""
        return {
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "recipe": self.recipe.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], *, step: int, ema: dict[str, Tensor] | None) -> None:
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, sch in self.schedulers.items():
            sch.load_state_dict(state["schedulers"][k])
        self.recipe.load_state_dict(state.get("recipe", {}))
        self.step = step
        if self.ema is not None and ema is not None:
            self.ema.model.load_state_dict(ema)

    def autocast(self):
        if not self.settings.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)
