"""A small byte-level transformer text encoder, for conditioning a generator on a caption.

Tokens are UTF-8 bytes shifted up by one (0 is padding), so there is no tokenizer to train or
ship; the encoder is a pre-LN transformer (Vaswani et al. 2017, with the LayerNorm moved before
each sub-layer as in Xiong et al. 2020) whose per-token outputs a denoiser cross-attends to
(Rombach et al. 2022, §3.3). The all-padding caption is the null text of classifier-free guidance
(Ho & Salimans 2022): it encodes to all zeros with an all-False mask.
"""
import torch
from torch import Tensor, nn

from genray.components.data import encode_captions
from genray.components.errors import UserError

PAD = 0


def encode_text(texts: list[str], max_len: int) -> Tensor:
    """UTF-8 bytes + 1 (so 0 is padding), truncated or right-padded to max_len -> int64 (B, max_len):
    the same tokens the data pipeline makes of a `caption` column (components.data.encode_captions).

    Truncation counts bytes, so it may cut a multi-byte character in half; the encoder only sees
    bytes, so nothing breaks.
    """
    if max_len < 1:
        raise ValueError(f"encode_text: max_len must be >= 1, got {max_len}")
    if isinstance(texts, str):
        raise ValueError("encode_text: texts must be a list of strings, got one string; wrap it: [text]")
    return torch.from_numpy(encode_captions(list(texts), max_len))  # (B, max_len)


def encode_whole(texts: list[str], max_len: int, *, field: str, noun: str) -> Tensor:
    """encode_text for what a user typed, refusing instead of cutting: a prompt cut at max_len bytes
    would be another text (training captions are cut; a request's are not). A UserError names
    `field[i]` for a non-string or an over-long text, the `noun` saying what it is."""
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise UserError(f"{field}[{i}]: a {noun} must be a string, got {type(t).__name__}")
        size = len(t.encode("utf-8"))
        if size > max_len:
            raise UserError(f"{field}[{i}]: {size} bytes; this model reads at most {max_len} bytes of UTF-8 per {noun}")
    return encode_text(list(texts), max_len)


class TextEncoder(nn.Module):
    """tokens (B, L) -> (embeddings (B, L, dim), mask (B, L) bool, True = real token).

    Padding positions' embeddings are zero, so a consumer that ignores the mask still sees nothing
    there; a consumer that attends must still pass the mask (zero keys are not ignored by softmax).
    """

    def __init__(self, *, dim: int, depth: int, heads: int, max_len: int, vocab_size: int = 257):
        super().__init__()
        if dim < 1 or depth < 0 or heads < 1 or max_len < 1 or vocab_size < 2:
            raise ValueError(
                "text_encoder: need dim >= 1, depth >= 0, heads >= 1, max_len >= 1, vocab_size >= 2; got "
                f"{dim=}, {depth=}, {heads=}, {max_len=}, {vocab_size=}"
            )
        if dim % heads:
            raise ValueError(
                f"text_encoder: dim must be divisible by heads (each head gets dim/heads), got {dim=}, {heads=}"
            )
        self.max_len = max_len
        self.vocab_size = vocab_size
        self.token_emb = nn.Embedding(vocab_size, dim)
        self.pos_emb = nn.Parameter(torch.zeros(1, max_len, dim))
        # GPT-2 style small init for both embeddings (nanoGPT: std 0.02).
        nn.init.normal_(self.token_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb, std=0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)  # pre-LN leaves the residual stream unnormalised; finish it here

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        if tokens.ndim != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"text_encoder: tokens must be integer (B, L), got {tokens.dtype} {tuple(tokens.shape)}")
        b, n = tokens.shape
        if n > self.max_len:
            raise ValueError(
                f"text_encoder: sequence length {n} exceeds max_len={self.max_len} (the positional "
                "embedding's size); encode with encode_text(texts, max_len) or build a longer encoder"
            )
        if n and bool(((tokens < 0) | (tokens >= self.vocab_size)).any()):
            raise ValueError(
                f"text_encoder: token ids must be in [0, {self.vocab_size}) (vocab_size={self.vocab_size}, "
                f"{PAD} = padding); got min {int(tokens.min())}, max {int(tokens.max())}"
            )
        mask = tokens != PAD  # (B, L), True = real token
        # A row with no real token would give every query a fully masked softmax (NaN in PyTorch's
        # fused paths). Let such rows attend to their first position; their outputs are zeroed below.
        attend = mask.clone()  # (B, L)
        if n:
            attend[:, 0] |= ~mask.any(dim=1)
        h = self.token_emb(tokens) + self.pos_emb[:, :n]  # (B, L, dim)
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=~attend)  # (B, L, dim); True there = ignore
        h = self.norm(h) * mask[..., None]  # (B, L, dim), zero at padding
        return h, mask
