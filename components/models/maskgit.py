"""MaskGIT: a bidirectional transformer over token sequences, trained to fill in masked tokens and
sampled by iterative parallel decoding (Chang et al. 2022, "MaskGIT: Masked Generative Image
Transformer"), optionally class-conditional with classifier-free guidance.

    training (sec. 3.2)    r ~ U(0, 1), mask ceil(gamma(r) N) random positions with [MASK],
                           loss = cross-entropy of the masked tokens only
    gamma(r) = cos(pi r / 2)                         the cosine mask schedule (sec. 3.3, Fig. 3)
    sampling (Alg. 1)      all [MASK]; at each of T steps draw every masked token at once, keep
                           the most confident, re-mask the rest; after step t, floor(N gamma((t+1)/T))
                           positions are left masked (0 after the last step)

On its own it trains on `tokens` data; with a trained VQ-VAE as `tokenizer` it is the second stage
over the VQ codes, the setting of the paper (components/models/token_prior.py), and samples
images. The network is nanoGPT's block (pre-norm, GELU MLP, learned positions, GPT-2 init) without
the causal mask, over N + 1 ids: the K tokens and [MASK] (id K). The output layer is the first K
rows of the token embedding (tied, as the paper's released code) plus a bias.

Class conditioning prepends one slot holding a class embedding; row num_classes of it is the null
class. Training replaces a row's class by the null class with probability cond_dropout, so one
network gives both branches of classifier-free guidance (Ho & Salimans 2022; Muse, Chang et al.
2023, sec. 2.4): logits = cond + s (cond - uncond), both branches in one batched pass.

Randomness. Every draw is a standard normal through `layers.randn`, with a fixed shape whatever
the settings: training draws r (B,) and then the masking scores (B, N); each decoding step draws
the token uniforms (n, N) and then the confidence noise (n, N), in that order. Uniforms are
Phi(z) and Gumbel noise is -log(-log Phi(z)), so one seed names the same samples with any
settings, and a StackedGenerators (components/models/layers.py) makes a row's sample independent
of its batch.

    1 <= steps <= N     (each step fixes at least one token; N steps fix one at a time)
"""
import math
from typing import Annotated, Any, Iterator, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, create_model
from torch import Tensor, nn

from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.models.gpt import MLP, gpt_init, next_token
from genray.components.models.layers import StackedGenerators, randn
from genray.components.models.protocol import SETTINGS_CONFIG
from genray.components.models.refs import ModelRef
from genray.components.models.token_prior import TokenPrior, token_data, tokenizer_module
from genray.components.training import Backprop

LN2 = math.log(2.0)
EVAL_SEED = 0  # evaluate's masks without a generator: the same positions every call


# ---------------------------------------------------------------------------------------------
# The mask schedule, the masking and the objective, as plain functions of tensors
# ---------------------------------------------------------------------------------------------


def cosine_schedule(r: Tensor) -> Tensor:
    """gamma(r) = cos(pi r / 2): the fraction of tokens masked at r in [0, 1] (sec. 3.3, the
    paper's best schedule). gamma(0) = 1 (all masked), gamma(1) = 0, decreasing in between."""
    return torch.cos(math.pi / 2 * r)


def mask_count(r: Tensor, seq_len: int) -> Tensor:
    """Tokens to mask per row for ratios r (B,): ceil(gamma(r) N), at least 1 (a row with nothing
    masked teaches nothing), at most N; (B,) int64."""
    return torch.ceil(cosine_schedule(r.double()) * seq_len).long().clamp(1, seq_len)


def random_mask(r: Tensor, scores: Tensor) -> Tensor:
    """Mask, per row, the mask_count(r) positions of lowest score: r (B,) in [0, 1], scores (B, N)
    i.i.d. noise (so the chosen positions are uniform among all subsets of that size) -> (B, N)
    bool, True = masked."""
    rank = scores.argsort(dim=1).argsort(dim=1)  # (B, N): each position's place in its row's order
    return rank < mask_count(r, scores.shape[1])[:, None]


def masked_token_loss(logits: Tensor, x: Tensor, mask: Tensor) -> Tensor:
    """Cross-entropy of the masked tokens only (sec. 3.2, eq. 1), nats per masked token, averaged
    over every masked token of the batch: logits (B, N, K), x (B, N), mask (B, N) bool."""
    return F.cross_entropy(logits[mask].float(), x[mask])


def masked_counts(seq_len: int, steps: int) -> list[int]:
    """Positions left masked after each decoding step (Alg. 1 with the cosine schedule):
    floor(N gamma((t + 1) / T)), but at least one fewer than before the step, never below 0, and
    0 after the last. With steps <= N no step before the last reaches 0 (N gamma((t+1)/T) >= T-1-t)."""
    counts, left = [], seq_len
    for t in range(steps):
        planned = math.floor(seq_len * math.cos(math.pi / 2 * (t + 1) / steps))
        left = 0 if t == steps - 1 else max(0, min(planned, left - 1))
        counts.append(left)
    return counts


def guided_logits(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance on logits: cond + s (cond - uncond) = (1 + s) cond - s uncond
    (Muse, Chang et al. 2023, sec. 2.4.1); s = 0 is the conditional model."""
    return cond + scale * (cond - uncond)


def gumbel(z: Tensor) -> Tensor:
    """Gumbel(0, 1) noise from standard normals z: -log(-log Phi(z)), with log Phi computed
    directly so that no z gives log 0."""
    return -torch.log(-torch.special.log_ndtr(z.double()))


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Multi-head self-attention over every position (no causal mask: MaskGIT reads both ways)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, L, hd) each
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)  # (B, H, L, hd)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, n, d)))


class Block(nn.Module):
    """x + attn(ln(x)), then x + mlp(ln(x)): gpt.Block's pre-norm layout, bidirectional."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


def sampling_settings_type(seq_len: int, guided: bool) -> type[BaseModel]:
    """This model's sampling settings: 1..N decoding steps (8 by default, the paper's ImageNet
    figure), token and choice temperatures, and a guidance scale when class-conditional."""
    fields: dict[str, Any] = dict(
        steps=(int, Field(min(8, seq_len), ge=1, le=seq_len,
               description=f"decoding steps T; each fixes at least one token, so at most {seq_len} (the sequence "
                           "length)")),
        temperature=(float, Field(1.0, gt=0, le=100, allow_inf_nan=False,
                     description="divides the logits before each token draw: < 1 sharper, > 1 flatter")),
        choice_temperature=(float, Field(4.5, ge=0, le=100, allow_inf_nan=False,
                            description="scale of the Gumbel noise on the confidences that choose which drawn "
                                        "tokens to keep, annealed linearly to 0 over the steps (0 = keep the most "
                                        "likely)")),
    )
    if guided:
        fields["guidance_scale"] = (float, Field(0.0, ge=0, le=100, allow_inf_nan=False,
                                    description="classifier-free guidance: logits = cond + s (cond - uncond); "
                                                "0 is the conditional model"))
    return create_model("MaskGITSampling", __config__=SETTINGS_CONFIG, **fields)


class MaskGIT(nn.Module):
    def __init__(
        self,
        *,
        vocab_size: int,
        seq_len: int,
        dim: int,
        depth: int,
        heads: int,
        dropout: float = 0.0,
        num_classes: int = 0,
        cond_dropout: float = 0.1,
    ):
        super().__init__()
        if vocab_size < 1 or seq_len < 1:
            raise ValueError(f"maskgit: need vocab_size >= 1 and seq_len >= 1, got {vocab_size=}, {seq_len=}")
        if dim % heads:
            raise ValueError(f"maskgit: dim must be divisible by heads (each head gets dim/heads), got {dim=}, {heads=}")
        if not 0.0 <= dropout < 1.0 or not 0.0 <= cond_dropout < 1.0:
            raise ValueError(f"maskgit: dropout and cond_dropout must be in [0, 1), got {dropout=}, {cond_dropout=}")
        if num_classes < 0:
            raise ValueError(f"maskgit: num_classes must be >= 0 (0 = unconditional), got {num_classes}")
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.mask_id = vocab_size  # [MASK]: the token embedding's last row
        self.num_classes, self.cond_dropout = num_classes, cond_dropout
        self.conditioning = "class" if num_classes else "none"
        self.capabilities = frozenset({"sample"} | ({"condition"} if num_classes else set()))
        self.sampling_settings = sampling_settings_type(seq_len, guided=num_classes > 0)

        self.wte = nn.Embedding(vocab_size + 1, dim)  # K tokens and [MASK]; rows :K are also the output layer
        self.wpe = nn.Embedding(seq_len, dim)
        # The class slot: one row per class and the null class (row num_classes) for guidance.
        self.class_emb = nn.Embedding(num_classes + 1, dim) if num_classes else None
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim)  # pre-norm leaves the residual stream unnormalised; finish it here
        self.bias = nn.Parameter(torch.zeros(vocab_size))  # the output layer's bias (the released code's MlmLayer)
        self.apply(gpt_init)
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                # Radford et al. 2019, sec. 2.3: residual projections scaled by 1/sqrt(number of residual layers).
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * depth))
        self.recipe = Backprop()

    # -- the network ------------------------------------------------------------------------------

    def logits(self, ids: Tensor, y: Tensor | None = None) -> Tensor:
        """Logits of every position's token, (B, N, K), from ids (B, N) in [0, K] (K = [MASK]) and,
        when class-conditional, class indices y (B,) in [0, num_classes] (num_classes = null)."""
        b, n = ids.shape
        h = self.wte(ids) + self.wpe(torch.arange(n, device=ids.device))  # (B, N, D)
        if self.class_emb is not None:
            if y is None:
                raise ValueError("maskgit is class-conditional, so it needs class indices y")
            # The class slot has no position: its embedding alone tells it apart.
            h = torch.cat([self.class_emb(y.to(ids.device))[:, None], h], dim=1)  # (B, 1 + N, D)
        h = self.drop(h)
        for block in self.blocks:
            h = block(h)
        h = self.ln_f(h[:, -n:])  # (B, N, D), the token slots
        return F.linear(h, self.wte.weight[: self.vocab_size], self.bias)  # (B, N, K), tied

    def _labels(self, batch: dict[str, Tensor], n: int, device, generator) -> Tensor | None:
        """The class index per row, None for an unconditional model (which ignores labels the data
        may carry). In training mode a row's class becomes the null class with probability
        cond_dropout (Ho & Salimans 2022, Alg. 1), drawn after the mask."""
        if self.class_emb is None:
            return None
        y = batch.get("y")
        if y is None:
            raise ValueError("maskgit is class-conditional, so it needs integer labels 'y'")
        y = y.to(device)
        if self.training and self.cond_dropout > 0:
            u = torch.special.ndtr(randn((n,), generator=generator, device=device))  # (B,)
            y = torch.where(u < self.cond_dropout, torch.full_like(y, self.num_classes), y)
        return y

    def masked_loss(self, batch: dict[str, Tensor], generator) -> Tensor:
        """Sec. 3.2: mask a cosine-scheduled share of each row at random, score the masked tokens."""
        x = batch["x"]
        b, n = x.shape
        if n != self.seq_len:
            raise ValueError(f"maskgit: rows of {n} tokens, the model was built for {self.seq_len}")
        r = torch.special.ndtr(randn((b,), generator=generator, device=x.device))  # (B,) ~ U(0, 1)
        mask = random_mask(r, randn((b, n), generator=generator, device=x.device))  # (B, N)
        y = self._labels(batch, b, x.device, generator)
        return masked_token_loss(self.logits(x.masked_fill(mask, self.mask_id), y), x, mask)

    # -- training -----------------------------------------------------------------------------------

    def forward(self, batch: dict[str, Tensor], phase: str = "main") -> tuple[Tensor, dict[str, Tensor]]:
        if phase != "main":
            raise ValueError(f"maskgit has one phase, 'main'; got phase={phase!r}")
        loss = self.masked_loss(batch, generator=None)  # nats per masked token; the training loop seeds the draws
        return loss, {"bits_per_masked_token": loss.detach() / LN2}

    # -- using the trained model ----------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Held-out masked-token cross-entropy ("loss", nats per masked token; and in bits), with
        masks drawn as in training from `generator` (a fixed seed without one), dropout and
        class dropout off."""
        generator = torch.Generator().manual_seed(EVAL_SEED) if generator is None else generator
        was_training = self.training
        self.eval()
        try:
            nats = self.masked_loss(batch, generator)
        finally:
            self.train(was_training)
        return {"loss": nats, "bits_per_masked_token": nats / LN2}

    def sampling_cost(self, settings: BaseModel) -> int:
        return settings.steps  # one network pass per step (a guided step batches both branches as one)

    def _condition(self, n: int, y: Tensor | None, device) -> Tensor | None:
        if self.class_emb is None:
            if y is not None:
                raise ValueError("maskgit was built unconditional (conditioning: none); call sample without y")
            return None
        if y is None:
            return torch.arange(n, device=device) % self.num_classes
        y = torch.as_tensor(y)
        if y.shape != (n,) or int(y.min()) < 0 or int(y.max()) >= self.num_classes:
            raise ValueError(f"maskgit.sample: y must be ({n},) labels in [0, {self.num_classes}), got {y.tolist()}")
        return y.to(device)

    def decode_steps(
        self,
        n: int,
        *,
        generator: torch.Generator | StackedGenerators | None = None,
        y: Tensor | None = None,
        steps: int | None = None,
        temperature: float | None = None,
        choice_temperature: float | None = None,
        guidance_scale: float | None = None,
    ) -> Iterator[Tensor]:
        """Yields the n rows after each decoding step, (n, N) int64 with mask_id (= vocab_size) at
        the positions still masked; the last is the sample. Settings left None take the model's
        defaults. Class-conditional: y (n,) picks classes; without y they cycle 0, 1, ... Runs in
        eval mode (no dropout) while the iterator is open. Checks the request now, not at the
        first step."""
        if n < 1:
            raise ValueError(f"maskgit.sample: n must be >= 1, got {n}")
        given = {"steps": steps, "temperature": temperature, "choice_temperature": choice_temperature,
                 "guidance_scale": guidance_scale}
        s = self.sampling_settings.model_validate({k: v for k, v in given.items() if v is not None})
        device = self.wte.weight.device
        return self._decode(n, self._condition(n, y, device), s, generator, device)

    @torch.no_grad()
    def _decode(self, n: int, y: Tensor | None, s: BaseModel, generator, device) -> Iterator[Tensor]:
        N, K, T = self.seq_len, self.vocab_size, s.steps
        scale = getattr(s, "guidance_scale", 0.0)
        guided = y is not None and scale > 0  # s = 0 is the conditional model: no unconditional pass
        if guided:  # both branches in one pass: rows [0, n) their classes, rows [n, 2n) the null class
            y = torch.cat([y, torch.full_like(y, self.num_classes)])
        left = masked_counts(N, T)
        was_training = self.training
        self.eval()
        try:
            ids = torch.full((n, N), self.mask_id, dtype=torch.long, device=device)  # all [MASK]
            for t in range(T):
                # Step t draws (n, N) normals for the tokens, then (n, N) for the confidence noise,
                # whatever the settings: the order of random draws that a seed names.
                u = torch.special.ndtr(randn((n, N), generator=generator, device=device).double())  # (n, N)
                noise = gumbel(randn((n, N), generator=generator, device=device))  # (n, N)
                logits = self.logits(torch.cat([ids, ids]) if guided else ids, y)  # (n or 2n, N, K)
                if guided:
                    logits = guided_logits(logits[:n], logits[n:], scale)
                logits = logits.double() / s.temperature  # (n, N, K)
                drawn = next_token(logits.reshape(n * N, K), u.reshape(n * N), temperature=1.0, top_k=0,
                                   top_p=1.0).view(n, N)
                masked = ids == self.mask_id  # (n, N)
                drawn = torch.where(masked, drawn, ids)  # known tokens never change
                # Alg. 1, step 3: confidence = log p of the drawn token, plus Gumbel noise whose scale
                # anneals linearly to 0 (the released code's choice temperature); known tokens rank first.
                log_p = logits.log_softmax(dim=-1).gather(-1, drawn[..., None])[..., 0]  # (n, N)
                confidence = log_p + s.choice_temperature * (1.0 - (t + 1) / T) * noise
                confidence = confidence.masked_fill(~masked, math.inf)
                order = confidence.argsort(dim=1, descending=True, stable=True)  # (n, N)
                keep = torch.zeros_like(masked).scatter(1, order[:, : N - left[t]], True)  # (n, N)
                ids = torch.where(keep, drawn, self.mask_id)
                yield ids
        finally:
            self.train(was_training)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | StackedGenerators | None = None,
               y: Tensor | None = None, steps: int | None = None, temperature: float | None = None,
               choice_temperature: float | None = None, guidance_scale: float | None = None) -> Tensor:
        """n sequences like the data's, (n, N) int64 ids in [0, vocab_size), by iterative decoding
        (see `decode_steps` for the arguments)."""
        ids = None
        for ids in self.decode_steps(n, generator=generator, y=y, steps=steps, temperature=temperature,
                                     choice_temperature=choice_temperature, guidance_scale=guidance_scale):
            pass
        return ids

    @torch.no_grad()
    def eval_samples(self, n: int, *, generator_seed: int, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """n sequences like the data's, (n, N) token ids, with the default settings (classes cycling)."""
        return {"": self.sample(n, generator=torch.Generator().manual_seed(generator_seed))}


# ---------------------------------------------------------------------------------------------
# Size presets and the builder
# ---------------------------------------------------------------------------------------------

# gpt.py's sizes: dim 64 / 128 / 256, depth 4 / 6 / 12.
def maskgit_tiny(**kw): return MaskGIT(dim=64, depth=4, heads=4, **kw)
def maskgit_small(**kw): return MaskGIT(dim=128, depth=6, heads=4, **kw)
def maskgit_base(**kw): return MaskGIT(dim=256, depth=12, heads=8, **kw)


SIZES = {"tiny": maskgit_tiny, "small": maskgit_small, "base": maskgit_base}


def build_maskgit(
    *,
    data: DatasetInfo,
    size: Literal["tiny", "small", "base"] = "small",
    conditioning: Literal["none", "class"] = "none",
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0,
    cond_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1,
    tokenizer: ModelRef | None = None,
) -> MaskGIT | TokenPrior:
    """A masked bidirectional transformer on `tokens` data, its vocabulary and length from the
    dataset. conditioning: class conditions every sequence on the row's label, with the label
    dropped (to the null class) for a cond_dropout share of rows so guidance has an unconditional
    branch.

    With `tokenizer` (a trained VQ-VAE), MaskGIT's own setting: it trains on the tokenizer's image
    data, over the h*w code grid of each image flattened row-major, and samples images
    (components/models/token_prior.py)."""
    if tokenizer is not None:
        tok = tokenizer_module(tokenizer, data, "maskgit")
        net = build_maskgit(data=token_data(tok, data), size=size, conditioning=conditioning, dropout=dropout,
                            cond_dropout=cond_dropout)
        return TokenPrior(net, tok)
    if data.modality != "tokens":
        raise UserError(f"maskgit trains on tokens data (a sequence of token ids per row, with a vocabulary); "
                        f"got {data.modality} data of shape {list(data.shape)}. For images, name a trained VQ-VAE "
                        "as model.tokenizer (MaskGIT over its codes)")
    if not data.vocab:
        raise UserError("maskgit: the tokens dataset has no vocabulary (metadata genray.vocab); it sets the output size")
    if conditioning == "class" and data.num_classes < 1:
        raise UserError("maskgit: conditioning: class needs class labels, but the dataset has none "
                        f"(num_classes={data.num_classes}); use a labelled dataset or conditioning: none")
    (seq_len,) = data.shape
    return SIZES[size](vocab_size=len(data.vocab), seq_len=seq_len, dropout=dropout,
                       num_classes=data.num_classes if conditioning == "class" else 0, cond_dropout=cond_dropout)
