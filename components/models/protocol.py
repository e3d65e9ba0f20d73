"""The one interface every generative family implements (structural typing, no base class).

The training loop in ``pipelines/train.py`` knows only this: for each phase, zero that phase's
optimizer, ``loss, logs = model(batch, phase)`` through the DDP wrapper, backward, step.
"""
from __future__ import annotations

from typing import Iterator, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

# Capabilities a family may declare; serving and evaluation route on these.
CAPABILITIES = frozenset(
    {"sample", "encode", "decode", "log_prob", "condition", "translate", "generate_text", "audio"}
)


@runtime_checkable
class GenerativeModel(Protocol):
    phases: tuple[str, ...]  # ("main",) for most; ("disc", "gen") for GANs
    capabilities: frozenset[str]

    def forward(self, batch: dict[str, Tensor], phase: str) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss to minimise for this phase, and detached scalars to log."""
        ...

    def parameters_for(self, phase: str) -> Iterator[nn.Parameter]:
        """The parameters that this phase's optimizer steps."""
        ...

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, **kwargs) -> Tensor:
        """n samples in the data's layout and range (images: (n, C, H, W) in [-1, 1])."""
        ...

    @torch.no_grad()
    def evaluate(
        self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Held-out scalars for one batch; key "loss" is the score to minimise
        (negative ELBO for a VAE, a sample-vs-data distance for a GAN)."""
        ...

    # Optional, present when the capability is declared:
    #   encode(x) -> z, decode(z) -> x, log_prob(x) -> nats per example, translate(x) -> x'
    # A model with log_prob also declares log_prob_space ("discrete": log P of the 8-bit bins;
    # "continuous": a density on [-1, 1]^D) and log_prob_kind ("exact" | "bound" | "estimate"),
    # so bits/dim are computed and labelled the same way for every family (metrics/likelihood.py).
    # Optional hook: set_step(step: int), called by the loop before each optimizer step, for
    # schedules that live in the objective (e.g. the capacity annealing of Burgess et al. 2018).
    # Optional hook: eval_samples(n, *, generator_seed, batch) -> {name: images}, the sample grids
    # to log at each eval when one grid is not enough (diffusion: one per guidance scale).
