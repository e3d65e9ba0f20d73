"""Data kinds: every kind in KINDS writes, checks and decodes through its one description; the
image-pair kinds fail with the file and column named; the description drives the old names."""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genray.components.data import (
    KINDS,
    MAIN_COLUMN,
    MODALITIES,
    DataFormatError,
    DatasetInfo,
    decode_batch,
    read_info,
    to_uint8_image,
    write_table,
)

VOCAB = ["a", "b", "c", "d"]
N = 6


def _example(kind, rng):
    """(columns, shape, vocab) of a small valid dataset of each kind. A new kind adds a line."""
    images = lambda: rng.integers(0, 256, size=(N, 4, 5, 3), dtype=np.uint8)  # noqa: E731
    labels = rng.integers(0, 3, size=N)
    return {
        "image": ({"image": images(), "label": labels, "caption": [f"p{i}" for i in range(N)],
                   "factor_size": rng.uniform(size=N)}, [4, 5, 3], None),
        "paired_image": ({"image": images(), "image_paired": images(), "label": labels}, [4, 5, 3], None),
        "two_domain_image": ({"image": images(), "domain": np.array([0, 1, 1, 0, 1, 0]), "label": labels},
                             [4, 5, 3], None),
        "tokens": ({"tokens": rng.integers(0, len(VOCAB), size=(N, 7)), "label": labels}, [7], VOCAB),
        "audio": ({"waveform": rng.normal(size=(N, 50)).astype(np.float32), "sample_rate": 8000,
                   "pitch_hz": rng.uniform(100, 200, size=N), "label": labels}, [50], None),
        "points": ({"point": rng.normal(size=(N, 2)), "label": labels}, [2], None),
    }[kind]


def _numpy_batch(path):
    """Read a file the way Ray's batch_format="numpy" hands it to map_batches (lists as objects)."""
    table = pq.read_table(path)
    batch = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_list(col.type):
            arr = np.empty(table.num_rows, dtype=object)
            arr[:] = [np.asarray(v) for v in col.to_pylist()]
            batch[name] = arr
        else:
            batch[name] = col.to_numpy(zero_copy_only=False)
    return batch


def _raw(path, columns, metadata):
    """Write a possibly-invalid file straight through pyarrow, bypassing write_table's checks."""
    table = pa.table(columns).replace_schema_metadata({k: json.dumps(v) if not isinstance(v, str) else v
                                                      for k, v in metadata.items()})
    pq.write_table(table, path)
    return path


def _error(path):
    with pytest.raises(DataFormatError) as e:
        read_info(path)
    return str(e.value)


# ---------------------------------------------------------------------------------------------
# The descriptions
# ---------------------------------------------------------------------------------------------


def test_old_names_derive_from_kinds():
    assert MODALITIES == tuple(KINDS)
    assert MAIN_COLUMN == {"image": "image", "paired_image": "image", "two_domain_image": "image",
                           "tokens": "tokens", "audio": "waveform", "points": "point"}
    for name, kind in KINDS.items():
        assert kind.name == name
        assert kind.show in ("grid", "player", "waveform", "text", "scatter", "none")
        assert kind.main and all(c.key for c in kind.main)
    # The schema lines every error message quotes, unchanged for the first four kinds.
    assert KINDS["image"].schema_text() == "image binary; optional label int64, caption string, held_out int64, factor_*"
    assert KINDS["tokens"].schema_text() == "tokens list<int32>; optional label int64; metadata genray.vocab"
    assert KINDS["audio"].schema_text() == (
        "waveform list<float32>, sample_rate int32; optional pitch_hz float32, label int64")
    assert KINDS["points"].schema_text() == "point list<float32>; optional label int64"


def test_dataset_info_names_its_kind_and_round_trips_json():
    info = DatasetInfo("paired_image", (8, 8, 3), 10, 2, None, ("image", "image_paired", "label"))
    assert info.kind is KINDS["paired_image"] and info.kind.is_image and info.image_shape == (3, 8, 8)
    assert DatasetInfo.from_json(json.loads(json.dumps(info.to_json()))) == info
    assert DatasetInfo.for_images((1, 8, 8), 10).kind is KINDS["image"]
    assert not DatasetInfo("tokens", (7,), 1, 0, tuple(VOCAB), ("tokens",)).kind.is_image
    with pytest.raises(DataFormatError, match=r"dataset: modality 'video' is not one of image, paired_image"):
        DatasetInfo("video", (8,), 0, 0, None, ()).kind


def test_read_columns_are_what_decode_reads():
    image = KINDS["image"]
    present = ("image", "label", "caption", "factor_size")
    assert image.read_columns(present) == ["image", "label"]
    assert image.read_columns(present, text=True) == ["image", "label", "caption"]
    assert KINDS["audio"].read_columns(("waveform", "sample_rate", "pitch_hz", "label")) == ["waveform", "label"]
    assert KINDS["paired_image"].read_columns(("image", "image_paired")) == ["image", "image_paired"]
    assert KINDS["two_domain_image"].read_columns(("image", "domain", "label")) == ["image", "domain", "label"]


def test_importing_the_package_loads_no_pyarrow():
    # Model files import DatasetInfo and encode_captions; they should not pull in the Parquet stack.
    code = ("import sys; from components.data import DatasetInfo, KINDS, decode_batch, encode_captions; "
            "import components.data.captions; assert 'pyarrow' not in sys.modules, 'pyarrow loaded'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------
# Every kind: write -> check -> decode
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(KINDS))
def test_every_kind_round_trips(tmp_path, name):
    kind = KINDS[name]
    cols, shape, vocab = _example(name, np.random.default_rng(0))
    path = write_table(tmp_path / f"{name}.parquet", name, cols, shape, vocab)
    meta = {k.decode(): v.decode() for k, v in pq.read_schema(path).metadata.items()}
    assert meta["genray.modality"] == name and json.loads(meta["genray.shape"]) == shape

    info = read_info(path)
    assert (info.modality, info.shape, info.num_rows, info.columns) == (name, tuple(shape), N, tuple(cols))
    assert info.kind is kind and info.num_classes == int(cols["label"].max()) + 1

    batch = _numpy_batch(path)
    out = decode_batch(batch, name, shape)
    assert set(out) == {c.key for c in kind.columns if c.key and c.key != "text" and c.name in cols}
    for c in kind.columns:
        if c.key is None or c.key not in out:
            continue
        got, stored = out[c.key], np.asarray(cols[c.name])
        assert len(got) == N and got.flags.writeable
        if kind.is_image and c in kind.main:
            assert got.shape == (N, shape[2], shape[0], shape[1]) and got.dtype == np.float32
            np.testing.assert_array_equal(to_uint8_image(got), stored)
            u8 = decode_batch(batch, name, shape, normalize=False)[c.key]
            assert u8.dtype == np.uint8 and u8.shape == got.shape
        else:
            assert got.dtype in (np.int64, np.float32)
            np.testing.assert_array_equal(got, stored.astype(got.dtype))


# ---------------------------------------------------------------------------------------------
# Image pairs: errors name the file and the column
# ---------------------------------------------------------------------------------------------


PAIRED_META = {"genray.modality": "paired_image", "genray.shape": [8, 8, 1]}
DOMAIN_META = {"genray.modality": "two_domain_image", "genray.shape": [8, 8, 1]}


def test_paired_image_with_mismatched_shapes_fails(tmp_path):
    cols = {"image": pa.array([bytes(64)] * 2, pa.binary()), "image_paired": pa.array([bytes(16)] * 2, pa.binary())}
    path = _raw(tmp_path / "pairs.parquet", cols, PAIRED_META)
    assert _error(path) == f"{path}: column 'image_paired' has 16 bytes in row 0, expected 64 (8x8x1 uint8 HWC)"

    out = tmp_path / "w.parquet"
    with pytest.raises(DataFormatError) as e:
        write_table(out, "paired_image", {"image": np.zeros((2, 8, 8, 1), np.uint8),
                                          "image_paired": np.zeros((2, 4, 4, 1), np.uint8)}, [8, 8, 1])
    assert str(e.value) == (f"{out}: column 'image_paired' holds images of shape (N, 4, 4, 1), "
                            "expected (N, 8, 8, 1) as metadata genray.shape [8, 8, 1] says")
    assert not out.exists()


def test_paired_image_without_its_pair_fails(tmp_path):
    path = _raw(tmp_path / "pairs.parquet", {"image": pa.array([bytes(64)], pa.binary())}, PAIRED_META)
    assert _error(path).startswith(
        f"{path}: missing column 'image_paired' (modality paired_image needs: image binary, image_paired binary;")
    with pytest.raises(DataFormatError, match=r"batch: missing column 'image_paired'"):
        decode_batch({"image": np.zeros((1, 64), np.uint8)}, "paired_image", [8, 8, 1])


def test_two_domain_image_rejects_a_third_domain(tmp_path):
    cols = {"image": pa.array([bytes(64)] * 4, pa.binary()), "domain": pa.array([0, 1, 1, 2], pa.int64())}
    path = _raw(tmp_path / "domains.parquet", cols, DOMAIN_META)
    assert _error(path) == f"{path}: column 'domain' has 2 in row 3; modality two_domain_image allows only 0, 1"

    out = tmp_path / "w.parquet"
    with pytest.raises(DataFormatError, match=r"w.parquet: column 'domain' has -1 in row 0; .* allows only 0, 1"):
        write_table(out, "two_domain_image", {"image": np.zeros((1, 8, 8, 1), np.uint8), "domain": [-1]}, [8, 8, 1])
    missing = _raw(tmp_path / "nodomain.parquet", {"image": pa.array([bytes(64)], pa.binary())}, DOMAIN_META)
    assert _error(missing).startswith(f"{missing}: missing column 'domain' (modality two_domain_image needs:")
    wrong_type = _raw(tmp_path / "floats.parquet", {"image": pa.array([bytes(64)], pa.binary()),
                                                    "domain": pa.array([0.0], pa.float64())}, DOMAIN_META)
    assert _error(wrong_type) == f"{wrong_type}: column 'domain' has type double, expected int64"


def test_domains_may_be_two_files_of_one_dataset(tmp_path):
    rng = np.random.default_rng(0)
    for d, n in ((0, 3), (1, 5)):  # unpaired domains need not be the same size
        write_table(tmp_path / "ds" / f"train{'AB'[d]}.parquet", "two_domain_image",
                    {"image": rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), "domain": np.full(n, d)}, [8, 8, 3])
    info = read_info(tmp_path / "ds")
    assert (info.modality, info.num_rows) == ("two_domain_image", 8)


def test_decode_gives_pairs_and_domains():
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8) for _ in range(2))
    rows = lambda u8: np.array([r.tobytes() for r in u8], dtype=object)  # noqa: E731, as Ray hands binary over

    out = decode_batch({"image": rows(a), "image_paired": rows(b)}, "paired_image", (8, 8, 3))
    assert set(out) == {"x", "x_paired"}
    assert out["x"].shape == out["x_paired"].shape == (5, 3, 8, 8) and out["x_paired"].dtype == np.float32
    np.testing.assert_array_equal(to_uint8_image(out["x_paired"]), b)

    domain = np.array([1, 0, 0, 1, 1])
    out = decode_batch({"image": rows(a), "domain": domain, "label": np.arange(5)}, "two_domain_image", (8, 8, 3),
                       normalize=False)
    assert set(out) == {"x", "domain", "y"}
    assert out["x"].shape == (5, 3, 8, 8) and out["x"].dtype == np.uint8
    assert out["domain"].dtype == np.int64 and out["domain"].tolist() == domain.tolist()
    np.testing.assert_array_equal(out["x"][out["domain"] == 1], a[domain == 1].transpose(0, 3, 1, 2))
