"""Retrieval for retrieval-augmented diffusion (Blattmann et al. 2022, "Semi-Parametric Neural
Image Synthesis", RDM): a nearest-neighbour index over CLIP image embeddings of a dataset, and
the condition a denoiser reads from the k neighbours it retrieves.

The index. N rows of unit-norm CLIP image embeddings (N, D), float32, with each row's label
(or -1) and what made it: the embedding model (a digest of the CLIP's weights, so an index made
by another CLIP is refused rather than silently read in the wrong space), the dataset, its split
and the classes kept. It is two files in a folder, no pickle:

    index.safetensors   embeddings (N, D) float32, labels (N,) int64
    index.json          rows, dim, encoder digest, the CLIP's reference, data, split, classes

`genray data index` builds one with Ray Data (pipelines/retrieval.py). Search is exact: cosine
similarity is a matrix product of unit vectors, and at genray's sizes (tens of thousands of rows,
embeddings of a few hundred numbers) one product per batch of queries costs less than the
denoiser's step, so no approximate index is needed; `nearest` chunks the rows to bound memory.

The model's view. A model config names the index (`model.retrieval_index: NAME or DIR`); the
pipeline resolves it like a model reference (an IndexRef that gains the rows, the dimension, the
digest and, on a fresh run, the embeddings), and the model keeps the embeddings and labels as
buffers, so a checkpoint carries its index and rebuilds without the folder. At sampling time any
other index made by the same CLIP can stand in for it (`sample(..., index=load_index(DIR))`):
the swap changes the neighbours, and so what is generated, without retraining.
"""
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from genray.components.errors import UserError
from genray.components.models.refs import reference_schema

INDEX_FILE, META_FILE = "index.safetensors", "index.json"
SELF_SIMILARITY = 1 - 1e-4  # a neighbour this close to its query is the query itself (a training image)


def encoder_digest(module: nn.Module) -> str:
    """A short sha256 of a module's state (names, shapes, dtypes and bytes, in name order): the
    identity of the embedding model an index was made with."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # 1-D: a scalar views as bytes too
    return h.hexdigest()[:16]


@dataclass
class Index:
    """Unit-norm embeddings (N, D) float32, labels (N,) int64 (-1 where unlabelled), and meta
    (encoder, clip, data, split, classes: what made it)."""

    embeddings: Tensor
    labels: Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] < 1:
            raise ValueError(f"index: embeddings must be (rows >= 1, dim), got {tuple(self.embeddings.shape)}")
        if self.labels.shape != (self.embeddings.shape[0],):
            raise ValueError(f"index: one label per row, got {tuple(self.labels.shape)} for "
                             f"{self.embeddings.shape[0]} rows")

    @property
    def rows(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def encoder(self) -> str:
        return str(self.meta.get("encoder", ""))

    def classes(self) -> list[int]:
        return sorted(int(c) for c in torch.unique(self.labels) if c >= 0)


def save_index(folder: str | Path, index: Index) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"embeddings": index.embeddings.float().contiguous(), "labels": index.labels.long().contiguous()},
              folder / INDEX_FILE)
    meta = {**index.meta, "rows": index.rows, "dim": index.dim}
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return folder


def load_index(folder: str | Path, *, field_name: str = "index") -> Index:
    """The index saved in `folder`; a folder that is not one is a UserError naming `field_name`."""
    folder = Path(folder).expanduser()
    if not (folder / INDEX_FILE).is_file() or not (folder / META_FILE).is_file():
        raise UserError(f"{field_name}: {folder} is not a retrieval index (a folder with {INDEX_FILE} and {META_FILE}, "
                        "as `genray data index` writes)")
    tensors = load_file(folder / INDEX_FILE)
    meta = json.loads((folder / META_FILE).read_text())
    if set(tensors) != {"embeddings", "labels"}:
        raise UserError(f"{field_name}: {folder / INDEX_FILE} must hold 'embeddings' and 'labels', has {sorted(tensors)}")
    return Index(tensors["embeddings"].float(), tensors["labels"].long(), meta)


def nearest(queries: Tensor, embeddings: Tensor, k: int, *, exclude_self: bool = False,
            chunk: int = 65_536) -> tuple[Tensor, Tensor]:
    """The k rows of `embeddings` (N, D) most cosine-similar to each query (B, D), both unit
    norm: (similarities (B, k), row ids (B, k)), most similar first. exclude_self drops rows at
    similarity >= SELF_SIMILARITY (the query's own row when queries come from the indexed data),
    as RDM trains: a model that saw its own image among the neighbours would learn to copy it."""
    n = embeddings.shape[0]
    extra = 1 if exclude_self else 0
    if k < 1 or k + extra > n:
        raise ValueError(f"nearest: k={k} neighbours{' besides the query' if exclude_self else ''} from {n} rows")
    q = queries.to(embeddings.dtype)
    best_s = best_i = None
    for start in range(0, n, chunk):
        sims = q @ embeddings[start : start + chunk].T  # (B, chunk)
        s, i = sims.topk(min(k + extra, sims.shape[1]), dim=1)
        i = i + start
        if best_s is not None:
            s, order = torch.cat([best_s, s], 1).topk(k + extra, dim=1)
            i = torch.cat([best_i, i], 1).gather(1, order)
        best_s, best_i = s, i
    if exclude_self:
        is_self = best_s >= SELF_SIMILARITY
        # stable: the non-self neighbours first, in similarity order; then the first k of them
        order = torch.sort(is_self.to(torch.int8), dim=1, stable=True).indices
        best_s, best_i = best_s.gather(1, order), best_i.gather(1, order)
    return best_s[:, :k], best_i[:, :k]


class RetrievalCondition(nn.Module):
    """k retrieved neighbours' CLIP embeddings (B, k, D) -> the UNet's condition: one context token
    per neighbour for its cross-attention (a shared linear map, as RDM feeds the neighbours' CLIP
    embeddings to the cross-attention), and their mean's projection added to the time embedding.
    The null condition of classifier-free guidance is an all-False context mask and a zero
    time-embedding term; keep (B,) bool drops rows to it."""

    def __init__(self, embed_dim: int, context_dim: int, emb_dim: int, k: int):
        super().__init__()
        self.embed_dim, self.context_dim, self.k = embed_dim, context_dim, k
        self.to_token = nn.Linear(embed_dim, context_dim)
        self.to_emb = nn.Linear(embed_dim, emb_dim)

    def forward(self, neighbours: Tensor | None, n: int, device, keep: Tensor | None = None) -> dict[str, Tensor]:
        if neighbours is None:
            return {"context": torch.zeros(n, self.k, self.context_dim, device=device),
                    "context_mask": torch.zeros(n, self.k, dtype=torch.bool, device=device),
                    "cond_emb": torch.zeros(n, self.to_emb.out_features, device=device)}
        e = neighbours.to(device, self.to_token.weight.dtype)  # (n, k, D)
        keep = torch.ones(n, dtype=torch.bool, device=device) if keep is None else keep.to(device)
        return {"context": self.to_token(e) * keep[:, None, None],
                "context_mask": keep[:, None].expand(n, self.k).contiguous(),
                "cond_emb": self.to_emb(e.mean(dim=1)) * keep[:, None]}


@dataclass(frozen=True)
class IndexRef:
    """A retrieval index named in a config (`model.retrieval_index`): its name or folder, and once
    the pipeline resolved it (pipelines/refs.py), its rows, dim, encoder digest and meta, and on
    a fresh run the index itself (in transit only: a checkpoint stores the reference without it,
    and the model's buffers hold the embeddings)."""

    ref: str
    rows: int | None = None
    dim: int | None = None
    encoder: str | None = None
    meta: dict[str, Any] | None = None
    index: Index | None = field(default=None, repr=False, compare=False)

    @property
    def resolved(self) -> bool:
        return self.rows is not None

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "rows": self.rows, "dim": self.dim, "encoder": self.encoder, "meta": self.meta}

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any):
        return reference_schema(cls)

    @classmethod
    def parse(cls, value: Any) -> "IndexRef":
        if isinstance(value, IndexRef):
            return value
        if isinstance(value, dict) and isinstance(value.get("ref"), str):
            return cls(value["ref"], value.get("rows"), value.get("dim"), value.get("encoder"), value.get("meta"))
        if isinstance(value, str) and value.strip():
            return cls(value.strip())
        raise ValueError("a retrieval index: its name (under <GENRAY_HOME>/indexes) or folder, as `genray data index` "
                         "writes")

    @classmethod
    def of(cls, ref: str, index: Index) -> "IndexRef":
        meta = {k: v for k, v in index.meta.items() if k not in ("rows", "dim", "encoder")}
        return cls(ref, index.rows, index.dim, index.encoder, meta, index)

    def tensors(self) -> tuple[Tensor, Tensor]:
        """The embeddings and labels: the index's on a fresh run; placeholders of the right shape
        when a checkpoint rebuilds (its weights then fill them)."""
        if self.index is not None:
            return self.index.embeddings, self.index.labels
        if not self.resolved:
            raise UserError(f"{self.ref}: this retrieval index was not resolved; genray train resolves indexes before "
                            "building")
        return torch.zeros(self.rows, self.dim), torch.full((self.rows,), -1, dtype=torch.long)


def index_arguments(builder) -> list[str]:
    """The builder arguments annotated IndexRef (or IndexRef | None)."""
    import inspect
    import typing

    hints = typing.get_type_hints(builder)
    return [name for name in inspect.signature(builder).parameters
            if hints.get(name) is IndexRef or IndexRef in typing.get_args(hints.get(name))]


def check_index_fits(rows: int, dim: int, embed_dim: int, k: int, *, field_name: str) -> None:
    """An index a model can retrieve from: embeddings of the CLIP's size, and more rows than the
    k neighbours an image's own row is excluded from. Refused otherwise, naming `field_name`."""
    if dim != embed_dim:
        raise UserError(f"{field_name}: embeddings of {dim} numbers, but this model retrieves with a CLIP of {embed_dim}")
    if rows <= k:
        raise UserError(f"{field_name}: {rows} rows; retrieving {k} neighbours besides the query needs at least {k + 1}")


def check_same_encoder(index: Index, digest: str, *, field_name: str = "index") -> None:
    """An index made by another embedding model is refused: its rows live in another space."""
    if index.encoder != digest:
        raise UserError(f"{field_name}: this index was built with another embedding model (encoder {index.encoder or '?'}, "
                        f"CLIP {index.meta.get('clip', '?')}); the model retrieves with encoder {digest}: build the "
                        "index with the model's own CLIP (`genray data index` with its image_encoder)")


def unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)

