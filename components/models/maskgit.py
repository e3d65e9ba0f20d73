"""MaskGIT: a bidirectional transformer over token sequences, trained to fill in masked tokens and
sampled by iterative parallel decoding (Chang et al. 2022, "MaskGIT: Masked Generative Image
Transformer"), optionally class- or text-conditional with classifier-free guidance.

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
class. Text conditioning is Muse's (Chang et al. 2023, sec. 2.1): every block cross-attends to a
text encoder's per-token embeddings of the caption (components/models/text_encoder.py, the byte
transformer latent diffusion uses, trained with the model as in diffusion.py; Muse's T5 is a
frozen pretrained encoder, and genray has none to freeze). Each cross-attention has a learned
null key/value that every query may attend to (as unet.py), so the empty caption, whose mask is
all False, is a well-defined null text. Training replaces a row's class by the null class, or its
caption by the empty one, with probability cond_dropout, so one network gives both branches of
classifier-free guidance (Ho & Salimans 2022; Muse, sec. 2.4.1): logits = cond + s (cond - uncond),
both branches in one batched pass.

Randomness. Every draw is a standard normal through `layers.randn`, with a fixed shape whatever
the settings: training draws r (B,), then the masking scores (B, N), then (a conditional model in
training mode) the condition dropout's (B,); each decoding step draws the token uniforms (n, N)
and then the confidence noise (n, N), in that order. Uniforms are Phi(z) and Gumbel noise is
-log(-log Phi(z)), so one seed names the same samples with any settings, and a StackedGenerators
(components/models/layers.py) makes a row's sample independent of its batch.

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
from genray.components.models.text_encoder import TextEncoder, encode_text
from genray.components.models.token_prior import TokenPrior, check_token_data, token_data, tokenizer_module
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


class CrossAttention(nn.Module):
    """Queries from the tokens, keys and values from a text context (Muse, sec. 2.1; Rombach et al.
    2022, sec. 3.3), plus a learned null key/value that every query may always attend to: a context
    whose mask is all False (the empty caption) attends to it alone and stays finite (unet.py)."""

    def __init__(self, dim: int, heads: int, dropout: float, context_dim: int):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.null_kv = nn.Parameter(torch.randn(2, dim) * 0.02)
        self.proj = nn.Linear(dim, dim)
        self.resid_drop = nn.Dropout(dropout)

    def _heads(self, z: Tensor) -> Tensor:
        b, n, d = z.shape
        return z.view(b, n, self.heads, d // self.heads).transpose(1, 2)  # (B, H, L, hd)

    def forward(self, x: Tensor, context: Tensor, keep: Tensor) -> Tensor:
        """x (B, L, D); context (B, L_text, context_dim); keep (B, L_text) bool, True = a real text token."""
        b, n, d = x.shape
        k, v = self.kv(context).chunk(2, dim=2)  # (B, L_text, D) each
        null_k, null_v = self.null_kv.to(k.dtype)[:, None, None, :].expand(2, b, 1, d)  # (B, 1, D) each
        k, v = torch.cat([null_k, k], dim=1), torch.cat([null_v, v], dim=1)  # (B, 1 + L_text, D)
        mask = F.pad(keep, (1, 0), value=True)[:, None, None, :]  # (B, 1, 1, 1 + L_text); the null column always
        y = F.scaled_dot_product_attention(self._heads(self.q(x)), self._heads(k), self._heads(v), attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, H, L, hd)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, n, d)))


class Block(nn.Module):
    """x + attn(ln(x)), [x + xattn(ln(x), text) when text-conditional,] then x + mlp(ln(x)):
    gpt.Block's pre-norm layout, bidirectional; Muse's block order for the cross-attention."""

    def __init__(self, dim: int, heads: int, dropout: float, context_dim: int | None = None):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        cross = context_dim is not None
        self.ln_x = nn.LayerNorm(dim) if cross else None
        self.xattn = CrossAttention(dim, heads, dropout, context_dim) if cross else None
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, dropout)

    def forward(self, x: Tensor, context: Tensor | None = None, keep: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        if self.xattn is not None:
            x = x + self.xattn(self.ln_x(x), context, keep)
        return x + self.mlp(self.ln_2(x))


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


def sampling_settings_type(seq_len: int, guided: bool) -> type[BaseModel]:
    """This model's sampling settings: 1..N decoding steps (8 by default, the paper's ImageNet
    figure), token and choice temperatures, and a guidance scale when conditional."""
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
        text_encoder: TextEncoder | None = None,
        text_len: int = 64,
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
        if num_classes and text_encoder is not None:
            raise ValueError("maskgit: conditions on a class or on a text, not both")
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.mask_id = vocab_size  # [MASK]: the token embedding's last row
        self.num_classes, self.cond_dropout = num_classes, cond_dropout
        self.conditioning = "class" if num_classes else "text" if text_encoder is not None else "none"
        self.capabilities = frozenset({"sample"} | ({"condition"} if self.conditioning != "none" else set()))
        self.sampling_settings = sampling_settings_type(seq_len, guided=self.conditioning != "none")

        self.wte = nn.Embedding(vocab_size + 1, dim)  # K tokens and [MASK]; rows :K are also the output layer
        self.wpe = nn.Embedding(seq_len, dim)
        # The class slot: one row per class and the null class (row num_classes) for guidance.
        self.class_emb = nn.Embedding(num_classes + 1, dim) if num_classes else None
        self.drop = nn.Dropout(dropout)
        context_dim = None if text_encoder is None else text_encoder.token_emb.embedding_dim
        self.blocks = nn.ModuleList(Block(dim, heads, dropout, context_dim) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim)  # pre-norm leaves the residual stream unnormalised; finish it here
        self.bias = nn.Parameter(torch.zeros(vocab_size))  # the output layer's bias (the released code's MlmLayer)
        self.apply(gpt_init)
        # After gpt_init: the text encoder keeps its own initialisation.
        self.text_encoder, self.text_len = text_encoder, text_len
        for name, p in self.named_parameters():
            if name.startswith("blocks.") and name.endswith(("attn.proj.weight", "mlp.proj.weight")):
                # Radford et al. 2019, sec. 2.3: residual projections scaled by 1/sqrt(number of residual layers).
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * depth))
        self.recipe = Backprop()

    # -- the network ------------------------------------------------------------------------------

    def logits(self, ids: Tensor, y: Tensor | None = None, context: Tensor | None = None,
               context_mask: Tensor | None = None) -> Tensor:
        """Logits of every position's token, (B, N, K), from ids (B, N) in [0, K] (K = [MASK]) and
        the condition (`condition` makes it): class-conditional, class indices y (B,) in
        [0, num_classes] (num_classes = null); text-conditional, the text encoder's context
        (B, L, D) and context_mask (B, L)."""
        b, n = ids.shape
        h = self.wte(ids) + self.wpe(torch.arange(n, device=ids.device))  # (B, N, D)
        if self.class_emb is not None:
            if y is None:
                raise ValueError("maskgit is class-conditional, so it needs class indices y")
            # The class slot has no position: its embedding alone tells it apart.
            h = torch.cat([self.class_emb(y.to(ids.device))[:, None], h], dim=1)  # (B, 1 + N, D)
        if self.text_encoder is not None and context is None:
            raise ValueError("maskgit is text-conditional, so it needs a text context (see `condition`)")
        h = self.drop(h)
        for block in self.blocks:
            h = block(h, context, context_mask)
        h = self.ln_f(h[:, -n:])  # (B, N, D), the token slots
        return F.linear(h, self.wte.weight[: self.vocab_size], self.bias)  # (B, N, K), tied

    def condition(self, n: int, device, *, y: Tensor | None = None, text: Tensor | None = None) -> dict[str, Tensor]:
        """The network's condition kwargs for n rows (for `logits`); y None or text None is the
        null condition, the unconditional branch of guidance (the null class, the empty caption).
        text: byte tokens (n, L), L <= text_len, 0 = padding (text_encoder.encode_text)."""
        cond: dict[str, Tensor] = {}
        if self.class_emb is not None:
            cond["y"] = torch.full((n,), self.num_classes, dtype=torch.long, device=device) if y is None else y.to(device)
        if self.text_encoder is not None:
            tokens = torch.zeros(n, self.text_len, dtype=torch.long, device=device) if text is None else text.to(device)
            cond["context"], cond["context_mask"] = self.text_encoder(tokens)  # (n, L, D), (n, L)
        return cond

    def _training_condition(self, batch: dict[str, Tensor], n: int, device, generator) -> dict[str, Tensor]:
        """The batch's condition (none for an unconditional model, which ignores labels or captions
        the data may carry). In training mode a row's class becomes the null class, or its caption
        the empty one, with probability cond_dropout (Ho & Salimans 2022, Alg. 1), drawn after the mask."""
        if self.conditioning == "none":
            return {}
        key, what = ("y", "integer labels 'y'") if self.class_emb is not None else ("text", "caption tokens 'text'")
        value = batch.get(key)
        if value is None:
            raise ValueError(f"maskgit is {self.conditioning}-conditional, so it needs {what}")
        value = value.to(device)
        if self.training and self.cond_dropout > 0:
            drop = torch.special.ndtr(randn((n,), generator=generator, device=device)) < self.cond_dropout  # (B,)
            if key == "y":
                value = torch.where(drop, torch.full_like(value, self.num_classes), value)
            else:
                value = value.masked_fill(drop[:, None], 0)  # the empty caption: all padding
        return self.condition(n, device, **{key: value})

    def masked_loss(self, batch: dict[str, Tensor], generator) -> Tensor:
        """Sec. 3.2: mask a cosine-scheduled share of each row at random, score the masked tokens."""
        x = batch["x"]
        b, n = x.shape
        if n != self.seq_len:
            raise ValueError(f"maskgit: rows of {n} tokens, the model was built for {self.seq_len}")
        r = torch.special.ndtr(randn((b,), generator=generator, device=x.device))  # (B,) ~ U(0, 1)
        mask = random_mask(r, randn((b, n), generator=generator, device=x.device))  # (B, N)
        cond = self._training_condition(batch, b, x.device, generator)
        return masked_token_loss(self.logits(x.masked_fill(mask, self.mask_id), **cond), x, mask)

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

    def _sample_condition(self, n: int, device, y: Tensor | None, prompt: str | list[str] | None,
                          text: Tensor | None) -> dict[str, Tensor]:
        """The condition of a sample call, checked: classes (cycling 0, 1, ... without y), a
        caption per row (from prompt, or byte tokens text; without either, the empty caption:
        unconditional samples), or nothing."""
        if y is not None and self.class_emb is None:
            raise ValueError(f"maskgit is not class-conditional (conditioning: {self.conditioning}); call sample "
                             "without y")
        if (prompt is not None or text is not None) and self.text_encoder is None:
            raise UserError(f"maskgit is not text-conditional (conditioning: {self.conditioning}); call sample "
                            "without prompt")
        if self.class_emb is not None:
            if y is None:
                y = torch.arange(n) % self.num_classes
            y = torch.as_tensor(y)
            if y.shape != (n,) or int(y.min()) < 0 or int(y.max()) >= self.num_classes:
                raise ValueError(f"maskgit.sample: y must be ({n},) labels in [0, {self.num_classes}), got "
                                 f"{y.tolist()}")
            return self.condition(n, device, y=y)
        if self.text_encoder is not None:
            if prompt is not None:
                text = encode_text(self._prompts(n, prompt), self.text_len)
            elif text is not None and (text.ndim != 2 or len(text) != n or text.shape[1] > self.text_len):
                raise ValueError(f"maskgit.sample: text must be byte tokens (n={n}, L <= {self.text_len}), got "
                                 f"{tuple(text.shape)}")
            return self.condition(n, device, text=text)
        return {}

    def _prompts(self, n: int, prompt: str | list[str]) -> list[str]:
        """One caption per row. A lone prompt must say something: "" would be the null text, an
        unconditional sample that looks conditioned; call sample without prompt for that. In a
        list, an empty entry is that row's null text (the unconditional branch), as in training."""
        if isinstance(prompt, str):
            if not prompt.strip():
                raise UserError("maskgit.sample: prompt is empty; give a caption (e.g. prompt='a handwritten 3'), "
                                "or leave prompt out for unconditional samples")
            return [prompt] * n
        prompts = list(prompt)
        if len(prompts) != n or not all(isinstance(p, str) for p in prompts):
            raise UserError(f"maskgit.sample: prompt must be one string or a list of n={n} strings; got "
                            f"{len(prompts)} entries")
        return prompts

    def decode_steps(
        self,
        n: int,
        *,
        generator: torch.Generator | StackedGenerators | None = None,
        y: Tensor | None = None,
        prompt: str | list[str] | None = None,
        text: Tensor | None = None,
        steps: int | None = None,
        temperature: float | None = None,
        choice_temperature: float | None = None,
        guidance_scale: float | None = None,
    ) -> Iterator[Tensor]:
        """Yields the n rows after each decoding step, (n, N) int64 with mask_id (= vocab_size) at
        the positions still masked; the last is the sample. Settings left None take the model's
        defaults. Class-conditional: y (n,) picks classes; without y they cycle 0, 1, ...
        Text-conditional: a prompt (one for all rows, or a list of n), or byte tokens `text` (n, L);
        without either, unconditional (the empty caption). Runs in eval mode (no dropout) while
        the iterator is open. Checks the request now, not at the first step."""
        if n < 1:
            raise ValueError(f"maskgit.sample: n must be >= 1, got {n}")
        given = {"steps": steps, "temperature": temperature, "choice_temperature": choice_temperature,
                 "guidance_scale": guidance_scale}
        s = self.sampling_settings.model_validate({k: v for k, v in given.items() if v is not None})
        device = self.wte.weight.device
        with torch.no_grad():
            was_training = self.training
            self.eval()  # the text encoder's pass too
            try:
                cond = self._sample_condition(n, device, y, prompt, text)
            finally:
                self.train(was_training)
        return self._decode(n, cond, s, generator, device)

    @torch.no_grad()
    def _decode(self, n: int, cond: dict[str, Tensor], s: BaseModel, generator, device) -> Iterator[Tensor]:
        N, K, T = self.seq_len, self.vocab_size, s.steps
        scale = getattr(s, "guidance_scale", 0.0)
        guided = bool(cond) and scale > 0  # s = 0 is the conditional model: no unconditional pass
        left = masked_counts(N, T)
        was_training = self.training
        self.eval()
        try:
            if guided:  # both branches in one pass: rows [0, n) their condition, rows [n, 2n) the null one
                null = self.condition(n, device)
                cond = {k: torch.cat([v, null[k]]) for k, v in cond.items()}
            ids = torch.full((n, N), self.mask_id, dtype=torch.long, device=device)  # all [MASK]
            for t in range(T):
                # Step t draws (n, N) normals for the tokens, then (n, N) for the confidence noise,
                # whatever the settings: the order of random draws that a seed names.
                u = torch.special.ndtr(randn((n, N), generator=generator, device=device).double())  # (n, N)
                noise = gumbel(randn((n, N), generator=generator, device=device))  # (n, N)
                logits = self.logits(torch.cat([ids, ids]) if guided else ids, **cond)  # (n or 2n, N, K)
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
               y: Tensor | None = None, prompt: str | list[str] | None = None, text: Tensor | None = None,
               steps: int | None = None, temperature: float | None = None, choice_temperature: float | None = None,
               guidance_scale: float | None = None) -> Tensor:
        """n sequences like the data's, (n, N) int64 ids in [0, vocab_size), by iterative decoding
        (see `decode_steps` for the arguments)."""
        ids = None
        for ids in self.decode_steps(n, generator=generator, y=y, prompt=prompt, text=text, steps=steps,
                                     temperature=temperature, choice_temperature=choice_temperature,
                                     guidance_scale=guidance_scale):
            pass
        return ids

    @torch.no_grad()
    def eval_samples(self, n: int, *, generator_seed: int, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """n sequences like the data's, (n, N) token ids, with the default settings: classes cycling,
        or the held-out batch's captions cycling (unconditional without them)."""
        text = None
        if self.text_encoder is not None and "text" in batch:
            text = batch["text"][torch.arange(n) % len(batch["text"])]
        return {"": self.sample(n, generator=torch.Generator().manual_seed(generator_seed), text=text)}


# ---------------------------------------------------------------------------------------------
# Size presets and the builder
# ---------------------------------------------------------------------------------------------

# gpt.py's sizes: dim 64 / 128 / 256, depth 4 / 6 / 12. The text encoder has the transformer's
# width and heads and diffusion.py's text depths.
def maskgit_tiny(**kw): return MaskGIT(dim=64, depth=4, heads=4, **kw)
def maskgit_small(**kw): return MaskGIT(dim=128, depth=6, heads=4, **kw)
def maskgit_base(**kw): return MaskGIT(dim=256, depth=12, heads=8, **kw)


SIZES = {"tiny": maskgit_tiny, "small": maskgit_small, "base": maskgit_base}
TEXT_SIZES = {"tiny": (64, 1, 4), "small": (128, 2, 4), "base": (256, 4, 8)}  # (dim, depth, heads)


def build_maskgit(
    *,
    data: DatasetInfo,
    size: Literal["tiny", "small", "base"] = "small",
    conditioning: Literal["none", "class", "text"] = "none",
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0,
    cond_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1,
    text_len: Annotated[int, Field(ge=1, le=1024)] = 64,
    tokenizer: ModelRef | None = None,
) -> MaskGIT | TokenPrior:
    """A masked bidirectional transformer on `tokens` data, its vocabulary and length from the
    dataset. conditioning: class conditions every sequence on the row's label; text on the row's
    caption (byte tokens, text_len of them; the pipeline checks the data have a caption column),
    Muse's cross-attention. The condition is dropped (to the null class, or the empty caption) for
    a cond_dropout share of rows, so guidance has an unconditional branch.

    With `tokenizer` (a trained VQ-VAE), MaskGIT's own setting: it trains on the tokenizer's image
    data, over the h*w code grid of each image flattened row-major, and samples images
    (components/models/token_prior.py)."""
    if tokenizer is not None:
        tok = tokenizer_module(tokenizer, data, "maskgit")
        net = build_maskgit(data=token_data(tok, data), size=size, conditioning=conditioning, dropout=dropout,
                            cond_dropout=cond_dropout, text_len=text_len)
        return TokenPrior(net, tok)
    check_token_data(data, "maskgit", conditioning, "For images, name a trained VQ-VAE as model.tokenizer "
                     "(MaskGIT over its codes)")
    (seq_len,) = data.shape
    text_encoder = None
    if conditioning == "text":
        dim, depth, heads = TEXT_SIZES[size]
        text_encoder = TextEncoder(dim=dim, depth=depth, heads=heads, max_len=text_len)
    return SIZES[size](vocab_size=len(data.vocab), seq_len=seq_len, dropout=dropout,
                       num_classes=data.num_classes if conditioning == "class" else 0, cond_dropout=cond_dropout,
                       text_encoder=text_encoder, text_len=text_len)
