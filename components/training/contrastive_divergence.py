"""Updates that are not the gradient of a loss: contrastive divergence for energy-based models
(restricted Boltzmann machines).

CD-k (Hinton 2002) approximates the log-likelihood gradient of an energy model,
    d log p(v) / d theta = -E_data[dF/dtheta] + E_model[dF/dtheta]        (F: free energy)
by starting k Gibbs sweeps at the data. PCD (Tieleman 2008) keeps persistent chains instead:
they continue from where the previous step left them, held in a model buffer (`chains`) so a
checkpoint saves them and a resume restores them exactly.

The model provides, as plain tensor functions:
    gibbs(v, k) -> v_k                     k block-Gibbs sweeps
    statistics(v) -> {param name: tensor}  E[-dF/dtheta] over the batch, per parameter
    chains                                 buffer (num_chains, ...) for PCD
and, through the recipe's own arguments (the model passes its methods, as with Backprop's hooks):
    visible(batch) -> v                    the batch as visible units (an image RBM binarises
                                           batch["x"] here); default: batch["x"] as it is
    init(batch)                            data-dependent initialisation on a fresh run's first
                                           batch (visible biases from the data, Hinton 2010 §8)
    free_energy(v) -> (B,)                 F per row: logs the CD surrogate loss (below)
The recipe writes -(positive - negative) into each parameter's .grad, so any torch optimizer
ascends the likelihood; no autograd graph is built.

What it logs: `recon_mse`, the squared error of one Gibbs sweep from the data (Hinton 2010 §5:
the usual, imperfect progress signal), and with free_energy, `cd_loss` = mean F(data) - mean
F(negatives), the surrogate whose gradient (negatives held fixed) is exactly the update written.
It is no likelihood: it tends to 0 whether the model is good or the chains have stopped mixing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from genray.components.training.recipe import OptimDefaults, Phase

CD = Phase("cd", "main", backprop=False)


@dataclass
class ContrastiveDivergence:
    k: int = 1
    persistent: bool = True
    visible: Callable[[dict[str, Tensor]], Tensor] | None = None
    init: Callable[[dict[str, Tensor]], None] | None = None
    free_energy: Callable[[Tensor], Tensor] | None = None

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"contrastive divergence needs k >= 1 Gibbs sweeps, got {self.k}")

    def configure_optimizers(self, model: nn.Module, defaults: OptimDefaults) -> dict[str, torch.optim.Optimizer]:
        # Plain SGD with momentum is the RBM literature's optimizer (Hinton 2010, "A practical
        # guide", §9); weight decay as L2 on the weights only, not the biases, §10.
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": defaults.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        return {"main": torch.optim.SGD([g for g in groups if g["params"]], lr=defaults.lr,
                                        momentum=defaults.betas[0])}

    def phases_at(self, step: int) -> list[Phase]:
        return [CD]

    def loss(self, model, batch, phase, step):
        raise TypeError("ContrastiveDivergence has no backprop phases")

    @torch.no_grad()
    def update(self, model: nn.Module, batch: dict[str, Tensor], phase: Phase, step: int, weight: float) -> dict[str, Tensor]:
        v_data = batch["x"] if self.visible is None else self.visible(batch)
        start = model.chains if self.persistent else v_data
        v_model = model.gibbs(start, self.k)
        if self.persistent:
            model.chains.copy_(v_model)
        positive, negative = model.statistics(v_data), model.statistics(v_model)
        params = dict(model.named_parameters())
        for name, pos in positive.items():
            g = -(pos - negative[name]) * weight  # descend -log p
            p = params[name]
            p.grad = g.to(p.dtype) if p.grad is None else p.grad + g
        # The reconstruction error after one sweep: the usual (if imperfect) progress signal.
        logs = {"recon_mse": (model.gibbs(v_data, 1) - v_data).pow(2).mean()}
        if self.free_energy is not None:
            logs["cd_loss"] = self.free_energy(v_data).mean() - self.free_energy(v_model).mean()
        return logs

    def data_init(self, model: nn.Module, batch: dict[str, Tensor]) -> None:
        if self.init is not None:
            self.init(batch)

    def after_step(self, model: nn.Module, step: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
