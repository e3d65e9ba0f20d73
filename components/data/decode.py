"""Stored rows -> the model batch: the per-batch function Ray Data runs on workers.

What each column becomes is read from its kind (kinds.py); how a stored type becomes an array is
written once here, the same for every kind. NumPy only: workers decode without pyarrow.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .captions import encode_captions
from .images import normalize_images
from .kinds import BINARY, INT64, LIST_FLOAT32, LIST_INT32, STRING, DataFormatError, get_kind


def decode_batch(
    batch: Mapping[str, Any], modality: str, shape: Sequence[int], *, normalize: bool = True,
    text_len: int = 0,
) -> dict[str, np.ndarray]:
    """Stored rows -> the model batch. Ray Data calls this through
    `map_batches(decode_batch, batch_format="numpy", fn_kwargs={"modality": ..., "shape": ...})`.

    Ray's numpy format hands a binary column over as an object array of `bytes`, and a list column
    either as an object array of 1-D arrays or, when every row has the same length, as one 2-D
    array; both are accepted. Each column the kind gives a batch key becomes: pixels -> float32
    (B, C, H, W) in [-1, 1]; list<int32> -> int64 (B, T); list<float32> -> float32 (B, T);
    int64 -> int64 (B,) (label -> y, domain -> domain); with text_len > 0, caption -> text int64
    (B, text_len) byte tokens (`encode_captions`). Other columns (factors, pitch) are dropped.

    normalize=False keeps images as uint8 (B, C, H, W): a quarter of the bytes to hold in Ray's
    object store and to copy to a GPU; `normalize_images` finishes the job on the device.
    """
    kind = get_kind(modality)
    shape = tuple(int(s) for s in shape)
    for c in kind.main + kind.required:
        if c.key is not None and c.name not in batch:
            raise DataFormatError(
                f"batch: missing column '{c.name}' (modality {kind.name} needs: {kind.schema_text()}); got {sorted(batch)}"
            )
    out: dict[str, np.ndarray] = {}
    for c in kind.columns:
        if c.key is None or c.name not in batch:
            continue
        column = batch[c.name]
        if c.stored == BINARY:
            x = np.ascontiguousarray(_image_rows(column, shape, c.name).transpose(0, 3, 1, 2))  # (B, C, H, W) uint8
            out[c.key] = normalize_images(x) if normalize else x
        elif c.stored == LIST_INT32:
            out[c.key] = _list_rows(column, shape[0], np.int64, c.name)  # (B, T)
        elif c.stored == LIST_FLOAT32:
            out[c.key] = _list_rows(column, shape[0], np.float32, c.name)  # (B, T) or (B, D)
        elif c.stored == INT64:
            # Always a copy: Ray may hand over read-only zero-copy views, which torch warns about.
            out[c.key] = np.array(column, dtype=np.int64).reshape(-1)  # (B,)
        elif c.stored == STRING:
            if text_len > 0:
                out[c.key] = encode_captions(column, text_len)  # (B, text_len)
        else:
            raise NotImplementedError(f"decode_batch has no decoding for stored type {c.stored} ({kind.name}.{c.name})")
    return out


def _image_rows(column: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    h, w, c = shape
    per_row = h * w * c
    if isinstance(column, np.ndarray) and column.dtype == np.uint8:
        # Already pixels (e.g. a caller that decoded itself): only the shape needs fixing.
        if column.size % per_row:
            raise DataFormatError(f"batch: column '{name}' has {column.size} bytes, not a multiple of {per_row} ({h}x{w}x{c} uint8 HWC)")
        return column.reshape(-1, h, w, c)
    if isinstance(column, np.ndarray) and column.dtype.kind == "S":
        # Fixed-width bytes pad short rows with NULs, so only a width of exactly H*W*C is trustworthy.
        if len(column) and column.dtype.itemsize != per_row:
            raise DataFormatError(
                f"batch: column '{name}' has {column.dtype.itemsize}-byte rows, expected {per_row} ({h}x{w}x{c} uint8 HWC)"
            )
        return np.frombuffer(column.tobytes(), dtype=np.uint8).reshape(-1, h, w, c)
    rows = list(column)
    data = b"".join(rows)  # one copy of all pixels, instead of B small frombuffer calls
    if len(data) != per_row * len(rows):
        bad = next(i for i, r in enumerate(rows) if len(r) != per_row)
        raise DataFormatError(
            f"batch: column '{name}' has {len(rows[bad])} bytes in row {bad}, expected {per_row} ({h}x{w}x{c} uint8 HWC)"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(len(rows), h, w, c)


def _list_rows(column: Any, length: int, dtype: type, name: str) -> np.ndarray:
    if isinstance(column, np.ndarray) and column.dtype != object:
        if column.ndim == 2 and column.shape[1] == length:
            return np.array(column, dtype=dtype)  # a writable copy, as for y
        if column.size == 0:
            return np.zeros((0, length), dtype=dtype)
        raise DataFormatError(f"batch: column '{name}' has array shape {column.shape}, expected (B, {length})")
    rows = list(column)
    if not rows:
        return np.zeros((0, length), dtype=dtype)
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    if (lengths != length).any():
        bad = int(np.flatnonzero(lengths != length)[0])
        raise DataFormatError(f"batch: column '{name}' has {lengths[bad]} values in row {bad}, expected {length}")
    return np.concatenate([np.asarray(r) for r in rows]).astype(dtype, copy=False).reshape(len(rows), length)
