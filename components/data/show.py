"""Samples as a person sees them, by the data's kind (`DataKind.show`): images as a PNG grid,
token ids as text, waveforms as a WAV file. What the training loop logs to MLflow, what `genray
sample` writes and what the gallery shows all come from here, so each kind is rendered one way.

    grid     (B, C, H, W) in [-1, 1]  -> an (H', W', 3) uint8 grid          .png
    text     (B, T) token ids         -> the rows decoded, one block each    .txt
    player   (B, T) in [-1, 1]        -> the clips one after another, 16-bit PCM with 0.25 s of
                                         silence between them                 .wav
"""
from __future__ import annotations

import io
import wave
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .images import image_grid, png_bytes
from .kinds import DatasetInfo

GAP_S = 0.25  # silence between clips in one WAV
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
    raise ValueError(f"samples of {info.modality} data (shown as {show!r}) have no file form")
