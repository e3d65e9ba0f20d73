"""`genray data import` on Ray Data: the same files and the same report as the in-process import,
on an image folder (with a broken file) and on Hugging Face Parquet, and the --workers switch."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from genray.components.data import importing, read_table
from genray.components.data.importing import import_images
from genray.pipelines.cli import main
from genray.pipelines.importing import import_images_ray

pytestmark = pytest.mark.integration


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(9):
            Image.fromarray(rng.integers(0, 256, (10 + i, 12, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    (root / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.fixture
def hf_parquet(tmp_path):
    def png(a):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return buf.getvalue()

    rng = np.random.default_rng(1)
    images = [{"bytes": png(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)), "path": f"img{i}.png"}
              for i in range(24)]
    images[5] = {"bytes": b"\x89PNG broken", "path": "img5.png"}
    table = pa.table({"image": pa.array(images, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                      "label": pa.array([i % 3 for i in range(24)], type=pa.int64())})
    src = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(table, src, row_group_size=10)  # row groups of 10, 10, 4
    return src


def assert_same_import(a, b):
    assert a.rows == b.rows and a.classes == b.classes and a.skipped == b.skipped
    assert a.skipped_file.read_text() == b.skipped_file.read_text()
    for split in ("train", "test"):
        ta, tb = read_table(getattr(a, split)), read_table(getattr(b, split))
        assert ta.column_names == tb.column_names and ta.schema.metadata == tb.schema.metadata
        assert all(ta.column(c).equals(tb.column(c)) for c in ta.column_names)
        groups = [pq.ParquetFile(getattr(r, split)).metadata.num_row_groups for r in (a, b)]
        assert groups[0] == groups[1]


def test_ray_data_writes_what_the_in_process_import_writes(ray_session, folder, hf_parquet, tmp_path, monkeypatch):
    monkeypatch.setattr(importing, "CHUNK", 4)  # several units (Ray tasks) and row groups, on tiny inputs
    options = dict(size=8, test_fraction=0.3, seed=3)
    here = import_images(folder, tmp_path / "here", **options)
    ray = import_images_ray(folder, tmp_path / "ray", workers=2, say=lambda _: None, **options)
    assert_same_import(here, ray)
    assert [n for n, _ in ray.skipped] == [str(folder / "cat" / "broken.jpg")]
    assert ray.rows["train"] + ray.rows["test"] == 18

    here = import_images(hf_parquet, tmp_path / "hf-here", grayscale=True, **options)
    ray = import_images_ray(hf_parquet, tmp_path / "hf-ray", grayscale=True, say=lambda _: None, **options)
    assert_same_import(here, ray)
    assert [n for n, _ in ray.skipped] == ["img5.png"] and ray.rows["train"] + ray.rows["test"] == 23


def test_the_cli_says_which_path_decodes(ray_session, folder, tmp_path, genray_home, capsys):
    assert main(["data", "import", str(folder), "--out", str(tmp_path / "ray"), "--size", "8", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "decoding 19 images on Ray Data" in out and "train  " in out
    assert main(["data", "import", str(folder), "--out", str(tmp_path / "here"), "--size", "8"]) == 0
    assert "decoding 19 images in this process" in capsys.readouterr().out
    for name in ("train.parquet", "test.parquet", "skipped.tsv"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "here" / name).read_bytes()
