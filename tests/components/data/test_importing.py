"""Image folders and Hugging Face Parquet into genray's Parquet: sizes, crops, labels, and bad
images counted and named, never dropped silently."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from genray.components.data import importing, read_info, read_table
from genray.components.data.importing import decode_unit, import_images, is_test, plan, to_square
from genray.components.errors import UserError


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_to_square_resizes_the_short_side_and_crops_the_centre():
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, 20:40] = 255  # a white centre third
    out = to_square(png(wide), 8, grayscale=False)
    assert out.shape == (8, 8, 3)
    assert out[:, 2:6].min() > 200  # the centre crop is the white band (resized 20 -> 8 rows)
    grey = to_square(png(wide), 8, grayscale=True)
    assert grey.shape == (8, 8, 1)


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for k, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)).save(root / name / f"{i}.jpg")
    (root / "dog" / "broken.png").write_bytes(b"not a png at all")
    return root


def test_an_image_folder_with_a_broken_file(folder, tmp_path):
    r = import_images(folder, tmp_path / "out", size=16, test_fraction=0.25, seed=1)
    assert r.classes == ["cat", "dog"]
    assert r.rows["train"] + r.rows["test"] == 24 and r.rows["test"] > 0
    assert [n for n, _ in r.skipped] == [str(folder / "dog" / "broken.png")]  # named, with the reason
    assert "broken.png" in r.skipped_file.read_text()
    info = read_info(r.train)
    assert info.shape == (16, 16, 3) and info.num_classes == 2
    assert set(read_table(r.train).column("caption").to_pylist()) <= {"a photo of a cat", "a photo of a dog"}


def test_hugging_face_parquet(tmp_path):
    rng = np.random.default_rng(0)
    images = [{"bytes": png(rng.integers(0, 256, (28, 28), dtype=np.uint8)), "path": f"img{i}.png"} for i in range(20)]
    images[3] = {"bytes": b"\x89PNG broken", "path": "img3.png"}
    table = pa.table({"image": pa.array(images, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                      "label": pa.array([i % 4 for i in range(20)], type=pa.int64())})
    src = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(table, src)
    r = import_images(src, tmp_path / "out", size=8, grayscale=True, test_fraction=0.2)
    assert r.rows["train"] + r.rows["test"] == 19 and [n for n, _ in r.skipped] == ["img3.png"]
    assert read_info(r.train).shape == (8, 8, 1)


OPTIONS = dict(size=16, grayscale=False, test_fraction=0.25, seed=1)


def test_the_split_depends_on_the_image_not_on_the_order_or_the_units(folder, tmp_path, monkeypatch):
    _, units = plan(folder)
    forward = {n: t for u in units for n, t in zip(*_names_and_test(decode_unit(u, **OPTIONS)))}
    backward = {n: t for u in reversed(units) for n, t in zip(*_names_and_test(decode_unit(u, **OPTIONS)))}
    assert forward == backward and 0 < sum(forward.values()) < len(forward)
    # The draw is a function of (seed, name inside the folder) alone: another seed, another split.
    assert all(t == is_test(Path(n).relative_to(folder).as_posix(), 1, 0.25) for n, t in forward.items())
    assert forward != {n: is_test(Path(n).relative_to(folder).as_posix(), 2, 0.25) for n in forward}

    whole = import_images(folder, tmp_path / "whole", **OPTIONS)
    monkeypatch.setattr(importing, "CHUNK", 5)  # 24 images in 5 units, row groups of 5
    assert len(plan(folder)[1]) == 5
    cut = import_images(folder, tmp_path / "cut", **OPTIONS)
    for split in ("train", "test"):
        assert read_table(getattr(cut, split)).equals(read_table(getattr(whole, split)))
    assert cut.rows == whole.rows and cut.skipped == whole.skipped


def _names_and_test(decoded):
    return decoded["names"], decoded["test"].tolist()


def test_a_unit_with_a_broken_image_names_it(folder):
    _, units = plan(folder)
    (unit,) = [u for u in units if "dog/broken.png" in u["files"]]
    decoded = decode_unit(unit, **OPTIONS)
    broken = str(folder / "dog" / "broken.png")
    assert [n for n, _ in decoded["skipped"]] == [broken]
    assert decoded["skipped"][0][1].startswith("UnidentifiedImageError")
    k = len(unit["files"]) - 1
    assert broken not in decoded["names"] and len(decoded["names"]) == k
    assert decoded["pixels"].shape == (k, 16, 16, 3) and decoded["pixels"].dtype == np.uint8
    assert decoded["labels"].shape == decoded["test"].shape == (k,)


def test_a_large_parquet_row_group_is_cut_into_units_with_the_same_row_names(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images = [{"bytes": png(rng.integers(0, 256, (12, 12), dtype=np.uint8)), "path": None} for _ in range(10)]
    images[6] = {"bytes": b"", "path": None}
    src = tmp_path / "one-group.parquet"
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({"image": pa.array(images, type=struct)}), src)
    monkeypatch.setattr(importing, "CHUNK", 4)
    classes, units = plan(src)
    assert classes == [] and [u["rows"] for u in units] == [[0, 4], [4, 8], [8, 10]]
    decoded = [decode_unit(u, **{**OPTIONS, "size": 8}) for u in units]
    assert [n for d in decoded for n in d["names"]] == [f"one-group.parquet:group0:row{i}" for i in range(10) if i != 6]
    assert decoded[1]["skipped"] == [("one-group.parquet:group0:row6", "ValueError: no image bytes")]
    assert all((d["labels"] == -1).all() for d in decoded)


def test_mistakes_are_user_errors(tmp_path, folder):
    with pytest.raises(UserError, match="power of two"):
        import_images(folder, tmp_path / "o", size=30)
    empty = tmp_path / "flat"
    empty.mkdir()
    with pytest.raises(UserError, match="one subfolder of images per class"):
        import_images(empty, tmp_path / "o")
    pq.write_table(pa.table({"pixels": [1, 2]}), tmp_path / "x.parquet")
    with pytest.raises(UserError, match="no 'image' column"):
        import_images(tmp_path / "x.parquet", tmp_path / "o")
