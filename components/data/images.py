"""Pixels, in one place: every conversion between stored, model and viewable images.

    stored   uint8 (B, H, W, C), as Parquet holds it and a PNG shows it
    model    float (B, C, H, W) in [-1, 1], what every image family trains on and samples

`normalize_images` (uint8 -> [-1, 1]) and `to_uint8_image` ([-1, 1] -> uint8) are exact inverses
on the 256 levels; `quantize` is what a PNG would keep, the form every metric scores.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np


def normalize_images(x):
    """uint8 images (from decode_batch(..., normalize=False)) -> float in [-1, 1]; other dtypes
    pass through. Works on numpy arrays and torch tensors, on any device."""
    if x.dtype != np.uint8 and str(x.dtype) != "torch.uint8":
        return x
    if hasattr(x, "float"):
        return x.float() / 127.5 - 1.0
    y = x.astype(np.float32)  # one fresh copy, in x's memory order, then in place
    y /= np.float32(127.5)
    y -= np.float32(1.0)
    return y


def quantize(x: Any) -> np.ndarray:
    """Model images (B, C, H, W) in [-1, 1] -> uint8 (B, C, H, W), rounded as a PNG would keep
    them: the form every quality metric scores."""
    return np.ascontiguousarray(np.moveaxis(to_uint8_image(x), -1, -3))


def to_uint8_image(x: Any) -> np.ndarray:
    """Model images (B, C, H, W) in [-1, 1] (torch or numpy) -> (B, H, W, C) uint8.

    The exact inverse of normalize_images (u8 / 127.5 - 1); values outside [-1, 1], which samplers
    do produce, are clipped. A single (C, H, W) image gives (H, W, C).
    """
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch for numpy-only callers
        x = x.detach().to("cpu").float().numpy()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim not in (3, 4):
        raise ValueError(f"to_uint8_image expects (B, C, H, W) or (C, H, W), got shape {x.shape}")
    u8 = np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return np.moveaxis(u8, -3, -1)


def image_grid(x: Any, nrow: int | None = None) -> np.ndarray:
    """Tile a batch into one RGB picture with 1-px black padding, nrow images per row.

    Accepts model images (B, C, H, W) float in [-1, 1] or stored images (B, H, W, C) uint8.
    Grey images are replicated to RGB so every grid is the same kind of PNG.
    """
    if isinstance(x, np.ndarray) and x.dtype == np.uint8:
        u8 = x if x.ndim == 4 else x[None]
    else:
        u8 = to_uint8_image(x)
        u8 = u8 if u8.ndim == 4 else u8[None]
    b, h, w, c = u8.shape
    if c == 1:
        u8 = np.repeat(u8, 3, axis=-1)
    elif c != 3:
        raise ValueError(f"image_grid needs 1 or 3 channels, got {c}")
    if b == 0:
        raise ValueError("image_grid needs at least one image")
    ncol = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / ncol)
    grid = np.zeros((rows * (h + 1) + 1, ncol * (w + 1) + 1, 3), dtype=np.uint8)
    for i in range(b):
        r, col = divmod(i, ncol)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + col * (w + 1) : 1 + col * (w + 1) + w] = u8[i]
    return grid


def png_bytes(u8: np.ndarray) -> bytes:
    """(H, W, C) uint8 -> PNG bytes (grey for C = 1)."""
    import io

    from PIL import Image  # lazy: only grid-writing code pays for Pillow

    array = u8[..., 0] if u8.shape[-1] == 1 else u8
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def save_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an (H, W, 3) or (H, W) uint8 array as a PNG, creating parent directories."""
    from PIL import Image  # lazy: only grid-writing code pays for Pillow

    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"save_png needs uint8 pixels, got {array.dtype}; use to_uint8_image first")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")
    return path
