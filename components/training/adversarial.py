"""Adversarial training: networks in generator / discriminator roles, each with its own
optimizer (DCGAN, StyleGAN2, Pix2Pix, CycleGAN).

At every step: `n_critic` discriminator phases ("disc"), then one generator phase ("gen"); every
`r1_every` steps one more discriminator phase ("disc_reg") for a lazy regulariser such as
StyleGAN2's R1 penalty (Karras et al. 2020, §3.1: computed every 16 minibatches, its loss scaled
by the interval). The model's forward computes each phase's loss; this recipe decides who steps
when and with which learning rate:

- two learning rates (TTUR, Heusel et al. 2017): `g_lr`, `d_lr`, each defaulting to the
  trainer's lr;
- lazy regularisation changes the discriminator's Adam hyperparameters by c = k / (k + 1)
  (lr * c, betas ** c), so the regularised schedule matches the unregularised one (Karras et al.
  2020, appendix B);
- each role names its networks by submodule: CycleGAN's two pairs are generator=("g_ab", "g_ba"),
  discriminator=("d_a", "d_b"). The engine syncs only the stepped role's gradients.

The n_critic discriminator phases of one step see the same real batch with fresh noise each.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from genray.components.training.recipe import OptimDefaults, Phase, adamw, submodule_parameters

DISC = Phase("disc", "disc")
GEN = Phase("gen", "gen")
DISC_REG = Phase("disc_reg", "disc")


@dataclass
class Adversarial:
    generator: tuple[str, ...]
    discriminator: tuple[str, ...]
    g_lr: float | None = None
    d_lr: float | None = None
    betas: tuple[float, float] | None = None  # None: the trainer's
    n_critic: int = 1
    r1_every: int = 0  # 0: no lazy regulariser phase

    def __post_init__(self):
        if self.n_critic < 1:
            raise ValueError(f"n_critic must be >= 1, got {self.n_critic}")
        if self.r1_every < 0:
            raise ValueError(f"r1_every must be >= 0 (0 = off), got {self.r1_every}")

    def configure_optimizers(self, model: nn.Module, defaults: OptimDefaults) -> dict[str, torch.optim.Optimizer]:
        betas = self.betas or defaults.betas
        d_lr, d_betas = self.d_lr or defaults.lr, betas
        if self.r1_every:
            c = self.r1_every / (self.r1_every + 1)
            d_lr, d_betas = d_lr * c, (betas[0] ** c, betas[1] ** c)
        return {
            "gen": adamw(submodule_parameters(model, self.generator), lr=self.g_lr or defaults.lr, betas=betas,
                         weight_decay=defaults.weight_decay),
            "disc": adamw(submodule_parameters(model, self.discriminator), lr=d_lr, betas=d_betas,
                          weight_decay=defaults.weight_decay),
        }

    def phases_at(self, step: int) -> list[Phase]:
        phases = [DISC] * self.n_critic
        if self.r1_every and step % self.r1_every == 0:
            phases.append(DISC_REG)
        return phases + [GEN]

    def loss(self, model: nn.Module, batch: dict[str, Tensor], phase: Phase, step: int):
        return model(batch, phase.name)

    def update(self, model, batch, phase, step, weight):
        raise TypeError("Adversarial has no non-backprop phases")

    def data_init(self, model: nn.Module, batch: dict[str, Tensor]) -> None:
        pass

    def after_step(self, model: nn.Module, step: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
