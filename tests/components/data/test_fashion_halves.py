"""Fashion-MNIST sneakers <-> ankle boots (CycleGAN's unpaired domains): the kind and shape, the
labels that match the domains, and domains that share no image and come from disjoint halves of
fashion_mnist's seeded rows; on synthetic IDX files and on the real Debian files when installed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from genray.components.data import decode_batch, fashion_halves, fashion_mnist, read_info, read_table


@pytest.fixture
def source(tmp_path, write_idx):
    """Four IDX files of distinct random 'photos', every class in both halves of each split."""
    rng = np.random.default_rng(0)
    root = tmp_path / "fm"
    root.mkdir()
    for split, n in (("train", 200), ("test", 60)):
        images, labels = fashion_mnist.FILES[split]
        pixels = rng.integers(0, 256, (n, 28, 28))
        pixels[:, 0, 0], pixels[:, 0, 1] = np.arange(n) % 256, np.arange(n) // 256  # every image unique
        write_idx(root / images, pixels)
        write_idx(root / labels, np.arange(n) % 10)
    return root


def rows_from(table, column: str = "image") -> np.ndarray:
    return np.stack([np.frombuffer(b, np.uint8) for b in table.column(column).to_pylist()]).reshape(-1, 32, 32, 1)


def check(paths: dict[str, Path], *, seed: int, source: Path | None, rows: dict[str, int] | None = None) -> None:
    fashion = fashion_mnist.padded_splits(seed=seed, size="full", source=source)
    for split, path in paths.items():
        info = read_info(path)
        assert (info.modality, info.shape) == ("two_domain_image", (32, 32, 1))
        assert set(info.columns) == {"image", "domain", "label", "caption"}
        if rows is not None:
            assert info.num_rows == rows[split]
        table = read_table(path)
        x = rows_from(table)
        domain = np.asarray(table.column("domain").to_pylist())
        label = np.asarray(table.column("label").to_pylist())
        assert set(domain) == {0, 1}
        assert (label[domain == 0] == 7).all() and (label[domain == 1] == 9).all()  # sneakers, ankle boots
        assert table.column("caption").to_pylist() == fashion_mnist.captions(label)
        # No image in both domains.
        a, b = ({r.tobytes() for r in x[domain == d]} for d in (0, 1))
        assert not a & b
        # Each image is a row of fashion_mnist's seeded full split: A from its first half, B from its second.
        items, _ = fashion[split]
        where: dict[bytes, list[int]] = {}
        for i, r in enumerate(items):
            where.setdefault(r.tobytes(), []).append(i)
        mid = len(items) // 2
        assert all(min(where[r.tobytes()]) < mid for r in x[domain == 0])
        assert all(max(where[r.tobytes()]) >= mid for r in x[domain == 1])
        batch = decode_batch({c: table.column(c).to_numpy(zero_copy_only=False) for c in ("image", "domain", "label")},
                             "two_domain_image", info.shape)
        assert batch["x"].shape == (info.num_rows, 1, 32, 32) and batch["x"].min() >= -1 and batch["x"].max() <= 1
        assert batch["domain"].tolist() == domain.tolist()


def test_halves_pick_each_domains_class_from_its_own_half():
    labels = np.array([7, 9, 7, 1, 9, 7, 9, 7])  # first half rows 0-3, second half rows 4-7
    rows, domains = fashion_halves.halves(labels, None)
    assert rows.tolist() == [0, 2, 4, 6] and domains.tolist() == [0, 0, 1, 1]
    rows, domains = fashion_halves.halves(labels, 1)
    assert rows.tolist() == [0, 4] and domains.tolist() == [0, 1]


def test_prepare_on_synthetic_files(source, tmp_path):
    # 200 train rows: 10 sneakers and 10 boots in each half; 60 test rows: 3 of each per half.
    paths = fashion_halves.prepare(tmp_path / "halves", seed=3, source=source)
    counts = {s: np.bincount(read_table(p).column("domain").to_pylist()).tolist() for s, p in paths.items()}
    check(paths, seed=3, source=source)
    mid = {"train": 100, "test": 30}
    for split, (n_a, n_b) in counts.items():
        items, labels = fashion_mnist.padded_splits(seed=3, source=source)[split]
        assert n_a == int((labels[:mid[split]] == 7).sum()) and n_b == int((labels[mid[split]:] == 9).sum())
    again = fashion_halves.prepare(tmp_path / "again", seed=3, source=source)
    assert all(again[s].read_bytes() == paths[s].read_bytes() for s in paths)  # same input, same bytes
    other = fashion_halves.prepare(tmp_path / "other", seed=4, source=source)
    assert other["train"].read_bytes() != paths["train"].read_bytes()  # the seed draws the halves
    with pytest.raises(ValueError, match="size"):
        fashion_halves.prepare(tmp_path / "bad", size="huge", source=source)


def test_the_real_tiny_dataset(tmp_path, debian_fashion):
    paths = fashion_halves.prepare(tmp_path / "halves", size="tiny")
    check(paths, seed=0, source=None, rows={"train": 256, "test": 128})
    for path in paths.values():
        assert np.bincount(read_table(path).column("domain").to_pylist()).tolist() in ([128, 128], [64, 64])
