"""Samples as a person sees them, by the data's kind (`DataKind.show`): images as a PNG grid,
token ids as text, waveforms as a WAV file. What the training loop logs to MLflow, what `genray
sample` writes and what the gallery shows all come from here, so each kind is rendered one way.

    grid     (B, C, H, W) in [-1, 1]  -> an (H', W', 3) uint8 grid          .png
    text     (B, T) token ids         -> the rows decoded, one block each    .txt
    player   (B, T) in [-1, 1]        -> the clips one after another, 16-bit PCM with 0.25 s of
                                         silence between them                 .wav
    scatter  (B, D) points            -> the first two coordinates as dots   .png

`density` shows a 2-D model's density exp(log p) over a grid as a heat map (.png): what the
training loop logs beside the samples of a points model with log_prob (a flow on the moons).
"""
from __future__ import annotations

import io
import wave
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .images import image_grid, png_bytes
from .kinds import DatasetInfo

GAP_S = 0.25  # silence between clips in one WAV
PLOT_SIZE = 256  # pixels per side of a scatter plot or density map
SEPARATOR = "\n" + "-" * 40 + "\n"  # between text samples in one .txt


@dataclass(frozen=True)
class Rendered:
    """One set of samples made viewable: `suffix` names the file type; `grid` is set for
    images (MLflow also shows it over the training steps), `data` holds the file's bytes."""

    suffix: str  # ".png" | ".txt" | ".wav"
    data: bytes
    grid: np.ndarray | None = None
    texts: tuple[str, ...] = ()


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().to("cpu").numpy()
    return np.asarray(x)


def decode_tokens(ids: Any, vocab: Sequence[str]) -> list[str]:
    """(B, T) token ids -> B strings, each id looked up in the vocabulary (index = id)."""
    ids = _numpy(ids)
    if ids.ndim == 1:
        ids = ids[None]
    table = np.asarray(list(vocab), dtype=object)
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= len(table)):
        raise ValueError(f"token ids must lie in [0, {len(table)}), got {int(ids.min())}..{int(ids.max())}")
    return ["".join(table[row]) for row in ids.astype(np.int64)]


def wav_bytes(clips: Any, sample_rate: int, gap_s: float = GAP_S) -> bytes:
    """(B, T) or (T,) waveforms in [-1, 1] -> one mono 16-bit PCM WAV file, clips separated by
    gap_s of silence (values outside [-1, 1] are clipped)."""
    x = _numpy(clips).astype(np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"wav_bytes expects (B, T) or (T,) waveforms, got shape {x.shape}")
    gap = np.zeros((x.shape[0], int(round(gap_s * sample_rate))), dtype=np.float32)
    pcm = np.concatenate([x, gap], axis=1).reshape(-1)[: -gap.shape[1] or None]
    pcm = np.rint(np.clip(pcm, -1.0, 1.0) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def plot_box(points: np.ndarray, margin: float = 0.25) -> tuple[float, float, float]:
    """A square (x centre, y centre, half side) around the points' first two coordinates, with
    a margin, so both axes share one scale and shapes are not stretched."""
    p = points[:, :2][np.isfinite(points[:, :2]).all(axis=1)]
    if not len(p):
        return 0.0, 0.0, 1.0
    low, high = p.min(axis=0), p.max(axis=0)
    centre = (low + high) / 2
    half = max(float((high - low).max()) / 2 * (1 + margin), 1e-3)
    return float(centre[0]), float(centre[1]), half


def grid_of(box: tuple[float, float, float], size: int) -> np.ndarray:
    """The size x size pixel centres of a plot box as (size * size, 2) points, row by row from the
    top (largest y) down, as an image is stored."""
    cx, cy, half = box
    u = (np.arange(size) + 0.5) / size * 2 - 1  # -1 .. 1 across
    xx, yy = np.meshgrid(cx + half * u, cy - half * u)
    return np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float32)


def scatter_png(points: Any, size: int = PLOT_SIZE) -> np.ndarray:
    """(B, D) points -> an (size, size, 3) uint8 plot of their first two coordinates: dark dots
    on white, grey axes through the origin when it is in view."""
    p = _numpy(points).astype(np.float64).reshape(len(points), -1)
    if p.shape[1] < 2:  # one number per point: plot it against 0
        p = np.concatenate([p, np.zeros_like(p)], axis=1)
    cx, cy, half = plot_box(p)
    img = np.full((size, size, 3), 255, dtype=np.uint8)
    col = lambda x: np.floor((x - cx + half) / (2 * half) * size).astype(int)  # noqa: E731
    row = lambda y: np.floor((cy + half - y) / (2 * half) * size).astype(int)  # noqa: E731
    if 0 <= col(np.array(0.0)) < size:
        img[:, col(np.array(0.0))] = 210
    if 0 <= row(np.array(0.0)) < size:
        img[row(np.array(0.0)), :] = 210
    ok = np.isfinite(p[:, :2]).all(axis=1)
    c, r = col(p[ok, 0]), row(p[ok, 1])
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            rr, cc = r + dr, c + dc
            inside = (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size)
            img[rr[inside], cc[inside]] = (20, 60, 140)
    return img


def density(log_prob: Callable[[np.ndarray], np.ndarray], around: Any, size: int = PLOT_SIZE) -> Rendered:
    """A 2-D density as a heat map: exp(log_prob) on a size x size grid over the square that
    holds the points `around` (the data) with a margin; white is 0, dark blue the grid's
    largest density. log_prob maps (N, 2) float32 points to (N,) log-densities."""
    box = plot_box(_numpy(around).astype(np.float64))
    log_p = np.asarray(log_prob(grid_of(box, size)), dtype=np.float64).reshape(size, size)
    p = np.exp(log_p - np.nanmax(log_p)) if np.isfinite(log_p).any() else np.zeros_like(log_p)
    p = np.nan_to_num(p)[..., None]  # (size, size, 1) in [0, 1]
    white, blue = np.array([255.0, 255.0, 255.0]), np.array([20.0, 40.0, 120.0])
    grid = np.rint(white + p * (blue - white)).astype(np.uint8)
    return Rendered(".png", png_bytes(grid), grid=grid)


def render(samples: Any, info: DatasetInfo) -> Rendered:
    """Samples in the data's layout (what a model's `sample` returns) -> how this kind is shown."""
    show = info.kind.show
    if show == "grid":
        grid = image_grid(samples)
        return Rendered(".png", png_bytes(grid), grid=grid)
    if show == "text":
        if not info.vocab:
            raise ValueError(f"{info.modality} data without a vocabulary cannot be shown as text")
        texts = decode_tokens(samples, info.vocab)
        return Rendered(".txt", (SEPARATOR.join(texts) + "\n").encode("utf-8"), texts=tuple(texts))
    if show == "player":
        if not info.sample_rate:
            raise ValueError(f"{info.modality} data without a sample rate cannot be played")
        return Rendered(".wav", wav_bytes(samples, info.sample_rate))
    if show == "scatter":
        grid = scatter_png(samples)
        return Rendered(".png", png_bytes(grid), grid=grid)
    raise ValueError(f"samples of {info.modality} data (shown as {show!r}) have no file form")
