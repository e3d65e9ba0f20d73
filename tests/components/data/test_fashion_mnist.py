"""Fashion-MNIST from its IDX files: the reader against the format, the padded Parquet, clear
errors for a missing package or a bad file, and the real Debian files when installed."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from genray.components.data import fashion_mnist, read_info, read_table
from genray.components.errors import UserError


@pytest.fixture
def source(tmp_path, write_idx):
    rng = np.random.default_rng(0)
    root = tmp_path / "fm"
    root.mkdir()
    for split, n in (("train", 40), ("test", 12)):
        images, labels = fashion_mnist.FILES[split]
        write_idx(root / images, rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / labels, np.arange(n) % 10)
    return root


def test_idx_reader_follows_the_format(source):
    x = fashion_mnist.read_idx(source / "train-images-idx3-ubyte.gz")
    y = fashion_mnist.read_idx(source / "train-labels-idx1-ubyte.gz")
    assert x.shape == (40, 28, 28) and x.dtype == np.uint8 and y.tolist() == [i % 10 for i in range(40)]


def test_prepare_pads_to_32_and_keeps_every_pixel(source, tmp_path):
    paths = fashion_mnist.prepare(tmp_path / "out", source=source)
    info = read_info(paths["train"])
    assert (info.num_rows, info.shape, info.num_classes) == (40, (32, 32, 1), 10)
    assert read_info(paths["test"]).num_rows == 12
    table = read_table(paths["train"])
    pixels = np.stack([np.frombuffer(b, np.uint8) for b in table.column("image").to_pylist()]).reshape(-1, 32, 32)
    assert not pixels[:, :2].any() and not pixels[:, -2:].any() and not pixels[:, :, :2].any()  # the padding
    original = fashion_mnist.read_idx(source / "train-images-idx3-ubyte.gz")
    labels = np.asarray(table.column("label").to_pylist())
    # Every original image is there once, uncropped, with its label (rows are only reordered).
    inner = pixels[:, 2:-2, 2:-2]
    matches = [int(np.flatnonzero((original == img).all(axis=(1, 2)))[0]) for img in inner]
    assert sorted(matches) == list(range(40)) and all(labels[i] == m % 10 for i, m in enumerate(matches))
    # Each caption is one of the templates filled with the row's own class; the held-out
    # templates appear in no row, of either split.
    captions = table.column("caption").to_pylist() + read_table(paths["test"]).column("caption").to_pylist()
    labels = np.concatenate([labels, np.asarray(read_table(paths["test"]).column("label").to_pylist())])
    for caption, k in zip(captions, labels):
        assert caption in {fashion_mnist.phrase(t, k) for t in fashion_mnist.TEMPLATES}, (caption, k)
    held_out = {fashion_mnist.phrase(t, k) for t in fashion_mnist.HELD_OUT_TEMPLATES for k in range(10)}
    assert not held_out & set(captions)
    assert len(set(captions)) > 20  # the templates are drawn per row, not one per class


def test_captions_read_as_english():
    assert fashion_mnist.phrase(fashion_mnist.TEMPLATES[0], 9) == "a photo of an ankle boot"
    assert fashion_mnist.phrase(fashion_mnist.TEMPLATES[1], 1) == "a pair of trousers"
    assert fashion_mnist.phrase(fashion_mnist.HELD_OUT_TEMPLATES[1], 0) == "a black and white T-shirt"
    assert fashion_mnist.captions(np.array([7, 4])) == ["a photo of a sneaker", "a photo of a coat"]


def test_missing_files_name_the_package_and_the_option(tmp_path):
    with pytest.raises(UserError, match="dataset-fashion-mnist.*--from DIR"):
        fashion_mnist.prepare(tmp_path / "out", source=tmp_path / "nowhere")


def test_a_file_that_is_not_idx_is_named(source):
    (source / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"PK\x03\x04 not idx"))
    with pytest.raises(UserError, match="train-labels-idx1-ubyte.gz: not an IDX file"):
        fashion_mnist.load(source)


def test_the_real_dataset(debian_fashion):
    splits = fashion_mnist.load()
    (x, y), (xt, yt) = splits["train"], splits["test"]
    assert x.shape == (60000, 28, 28) and xt.shape == (10000, 28, 28)
    assert np.bincount(y).tolist() == [6000] * 10 and np.bincount(yt).tolist() == [1000] * 10
