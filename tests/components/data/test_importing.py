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

from genray.components.data import read_info, read_table
from genray.components.data.importing import import_images, to_square
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
