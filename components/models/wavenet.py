"""WaveNet (van den Oord et al. 2016, "WaveNet: A Generative Model for Raw Audio"): p(x) =
prod_t p(x_t | x_<t) over the samples of a waveform, each a 256-way softmax over its 8-bit
mu-law value, so log p(x) is exact (in nats per sample, against the uniform ln 256 = 5.545).

    input      the previous sample's mu-law value, embedded (position 0 gets a start value, the
               code of silence), so position t only ever sees x_<t
    layers     stacks x [dilation 1, 2, 4, ..., 2^(L-1)] of a gated, dilated causal convolution
               (kernel 2): z = tanh(W_f * h + V_f c) * sigmoid(W_g * h + V_g c) (eq. 2), c a
               learned class embedding when class-conditional ("global conditioning", eq. 3);
               then a 1x1 convolution back into the residual stream and another into the skips
    output     ReLU -> 1x1 -> ReLU -> 1x1 over the summed skips -> 256 logits per position

Receptive field: 1 + stacks * (2^L - 1) samples (`receptive_field`).

Generation is sample by sample. `sample` runs the fast algorithm of Paine et al. 2016 ("Fast
WaveNet Generation Algorithm"): each layer keeps a queue of the inputs it saw in the last
`dilation` steps, so a step is one matrix product per layer on the newest sample instead of a
pass over the receptive field; `sample_naive` runs that pass (the network on the last
receptive-field samples) for every step. Both draw one standard normal per clip per sample and
turn it into a value by inverse-CDF (components/models/gpt.py), so they draw the same audio for a
seed (tests/components/models/test_wavenet.py), and benchmarks/wavenet_sampling.py times them.
"""
import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, create_model
from torch import Tensor, nn

from genray.components.data import DatasetInfo
from genray.components.data.mulaw import LEVELS, mu_law_decode, mu_law_encode
from genray.components.errors import UserError
from genray.components.models.gpt import inverse_cdf
from genray.components.models.layers import StackedGenerators, exact_log_prob, randn
from genray.components.models.protocol import SETTINGS_CONFIG
from genray.components.training import Backprop

UNIFORM_NATS = math.log(LEVELS)  # a model that knows nothing: ln 256 nats per sample
MAX_SECONDS = 60.0  # the most one sample call may ask for; serving sets its own, lower limit
SILENCE = int(mu_law_encode(torch.zeros(())))  # 128: the start value, before the first sample


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------


class ResidualLayer(nn.Module):
    """One gated, dilated causal convolution with its residual and skip outputs."""

    def __init__(self, residual: int, skip: int, dilation: int, num_classes: int):
        super().__init__()
        self.dilation = dilation
        self.conv = nn.Conv1d(residual, 2 * residual, kernel_size=2, dilation=dilation)
        self.cond = nn.Embedding(num_classes, 2 * residual) if num_classes else None
        self.out = nn.Conv1d(residual, residual + skip, 1)  # the residual and the skip 1x1s, as one
        self.residual, self.skip = residual, skip

    def forward(self, h: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        """h (B, R, T) -> (h + residual (B, R, T), skip (B, S, T)). Position t reads t and t - d."""
        pre = self.conv(F.pad(h, (self.dilation, 0)))  # zeros before the first sample
        if self.cond is not None:
            pre = pre + self.cond(y)[:, :, None]
        f, g = pre.chunk(2, dim=1)
        res, skip = self.out(torch.tanh(f) * torch.sigmoid(g)).split([self.residual, self.skip], dim=1)
        return h + res, skip


def sampling_model(default_seconds: float) -> type[BaseModel]:
    """The settings: a clip length (default: the training clips') and a temperature."""
    return create_model(
        "WaveNetSampling", __config__=SETTINGS_CONFIG,
        seconds=(float, Field(round(default_seconds, 6), gt=0, le=MAX_SECONDS, allow_inf_nan=False,
                              description="length of each clip in seconds (one network step per sample)")),
        temperature=(float, Field(1.0, gt=0, le=100, allow_inf_nan=False,
                                  description="divides the logits of every sample: < 1 sharper, > 1 flatter")),
    )


class WaveNet(nn.Module):
    capabilities = frozenset({"sample", "log_prob", "log_prob_steps", "audio"})
    # The softmax gives log P of each mu-law value: discrete and exact.
    log_prob_space, log_prob_kind = "discrete", "exact"

    def __init__(self, *, num_samples: int, sample_rate: int, residual: int, skip: int, layers: int,
                 stacks: int = 1, num_classes: int = 0):
        super().__init__()
        if layers < 1 or stacks < 1:
            raise ValueError(f"wavenet: layers and stacks must be >= 1, got {layers} and {stacks}")
        self.num_samples, self.sample_rate = int(num_samples), int(sample_rate)
        self.num_classes = num_classes
        self.conditioning = "class" if num_classes else "none"
        if num_classes:
            self.capabilities = frozenset(self.capabilities | {"condition"})
        self.sampling_settings = sampling_model(self.num_samples / self.sample_rate)
        self.embed = nn.Embedding(LEVELS, residual)
        self.layers = nn.ModuleList(ResidualLayer(residual, skip, 2 ** i, num_classes)
                                    for _ in range(stacks) for i in range(layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv1d(skip, skip, 1), nn.ReLU(), nn.Conv1d(skip, LEVELS, 1))
        self.recipe = Backprop()

    @property
    def receptive_field(self) -> int:
        """Samples the logits at t can depend on: t - 1 back to t - receptive_field."""
        return 1 + sum(layer.dilation for layer in self.layers)

    def _labels(self, y: Tensor | None, device) -> Tensor | None:
        if not self.num_classes:
            return None
        if y is None:
            raise ValueError("wavenet is class-conditional, so it needs integer labels 'y'")
        return y.to(device)

    def logits_of_inputs(self, inputs: Tensor, y: Tensor | None) -> Tensor:
        """Input values (B, T) (the previous sample's mu-law value at each position) -> logits
        (B, 256, T)."""
        labels = self._labels(y, inputs.device)
        h = self.embed(inputs).transpose(1, 2)  # (B, R, T)
        skips = 0
        for layer in self.layers:
            h, s = layer(h, labels)
            skips = skips + s
        return self.head(skips)

    def logits(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Waveforms (B, T) in [-1, 1] -> logits (B, 256, T): [:, :, t] scores x_t's mu-law value
        from x_<t (and y)."""
        q = mu_law_encode(x)
        inputs = torch.cat([torch.full_like(q[:, :1], SILENCE), q[:, :-1]], dim=1)
        return self.logits_of_inputs(inputs, y)

    def step_nll(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """-log p(x_t | x_<t, y) of every sample's mu-law value, nats (B, T)."""
        logits = self.logits(x, y)
        logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits  # autocast
        return F.cross_entropy(logits, mu_law_encode(x), reduction="none")

    def nll(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """-log P(mu-law(x) | y) in nats per clip, exact, (B,)."""
        return self.step_nll(x, y).sum(1)

    def forward(self, batch: dict[str, Tensor], phase: str = "main") -> tuple[Tensor, dict[str, Tensor]]:
        if phase != "main":
            raise ValueError(f"wavenet has one phase, 'main'; got phase={phase!r}")
        x = batch["x"]
        nats = self.nll(x, batch.get("y")).mean() / x.shape[1]
        return nats, {"nats_per_sample": nats.detach()}

    @torch.no_grad()
    def log_prob(self, x: Tensor, *, y: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """log P(mu-law(x) | y), nats per clip (B,). Class-conditional without y: the mixture
        under a uniform class prior (K passes)."""
        return exact_log_prob(self, self.nll, x, y, self.num_classes)

    @torch.no_grad()
    def log_prob_steps(self, x: Tensor, *, y: Tensor | None = None) -> Tensor:
        """log p(x_t | x_<t, y) of every sample, nats (B, T): its rows sum to log_prob(x, y=y).
        A class-conditional model needs y here (a mixture over classes has no per-step terms)."""
        if self.num_classes and y is None:
            raise ValueError("wavenet.log_prob_steps: a class-conditional model needs y")
        was_training = self.training
        self.eval()
        try:
            return -self.step_nll(x, y)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        x = batch["x"]
        nats = -self.log_prob(x, y=batch.get("y")).mean() / x.shape[1]
        return {"loss": nats, "nats_per_sample": nats}

    def clip_samples(self, seconds: float) -> int:
        return max(1, int(round(seconds * self.sample_rate)))

    def sampling_cost(self, settings: BaseModel) -> int:
        return self.clip_samples(settings.seconds)  # one step per sample

    # ------------------------------------------------------------------------------ generation

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | StackedGenerators | None = None,
               y: Tensor | None = None, seconds: float | None = None, temperature: float = 1.0) -> Tensor:
        """n clips (n, T) in [-1, 1], T = seconds x sample_rate (the training clips' length
        without `seconds`). Class-conditional: y (n,), or classes cycling 0, 1, ... without it.
        Fast generation: per-layer queues (module docstring)."""
        return self._sample(n, generator, y, seconds, temperature, naive=False)

    @torch.no_grad()
    def sample_naive(self, n: int, *, generator: torch.Generator | StackedGenerators | None = None,
                     y: Tensor | None = None, seconds: float | None = None, temperature: float = 1.0) -> Tensor:
        """`sample` running the network over the last receptive field for every step: the
        reference it is tested and timed against."""
        return self._sample(n, generator, y, seconds, temperature, naive=True)

    def _sample(self, n: int, generator, y: Tensor | None, seconds: float | None, temperature: float,
                *, naive: bool) -> Tensor:
        if n < 1:
            raise ValueError(f"wavenet.sample: n must be >= 1, got {n}")
        device = self.embed.weight.device
        if self.num_classes and y is None:
            y = torch.arange(n, device=device) % self.num_classes
        elif not self.num_classes and y is not None:
            raise ValueError("wavenet was built unconditional; call sample without y")
        labels = None if y is None else y.to(device)
        length = self.num_samples if seconds is None else self.clip_samples(seconds)
        # One normal per clip per sample, in time order: the draws a seed names.
        u = torch.special.ndtr(randn((n, length), generator=generator, device=device).double())
        q = torch.full((n, length + 1), SILENCE, dtype=torch.long, device=device)  # q[:, t + 1] = x_t
        was_training = self.training
        self.eval()
        try:
            step = (self._naive_step if naive else self._fast_step)(q, labels)
            for t in range(length):
                logits = step(t).double() / temperature  # (n, 256): x_t from x_<t
                q[:, t + 1] = inverse_cdf(logits.softmax(dim=-1), u[:, t])
        finally:
            self.train(was_training)
        return mu_law_decode(q[:, 1:])

    def _naive_step(self, q: Tensor, labels: Tensor | None):
        rf = self.receptive_field

        def step(t: int) -> Tensor:
            # Inputs t - rf + 1 .. t: every value the logits at t read (the module docstring's
            # receptive field), whatever the zero padding before the window does to the rest.
            start = max(0, t - rf + 1)
            return self.logits_of_inputs(q[:, start : t + 1], labels)[:, :, -1]

        return step

    def _fast_step(self, q: Tensor, labels: Tensor | None):
        """A closure computing the logits at step t from the newest input alone: each layer
        holds its last `dilation` inputs in a ring (zeros at first, as the padding is), reads the
        one from t - d and stores the one from t."""
        n, device, dtype = q.shape[0], q.device, self.embed.weight.dtype
        plan = []
        for layer in self.layers:
            w = layer.conv.weight  # (2R, R, 2): tap 0 reads t - d, tap 1 reads t
            w_cat = torch.cat([w[:, :, 0], w[:, :, 1]], dim=1).t().contiguous()  # (2R_in, 2R_out)
            bias = layer.conv.bias
            if layer.cond is not None:
                bias = bias + layer.cond(labels)  # (n, 2R)
            ring = torch.zeros(layer.dilation, n, layer.residual, device=device, dtype=dtype)
            plan.append((layer.dilation, ring, w_cat, bias, layer.out.weight[:, :, 0].t().contiguous(),
                         layer.out.bias, layer.residual))
        head1, head2 = self.head[1], self.head[3]
        w1, w2 = head1.weight[:, :, 0].t(), head2.weight[:, :, 0].t()

        def step(t: int) -> Tensor:
            h = self.embed(q[:, t])  # (n, R): the value before sample t
            skips = 0
            for d, ring, w_cat, bias, w_out, b_out, r in plan:
                slot = t % d
                pre = torch.addmm(bias, torch.cat([ring[slot], h], dim=1), w_cat)  # (n, 2R); cat copies
                ring[slot] = h  # read again at t + d
                f, g = pre.chunk(2, dim=1)
                out = torch.addmm(b_out, torch.tanh(f) * torch.sigmoid(g), w_out)  # (n, R + S)
                h = h + out[:, :r]
                skips = skips + out[:, r:]
            hidden = torch.relu(torch.addmm(head1.bias, torch.relu(skips), w1))
            return torch.addmm(head2.bias, hidden, w2)

        return step

    @torch.no_grad()
    def eval_samples(self, n: int, *, generator_seed: int, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"": self.sample(n, generator=torch.Generator().manual_seed(generator_seed))}


def wavenet_tiny(**kw): return WaveNet(residual=16, skip=32, layers=6, **kw)  # receptive field 64
def wavenet_small(**kw): return WaveNet(residual=32, skip=64, layers=10, **kw)  # 1,024 samples
def wavenet_base(**kw): return WaveNet(residual=64, skip=128, layers=10, stacks=2, **kw)  # 2,047


SIZES = {"tiny": wavenet_tiny, "small": wavenet_small, "base": wavenet_base}


def build_wavenet(
    *,
    data: DatasetInfo,
    size: Literal["tiny", "small", "base"] = "small",
    stacks: Annotated[int, Field(ge=1, le=8)] | None = None,
    conditioning: Literal["none", "class"] = "none",
) -> WaveNet:
    """WaveNet on audio clips (8-bit mu-law); stacks overrides the size's repeats of the
    dilation cycle; conditioning: class conditions every layer's gates on the clip's label
    (the note of the built-in tones, the digit of spoken_digits)."""
    if data.modality != "audio":
        raise UserError(f"wavenet models audio clips; this dataset holds {data.modality} data")
    if not data.sample_rate:
        raise UserError("wavenet: the dataset names no sample_rate")
    if conditioning == "class" and data.num_classes < 1:
        raise UserError("wavenet: conditioning: class needs class labels, but the dataset has none")
    extra = {} if stacks is None else {"stacks": stacks}
    return SIZES[size](num_samples=data.shape[0], sample_rate=data.sample_rate,
                       num_classes=data.num_classes if conditioning == "class" else 0, **extra)
