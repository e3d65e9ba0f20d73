"""Fashion-MNIST edges -> items: the edge detector on shapes whose edges are known, the paired
Parquet (kind, shapes, binary edges, the same rows as fashion_mnist), on synthetic IDX files and
on the real Debian files when installed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from genray.components.data import decode_batch, fashion_edges, fashion_mnist, read_info, read_table
from genray.components.data.fashion_edges import edges


@pytest.fixture
def source(tmp_path, write_idx):
    """Four IDX files of random 'photos' (smooth blobs, so their edges are not everywhere)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "fm"
    root.mkdir()
    rows, cols = np.indices((28, 28))
    for split, n in (("train", 40), ("test", 12)):
        centre = rng.uniform(8, 20, (n, 2))
        radius = rng.uniform(4, 9, n)
        distance2 = (rows - centre[:, 0, None, None]) ** 2 + (cols - centre[:, 1, None, None]) ** 2  # (n, 28, 28)
        inside = distance2 < radius[:, None, None] ** 2
        images, labels = fashion_mnist.FILES[split]
        write_idx(root / images, inside * rng.integers(60, 256, (n, 1, 1)))
        write_idx(root / labels, np.arange(n) % 10)
    return root


def square(value: int = 255) -> np.ndarray:
    """One 32x32 image: a 16x16 square of `value` (rows and columns 8..23) on 0."""
    img = np.zeros((1, 32, 32), np.uint8)
    img[0, 8:24, 8:24] = value
    return img


def rows_from(table, column: str) -> np.ndarray:
    return np.stack([np.frombuffer(b, np.uint8) for b in table.column(column).to_pylist()]).reshape(-1, 32, 32, 1)


# ---------------------------------------------------------------------------------------------
# The detector
# ---------------------------------------------------------------------------------------------


def test_a_square_has_edges_on_its_border_and_nowhere_else():
    e = edges(square())[0]  # (32, 32)
    assert e.dtype == np.uint8 and set(np.unique(e)) == {0, 255}
    # The border: the square's outermost pixels and the background pixels just outside them.
    for line in (e[8, 8:24], e[23, 8:24], e[8:24, 8], e[8:24, 23], e[7, 9:23], e[9:23, 24]):
        assert (line == 255).all()
    # Nothing deep inside or away from it: the 3x3 blur and 3x3 Sobel reach 2 pixels.
    assert not e[11:21, 11:21].any()
    assert not e[:5].any() and not e[27:].any() and not e[:, :5].any() and not e[:, 27:].any()
    # A square's map has the square's symmetries.
    assert np.array_equal(e, e.T) and np.array_equal(e, e[::-1]) and np.array_equal(e, e[:, ::-1])


def test_edges_are_relative_to_the_image_and_deterministic():
    bright = edges(square(255))
    assert np.array_equal(edges(square(60)), bright)  # a dark item gets the same outline
    assert np.array_equal(edges(square(255)), bright)
    assert not edges(np.zeros((1, 16, 16), np.uint8)).any()  # background only: no edges
    # Outside the image counts as background, so a flat grey image is outlined at its frame only.
    frame = edges(np.full((2, 16, 16), 128, np.uint8))
    assert frame[:, 0].all() and frame[:, :, -1].all() and not frame[:, 2:-2, 2:-2].any()
    # (N, H, W, 1), the stored layout, in and out.
    assert np.array_equal(edges(square()[..., None])[..., 0], bright)
    # Each image on its own: a batch changes nothing.
    both = edges(np.concatenate([square(255), square(90)[:, ::-1]]))
    assert np.array_equal(both[0], bright[0]) and np.array_equal(both[1], bright[0][::-1])


def test_edges_refuse_what_they_cannot_read():
    with pytest.raises(ValueError, match="uint8"):
        edges(np.zeros((1, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"\(N, H, W\) or \(N, H, W, 1\)"):
        edges(np.zeros((1, 8, 8, 3), np.uint8))


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------


def check_pairs(paths: dict[str, Path], fashion: dict[str, Path], rows: dict[str, int]) -> None:
    for split, path in paths.items():
        info = read_info(path)
        assert (info.modality, info.shape, info.num_rows) == ("paired_image", (32, 32, 1), rows[split])
        assert info.num_classes == 10 and set(info.columns) == {"image", "image_paired", "label", "caption"}
        table, items = read_table(path), read_table(fashion[split])
        x, y = rows_from(table, "image"), rows_from(table, "image_paired")
        assert set(np.unique(x)) <= {0, 255} and x.any()  # binary edge maps
        assert np.array_equal(x, edges(y))  # the stored input is the edges of the stored item
        # Row i is fashion_mnist's row i for the same seed and size: items, labels, captions.
        assert np.array_equal(y, rows_from(items, "image"))
        for column in ("label", "caption"):
            assert table.column(column).to_pylist() == items.column(column).to_pylist()
        columns = {c: table.column(c).to_numpy(zero_copy_only=False) for c in ("image", "image_paired", "label")}
        batch = decode_batch(columns, "paired_image", info.shape)
        assert batch["x"].shape == batch["x_paired"].shape == (rows[split], 1, 32, 32)
        assert batch["y"].shape == (rows[split],)


def test_prepare_pairs_edges_with_fashion_mnists_rows(source, tmp_path):
    paths = fashion_edges.prepare(tmp_path / "edges", seed=3, source=source)
    check_pairs(paths, fashion_mnist.prepare(tmp_path / "items", seed=3, source=source), {"train": 40, "test": 12})
    again = fashion_edges.prepare(tmp_path / "again", seed=3, source=source)
    assert all(again[s].read_bytes() == paths[s].read_bytes() for s in paths)  # same input, same bytes


def test_the_real_tiny_dataset(tmp_path, debian_fashion):
    paths = fashion_edges.prepare(tmp_path / "edges", size="tiny")
    check_pairs(paths, fashion_mnist.prepare(tmp_path / "items", size="tiny"), {"train": 512, "test": 128})
    x = rows_from(read_table(paths["train"]), "image")
    lit = (x > 0).mean(axis=(1, 2, 3))  # outlines, not filled shapes: a few tenths of the picture
    assert 0.05 < lit.mean() < 0.4 and lit.min() > 0
