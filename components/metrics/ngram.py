"""Unigram and bigram baselines for token sequences: what an autoregressive model's held-out
bits per token must beat, fitted on the training split and scored on the held-out one.

Both score every token of a row, the first one included, as the models do from their start slot
(components/models/gpt.py): the bigram scores a row's first token with the unigram. Counts are
smoothed by adding `alpha` to every cell (Lidstone; alpha = 1 is Laplace), so a token or pair
missing from the training split gets a finite cost:

    unigram   P(v)         = (c(v) + a) / (N + a V)
    bigram    P(v | u)     = (c(u, v) + a) / (c(u, .) + a V)

    bits per token = -(1 / #tokens) sum log2 P(token | context)

Exact arithmetic on counts (float64), no sampling: the same figures on every machine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ALPHA = 0.5  # Jeffreys-Perks: between no smoothing and Laplace's add-one


@dataclass(frozen=True)
class NGramScores:
    unigram_bits: float  # bits per token under the unigram of the training split
    bigram_bits: float  # bits per token under the bigram of the training split
    tokens: int  # tokens scored


def _rows(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"token sequences must be (N, T), got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size}), got {int(ids.min())}..{int(ids.max())}")
    return ids.astype(np.int64)


def unigram_log_probs(train: np.ndarray, vocab_size: int, alpha: float = ALPHA) -> np.ndarray:
    """log P(v), (V,), from the training rows (N, T)."""
    counts = np.bincount(_rows(train, vocab_size).reshape(-1), minlength=vocab_size).astype(np.float64)
    return np.log(counts + alpha) - math.log(counts.sum() + alpha * vocab_size)


def bigram_log_probs(train: np.ndarray, vocab_size: int, alpha: float = ALPHA) -> np.ndarray:
    """log P(v | u), (V, V) indexed [u, v], from consecutive tokens within each training row."""
    x = _rows(train, vocab_size)
    pairs = x[:, :-1].reshape(-1) * vocab_size + x[:, 1:].reshape(-1)
    counts = np.bincount(pairs, minlength=vocab_size * vocab_size).reshape(vocab_size, vocab_size).astype(np.float64)
    return np.log(counts + alpha) - np.log(counts.sum(axis=1, keepdims=True) + alpha * vocab_size)


def ngram_baselines(train: np.ndarray, test: np.ndarray, vocab_size: int, alpha: float = ALPHA, *,
                    mask: np.ndarray | None = None) -> NGramScores:
    """Held-out bits per token of the unigram and the bigram fitted on `train`, both (N, T) ids.
    `mask` (N, T) bool scores only the positions it marks (each still predicted from the token
    before it): the audio clips' active span, without the silence they are padded with."""
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0 (a zero count would cost infinite bits), got {alpha}")
    test = _rows(test, vocab_size)
    mask = np.ones(test.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != test.shape:
        raise ValueError(f"mask must match the held-out tokens' shape {test.shape}, got {mask.shape}")
    n = int(mask.sum())
    if n == 0:
        raise ValueError("no held-out tokens to score")
    uni = unigram_log_probs(train, vocab_size, alpha)
    bi = bigram_log_probs(train, vocab_size, alpha)
    uni_nats = -uni[test]  # (N, T)
    bi_nats = np.concatenate([uni_nats[:, :1], -bi[test[:, :-1], test[:, 1:]]], axis=1)  # the first by the unigram
    return NGramScores(float(uni_nats[mask].sum() / n / math.log(2)), float(bi_nats[mask].sum() / n / math.log(2)), n)
