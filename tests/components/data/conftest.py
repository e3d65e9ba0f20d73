"""Shared by the dataset tests: IDX files written to the format, and the real Fashion-MNIST."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from genray.components.data import fashion_mnist


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (LeCun's format: zero bytes, type 0x08 = uint8, rank, big-endian sizes), gzipped
    as Fashion-MNIST ships it."""
    header = b"\0\0\x08" + bytes([array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def write_idx():
    return _write_idx


@pytest.fixture
def debian_fashion() -> Path:
    """The directory of Debian's dataset-fashion-mnist; the test is skipped where it is missing."""
    if not (fashion_mnist.DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (make install installs it as root)")
    return fashion_mnist.DEBIAN_DIR
