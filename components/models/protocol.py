"""The one interface every generative family implements (structural typing, no base class).

The pipelines know a model only through this Protocol and through the training recipe it names
(`components/training/`): nothing in pipelines/ tests for a family's name or probes for optional
methods with `hasattr`. What a family can do beyond sampling it declares in `capabilities`; how
it is trained it declares in `recipe`; how it is sampled it declares in `sampling_settings`.
"""
from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor

# Capabilities a family may declare; serving and evaluation route on these.
CAPABILITIES = frozenset(
    {"sample", "encode", "decode", "log_prob", "log_prob_steps", "condition", "translate", "style_mix", "generate_text",
     "audio", "tokenize", "embed", "variations", "retrieval"}
)

# The settings model's config: unknown keys are errors (a typo must not be ignored), values are
# checked on assignment too, and a settings object is immutable once made.
SETTINGS_CONFIG = ConfigDict(extra="forbid", frozen=True)


class NoSettings(BaseModel):
    """The sampling settings of a family that has none (e.g. a GAN without truncation)."""

    model_config = SETTINGS_CONFIG


@runtime_checkable
class GenerativeModel(Protocol):
    capabilities: frozenset[str]
    # "none" | "class" (sample takes y, labels 0..num_classes-1) | "text" (sample takes prompt)
    conditioning: Literal["none", "class", "text"]
    num_classes: int
    # The training method: a recipe object from components/training (Backprop, Adversarial,
    # ContrastiveDivergence, ...), made by the model with its own settings.
    recipe: Any
    # A pydantic model of this model's sampling settings: field names are the keyword arguments
    # of `sample` beyond n, generator and the condition; ranges, defaults (this model's defaults)
    # and descriptions are the schema that serve, eval, tune and the MLflow pyfunc all validate
    # against. A family whose ranges depend on the instance (diffusion: steps <= T) builds it per
    # instance with pydantic.create_model.
    sampling_settings: type[BaseModel]

    def forward(self, batch: dict[str, Tensor], phase: str) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss to minimise for a backprop phase of its recipe, and detached scalars to log."""
        ...

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, **kwargs: Any) -> Tensor:
        """n samples in the data's layout and range (images: (n, C, H, W) in [-1, 1]).

        kwargs: `y` (n,) labels when conditioning == "class", `prompt` (a string or n strings)
        when conditioning == "text", and the fields of `sampling_settings`."""
        ...

    def sampling_cost(self, settings: BaseModel) -> int:
        """Network evaluations one `sample` call makes with these settings (1 for one-shot
        generators, the step count for iterative samplers): what serving limits."""
        ...

    @torch.no_grad()
    def evaluate(
        self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Held-out scalars for one batch; key "loss" is the score to minimise
        (negative ELBO for a VAE, a sample-vs-data distance for a GAN)."""
        ...

    @torch.no_grad()
    def eval_samples(self, n: int, *, generator_seed: int, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The sample grids to log at each training eval, by name ("" for the one grid of most
        families; diffusion logs one per guidance scale)."""
        ...

    # Present when the capability is declared:
    #   encode(x) -> z, decode(z) -> x, log_prob(x) -> nats per example, translate(x) -> x' (with
    #   `directions`: () for a one-way model, else the names translate's `direction=` takes),
    #   log_prob_steps(x, y=) -> (B, T) nats of each step of a sequence, summing to log_prob,
    #   tokenize: tokens(x) -> (B, h, w) long code ids of images, decode_tokens(ids) -> images,
    #   `grid` (h, w) and `codebook_size` K (ids lie in [0, K)); `genray data tokenize` runs it,
    #   variations: variations(x, n_per_image=1, *, generator=, **settings) -> images (B * n_per_image,
    #   C, H, W) decoded from each input image's CLIP image embedding, image i's in rows
    #   i * n_per_image ... (unCLIP, Ramesh et al. 2022, §3.1: a diffusion decoder built with an
    #   image_encoder, whose `sample` also takes image_embedding=(n, D), and the unclip family)
    #   retrieval: sample(n, ..., query_rows=(n,), index=Index, neighbours=(n, k, D)) conditions on
    #   k neighbours retrieved from a CLIP-embedding index (RDM); index() is the model's own,
    #   checked_index(other) admits another of the same CLIP, encoder_digest() names that CLIP,
    #   retrieval_k is k (components/models/retrieval.py)
    # A model whose log_prob_kind is "estimate" also has log_partition() -> (log Z, its standard
    # error), float64 scalars (the RBM's AIS): genray eval reports both beside bits/dim.
    # A model with log_prob also declares log_prob_space ("discrete": log P of the 8-bit bins;
    # "continuous": a density on [-1, 1]^D; "binary": log P of the binarised image) and
    # log_prob_kind ("exact" | "bound" | "estimate"), so bits/dim are computed and labelled the
    # same way for every family (metrics/likelihood.py).


def settings_for(model: GenerativeModel, given: dict[str, Any] | None = None,
                 defaults: dict[str, Any] | None = None) -> BaseModel:
    """The model's sampling settings: its own defaults, then `defaults` (a checkpoint's
    `sampling_defaults`, chosen by a sampling sweep), then `given` (a request). Raises pydantic's
    ValidationError, whose errors name each bad field and what is allowed."""
    return model.sampling_settings.model_validate({**(defaults or {}), **(given or {})})


# What `sampling_cost` counts. "steps": network passes (every family but one); "gibbs_sweeps": an
# RBM's block-Gibbs sweeps, two matrix products each, which serving holds to a limit of its own.
# A family whose unit is not "steps" sets the class attribute `sampling_cost_unit`.
COST_UNITS = ("steps", "gibbs_sweeps")


def sampling_cost_unit(model: GenerativeModel) -> Literal["steps", "gibbs_sweeps"]:
    unit = getattr(model, "sampling_cost_unit", "steps")
    if unit not in COST_UNITS:
        raise ValueError(f"{type(model).__name__}.sampling_cost_unit must be one of {', '.join(COST_UNITS)}, got {unit!r}")
    return unit
