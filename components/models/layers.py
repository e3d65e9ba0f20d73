"""Small pieces that more than one family needs: a shape check, seeded noise, a class mixture."""
import math
from typing import Callable

import torch
from torch import Tensor, nn

from genray.components.errors import UserError


def check_image_shape(image_shape: tuple[int, int, int], family: str) -> tuple[int, int, int]:
    """Return (C, H, W) if the strided conv stacks can handle it, else explain why not.

    The encoders halve H and W with stride-2 convs until the smaller side is 4, and the
    decoders double back up, so both sides must be powers of two and at least 8.
    """
    if len(image_shape) != 3:
        raise ValueError(f"{family}: image_shape must be (C, H, W), got {tuple(image_shape)}")
    c, h, w = (int(s) for s in image_shape)
    if c < 1:
        raise ValueError(f"{family}: image_shape needs at least one channel, got C={c}")
    for name, side in (("H", h), ("W", w)):
        if side < 8 or side & (side - 1):
            raise ValueError(
                f"{family}: image {name} must be a power of two >= 8 (8, 16, 32, 64, ...) because "
                f"the network halves it with stride-2 convs down to 4; got image_shape={(c, h, w)}. "
                "Resize or pad the images in the data config."
            )
    return c, h, w


def num_halvings(h: int, w: int) -> int:
    """Stride-2 steps that take the smaller side down to 4 (8 -> 1, 32 -> 3, 64 -> 4)."""
    return min(h, w).bit_length() - 1 - 2


class StackedGenerators:
    """The generators of several requests sampled together as one batch: rows [0, n1) draw their
    noise from the first, the next n2 rows from the second, and so on.

    Passed as `generator=` to a family's `sample`, it makes a batched request draw exactly the
    numbers it would draw alone, so a seed names the same image whatever it is batched with
    (pipelines/serve/replica.py batches HTTP requests this way). Every draw must lead with the batch.
    """

    def __init__(self, parts: list[tuple[torch.Generator, int]]):
        if not parts or any(k < 1 for _, k in parts):
            raise ValueError("StackedGenerators needs (generator, rows >= 1) pairs")
        self.parts = list(parts)
        self.rows = sum(k for _, k in parts)
        self.device = parts[0][0].device

    def _draw(self, shape: tuple[int, ...], draw: Callable[..., Tensor]) -> Tensor:
        """Each part's rows of a draw of `shape` from its own generator, stacked in order."""
        if not shape or shape[0] != self.rows:
            raise ValueError(f"StackedGenerators holds {self.rows} rows; a draw of shape {tuple(shape)} "
                             "does not lead with them")
        return torch.cat([draw((k, *shape[1:]), generator=g, device=g.device) for g, k in self.parts])

    def randn(self, shape: tuple[int, ...]) -> Tensor:
        return self._draw(shape, torch.randn)

    def randint(self, high: int, shape: tuple[int, ...]) -> Tensor:
        return self._draw(shape, lambda size, **kw: torch.randint(high, size, **kw))


def randn(shape: tuple[int, ...], *, generator: "torch.Generator | StackedGenerators | None",
          device: torch.device) -> Tensor:
    """Standard normal noise; with a generator, drawn on the generator's device, then moved.

    Drawing where the generator lives (usually the CPU) means one seed gives the same numbers
    whether the model sits on a CPU or a GPU.
    """
    if generator is None:
        return torch.randn(shape, device=device)
    if isinstance(generator, StackedGenerators):
        return generator.randn(tuple(shape)).to(device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def randint(high: int, shape: tuple[int, ...], *, generator: "torch.Generator | StackedGenerators | None",
            device: torch.device) -> Tensor:
    """Integers uniform in [0, high), drawn as `randn` draws: on the generator's device, then moved."""
    if generator is None:
        return torch.randint(high, shape, device=device)
    if isinstance(generator, StackedGenerators):
        return generator.randint(high, tuple(shape)).to(device)
    return torch.randint(high, shape, generator=generator, device=generator.device).to(device)


def exact_log_prob(module: nn.Module, nll: Callable[[Tensor, Tensor | None], Tensor], x: Tensor,
                   y: Tensor | None, num_classes: int) -> Tensor:
    """log P(x | y) = -nll(x, y) per example (B,), in eval mode (dropout off) whatever mode the
    module was in; a class-conditional model (num_classes > 0) without y gives the mixture under
    a uniform class prior (class_mixture_log_prob). The log_prob of every exact-likelihood family."""
    was_training = module.training
    module.eval()
    try:
        if y is None and num_classes:
            return class_mixture_log_prob(lambda k: -nll(x, k), x, num_classes)
        return -nll(x, y)
    finally:
        module.train(was_training)


def class_mixture_log_prob(log_prob: Callable[[Tensor], Tensor], x: Tensor, num_classes: int) -> Tensor:
    """log (1/K) sum_k P(x | k), (B,): the marginal of a class-conditional model under a uniform
    class prior, exact, from K calls of log_prob(y) -> log P(x | y) per example."""
    per_class = torch.stack([log_prob(torch.full((len(x),), k, device=x.device)) for k in range(num_classes)])
    return per_class.logsumexp(dim=0) - math.log(num_classes)  # (K, B) -> (B,)


def translation_inputs(family: str, n: int, x: Tensor | None, call: str) -> Tensor:
    """The n input images of a translation model's sample(n, x=x): such a model has nothing to draw
    from without an input, so x is required, one image per sample. `call` shows the translate call."""
    if x is None:
        raise UserError(f"{family} translates an input image rather than sampling from noise: call {call} "
                        "(or sample(n, x=x)) with n input images (n, C, H, W) in [-1, 1]")
    if x.shape[0] != n:
        raise UserError(f"{family}.sample: x holds {x.shape[0]} inputs, n is {n}")
    return x
