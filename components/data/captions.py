"""Captions as byte tokens: the one text encoding the data pipeline and text encoders share.

Each UTF-8 byte + 1 is a token, so 0 is padding: a byte vocabulary (257 ids) needs no tokenizer
file and reads any language. NumPy only, so a model file can import it without the Parquet stack.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def encode_captions(texts: Any, max_len: int) -> np.ndarray:
    """Captions -> byte tokens int64 (B, max_len): each UTF-8 byte + 1, so 0 is padding; longer
    captions are cut at max_len bytes (shapes' captions are ~45 bytes)."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    out = np.zeros((len(texts), max_len), dtype=np.int64)
    for i, t in enumerate(texts):
        b = (t if isinstance(t, bytes) else str(t).encode("utf-8"))[:max_len]
        out[i, : len(b)] = np.frombuffer(b, dtype=np.uint8).astype(np.int64) + 1
    return out


def decode_captions(tokens: Any) -> list[str]:
    """The inverse of encode_captions (padding dropped)."""
    rows = np.asarray(tokens)
    return [bytes((r[r > 0] - 1).astype(np.uint8).tolist()).decode("utf-8", errors="replace") for r in rows]
