"""The Parquet schema: round trips for every modality, and an error that names file and column for
every way a file can be wrong."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from genray.components.data import (
    DataFormatError,
    DatasetWriter,
    check_table,
    read_table,
    decode_batch,
    image_grid,
    read_info,
    save_png,
    to_uint8_image,
    write_table,
)

VOCAB = ["a", "b", "c", "d"]


def _numpy_batch(path, list_as_2d=False):
    """Read a file the way Ray's batch_format="numpy" hands it to map_batches."""
    table = pq.read_table(path)
    batch = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_list(col.type):
            rows = [np.asarray(v, dtype=col.type.value_type.to_pandas_dtype()) for v in col.to_pylist()]
            arr = np.empty(len(rows), dtype=object)
            arr[:] = rows
            batch[name] = np.stack(rows) if list_as_2d else arr  # Ray gives either form
        else:
            batch[name] = col.to_numpy(zero_copy_only=False)
    return batch


def _example(modality, n=6, rng=None):
    """(columns, shape, vocab) of a small valid dataset of each modality."""
    rng = rng or np.random.default_rng(0)
    if modality == "image":
        cols = {
            "image": rng.integers(0, 256, size=(n, 4, 5, 3), dtype=np.uint8),
            "label": rng.integers(0, 3, size=n),
            "caption": [f"picture {i}" for i in range(n)],
            "factor_size": rng.uniform(size=n),
            "factor_kind": rng.integers(0, 2, size=n),
        }
        return cols, [4, 5, 3], None
    if modality == "tokens":
        return {"tokens": rng.integers(0, len(VOCAB), size=(n, 7)), "label": np.arange(n)}, [7], VOCAB
    if modality == "audio":
        cols = {
            "waveform": rng.normal(size=(n, 50)).astype(np.float32),
            "sample_rate": 8000,
            "pitch_hz": rng.uniform(100, 200, size=n),
            "label": rng.integers(0, 4, size=n),
        }
        return cols, [50], None
    return {"point": rng.normal(size=(n, 2)), "label": rng.integers(0, 2, size=n)}, [2], None


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("modality", ["image", "tokens", "audio", "points"])
@pytest.mark.parametrize("list_as_2d", [False, True])
def test_round_trip(tmp_path, modality, list_as_2d):
    cols, shape, vocab = _example(modality)
    path = write_table(tmp_path / "sub" / "x.parquet", modality, cols, shape, vocab)

    info = read_info(path)
    assert info.modality == modality
    assert info.shape == tuple(shape)
    assert info.num_rows == 6
    assert info.num_classes == int(cols["label"].max()) + 1
    assert info.vocab == (tuple(VOCAB) if modality == "tokens" else None)
    assert info.columns == tuple(cols)

    out = decode_batch(_numpy_batch(path, list_as_2d), modality, shape)
    assert set(out) == {"x", "y"}  # captions, factors, pitch are dropped
    np.testing.assert_array_equal(out["y"], cols["label"])
    assert out["y"].dtype == np.int64
    x = out["x"]
    if modality == "image":
        assert x.shape == (6, 3, 4, 5) and x.dtype == np.float32 and x.flags.c_contiguous
        assert x.min() >= -1 and x.max() <= 1
        np.testing.assert_array_equal(to_uint8_image(x), cols["image"])
        np.testing.assert_array_equal(to_uint8_image(torch.from_numpy(x)), cols["image"])
    elif modality == "tokens":
        assert x.dtype == np.int64
        np.testing.assert_array_equal(x, cols["tokens"])
    else:
        main = "waveform" if modality == "audio" else "point"
        assert x.dtype == np.float32
        np.testing.assert_array_equal(x, cols[main].astype(np.float32))


def test_stored_types_are_the_documented_ones(tmp_path):
    for modality in ("image", "tokens", "audio", "points"):
        cols, shape, vocab = _example(modality)
        schema = pq.read_schema(write_table(tmp_path / f"{modality}.parquet", modality, cols, shape, vocab))
        meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
        assert meta["genray.modality"] == modality
        assert json.loads(meta["genray.shape"]) == shape
        types = {f.name: f.type for f in schema}
        if modality == "image":
            assert types["image"] == pa.binary() and types["caption"] == pa.string()
            assert types["factor_size"] == pa.float64() and types["factor_kind"] == pa.int64()
        if modality == "tokens":
            assert types["tokens"] == pa.list_(pa.int32())
            assert json.loads(meta["genray.vocab"]) == VOCAB
        if modality == "audio":
            assert types["waveform"] == pa.list_(pa.float32())
            assert types["sample_rate"] == pa.int32() and types["pitch_hz"] == pa.float32()
        assert types["label"] == pa.int64()


def test_write_is_deterministic(tmp_path):
    cols, shape, _ = _example("image")
    a = write_table(tmp_path / "a.parquet", "image", cols, shape)
    b = write_table(tmp_path / "b.parquet", "image", cols, shape)
    assert a.read_bytes() == b.read_bytes()


def test_directory_of_files(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(3):
        cols, shape, vocab = _example("tokens", n=4 + i, rng=rng)
        write_table(tmp_path / "ds" / f"part-{i}.parquet", "tokens", cols, shape, vocab)
    (tmp_path / "ds" / "_SUCCESS").write_text("")  # Spark-style marker files are ignored
    info = read_info(tmp_path / "ds")
    assert info.num_rows == 4 + 5 + 6
    assert info.num_classes == 6  # labels are arange(n): the largest file decides
    table = read_table(tmp_path / "ds")
    assert table.num_rows == 15 and table.column("label").to_pylist() == [0, 1, 2, 3] + list(range(5)) + list(range(6))


def test_writer_chunks_are_row_groups_and_failed_writes_leave_no_file(tmp_path):
    path = tmp_path / "w.parquet"
    with DatasetWriter(path, "points", [2]) as w:
        for _ in range(3):
            w.write({"point": np.zeros((5, 2)), "label": np.zeros(5, dtype=np.int64)})
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    assert read_info(path).num_rows == 15

    bad = tmp_path / "bad.parquet"
    with pytest.raises(RuntimeError):
        with DatasetWriter(bad, "points", [2]) as w:
            w.write({"point": np.zeros((5, 2))})
            raise RuntimeError("generator crashed")
    assert not bad.exists()


def test_image_grid_and_png(tmp_path):
    x = np.linspace(-1, 1, 5 * 1 * 8 * 8, dtype=np.float32).reshape(5, 1, 8, 8)
    grid = image_grid(x, nrow=3)
    assert grid.shape == (2 * 9 + 1, 3 * 9 + 1, 3) and grid.dtype == np.uint8
    assert (grid[0] == 0).all() and (grid[:, 0] == 0).all()  # 1-px padding
    cell = grid[1:9, 1:9]
    np.testing.assert_array_equal(cell[..., 0], cell[..., 2])  # grey replicated to RGB
    np.testing.assert_array_equal(cell, np.repeat(to_uint8_image(x)[0], 3, axis=-1))
    path = save_png(grid, tmp_path / "png" / "grid.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), grid)


# ---------------------------------------------------------------------------------------------
# Errors: each names the file and the column
# ---------------------------------------------------------------------------------------------


def _raw(path, columns: dict, metadata: dict):
    """Write a possibly-invalid file straight through pyarrow, bypassing write_table's checks."""
    table = pa.table(columns).replace_schema_metadata({k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


IMAGE_META = {"genray.modality": "image", "genray.shape": [8, 8, 1]}
TOKEN_META = {"genray.modality": "tokens", "genray.shape": [3], "genray.vocab": VOCAB}


def _error(path):
    with pytest.raises(DataFormatError) as e:
        read_info(path)
    return str(e.value)


def test_ragged_image_bytes(tmp_path):
    rows = [bytes(64)] * 4 + [bytes(63)] + [bytes(64)]
    path = _raw(tmp_path / "x.parquet", {"image": pa.array(rows, pa.binary())}, IMAGE_META)
    msg = _error(path)
    assert msg == f"{path}: column 'image' has 63 bytes in row 4, expected 64 (8x8x1 uint8 HWC)"


def test_missing_column(tmp_path):
    path = _raw(tmp_path / "x.parquet", {"label": pa.array([1, 2], pa.int64())}, IMAGE_META)
    msg = _error(path)
    assert msg.startswith(f"{path}: missing column 'image' (modality image needs: image binary;")


def test_wrong_dtype(tmp_path):
    cols = {"image": pa.array([bytes(64)] * 2, pa.binary()), "label": pa.array(["a", "b"])}
    path = _raw(tmp_path / "x.parquet", cols, IMAGE_META)
    assert _error(path) == f"{path}: column 'label' has type string, expected int64"


def test_unexpected_column(tmp_path):
    cols = {"image": pa.array([bytes(64)], pa.binary()), "lable": pa.array([1], pa.int64())}
    msg = _error(_raw(tmp_path / "x.parquet", cols, IMAGE_META))
    assert "unexpected column 'lable'" in msg and "optional label int64" in msg


def test_ragged_token_list(tmp_path):
    tokens = pa.array([[0, 1, 2], [0, 1], [1, 1, 1]], pa.list_(pa.int32()))
    path = _raw(tmp_path / "t.parquet", {"tokens": tokens}, TOKEN_META)
    msg = _error(path)
    assert msg.startswith(f"{path}: column 'tokens' has 2 ids in row 1, expected 3")


def test_token_id_outside_vocab(tmp_path):
    tokens = pa.array([[0, 1, 2], [3, 4, 0]], pa.list_(pa.int32()))
    path = _raw(tmp_path / "t.parquet", {"tokens": tokens}, TOKEN_META)
    msg = _error(path)
    assert msg.startswith(f"{path}: column 'tokens' has id 4 in row 1")
    assert "genray.vocab" in msg and "[0, 4)" in msg


def test_missing_metadata(tmp_path):
    path = _raw(tmp_path / "x.parquet", {"image": pa.array([bytes(64)], pa.binary())}, {"genray.modality": "image"})
    assert "missing metadata key 'genray.shape'" in _error(path)
    path = _raw(tmp_path / "y.parquet", {"image": pa.array([bytes(64)], pa.binary())}, {})
    assert _error(path).startswith(f"{path}: missing metadata key 'genray.modality'")


def test_nulls_rejected(tmp_path):
    cols = {"image": pa.array([bytes(64), bytes(64)], pa.binary()), "label": pa.array([1, None], pa.int64())}
    assert "column 'label' has 1 null value(s) (first in row 1)" in _error(_raw(tmp_path / "x.parquet", cols, IMAGE_META))


def test_inconsistent_metadata_across_files(tmp_path):
    image = pa.array([bytes(64)], pa.binary())
    _raw(tmp_path / "ds" / "a.parquet", {"image": image}, IMAGE_META)
    _raw(tmp_path / "ds" / "b.parquet", {"image": pa.array([bytes(16)], pa.binary())}, {**IMAGE_META, "genray.shape": [4, 4, 1]})
    msg = _error(tmp_path / "ds")
    assert msg.startswith(f"{tmp_path / 'ds'}/b.parquet: metadata 'genray.shape' is [4, 4, 1]")
    assert "a.parquet" in msg


def test_inconsistent_vocab_across_files(tmp_path):
    tokens = pa.array([[0, 1, 2]], pa.list_(pa.int32()))
    _raw(tmp_path / "ds" / "a.parquet", {"tokens": tokens}, TOKEN_META)
    _raw(tmp_path / "ds" / "b.parquet", {"tokens": tokens}, {**TOKEN_META, "genray.vocab": VOCAB[::-1]})
    msg = _error(tmp_path / "ds")
    assert msg.startswith(f"{tmp_path / 'ds'}/b.parquet: metadata 'genray.vocab' is a vocabulary of 4 entries in a different order")


def test_bad_list_values(tmp_path):
    meta = {"genray.modality": "points", "genray.shape": [2]}
    nulls = pa.array([[0.0, 1.0], [0.5, None]], pa.list_(pa.float32()))
    assert "column 'point' has a null entry in row 1" in _error(_raw(tmp_path / "a.parquet", {"point": nulls}, meta))
    nans = pa.array([[0.0, 1.0], [0.5, 1.0], [float("nan"), 0.0]], pa.list_(pa.float32()))
    assert "column 'point' has non-finite value nan in row 2" in _error(_raw(tmp_path / "b.parquet", {"point": nans}, meta))


def test_inconsistent_columns_across_files(tmp_path):
    image = pa.array([bytes(64)], pa.binary())
    _raw(tmp_path / "ds" / "a.parquet", {"image": image, "label": pa.array([0], pa.int64())}, IMAGE_META)
    _raw(tmp_path / "ds" / "b.parquet", {"image": image}, IMAGE_META)
    msg = _error(tmp_path / "ds")
    assert "b.parquet: missing column(s) ['label']" in msg


def test_missing_path_and_empty_directory(tmp_path):
    missing = tmp_path / "nope.parquet"
    assert _error(missing).startswith(f"{missing}: no such file or directory")
    (tmp_path / "empty").mkdir()
    assert _error(tmp_path / "empty") == f"{tmp_path / 'empty'}: directory has no .parquet files"


def test_write_rejects_bad_columns(tmp_path):
    path = tmp_path / "x.parquet"
    with pytest.raises(DataFormatError, match=r"x.parquet: column 'image' has dtype float32"):
        write_table(path, "image", {"image": np.zeros((2, 8, 8, 1), np.float32)}, [8, 8, 1])
    with pytest.raises(DataFormatError, match=r"x.parquet: column 'image' has 63 bytes in row 1"):
        write_table(path, "image", {"image": [bytes(64), bytes(63)]}, [8, 8, 1])
    with pytest.raises(DataFormatError, match=r"column 'label' has 3 rows but column 'image' has 2"):
        write_table(path, "image", {"image": np.zeros((2, 8, 8, 1), np.uint8), "label": [0, 1, 2]}, [8, 8, 1])
    with pytest.raises(DataFormatError, match=r"column 'tokens' has 1 ids in row 1, expected 3"):
        write_table(path, "tokens", {"tokens": [[0, 1, 2], [1]]}, [3], VOCAB)
    assert not path.exists()


def test_decode_batch_rejects_ragged_rows():
    with pytest.raises(DataFormatError, match=r"batch: column 'image' has 3 bytes in row 1, expected 4"):
        decode_batch({"image": np.array([bytes(4), bytes(3)], dtype=object)}, "image", [2, 2, 1])
    rows = np.empty(2, dtype=object)
    rows[:] = [np.zeros(3, np.int32), np.zeros(2, np.int32)]
    with pytest.raises(DataFormatError, match=r"batch: column 'tokens' has 2 values in row 1, expected 3"):
        decode_batch({"tokens": rows}, "tokens", [3])
    with pytest.raises(DataFormatError, match=r"batch: missing column 'point'"):
        decode_batch({"x": np.zeros((2, 2))}, "points", [2])


def test_check_table_accepts_an_in_memory_table():
    table = pa.table({"point": pa.array([[0.0, 1.0]], pa.list_(pa.float32()))}).replace_schema_metadata(
        {"genray.modality": "points", "genray.shape": "[2]"}
    )
    info = check_table(table, "memory")
    assert (info.modality, info.shape, info.num_rows, info.num_classes) == ("points", (2,), 1, 0)


def test_captions_decode_to_byte_tokens():
    from genray.components.data import decode_captions, encode_captions

    images = np.zeros((2, 8 * 8 * 3), np.uint8)
    batch = {"image": images, "caption": np.array(["a red heart", "é" * 40], dtype=object)}
    out = decode_batch(batch, "image", (8, 8, 3), text_len=16)
    assert out["text"].dtype == np.int64 and out["text"].shape == (2, 16)
    # UTF-8 bytes + 1, zero-padded; cut at text_len bytes.
    assert out["text"][0, :3].tolist() == [ord("a") + 1, ord(" ") + 1, ord("r") + 1]
    assert (out["text"][0, 11:] == 0).all() and (out["text"][1] > 0).all()
    assert decode_captions(out["text"])[0] == "a red heart"
    assert decode_captions(encode_captions(["é" * 8], 16)) == ["é" * 8]
