"""GPT: a decoder-only transformer over token sequences (Radford et al. 2018, 2019), optionally
class-conditional, sampled with a key/value cache.

Trained by the Backprop recipe on next-token cross-entropy (nats per token; bits per token are
logged beside it). The network is nanoGPT's: pre-norm blocks (LayerNorm before each sub-layer,
Xiong et al. 2020), causal self-attention through `scaled_dot_product_attention`, a GELU MLP,
learned position embeddings, and the output layer tied to the token embedding (Press & Wolf 2017).

Every row starts with a *start slot*: a learned vector, one per class when class-conditional, at
position 0. So logits[:, i] scores x_i from the start slot and x_<i, every token of a sequence
has a prediction (the first one included), `log_prob` is the exact log P(x | y) of the whole
sequence, and unconditional sampling needs no prompt. As the prior over VQ-VAE codes, y is the
class and the codes are the tokens.

Sampling draws one standard normal per row at each step, whatever the settings, and turns it
into a token by inverse-CDF of the filtered distribution (temperature, then top-k, then top-p),
so one seed means the same draws with any settings, cached or not, and a StackedGenerators
(components/models/layers.py) makes a row's tokens independent of its batch. Prompts of
different lengths are left-padded: padding slots are masked out as keys and each row's positions
count from its own start slot, so a row samples what it would alone.

    prompt + max_new_tokens <= block_size     (learned positions: nothing beyond them is defined)
"""
import math
from typing import Annotated, Any, Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, create_model
from torch import Tensor, nn

from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.models.layers import StackedGenerators, exact_log_prob, randn
from genray.components.models.protocol import SETTINGS_CONFIG
from genray.components.models.refs import ModelRef
from genray.components.models.token_prior import TokenPrior, check_token_data, token_data, tokenizer_module
from genray.components.training import Backprop

START = -1  # the start slot's id in an input row: it embeds as the start vector, not as a token
LN2 = math.log(2.0)


# ---------------------------------------------------------------------------------------------
# The objective and the next-token rule, as plain functions of tensors
# ---------------------------------------------------------------------------------------------


def token_nll(logits: Tensor, x: Tensor) -> Tensor:
    """-log p(x_i | x_<i) in nats for every position: logits (B, T, V), x (B, T) -> (B, T)."""
    return F.cross_entropy(logits.float().transpose(1, 2), x, reduction="none")


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep each row's k largest logits (and any tied with the k-th), -inf elsewhere (Fan et al.
    2018); k = 0 keeps every token."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, -math.inf)


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filtering (Holtzman et al. 2020, §3.1): keep the smallest set of most likely tokens
    whose probability sums to at least p, -inf elsewhere; the most likely token always stays."""
    if p >= 1.0:
        return logits
    probs = logits.double().softmax(dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)  # (B, V) each
    mass_above = sorted_probs.cumsum(dim=-1) - sorted_probs  # of the tokens ranked higher
    drop_sorted = mass_above >= p  # the set already reached p without this token
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, -math.inf)


def inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """The token whose CDF interval holds u: probs (B, V), u (B,) in [0, 1) -> (B,) int64. Tokens
    of probability 0 are never chosen."""
    cdf = probs.double().cumsum(dim=-1)  # (B, V)
    # u < 1 strictly, so the target is below the total mass and the first CDF value above it
    # belongs to a token of positive probability.
    target = u.double().clamp(0.0, 1.0 - 1e-12)[:, None] * cdf[:, -1:]  # (B, 1)
    return (cdf <= target).sum(dim=-1).clamp(max=probs.shape[-1] - 1)


def next_token(logits: Tensor, u: Tensor, *, temperature: float, top_k: int, top_p: float) -> Tensor:
    """One token per row from next-token logits (B, V) and uniforms u (B,): logits / temperature,
    then top-k, then top-p on what top-k kept (renormalised), then inverse-CDF. top_k = 1 is
    greedy; so, up to ties, is a temperature near 0."""
    z = logits.double() / temperature
    z = top_p_filter(top_k_filter(z, top_k), top_p)
    return inverse_cdf(z.softmax(dim=-1), u)


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------


class LayerCache:
    """One layer's keys and values of the positions seen so far, (B, H, L, head_dim) each, in
    buffers of max_len positions made on the first append (in the keys' dtype and device)."""

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.length = 0
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, H, L, hd) after the cached positions; return all of them, (B, H, len, hd)."""
        if self.k is None:
            b, h, _, d = k.shape
            self.k = k.new_empty(b, h, self.max_len, d)
            self.v = v.new_empty(b, h, self.max_len, d)
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"the KV cache holds {self.max_len} positions; {end} asked")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None, cache: LayerCache | None = None) -> Tensor:
        """x (B, L, D). mask (B, 1, L, L_keys) bool, True = may attend; None = plain causal over
        x's own positions, or, for one new position after a cache, every cached key."""
        b, n, d = x.shape
        if cache is not None and cache.length > 0 and n > 1 and mask is None:
            # is_causal aligns the mask top-left, which is wrong for queries after a cached prefix.
            raise ValueError("several new positions after a cached prefix need an explicit mask")
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, L, hd) each
        if cache is not None:
            k, v = cache.append(k, v)  # (B, H, L_cached + L, hd)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=mask is None and n > 1)  # (B, H, L, hd)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, n, d)))


class MLP(nn.Module):
    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(dim, 4 * dim)
        self.proj = nn.Linear(4 * dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """x + attn(ln(x)), then x + mlp(ln(x)): pre-norm (Xiong et al. 2020), as GPT-2 and nanoGPT."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, dropout)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None, cache: LayerCache | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), mask, cache)
        return x + self.mlp(self.ln_2(x))


def padded_causal_mask(valid: Tensor) -> Tensor:
    """(B, L) True at real slots -> (B, 1, L, L): causal, padding keys masked. A padding query
    attends to itself only (a row of nothing would be NaN); no real query reads its output."""
    n = valid.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=valid.device).tril()
    eye = torch.eye(n, dtype=torch.bool, device=valid.device)
    return (causal & (valid[:, None, :] | eye))[:, None]


def slot_positions(valid: Tensor) -> Tensor:
    """(B, L) True at real slots -> each slot's position counted from its row's start slot
    (padding: 0), (B, L)."""
    return (valid.long().cumsum(dim=1) - 1).clamp(min=0)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


def sampling_settings_type(block_size: int, vocab_size: int, seq_len: int) -> type[BaseModel]:
    """This model's sampling settings: up to block_size new tokens, the data's sequence length by
    default; plain ancestral sampling (temperature 1, no top-k, no top-p) by default."""
    return create_model(
        "GPTSampling", __config__=SETTINGS_CONFIG,
        max_new_tokens=(int, Field(min(seq_len, block_size), ge=1, le=block_size,
                        description=f"tokens to generate (prompt + new <= {block_size}, the block size)")),
        temperature=(float, Field(1.0, gt=0, le=100, allow_inf_nan=False,
                     description="divides the logits: < 1 sharper, > 1 flatter; near 0 is greedy")),
        top_k=(int, Field(0, ge=0, le=vocab_size, description="keep the k most likely tokens (0 = all)")),
        top_p=(float, Field(1.0, gt=0, le=1, allow_inf_nan=False,
               description="nucleus: keep the most likely tokens up to this probability mass (1 = all)")),
    )


class GPT(nn.Module):
    # The exact log P(x) of token ids: a discrete likelihood; bits/dim is bits per token.
    log_prob_space, log_prob_kind = "discrete", "exact"

    def __init__(
        self,
        *,
        vocab_size: int,
        seq_len: int,
        dim: int,
        depth: int,
        heads: int,
        block_size: int | None = None,
        dropout: float = 0.0,
        num_classes: int = 0,
    ):
        super().__init__()
        block_size = seq_len if block_size is None else block_size
        if vocab_size < 1 or seq_len < 1:
            raise ValueError(f"gpt: need vocab_size >= 1 and seq_len >= 1, got {vocab_size=}, {seq_len=}")
        if block_size < seq_len:
            raise ValueError(f"gpt: block_size ({block_size}) must be at least the data's sequence length "
                             f"({seq_len}): a training sequence needs a position for every token")
        if dim % heads:
            raise ValueError(f"gpt: dim must be divisible by heads (each head gets dim/heads), got {dim=}, {heads=}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"gpt: dropout must be in [0, 1), got {dropout}")
        if num_classes < 0:
            raise ValueError(f"gpt: num_classes must be >= 0 (0 = unconditional), got {num_classes}")
        self.vocab_size, self.seq_len, self.block_size = vocab_size, seq_len, block_size
        self.num_classes = num_classes
        self.conditioning = "class" if num_classes else "none"
        self.capabilities = frozenset({"sample", "log_prob", "generate_text"} | ({"condition"} if num_classes else set()))
        self.sampling_settings = sampling_settings_type(block_size, vocab_size, seq_len)

        self.wte = nn.Embedding(vocab_size, dim)  # also the output layer (tied)
        self.wpe = nn.Embedding(block_size, dim)
        self.start = nn.Embedding(max(num_classes, 1), dim)  # the start slot: one vector, or one per class
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim)  # pre-norm leaves the residual stream unnormalised; finish it here
        self.apply(gpt_init)
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                # Radford et al. 2019, §2.3: residual projections scaled by 1/sqrt(number of residual
                # layers), so the stream's variance does not grow with depth.
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * depth))
        self.recipe = Backprop()

    # -- the network ------------------------------------------------------------------------------

    def _labels(self, y: Tensor | None, n: int, device) -> Tensor:
        """The start slot's index per row: the class, or 0 for an unconditional model (which
        ignores labels the data may carry)."""
        if self.num_classes == 0:
            return torch.zeros(n, dtype=torch.long, device=device)
        if y is None:
            raise ValueError("gpt is class-conditional, so it needs integer labels 'y'")
        return y.to(device)

    def _embed(self, ids: Tensor, start: Tensor) -> Tensor:
        """ids (B, L), START at each row's start slot; start-slot indices (B,) -> (B, L, D)."""
        tok = self.wte(ids.clamp(min=0))  # (B, L, D)
        return torch.where((ids == START)[..., None], self.start(start)[:, None], tok)

    def _run(self, h: Tensor, pos: Tensor, *, mask: Tensor | None = None,
             caches: Sequence[LayerCache] | None = None, last: bool = False) -> Tensor:
        """Embedded slots (B, L, D) at positions (L,) or (B, L) -> logits (B, L, V), or (B, 1, V)
        at the last slot only."""
        h = self.drop(h + self.wpe(pos))
        for i, block in enumerate(self.blocks):
            h = block(h, mask, None if caches is None else caches[i])
        if last:
            h = h[:, -1:]
        return F.linear(self.ln_f(h), self.wte.weight)  # tied output layer (Press & Wolf 2017)

    def logits(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Next-token logits: logits[:, i] scores x_i given x_<i (and y), (B, T, V). Computed
        from the start slot and x[:, :-1], so x[:, -1] is only a target."""
        b, t = x.shape
        if t > self.block_size:
            raise ValueError(f"gpt: sequences of {t} tokens exceed block_size={self.block_size}")
        ids = torch.cat([torch.full((b, 1), START, dtype=x.dtype, device=x.device), x[:, :-1]], dim=1)  # (B, T)
        return self._run(self._embed(ids, self._labels(y, b, x.device)), torch.arange(t, device=x.device))

    # -- training -----------------------------------------------------------------------------------

    def forward(self, batch: dict[str, Tensor], phase: str = "main") -> tuple[Tensor, dict[str, Tensor]]:
        if phase != "main":
            raise ValueError(f"gpt has one phase, 'main'; got phase={phase!r}")
        x = batch["x"]
        loss = token_nll(self.logits(x, batch.get("y")), x).mean()  # nats per token
        return loss, {"bits_per_token": loss.detach() / LN2}

    # -- using the trained model ----------------------------------------------------------------------

    @torch.no_grad()
    def log_prob(self, x: Tensor, *, y: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """log P(x | y) of whole sequences, exact, nats per sequence (B,). Dropout is off. A
        class-conditional model without y gives the marginal under a uniform class prior,
        log (1/K) sum_k P(x | k): still exact, at K passes."""
        return exact_log_prob(self, lambda x, y: token_nll(self.logits(x, y), x).sum(dim=1), x, y, self.num_classes)

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Held-out next-token cross-entropy: "loss" in nats per token, and bits per token."""
        x = batch["x"]
        nats = -self.log_prob(x, y=batch.get("y")).mean() / x.shape[1]
        return {"loss": nats, "bits_per_token": nats / LN2}

    def sampling_cost(self, settings: BaseModel) -> int:
        return settings.max_new_tokens  # one network pass per new token (the prompt's is the first)

    def _settings(self, **given: Any) -> BaseModel:
        return self.sampling_settings.model_validate({k: v for k, v in given.items() if v is not None})

    def _prompts(self, n: int, prompt_tokens: Sequence[Sequence[int]] | None) -> list[list[int]]:
        if prompt_tokens is None:
            return [[] for _ in range(n)]
        if isinstance(prompt_tokens, str) or any(isinstance(p, str) for p in prompt_tokens):
            raise UserError("gpt.sample: prompt_tokens are token ids, one list per sample; map text to ids "
                            "with the dataset's vocabulary first")
        rows = [[int(t) for t in p] for p in prompt_tokens]
        if len(rows) != n:
            raise UserError(f"gpt.sample: {len(rows)} prompts for n={n} samples; give one token list per sample")
        for i, row in enumerate(rows):
            bad = [t for t in row if not 0 <= t < self.vocab_size]
            if bad:
                raise UserError(f"gpt.sample: prompt {i} has token id {bad[0]}, outside the vocabulary "
                                f"[0, {self.vocab_size})")
        return rows

    def stream(
        self,
        n: int,
        *,
        generator: torch.Generator | StackedGenerators | None = None,
        y: Tensor | None = None,
        prompt_tokens: Sequence[Sequence[int]] | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> Iterator[Tensor]:
        """Yields the n rows' next tokens, (n,) int64, one step at a time, with the KV cache: for a
        caller that stops on decoded text (stop strings) or shows tokens as they come. Settings
        left None take the model's defaults. prompt_tokens: one list of ids per row, of any
        lengths (also empty). Class-conditional: y (n,) picks classes; without y they cycle
        0, 1, ... Runs in eval mode (no dropout) while the stream is open."""
        return self._generate(n, generator, y, prompt_tokens, cached=True, max_new_tokens=max_new_tokens,
                              temperature=temperature, top_k=top_k, top_p=top_p)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | StackedGenerators | None = None,
               y: Tensor | None = None, prompt_tokens: Sequence[Sequence[int]] | None = None,
               max_new_tokens: int | None = None, temperature: float | None = None, top_k: int | None = None,
               top_p: float | None = None) -> Tensor:
        """The new tokens, (n, max_new_tokens) int64 ids into the dataset's vocabulary (prompts
        not included). Without a prompt and with the default max_new_tokens, (n, T) like the data.
        See `stream` for the arguments."""
        return torch.stack(list(self.stream(n, generator=generator, y=y, prompt_tokens=prompt_tokens,
                                            max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                            top_p=top_p)), dim=1)

    @torch.no_grad()
    def generate_naive(self, n: int, *, generator: torch.Generator | StackedGenerators | None = None,
                       y: Tensor | None = None, prompt_tokens: Sequence[Sequence[int]] | None = None,
                       max_new_tokens: int | None = None, temperature: float | None = None,
                       top_k: int | None = None, top_p: float | None = None) -> Tensor:
        """`sample` without the cache: every step runs the network over the whole prefix again. The
        same draws, so the same tokens: the reference the cached path is tested and timed against."""
        return torch.stack(list(self._generate(n, generator, y, prompt_tokens, cached=False,
                                               max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                               top_p=top_p)), dim=1)

    def _generate(self, n: int, generator, y: Tensor | None, prompt_tokens, *, cached: bool,
                  **settings: Any) -> Iterator[Tensor]:
        """Checks the request now (not at the first token), then returns the token stream."""
        if n < 1:
            raise ValueError(f"gpt.sample: n must be >= 1, got {n}")
        s = self._settings(**settings)
        device = self.wte.weight.device
        prompts = self._prompts(n, prompt_tokens)
        if self.num_classes == 0:
            if y is not None:
                raise ValueError("gpt was built unconditional (conditioning: none); call sample without y")
        elif y is None:
            y = torch.arange(n, device=device) % self.num_classes
        elif y.shape != (n,) or int(y.min()) < 0 or int(y.max()) >= self.num_classes:
            raise ValueError(f"gpt.sample: y must be ({n},) labels in [0, {self.num_classes}), got {y.tolist()}")
        longest = max(len(p) for p in prompts)
        if longest + s.max_new_tokens > self.block_size:
            raise UserError(f"gpt.sample: a prompt of {longest} tokens plus max_new_tokens={s.max_new_tokens} "
                            f"exceeds the block size {self.block_size} (its learned positions); shorten either")

        # Left-pad: row b is [pad] * (longest - len_b), START, prompt_b; every row ends at the same slot.
        pad = [longest - len(p) for p in prompts]
        ids = torch.zeros(n, longest + 1, dtype=torch.long)  # (B, L0)
        for b, p in enumerate(prompts):
            ids[b, pad[b]] = START
            ids[b, pad[b] + 1:] = torch.tensor(p, dtype=torch.long)
        valid = torch.arange(longest + 1)[None] >= torch.tensor(pad)[:, None]  # (B, L0), True at real slots
        return self._steps(ids.to(device), valid.to(device), self._labels(y, n, device), s, cached=cached,
                           generator=generator)

    @torch.no_grad()
    def _steps(self, ids: Tensor, valid: Tensor, start: Tensor, s: BaseModel, *, cached: bool,
               generator) -> Iterator[Tensor]:
        n, length = ids.shape
        padded = not bool(valid.all())
        valid_all = torch.cat([valid, valid.new_ones(n, s.max_new_tokens - 1)], dim=1)  # (B, every slot fed)
        caches = [LayerCache(valid_all.shape[1]) for _ in self.blocks] if cached else None
        was_training = self.training
        self.eval()
        try:
            pos = slot_positions(valid)  # (B, L0)
            mask = padded_causal_mask(valid) if padded else None
            logits = self._run(self._embed(ids, start), pos, mask=mask, caches=caches, last=True)[:, -1]  # (B, V)
            pos = pos[:, -1:]  # (B, 1), the last slot's
            for step in range(s.max_new_tokens):
                # Step k draws one standard normal per row (then Phi(z) ~ U(0, 1)), whatever the
                # settings: the order of random draws that a seed names.
                u = torch.special.ndtr(randn((n,), generator=generator, device=ids.device).double())  # (B,)
                tok = next_token(logits, u, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)  # (B,)
                yield tok
                if step == s.max_new_tokens - 1:
                    break
                length, pos = length + 1, pos + 1
                valid = valid_all[:, :length]
                if cached:  # only the new slot goes through the network; keys and values come from the cache
                    mask = valid[:, None, None, :] if padded else None  # (B, 1, 1, L)
                    logits = self._run(self.wte(tok[:, None]), pos, mask=mask, caches=caches, last=True)[:, -1]
                else:
                    ids = torch.cat([ids, tok[:, None]], dim=1)
                    mask = padded_causal_mask(valid) if padded else None
                    logits = self._run(self._embed(ids, start), slot_positions(valid), mask=mask, last=True)[:, -1]
        finally:
            self.train(was_training)

    @torch.no_grad()
    def eval_samples(self, n: int, *, generator_seed: int, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """n sequences like the data's, (n, T) token ids, from no prompt (classes cycling)."""
        return {"": self.sample(n, generator=torch.Generator().manual_seed(generator_seed))}


def gpt_init(m: nn.Module) -> None:
    """GPT-2's initialisation (Radford et al. 2019, as nanoGPT): weights N(0, 0.02), biases 0."""
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------
# Size presets and the builder
# ---------------------------------------------------------------------------------------------

# Parameters with a 96-character vocabulary and 128 positions: ~0.21M, ~1.2M, ~9.5M.
def gpt_tiny(**kw): return GPT(dim=64, depth=4, heads=4, **kw)
def gpt_small(**kw): return GPT(dim=128, depth=6, heads=4, **kw)
def gpt_base(**kw): return GPT(dim=256, depth=12, heads=8, **kw)


SIZES = {"tiny": gpt_tiny, "small": gpt_small, "base": gpt_base}


def build_gpt(
    *,
    data: DatasetInfo,
    size: Literal["tiny", "small", "base"] = "small",
    conditioning: Literal["none", "class"] = "none",
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0,
    block_size: Annotated[int, Field(ge=1)] | None = None,
    tokenizer: ModelRef | None = None,
) -> GPT | TokenPrior:
    """A decoder-only transformer on `tokens` data: its vocabulary from the dataset, its context
    the sequence length unless block_size raises it (positions beyond the data's length are
    never trained). conditioning: class conditions every sequence on the row's label.

    With `tokenizer` (a trained VQ-VAE), the autoregressive prior of VQ-VAE: it trains on the
    tokenizer's image data, over the h*w code grid of each image flattened row-major, and samples
    images (components/models/token_prior.py)."""
    if tokenizer is not None:
        tok = tokenizer_module(tokenizer, data, "gpt")
        net = build_gpt(data=token_data(tok, data), size=size, conditioning=conditioning, dropout=dropout,
                        block_size=block_size)
        return TokenPrior(net, tok)
    check_token_data(data, "gpt", conditioning, "Images need an image family, or a trained VQ-VAE as "
                     "model.tokenizer (the autoregressive prior over its codes)")
    (seq_len,) = data.shape
    if block_size is not None and block_size < seq_len:
        raise UserError(f"gpt: block_size ({block_size}) must be at least the data's sequence length ({seq_len})")
    return SIZES[size](vocab_size=len(data.vocab), seq_len=seq_len, block_size=block_size, dropout=dropout,
                       num_classes=data.num_classes if conditioning == "class" else 0)
