"""One loss, one optimizer: VAEs, flows, autoregressive models, diffusion, VQ-VAE.

Every step runs the model's single phase ("main") and steps every trainable parameter with one
AdamW. Two optional hooks, declared by the model when it makes its recipe (never probed for):
`on_step(step)` before each step (a schedule inside the objective, e.g. the capacity annealing
of Burgess et al. 2018) and `init(batch)` on the first batch of a fresh run (data-dependent
initialisation: Glow's ActNorm, latent diffusion's latent scale).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from genray.components.training.recipe import OptimDefaults, Phase, adamw

MAIN = Phase("main", "main")


@dataclass
class Backprop:
    on_step: Callable[[int], None] | None = None
    init: Callable[[dict[str, Tensor]], None] | None = None
    phase: str = "main"

    def configure_optimizers(self, model: nn.Module, defaults: OptimDefaults) -> dict[str, torch.optim.Optimizer]:
        return {"main": adamw(model.parameters(), lr=defaults.lr, betas=defaults.betas,
                              weight_decay=defaults.weight_decay)}

    def phases_at(self, step: int) -> list[Phase]:
        return [Phase(self.phase, "main")]

    def loss(self, model: nn.Module, batch: dict[str, Tensor], phase: Phase, step: int):
        if self.on_step is not None:
            self.on_step(step)
        return model(batch, phase.name)

    def update(self, model, batch, phase, step, weight):
        raise TypeError("Backprop has no non-backprop phases")

    def data_init(self, model: nn.Module, batch: dict[str, Tensor]) -> None:
        if self.init is not None:
            self.init(batch)

    def after_step(self, model: nn.Module, step: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
