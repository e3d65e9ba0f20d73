"""Python source text: the standard library's own .py files, tokenised by character.

Real text that every machine running genray already has, so language models train offline. The
corpus is whatever the running interpreter ships: files are byte-identical for one Python build,
and may differ between Python versions (prepare once, then train from the Parquet files).

Characters outside printable ASCII plus newline (tabs, non-ASCII letters in comments, form feeds)
become UNKNOWN, keeping the vocabulary at most 96 symbols and the same from one machine to the next.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from .parquet import write_table

SEQ_LEN = 128
UNKNOWN = "?"
# Every TEST_EVERY-th file (by sorted name, from TEST_OFFSET) is held out whole, so no test
# sequence shares a file, and hence a function body, with the training data.
TEST_EVERY, TEST_OFFSET = 10, 5
SIZES = {"tiny": (256, 64), "full": (None, None)}  # number of sequences; None: all of the split


def source_files() -> list[Path]:
    """The top-level standard-library modules, sorted by name (about 170 files, ~4.7 MB on 3.11)."""
    root = Path(os.__file__).parent
    return sorted((p for p in root.glob("*.py") if p.is_file()), key=lambda p: p.name)


def normalize(text: str) -> str:
    """Map every character outside printable ASCII and newline to UNKNOWN."""
    cps = _codepoints(text)
    keep = ((cps >= 32) & (cps <= 126)) | (cps == 10)
    return np.where(keep, cps, ord(UNKNOWN)).astype("<u4").tobytes().decode("utf-32-le")


def encode(text: str, vocab: Iterable[str]) -> list[int]:
    """Characters -> ids. Characters missing from vocab become UNKNOWN if the vocab has it."""
    return _encode_array(text, tuple(vocab)).tolist()


def decode(ids: Iterable[int], vocab: Iterable[str]) -> str:
    """Ids (list, numpy or torch) -> text; the inverse of encode for in-vocabulary text."""
    vocab = tuple(vocab)
    return "".join(vocab[int(i)] for i in ids)


def _codepoints(text: str) -> np.ndarray:
    # UTF-32 turns the string into one uint32 per character, so the mapping below is vectorised;
    # a per-character dict lookup over a few MB would take seconds.
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def _encode_array(text: str, vocab: tuple[str, ...]) -> np.ndarray:
    if not vocab or any(len(c) != 1 for c in vocab):
        raise ValueError("a character vocabulary needs non-empty single-character entries")
    codes = np.array([ord(c) for c in vocab])
    lut = np.full(int(codes.max()) + 1, -1, dtype=np.int64)
    lut[codes] = np.arange(len(vocab))
    cps = _codepoints(text)
    ids = np.where(cps < len(lut), lut[np.minimum(cps, len(lut) - 1)], -1)
    missing = ids < 0
    if missing.any():
        if UNKNOWN not in vocab:
            first = chr(int(cps[np.flatnonzero(missing)[0]]))
            raise ValueError(f"character {first!r} is not in the vocabulary and it has no {UNKNOWN!r} entry")
        ids[missing] = vocab.index(UNKNOWN)
    return ids


def prepare(out_dir: Path, *, seed: int = 0, size: str = "full", seq_len: int = SEQ_LEN) -> dict[str, Path]:
    """Write out_dir/train.parquet and out_dir/test.parquet of seq_len-character sequences.

    The seed only shuffles the order of training sequences; the file split is fixed.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 (a next-token target needs one), got {seq_len}")
    files = source_files()
    if len(files) < TEST_EVERY:
        raise RuntimeError(f"found only {len(files)} standard-library files next to {os.__file__}")
    texts = [normalize(p.read_text(encoding="utf-8", errors="replace")) for p in files]
    # One vocabulary for both splits (and both sizes), so test text never hits an unseen character.
    vocab = tuple(sorted(set().union(*map(set, texts)) | {UNKNOWN}))

    is_test = [i % TEST_EVERY == TEST_OFFSET for i in range(len(files))]
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    paths = {}
    for split, limit in zip(("train", "test"), SIZES[size]):
        corpus = "".join(t for t, held_out in zip(texts, is_test) if held_out == (split == "test"))
        ids = _encode_array(corpus, vocab)
        seqs = ids[: len(ids) // seq_len * seq_len].reshape(-1, seq_len)  # (N, T), non-overlapping
        if split == "train":
            seqs = seqs[rng.permutation(len(seqs))]
        seqs = seqs[:limit]
        paths[split] = write_table(out_dir / f"{split}.parquet", "tokens", {"tokens": seqs}, shape=[seq_len], vocab=vocab)
    return paths
