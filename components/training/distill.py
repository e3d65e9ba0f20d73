"""Training against a slowly moving copy of the model itself: consistency training (Song et al.
2023, Algorithm 3) regresses the model's output at one noise level onto an EMA "target" copy's
output at the neighbouring level.

The target is the recipe's own state: made once from the model, updated after every optimizer
step from the (already all-reduced, hence identical) weights, so it is the same on every rank
without any communication, and saved in the checkpoint with the optimizers. The model's forward
receives it: `model(batch, "main", target=target)`. A frozen teacher for consistency
*distillation* is not this: it is a ModelRef in the builder (components/models/refs.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from genray.components.training.recipe import OptimDefaults, Phase, adamw, ema_step, frozen_copy

MAIN = Phase("main", "main")


@dataclass
class EMATarget:
    decay: float = 0.95  # Song et al. 2023 use mu = 0.9 - 0.95 for the target in CT
    init: Callable[[dict[str, Tensor]], None] | None = None
    target: nn.Module | None = field(default=None, repr=False)

    def configure_optimizers(self, model: nn.Module, defaults: OptimDefaults) -> dict[str, torch.optim.Optimizer]:
        self.target = frozen_copy(model)
        return {"main": adamw(model.parameters(), lr=defaults.lr, betas=defaults.betas,
                              weight_decay=defaults.weight_decay)}

    def phases_at(self, step: int) -> list[Phase]:
        return [MAIN]

    def loss(self, model: nn.Module, batch: dict[str, Tensor], phase: Phase, step: int):
        return model(batch, phase.name, target=self.target)

    def update(self, model, batch, phase, step, weight):
        raise TypeError("EMATarget has no non-backprop phases")

    def data_init(self, model: nn.Module, batch: dict[str, Tensor]) -> None:
        if self.init is not None:
            self.init(batch)
        # Data-dependent init may have moved the weights: the target starts from them.
        self.target.load_state_dict(model.state_dict())

    def after_step(self, model: nn.Module, step: int) -> None:
        ema_step(self.target, model, self.decay)

    def state_dict(self) -> dict[str, Any]:
        return {"target": self.target.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.target.load_state_dict(state["target"])
