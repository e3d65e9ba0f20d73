"""Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN
Decoders"): p(x) = prod_i p(x_i | x_<i) over pixels in raster order, each a 256-way softmax over
the 8-bit value, so log p(x) is exact.

Two stacks per layer, as the paper's figure 2 draws them:

    vertical     a (k//2 + 1) x k convolution over the rows above and the current row, cropped
                 so row i sees input rows <= i. It never feeds itself anything from row i to
                 the right of a pixel, because the horizontal stack only receives it shifted down
                 one row: row i of the horizontal stack gets the vertical features of row i - 1.
    horizontal   a 1 x (k//2 + 1) convolution over the current row, pixels <= j (the first
                 layer: < j, mask "A"), plus the shifted vertical features, a gated activation,
                 a 1x1 convolution and a residual connection (after the first layer).

Together they cover every earlier pixel within the receptive field, with no blind spot (the
original PixelCNN's masked 3x3 stack misses a growing wedge up and to the right; test:
tests/components/models/test_pixelcnn.py). Gates: tanh(W_f * x + V_f h) * sigmoid(W_g * x + V_g h),
h a learned class embedding (eq. 4) when class-conditional.

Grey images only (C = 1: digits, Fashion-MNIST): colour needs the R -> G -> B sub-pixel masks,
which are not written yet. Sampling runs the horizontal stack once per pixel on that pixel's row,
and the vertical stack once per row (`sample`); one standard normal per image per pixel is drawn
whatever the settings and turned into a value by inverse-CDF, so a seed names the same draws at
any temperature, in any batch and by any of the three samplers.
"""
import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import Tensor, nn

from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.models.gpt import inverse_cdf
from genray.components.models.layers import StackedGenerators, exact_log_prob, randn
from genray.components.models.protocol import SETTINGS_CONFIG
from genray.components.training import Backprop

LEVELS = 256  # 8-bit pixel values


def pixel_values(x: Tensor) -> Tensor:
    """Images in [-1, 1] on the 8-bit grid -> integer values 0..255 (the inverse of v / 127.5 - 1)."""
    return ((x.float() + 1.0) * 127.5).round().clamp(0, LEVELS - 1).long()


def down_shift(x: Tensor) -> Tensor:
    """Move every row down by one (a zero row on top): row i then holds what row i - 1 held."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


class GatedLayer(nn.Module):
    """One layer of both stacks. mask "A" (the first layer) keeps the current pixel out of the
    horizontal convolution; "B" lets it in (its features already exclude the pixel's value)."""

    def __init__(self, channels: int, kernel: int, mask: Literal["A", "B"], num_classes: int):
        super().__init__()
        if kernel % 2 == 0 or kernel < 3:
            raise ValueError(f"pixelcnn: kernel must be odd and >= 3, got {kernel}")
        self.mask, self.k = mask, kernel
        c2 = 2 * channels
        self.v_conv = nn.Conv2d(channels, c2, (kernel // 2 + 1, kernel), padding=(kernel // 2, kernel // 2))
        self.v_to_h = nn.Conv2d(c2, c2, 1)
        self.h_conv = nn.Conv2d(channels, c2, (1, kernel // 2 + 1), padding=(0, kernel // 2))
        self.h_out = nn.Conv2d(channels, channels, 1)
        self.cond = nn.Embedding(num_classes, 2 * c2) if num_classes else None
        if mask == "A":
            # The kernel's last column is the current pixel: never part of what predicts it.
            self.register_buffer("h_mask", torch.ones_like(self.h_conv.weight))
            self.h_mask[..., -1] = 0

    @staticmethod
    def gate(x: Tensor) -> Tensor:
        f, g = x.chunk(2, dim=1)
        return torch.tanh(f) * torch.sigmoid(g)

    def forward(self, v: Tensor, h: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        v_pre, v_new = self.vertical(v, y)
        return v_new, self.horizontal(h, self.v_to_h(down_shift(v_pre)), y)  # strictly the rows above

    def vertical(self, v: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        """The vertical stack: (its pre-activation before the condition, which feeds the
        horizontal stack one row down, and its output)."""
        v_pre = self.v_conv(v)[:, :, : v.shape[-2]]  # row i: input rows i - k//2 .. i
        return v_pre, self.gate(v_pre + self._cond(y)[0] if self.cond is not None else v_pre)

    def horizontal(self, h: Tensor, from_above: Tensor, y: Tensor | None) -> Tensor:
        """The horizontal stack, given the vertical stack's contribution from the row above."""
        weight = self.h_conv.weight * self.h_mask if self.mask == "A" else self.h_conv.weight
        h_pre = F.conv2d(h, weight, self.h_conv.bias, padding=(0, self.k // 2))[..., : h.shape[-1]]  # columns j - k//2 .. j
        h_pre = h_pre + from_above
        if self.cond is not None:
            h_pre = h_pre + self._cond(y)[1]
        h_new = self.h_out(self.gate(h_pre))
        return h_new if self.mask == "A" else h + h_new

    def _cond(self, y: Tensor) -> tuple[Tensor, Tensor]:
        cv, ch = self.cond(y)[:, :, None, None].chunk(2, dim=1)
        return cv, ch


class PixelCNNSampling(BaseModel):
    model_config = SETTINGS_CONFIG
    temperature: float = Field(1.0, gt=0, le=100, allow_inf_nan=False,
                               description="divides the logits of every pixel: < 1 sharper, > 1 flatter")


class GatedPixelCNN(nn.Module):
    capabilities = frozenset({"sample", "log_prob"})
    sampling_settings = PixelCNNSampling
    # The 256-way softmax gives log P of each 8-bit value: a discrete, exact likelihood.
    log_prob_space, log_prob_kind = "discrete", "exact"

    def __init__(self, *, image_shape: tuple[int, int, int], channels: int, layers: int, kernel: int = 3,
                 num_classes: int = 0, hidden: int | None = None):
        super().__init__()
        c, height, width = image_shape
        if c != 1:
            raise UserError(f"pixelcnn models grey images (C = 1) so far; got image_shape={tuple(image_shape)}. "
                            "Colour needs the R -> G -> B sub-pixel masks")
        self.image_shape = (c, height, width)
        self.num_classes = num_classes
        self.conditioning = "class" if num_classes else "none"
        if num_classes:
            self.capabilities = frozenset(self.capabilities | {"condition"})
        self.input = nn.Conv2d(1, channels, 1)
        self.layers = nn.ModuleList(GatedLayer(channels, kernel, "A" if i == 0 else "B", num_classes)
                                    for i in range(layers))
        hidden = hidden or 4 * channels
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, LEVELS, 1))
        self.recipe = Backprop()

    def _labels(self, y: Tensor | None, n: int, device) -> Tensor | None:
        if not self.num_classes:
            return None
        if y is None:
            raise ValueError("pixelcnn is class-conditional, so it needs integer labels 'y'")
        return y.to(device)

    def logits(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Images (B, 1, H, W) in [-1, 1] -> logits (B, 256, H, W): [:, :, i, j] scores pixel
        (i, j) from the pixels before it in raster order (and y)."""
        labels = self._labels(y, x.shape[0], x.device)
        v = h = self.input(x)
        for layer in self.layers:
            v, h = layer(v, h, labels)
        return self.head(h)

    def nll(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """-log P(x | y) in nats per image, exact, (B,)."""
        return F.cross_entropy(self.logits(x, y).float(), pixel_values(x)[:, 0], reduction="none").flatten(1).sum(1)

    def forward(self, batch: dict[str, Tensor], phase: str = "main") -> tuple[Tensor, dict[str, Tensor]]:
        if phase != "main":
            raise ValueError(f"pixelcnn has one phase, 'main'; got phase={phase!r}")
        x = batch["x"]
        nats = self.nll(x, batch.get("y")).mean() / x[0].numel()  # per pixel
        return nats, {"bits_per_dim": nats.detach() / math.log(2)}

    @torch.no_grad()
    def log_prob(self, x: Tensor, *, y: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """log P(x | y) of the 8-bit images, nats per image (B,). Class-conditional without y:
        the mixture under a uniform class prior (K passes)."""
        return exact_log_prob(self, self.nll, x, y, self.num_classes)

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        x = batch["x"]
        nats = -self.log_prob(x, y=batch.get("y")).mean() / x[0].numel()
        return {"loss": nats, "bits_per_dim": nats / math.log(2)}

    def sampling_cost(self, settings: BaseModel) -> int:
        return self.image_shape[1] * self.image_shape[2]  # one pass per pixel

    @property
    def reach(self) -> int:
        """Rows above a pixel that its logits can depend on: each layer's vertical convolution
        looks k//2 rows up, and the shift into the horizontal stack one more."""
        return len(self.layers) * (self.layers[0].k // 2) + 1

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | StackedGenerators | None = None,
               y: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        """n images (n, 1, H, W) in [-1, 1], pixel by pixel in raster order. Class-conditional:
        y (n,), or classes cycling 0, 1, ... without it.

        Row i's logits see the rows above only through the vertical stack's row i - 1, which is
        complete before row i starts. So each row first runs the vertical stack once, on the
        rows it can depend on, and keeps every layer's contribution to the row below; each
        pixel then runs the horizontal stack on its own row alone. The same logits as running
        the whole image for every pixel (`sample_naive`), at a fraction of the cost
        (benchmarks/pixelcnn_sampling.py)."""
        return self._sample(n, generator, y, temperature, window=True, cached=True)

    @torch.no_grad()
    def sample_windowed(self, n: int, *, generator: torch.Generator | StackedGenerators | None = None,
                        y: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        """`sample` running both stacks, for every pixel, on the rows its logits can depend on
        (`reach` rows above, and its own): the step between the naive pass and the row cache."""
        return self._sample(n, generator, y, temperature, window=True)

    @torch.no_grad()
    def sample_naive(self, n: int, *, generator: torch.Generator | StackedGenerators | None = None,
                     y: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        """`sample` running the whole image for every pixel: the reference it is tested and timed against."""
        return self._sample(n, generator, y, temperature, window=False)

    def _sample(self, n: int, generator, y: Tensor | None, temperature: float, *, window: bool,
                cached: bool = False) -> Tensor:
        if n < 1:
            raise ValueError(f"pixelcnn.sample: n must be >= 1, got {n}")
        device = self.input.weight.device
        if self.num_classes and y is None:
            y = torch.arange(n, device=device) % self.num_classes
        elif not self.num_classes and y is not None:
            raise ValueError("pixelcnn was built unconditional; call sample without y")
        _, height, width = self.image_shape
        x = torch.zeros(n, 1, height, width, device=device)
        # One normal per image per pixel, in raster order: the draws a seed names.
        u = torch.special.ndtr(randn((n, height * width), generator=generator, device=device).double())
        was_training = self.training
        self.eval()
        try:
            for i in range(height):
                top = max(0, i - self.reach) if window else 0
                if cached:
                    above = self._from_above(x, i, y)
                    for j in range(width):
                        logits = self._row_logits(x[:, :, i : i + 1], above, y)[:, :, 0, j].double() / temperature
                        v = inverse_cdf(logits.softmax(dim=-1), u[:, i * width + j])
                        x[:, 0, i, j] = v.to(x.dtype) / 127.5 - 1.0
                    continue
                for j in range(width):
                    # Rows top..i: row i's logits see nothing above `top` (zero padding there is
                    # never read by them), and nothing below i.
                    logits = self.logits(x[:, :, top:i + 1], y)[:, :, i - top, j].double() / temperature  # (n, 256)
                    v = inverse_cdf(logits.softmax(dim=-1), u[:, i * width + j])
                    x[:, 0, i, j] = v.to(x.dtype) / 127.5 - 1.0
        finally:
            self.train(was_training)
        return x

    def _from_above(self, x: Tensor, i: int, y: Tensor | None) -> list[Tensor]:
        """For every layer, the vertical stack's contribution to row i's horizontal stack
        (v_to_h of its pre-activation at row i - 1; of zeros for the first row), (n, 2C, 1, W)."""
        labels = self._labels(y, x.shape[0], x.device)
        if i == 0:
            zero = torch.zeros(x.shape[0], 2 * self.input.out_channels, 1, x.shape[-1], device=x.device, dtype=x.dtype)
            return [layer.v_to_h(zero) for layer in self.layers]
        top = max(0, i - 1 - (self.reach - 1))  # row i - 1 sees input rows >= i - 1 - L * k//2
        v = self.input(x[:, :, top:i])
        out = []
        for layer in self.layers:
            v_pre, v = layer.vertical(v, labels)
            out.append(layer.v_to_h(v_pre[:, :, -1:]))
        return out

    def _row_logits(self, row: Tensor, above: list[Tensor], y: Tensor | None) -> Tensor:
        """Logits (n, 256, 1, W) of one row from its pixels and the contributions from above."""
        labels = self._labels(y, row.shape[0], row.device)
        h = self.input(row)
        for layer, from_above in zip(self.layers, above):
            h = layer.horizontal(h, from_above, labels)
        return self.head(h)

    @torch.no_grad()
    def eval_samples(self, n: int, *, generator_seed: int, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"": self.sample(n, generator=torch.Generator().manual_seed(generator_seed))}


def pixelcnn_tiny(**kw): return GatedPixelCNN(channels=16, layers=4, **kw)
def pixelcnn_small(**kw): return GatedPixelCNN(channels=32, layers=8, **kw)
def pixelcnn_base(**kw): return GatedPixelCNN(channels=64, layers=12, **kw)


SIZES = {"tiny": pixelcnn_tiny, "small": pixelcnn_small, "base": pixelcnn_base}


def build_pixelcnn(
    *,
    data: DatasetInfo,
    size: Literal["tiny", "small", "base"] = "small",
    kernel: Annotated[int, Field(ge=3)] = 3,
    conditioning: Literal["none", "class"] = "none",
) -> GatedPixelCNN:
    """Gated PixelCNN on 8-bit grey images; conditioning: class conditions every layer's gates
    on the image's label."""
    if conditioning == "class" and data.num_classes < 1:
        raise UserError("pixelcnn: conditioning: class needs class labels, but the dataset has none")
    return SIZES[size](image_shape=data.image_shape, kernel=kernel,
                       num_classes=data.num_classes if conditioning == "class" else 0)
