"""CLIP, small (Radford et al. 2021): an image tower and a text tower trained so that an image and
its own caption embed close together and apart from every other caption in the batch.

Not a generator: it embeds (capability "embed"). genray uses it to classify images zero-shot from
class-name prompts, to score how well a text-conditioned family's samples match their prompts
(the CLIP score), and as the frozen text tower and image embedding that text-to-image families
condition on.

The loss is the paper's symmetric cross-entropy over the batch's image-caption similarities,
scaled by a learned temperature (Figure 3's pseudocode). Data-parallel training gathers every
worker's embeddings, with their gradients, so each image is contrasted with the captions of the
whole global batch, not only its worker's share (the paper's batch of 32,768 was spread over many
GPUs the same way; OpenCLIP's `gather_with_grad` and `local_loss`): each worker scores its own
rows against all columns, and the gradient that reaches a worker's embeddings from the other
workers' rows comes back through the gather's backward (a reduce-scatter), so after the
data-parallel gradient average the update equals the full global batch's.
"""
import math
from typing import Annotated, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import Tensor, nn

from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.models.layers import check_image_shape, num_halvings
from genray.components.models.protocol import NoSettings
from genray.components.models.text_encoder import TextEncoder, encode_whole
from genray.components.training import Backprop

# Radford et al. 2021, §2.5: the temperature starts at 0.07 and the logit scale it gives is
# clipped at 100 to keep training stable.
INIT_TEMPERATURE = 0.07
MAX_LOGIT_SCALE = 100.0


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------


def gather_with_grad(z: Tensor) -> tuple[Tensor, int]:
    """Every worker's rows of z, concatenated in rank order, and where this worker's rows start.
    One process (or no process group): z itself, offset 0. The gather keeps the autograd graph
    (torch.distributed.nn.functional.all_gather), so the other workers' losses send gradient back
    to this worker's embeddings."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z, 0
    from torch.distributed.nn.functional import all_gather

    parts = all_gather(z.contiguous())
    return torch.cat(parts), dist.get_rank() * z.shape[0]


def contrastive_loss(image: Tensor, text: Tensor, logit_scale: Tensor) -> tuple[Tensor, Tensor]:
    """Radford et al. 2021, Figure 3: unit-norm image and text embeddings (B, D) -> the symmetric
    cross-entropy over the scaled cosine similarities (row i's positive is column i), and the
    (B, N) image-to-text logits of this worker's rows over the global batch's N captions.

    With data parallelism every worker passes its own rows; the negatives are the whole global
    batch (gather_with_grad), and the loss is the mean over this worker's rows in both
    directions, so the workers' mean loss is the global batch's loss."""
    images, start = gather_with_grad(image)  # (N, D)
    texts, _ = gather_with_grad(text)  # (N, D)
    target = torch.arange(start, start + image.shape[0], device=image.device)  # (B,)
    logits_i2t = logit_scale * image @ texts.T  # (B, N): this worker's images against every caption
    logits_t2i = logit_scale * text @ images.T  # (B, N): this worker's captions against every image
    loss = (F.cross_entropy(logits_i2t, target) + F.cross_entropy(logits_t2i, target)) / 2
    return loss, logits_i2t


# ---------------------------------------------------------------------------------------------
# The towers
# ---------------------------------------------------------------------------------------------


class ImageTower(nn.Module):
    """Images (B, C, H, W) in [-1, 1] -> (B, embed_dim): a small residual-free CNN (stride-2
    3x3 convolutions, GroupNorm, SiLU) halving the sides to 4x4, then global average pooling and
    a linear projection (the paper's ResNet towers end in attention pooling; average pooling is
    enough at this size)."""

    def __init__(self, image_shape: tuple[int, int, int], width: int, embed_dim: int):
        super().__init__()
        c, h, w = image_shape
        layers: list[nn.Module] = [nn.Conv2d(c, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU()]
        ch = width
        for i in range(num_halvings(h, w)):  # to 4x4: 32 -> 4 in three halvings, 8 -> 4 in one
            out = min(width * 2 ** (i + 1), width * 8)
            layers += [nn.Conv2d(ch, out, 3, stride=2, padding=1), nn.GroupNorm(8, out), nn.SiLU(),
                       nn.Conv2d(out, out, 3, padding=1), nn.GroupNorm(8, out), nn.SiLU()]
            ch = out
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(ch, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.body(x)  # (B, ch, H / 2^k, W / 2^k)
        return self.proj(h.mean(dim=(2, 3)))  # (B, embed_dim)


class TextTower(nn.Module):
    """Byte tokens (B, L) -> (B, embed_dim): genray's byte-level transformer (text_encoder.py),
    the mean of its real tokens' outputs, and a linear projection. The paper takes the [EOS]
    token's output of a causal transformer; a bidirectional encoder's mean serves the same end.
    `encode` gives the per-token outputs, the sequence a text-to-image model cross-attends to."""

    def __init__(self, *, dim: int, depth: int, heads: int, max_len: int, embed_dim: int):
        super().__init__()
        self.encoder = TextEncoder(dim=dim, depth=depth, heads=heads, max_len=max_len)
        self.proj = nn.Linear(dim, embed_dim)

    def encode(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        return self.encoder(tokens)  # (B, L, dim), (B, L) mask

    def forward(self, tokens: Tensor) -> Tensor:
        h, mask = self.encoder(tokens)  # (B, L, dim), padding zeroed
        pooled = h.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)  # (B, dim)
        return self.proj(pooled)  # (B, embed_dim)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class CLIP(nn.Module):
    capabilities = frozenset({"embed"})  # no "sample": it scores images against text
    conditioning, num_classes = "none", 0
    sampling_settings = NoSettings

    def __init__(self, *, image_shape: tuple[int, int, int], width: int, text_dim: int, text_depth: int,
                 text_heads: int, text_len: int, embed_dim: int, learn_temperature: bool = True):
        super().__init__()
        self.image_shape = check_image_shape(image_shape, "clip")
        if embed_dim < 1:
            raise ValueError(f"clip: embed_dim must be >= 1, got {embed_dim}")
        self.text_len, self.embed_dim = text_len, embed_dim
        self.image_tower = ImageTower(self.image_shape, width, embed_dim)
        self.text_tower = TextTower(dim=text_dim, depth=text_depth, heads=text_heads, max_len=text_len,
                                    embed_dim=embed_dim)
        # log(1 / T), so the scale exp(.) stays positive; learned unless fixed for an ablation.
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1 / INIT_TEMPERATURE)),
                                            requires_grad=learn_temperature)
        self.recipe = Backprop()

    # -- embeddings ------------------------------------------------------------------------------

    def logit_scale(self) -> Tensor:
        return self.log_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def embed_images(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) in [-1, 1] -> unit-norm embeddings (B, embed_dim), float32."""
        c, h, w = self.image_shape
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, h, w):
            raise UserError(f"clip embeds images of shape (B, {c}, {h}, {w}) in [-1, 1]; got {tuple(x.shape)}")
        return F.normalize(self.image_tower(x).float(), dim=-1)

    def embed_text(self, text: Tensor | list[str]) -> Tensor:
        """Captions (a list of strings, or byte tokens (B, L) as the data pipeline makes them) ->
        unit-norm embeddings (B, embed_dim), float32."""
        tokens = self.tokens(text) if isinstance(text, (list, tuple)) else text
        return F.normalize(self.text_tower(tokens.to(self.log_logit_scale.device)).float(), dim=-1)

    def tokens(self, texts: list[str]) -> Tensor:
        """Captions -> byte tokens (B, text_len), refusing what would not fit: a caption is cut at
        text_len bytes in training data, but a prompt cut silently would score another text."""
        return encode_whole(texts, self.text_len, field="texts", noun="caption")

    @torch.no_grad()
    def classify(self, x: Tensor, prompts: list[list[str]]) -> Tensor:
        """Zero-shot classification (Radford et al. 2021, §3.1.4): class k's embedding is the
        normalised mean of its prompts' embeddings (prompt ensembling, §3.1.4); each image goes
        to the class whose embedding is nearest. x (B, C, H, W), prompts[k] the prompts naming
        class k -> (B, K) cosine similarities."""
        if not prompts or any(not p for p in prompts):
            raise UserError("clip classify: give at least one prompt for every class")
        classes = torch.stack([F.normalize(self.embed_text(list(p)).mean(0), dim=-1) for p in prompts])  # (K, D)
        return self.embed_images(x) @ classes.T  # (B, K)

    # -- training --------------------------------------------------------------------------------

    def _pair(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        if "text" not in batch:
            raise ValueError("clip trains on images with captions: every batch needs 'text', the caption's byte "
                             "tokens (the data's caption column, decoded because the family reads captions)")
        return batch["x"], batch["text"]

    def forward(self, batch: dict[str, Tensor], phase: str) -> tuple[Tensor, dict[str, Tensor]]:
        if phase != "main":
            raise ValueError(f"clip has one phase, main; got phase={phase!r}")
        x, text = self._pair(batch)
        image = F.normalize(self.image_tower(x).float(), dim=-1)  # (B, D)
        caption = F.normalize(self.text_tower(text).float(), dim=-1)  # (B, D)
        scale = self.logit_scale()
        loss, logits = contrastive_loss(image, caption, scale)  # logits (B, N): N the global batch
        return loss, {"logit_scale": scale.detach(), "negatives": torch.tensor(float(logits.shape[1] - 1))}

    # -- the protocol's other members --------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, **kwargs) -> Tensor:
        raise UserError("clip draws no samples: it embeds images and captions (embed_images, embed_text) "
                        "and classifies images zero-shot")

    def sampling_cost(self, settings: BaseModel) -> int:
        return 1

    @torch.no_grad()
    def eval_samples(self, n: int, *, generator_seed: int, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {}  # nothing to draw; genray eval measures it zero-shot

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The contrastive loss on a held-out batch (this process's rows only), and top-1
        retrieval both ways within it: an image's nearest caption is its own, or names the same
        text (captions repeat: "a sneaker" appears many times a batch, and any copy is right)."""
        x, text = self._pair(batch)
        image, caption = self.embed_images(x), self.embed_text(text)
        scale = self.logit_scale()
        target = torch.arange(len(x), device=image.device)
        logits = scale * image @ caption.T  # (B, B)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        same = (text[:, None, :] == text[None, :, :]).all(-1)  # (B, B): caption j reads as caption i
        i2t = same[target, logits.argmax(1)].float().mean()
        t2i = same[target, logits.argmax(0)].float().mean()
        return {"loss": loss, "i2t_top1": i2t, "t2i_top1": t2i, "logit_scale": scale}


def clip_tiny(**kw): return CLIP(width=16, text_dim=64, text_depth=1, text_heads=4, embed_dim=64, **kw)
def clip_small(**kw): return CLIP(width=32, text_dim=128, text_depth=2, text_heads=4, embed_dim=128, **kw)
def clip_base(**kw): return CLIP(width=64, text_dim=256, text_depth=4, text_heads=8, embed_dim=256, **kw)


SIZES = {"tiny": clip_tiny, "small": clip_small, "base": clip_base}


def build_clip(
    *,
    data: DatasetInfo,
    size: Literal["tiny", "small", "base"] = "small",
    text_len: Annotated[int, Field(ge=1, le=1024)] = 48,
    learn_temperature: bool = True,
) -> CLIP:
    """A CLIP for the data's images and their captions (the pipeline decodes the caption column
    to text_len byte tokens; captions longer than that are cut)."""
    if not data.kind.is_image:
        raise UserError(f"clip trains on images with captions, not {data.modality} data")
    if "caption" not in data.columns:
        raise UserError(f"clip trains on images with captions; this data has no caption column "
                        f"(columns: {', '.join(data.columns)})")
    return SIZES[size](image_shape=data.image_shape, text_len=text_len, learn_temperature=learn_temperature)
