"""The on-disk dataset format: Parquet files with a fixed schema per modality.

Every genray dataset is one Parquet file or a directory of them. Each file names what it holds in
its key-value schema metadata, so a reader never guesses:

    genray.modality   "image" | "tokens" | "audio" | "points"
    genray.shape      JSON list, the per-example shape of the main column
                      ([H, W, C] for images, [T] for tokens and audio, [D] for points)
    genray.vocab      tokens only: JSON list of strings, index = token id

Columns per modality (anything else is an error, so a typo cannot silently drop a column):

    image    image binary (raw uint8, row-major H x W x C); optional label int64,
             caption string, factor_<name> int64 | float32 | float64 (ground-truth factors)
    tokens   tokens list<int32> of length T, every id < len(vocab); optional label int64
    audio    waveform list<float32> of length T, sample_rate int32; optional pitch_hz float32,
             label int64
    points   point list<float32> of length D; optional label int64

`write_table` is the only writer the built-in datasets use, `check_table`/`read_info` are what
the pipelines call before training (a bad file fails in seconds on the driver, not an hour into a
run on a worker), and `decode_batch` is the per-batch function Ray Data runs on workers to turn
stored rows into the model batch `{"x": ..., "y": ...}` described in shared/DESIGN.md.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from components.errors import UserError

MODALITIES = ("image", "tokens", "audio", "points")

# Metadata keys, kept in one place because the README and the Ray pipeline quote them.
KEY_MODALITY = "genray.modality"
KEY_SHAPE = "genray.shape"
KEY_VOCAB = "genray.vocab"

# The main column of each modality and the rank of its per-example shape.
MAIN_COLUMN = {"image": "image", "tokens": "tokens", "audio": "waveform", "points": "point"}
_SHAPE_RANK = {"image": 3, "tokens": 1, "audio": 1, "points": 1}

# Allowed columns per modality: name -> (arrow types accepted, how we spell it in messages).
# Readers accept only the types writers produce; a file from elsewhere that uses large_binary or
# float64 waveforms should be rewritten with write_table rather than half-supported here.
_INT64 = ((pa.int64(),), "int64")
_INT32 = ((pa.int32(),), "int32")
_FLOAT32 = ((pa.float32(),), "float32")
_STRING = ((pa.string(),), "string")
_BINARY = ((pa.binary(),), "binary")
_LIST_INT32 = ((pa.list_(pa.int32()),), "list<int32>")
_LIST_FLOAT32 = ((pa.list_(pa.float32()),), "list<float32>")
_FACTOR = ((pa.int64(), pa.float32(), pa.float64()), "int64, float32 or float64")

_REQUIRED = {
    "image": {"image": _BINARY},
    "tokens": {"tokens": _LIST_INT32},
    "audio": {"waveform": _LIST_FLOAT32, "sample_rate": _INT32},
    "points": {"point": _LIST_FLOAT32},
}
_OPTIONAL = {
    "image": {"label": _INT64, "caption": _STRING},
    "tokens": {"label": _INT64},
    "audio": {"pitch_hz": _FLOAT32, "label": _INT64},
    "points": {"label": _INT64},
}
# One line per modality for error messages, so every schema error teaches the whole schema.
_SCHEMA_TEXT = {
    "image": "image binary; optional label int64, caption string, factor_*",
    "tokens": "tokens list<int32>; optional label int64; metadata genray.vocab",
    "audio": "waveform list<float32>, sample_rate int32; optional pitch_hz float32, label int64",
    "points": "point list<float32>; optional label int64",
}

# Parquet row groups are the unit Ray Data reads in parallel; ~10k rows keeps a 32x32x3 image
# row group around 30 MB uncompressed, small enough to stream and large enough to compress well.
DEFAULT_ROW_GROUP_SIZE = 10_000


class DataFormatError(UserError):
    """A dataset file (or batch) does not match the genray Parquet schema.

    The message always starts with the file (or "batch") and names the offending column or
    metadata key, plus what would have been accepted.
    """


@dataclass(frozen=True)
class DatasetInfo:
    """What a pipeline needs to know about a dataset before building a model for it."""

    modality: str
    shape: tuple[int, ...]
    num_rows: int
    num_classes: int  # max label + 1, or 0 without a label column
    vocab: tuple[str, ...] | None
    columns: tuple[str, ...]
    # Audio only: the one sample rate every row shares (models and serving need it to play
    # a waveform back). Defaulted so the fields above stay the documented constructor.
    sample_rate: int | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W), the layout image models see; stored rows are H x W x C."""
        if len(self.shape) != 3:
            raise UserError(f"a {self.modality} dataset of shape {list(self.shape)} has no image shape; "
                            "this family trains on images")
        h, w, c = self.shape
        return (c, h, w)

    def to_json(self) -> dict[str, Any]:
        """What a checkpoint stores to rebuild a model for this data (no row counts or paths)."""
        return {"modality": self.modality, "shape": list(self.shape), "num_rows": self.num_rows,
                "num_classes": self.num_classes, "vocab": None if self.vocab is None else list(self.vocab),
                "columns": list(self.columns), "sample_rate": self.sample_rate}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "DatasetInfo":
        return cls(modality=d["modality"], shape=tuple(int(s) for s in d["shape"]), num_rows=int(d.get("num_rows", 0)),
                   num_classes=int(d.get("num_classes", 0)), vocab=None if d.get("vocab") is None else tuple(d["vocab"]),
                   columns=tuple(d.get("columns", ())), sample_rate=d.get("sample_rate"))

    @classmethod
    def for_images(cls, image_shape: Sequence[int], num_classes: int = 0) -> "DatasetInfo":
        """A description of image data by (C, H, W) alone: for tests and tools that build a model
        without a dataset at hand."""
        c, h, w = (int(s) for s in image_shape)
        return cls("image", (h, w, c), 0, num_classes, None, ("image",) + (("label",) if num_classes else ()))


# ---------------------------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------------------------


def _metadata(modality: str, shape: Sequence[int], vocab: Sequence[str] | None) -> dict[str, str]:
    meta = {KEY_MODALITY: modality, KEY_SHAPE: json.dumps([int(s) for s in shape])}
    if vocab is not None:
        meta[KEY_VOCAB] = json.dumps(list(vocab))
    return meta


def _parse_metadata(
    metadata: Mapping[bytes, bytes] | None, source: str
) -> tuple[str, tuple[int, ...], tuple[str, ...] | None]:
    """Read and check the genray.* keys; returns (modality, shape, vocab)."""
    meta = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in (metadata or {}).items()}
    hint = (
        f"every genray Parquet file needs metadata {KEY_MODALITY} (one of {', '.join(MODALITIES)}) "
        f"and {KEY_SHAPE}; write files with components.data.write_table"
    )
    if KEY_MODALITY not in meta:
        raise DataFormatError(f"{source}: missing metadata key '{KEY_MODALITY}' ({hint})")
    modality = meta[KEY_MODALITY]
    if modality not in MODALITIES:
        raise DataFormatError(
            f"{source}: metadata '{KEY_MODALITY}' is {modality!r}, expected one of {', '.join(MODALITIES)}"
        )
    if KEY_SHAPE not in meta:
        raise DataFormatError(f"{source}: missing metadata key '{KEY_SHAPE}' ({hint})")
    shape = _parse_shape(meta[KEY_SHAPE], modality, source)

    vocab = None
    if modality == "tokens":
        if KEY_VOCAB not in meta:
            raise DataFormatError(
                f"{source}: missing metadata key '{KEY_VOCAB}' (modality tokens needs a JSON list "
                "of vocabulary strings, index = token id)"
            )
        try:
            raw = json.loads(meta[KEY_VOCAB])
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{source}: metadata '{KEY_VOCAB}' is not valid JSON ({e})") from None
        vocab = _check_vocab(raw, source)
    return modality, shape, vocab


def _parse_shape(text: str, modality: str, source: str) -> tuple[int, ...]:
    rank = _SHAPE_RANK[modality]
    example = {"image": "[8, 8, 1] (H, W, C)", "tokens": "[128]", "audio": "[16000]", "points": "[2]"}
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        raw = None
    ok = (
        isinstance(raw, list)
        and len(raw) == rank
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in raw)
    )
    if not ok:
        raise DataFormatError(
            f"{source}: metadata '{KEY_SHAPE}' is {text!r}, expected a JSON list of {rank} positive "
            f"int(s) for modality {modality}, e.g. {example[modality]}"
        )
    return tuple(raw)


def _check_vocab(raw: Any, source: str) -> tuple[str, ...]:
    if not (isinstance(raw, list) and raw and all(isinstance(s, str) for s in raw)):
        raise DataFormatError(f"{source}: metadata '{KEY_VOCAB}' must be a non-empty JSON list of strings")
    if len(set(raw)) != len(raw):
        # Duplicates would make decode(encode(s)) lossy without anyone noticing.
        raise DataFormatError(f"{source}: metadata '{KEY_VOCAB}' has duplicate entries")
    return tuple(raw)


def _shape_text(modality: str, shape: Sequence[int]) -> str:
    if modality == "image":
        h, w, c = shape
        return f"{h}x{w}x{c} uint8 HWC"
    return f"shape {list(shape)}"


# ---------------------------------------------------------------------------------------------
# Checking
# ---------------------------------------------------------------------------------------------


def _first_true(mask: pa.ChunkedArray | pa.Array) -> int:
    """Index of the first true entry of a boolean arrow array (caller knows there is one)."""
    return int(pc.index(mask, pa.scalar(True)).as_py())


def check_table(table: pa.Table, source: str) -> DatasetInfo:
    """Validate a table against the genray schema and describe it.

    Every row is checked, but with pyarrow.compute kernels over whole columns rather than a Python
    loop, so a 100k-row file checks in milliseconds. `source` is the file name used in messages.
    """
    modality, shape, vocab = _parse_metadata(table.schema.metadata, source)
    required, optional = _REQUIRED[modality], _OPTIONAL[modality]
    needs = f"modality {modality} needs: {_SCHEMA_TEXT[modality]}"

    # Columns and types.
    for name in required:
        if name not in table.column_names:
            raise DataFormatError(f"{source}: missing column '{name}' ({needs})")
    for field in table.schema:
        name = field.name
        if name in required:
            allowed, spelled = required[name]
        elif name in optional:
            allowed, spelled = optional[name]
        elif modality == "image" and name.startswith("factor_") and len(name) > len("factor_"):
            allowed, spelled = _FACTOR
        else:
            raise DataFormatError(f"{source}: unexpected column '{name}' ({needs})")
        if not any(field.type.equals(t) for t in allowed):
            raise DataFormatError(
                f"{source}: column '{name}' has type {_type_text(field.type)}, expected {spelled}"
            )
        column = table.column(name)
        if column.null_count:
            row = _first_true(pc.is_null(column))
            raise DataFormatError(
                f"{source}: column '{name}' has {column.null_count} null value(s) (first in row {row}); "
                "genray columns may not contain nulls"
            )

    # Per-row lengths of the main column.
    main = MAIN_COLUMN[modality]
    column = table.column(main)
    if modality == "image":
        expected = math.prod(shape)
        lengths = pc.binary_length(column)
        unit = "bytes"
    else:
        expected = shape[0]
        lengths = pc.list_value_length(column)
        unit = {"tokens": "ids", "audio": "samples", "points": "values"}[modality]
    if table.num_rows:
        bad = pc.not_equal(lengths, pa.scalar(expected, lengths.type))
        if pc.any(bad).as_py():
            row = _first_true(bad)
            got = lengths[row].as_py()
            raise DataFormatError(
                f"{source}: column '{main}' has {got} {unit} in row {row}, "
                f"expected {expected} ({_shape_text(modality, shape)})"
            )

    # Values. Every row has exactly T entries by now, so flat index i lies in row i // T.
    if table.num_rows and modality != "image":
        flat = pc.list_flatten(column)
        if flat.null_count:
            # A null inside a list is not counted by column.null_count above.
            i = _first_true(pc.is_null(flat))
            raise DataFormatError(f"{source}: column '{main}' has a null entry in row {i // expected}")
    if table.num_rows and modality == "tokens":
        bad = pc.or_(pc.less(flat, 0), pc.greater_equal(flat, len(vocab)))
        if pc.any(bad).as_py():
            i = _first_true(bad)
            raise DataFormatError(
                f"{source}: column 'tokens' has id {flat[i].as_py()} in row {i // expected}, but "
                f"metadata '{KEY_VOCAB}' has {len(vocab)} entries; ids must be in [0, {len(vocab)})"
            )
    if table.num_rows and modality in ("audio", "points"):
        bad = pc.invert(pc.is_finite(flat))
        if pc.any(bad).as_py():
            i = _first_true(bad)
            raise DataFormatError(
                f"{source}: column '{main}' has non-finite value {flat[i].as_py()} in row {i // expected}"
            )

    num_classes = 0
    if "label" in table.column_names and table.num_rows:
        lo, hi = _min_max(table.column("label"))
        if lo < 0:
            row = _first_true(pc.less(table.column("label"), 0))
            raise DataFormatError(
                f"{source}: column 'label' has {lo} in row {row}; labels must be >= 0 class indices"
            )
        num_classes = hi + 1

    sample_rate = None
    if modality == "audio" and table.num_rows:
        lo, hi = _min_max(table.column("sample_rate"))
        if lo != hi or lo <= 0:
            # One waveform shape [T] only means one duration if every row shares the rate.
            raise DataFormatError(
                f"{source}: column 'sample_rate' ranges over [{lo}, {hi}]; expected one positive rate for every row"
            )
        sample_rate = lo

    return DatasetInfo(
        modality=modality,
        shape=shape,
        num_rows=table.num_rows,
        num_classes=num_classes,
        vocab=vocab,
        columns=tuple(table.column_names),
        sample_rate=sample_rate,
    )


def _min_max(column: pa.ChunkedArray) -> tuple[Any, Any]:
    mm = pc.min_max(column)
    return mm["min"].as_py(), mm["max"].as_py()


def _type_text(t: pa.DataType) -> str:
    """Spell list types the way the schema docs do: list<int32>, not list<item: int32>."""
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return f"{'large_' if pa.types.is_large_list(t) else ''}list<{_type_text(t.value_type)}>"
    return str(t)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _list_files(path: str | os.PathLike) -> tuple[pafs.FileSystem, list[tuple[str, str]]]:
    """Resolve a file or directory (local, or any URI pyarrow understands, e.g. s3://) to
    (filesystem, [(fs path, name shown in messages)]), sorted so results never depend on
    listing order."""
    given = str(path)
    if "://" in given:
        fs, root = pafs.FileSystem.from_uri(given)
    else:
        fs, root = pafs.LocalFileSystem(), os.path.abspath(given)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise DataFormatError(f"{given}: no such file or directory (expected a .parquet file or a directory of them)")
    if info.type == pafs.FileType.File:
        return fs, [(root, given)]
    found = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    files = sorted(
        f.path
        for f in found
        if f.type == pafs.FileType.File
        and f.path.endswith(".parquet")
        # Spark/Hadoop leave _SUCCESS and .crc siblings; they are not data.
        and not any(part.startswith((".", "_")) for part in f.path[len(root):].split("/") if part)
    )
    if not files:
        raise DataFormatError(f"{given}: directory has no .parquet files")
    shown = [given.rstrip("/") + "/" + f[len(root):].lstrip("/") for f in files]
    return fs, list(zip(files, shown))


def read_info(path: str | os.PathLike) -> DatasetInfo:
    """Check a dataset file or directory and describe it.

    Every file is read in full (the built-in datasets are at most a few hundred MB) so that row
    lengths are checked everywhere, and files in a directory must agree on schema and metadata:
    Ray Data would otherwise fail, or worse silently unify, halfway through an epoch.
    """
    return _read_checked(path, keep_tables=False)[0]


def read_table(path: str | os.PathLike) -> pa.Table:
    """Check a dataset file or directory and return all its rows as one table, metadata included.

    For small datasets used outside Ray (evaluation references, tests); training streams with
    Ray Data instead.
    """
    return pa.concat_tables(_read_checked(path, keep_tables=True)[1])


def _read_checked(path: str | os.PathLike, keep_tables: bool) -> tuple[DatasetInfo, list[pa.Table]]:
    fs, files = _list_files(path)
    first: tuple[str, pa.Schema, DatasetInfo] | None = None
    tables, num_rows, num_classes = [], 0, 0
    for fs_path, shown in files:
        try:
            with fs.open_input_file(fs_path) as f:
                table = pq.ParquetFile(f).read()
        except (pa.ArrowInvalid, OSError) as e:
            raise DataFormatError(f"{shown}: not a readable Parquet file ({e})") from None
        info = check_table(table, shown)
        if first is None:
            first = (shown, table.schema, info)
        else:
            _check_consistent(first, (shown, table.schema, info))
        num_rows += info.num_rows
        num_classes = max(num_classes, info.num_classes)
        if keep_tables:
            tables.append(table)
    _, _, info = first  # _list_files never returns an empty list
    return replace(info, num_rows=num_rows, num_classes=num_classes), tables


def _check_consistent(a: tuple[str, pa.Schema, DatasetInfo], b: tuple[str, pa.Schema, DatasetInfo]) -> None:
    (name_a, schema_a, info_a), (name_b, schema_b, info_b) = a, b
    for key, va, vb in (
        (KEY_MODALITY, info_a.modality, info_b.modality),
        (KEY_SHAPE, list(info_a.shape), list(info_b.shape)),
        (KEY_VOCAB, info_a.vocab, info_b.vocab),
    ):
        if va != vb:
            # A vocabulary is too long to print; say how it differs instead.
            shown_a = va if key != KEY_VOCAB else f"a vocabulary of {len(va or ())} entries"
            shown_b = vb if key != KEY_VOCAB else f"a vocabulary of {len(vb or ())} entries"
            if key == KEY_VOCAB and shown_a == shown_b:
                shown_b += " in a different order or with different entries"
            raise DataFormatError(
                f"{name_b}: metadata '{key}' is {shown_b}, but {name_a} in the same dataset has {shown_a}; "
                "every file of a dataset must share modality, shape and vocab"
            )
    if schema_a.names != schema_b.names:
        only_a = sorted(set(schema_a.names) - set(schema_b.names))
        only_b = sorted(set(schema_b.names) - set(schema_a.names))
        detail = f"missing column(s) {only_a}" if only_a else f"extra column(s) {only_b}"
        if not only_a and not only_b:
            detail = f"columns in order {schema_b.names}, not {schema_a.names}"
        raise DataFormatError(f"{name_b}: {detail} compared with {name_a}; every file of a dataset needs the same columns")
    for fa, fb in zip(schema_a, schema_b):
        if not fa.type.equals(fb.type):
            raise DataFormatError(
                f"{name_b}: column '{fb.name}' has type {_type_text(fb.type)}, but {name_a} has "
                f"{_type_text(fa.type)}; every file of a dataset needs the same column types"
            )
    if info_a.sample_rate != info_b.sample_rate:
        raise DataFormatError(
            f"{name_b}: column 'sample_rate' is {info_b.sample_rate}, but {name_a} has {info_a.sample_rate}"
        )


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _column_kind(modality: str, name: str) -> str:
    """How to convert a user column: a kind name, or raise for a column the schema lacks."""
    if name == MAIN_COLUMN[modality]:
        return {"image": "image", "tokens": "list_int", "audio": "list_float", "points": "list_float"}[modality]
    kinds = {"label": "int64", "caption": "string", "sample_rate": "int32", "pitch_hz": "float32"}
    if name in _REQUIRED[modality] or name in _OPTIONAL[modality]:
        return kinds[name]
    if modality == "image" and name.startswith("factor_") and len(name) > len("factor_"):
        return "factor"
    raise DataFormatError(f"column '{name}' is not part of modality {modality} ({_SCHEMA_TEXT[modality]})")


def _to_arrow(values: Any, kind: str, name: str, n: int) -> pa.Array:
    """Convert one user column (numpy array or list) to the arrow type the schema prescribes."""
    if _is_scalar(values) and kind in ("image", "list_int", "list_float", "string"):
        raise DataFormatError(f"column '{name}' needs one value per row, got the scalar {values!r}")
    if kind == "image":
        if isinstance(values, np.ndarray) and values.dtype != object:
            if values.dtype != np.uint8:
                raise DataFormatError(
                    f"column 'image' has dtype {values.dtype}, expected uint8 arrays (N, H, W, C) or a list of bytes"
                )
            row_bytes = math.prod(values.shape[1:])
            flat = np.ascontiguousarray(values).reshape(len(values), row_bytes)
            if len(flat) * row_bytes >= 2**31:
                raise DataFormatError("column 'image' holds over 2 GiB in one table; write it in chunks with DatasetWriter")
            # Wrap the pixel buffer as the binary column without copying or making per-row bytes
            # objects; every row has the same length, so the offsets are just multiples of it.
            offsets = (np.arange(len(flat) + 1, dtype=np.int32) * row_bytes).astype(np.int32)
            return pa.Array.from_buffers(pa.binary(), len(flat), [None, pa.py_buffer(offsets), pa.py_buffer(flat)])
        rows = list(values)
        if not all(isinstance(r, (bytes, bytearray, memoryview)) for r in rows):
            raise DataFormatError("column 'image' must be a uint8 array (N, H, W, C) or a list of bytes")
        return pa.array([bytes(r) for r in rows], type=pa.binary())

    if kind in ("list_int", "list_float"):
        dtype, value_type = (np.int32, pa.int32()) if kind == "list_int" else (np.float32, pa.float32())
        allowed_kinds = "iu" if kind == "list_int" else "iuf"
        if isinstance(values, np.ndarray) and values.dtype != object and values.ndim == 2:
            if values.dtype.kind not in allowed_kinds:
                raise DataFormatError(f"column '{name}' has dtype {values.dtype}, expected {'integer' if kind == 'list_int' else 'float'} values")
            if kind == "list_int" and values.size and (values.min() < np.iinfo(np.int32).min or values.max() > np.iinfo(np.int32).max):
                raise DataFormatError(f"column '{name}' has ids outside the int32 range")
            flat = pa.array(np.ascontiguousarray(values, dtype=dtype).reshape(-1), type=value_type)
            offsets = pa.array(np.arange(len(values) + 1, dtype=np.int32) * values.shape[1], type=pa.int32())
            return pa.ListArray.from_arrays(offsets, flat)
        # Ragged or per-row input: let check_table report the row whose length is wrong.
        rows = []
        for i, r in enumerate(values):
            arr = np.asarray(r)
            if arr.ndim != 1 or (arr.size and arr.dtype.kind not in allowed_kinds):
                raise DataFormatError(f"column '{name}' row {i} is not a 1-D {'integer' if kind == 'list_int' else 'numeric'} sequence")
            rows.append(arr.astype(dtype))
        return pa.array(rows, type=pa.list_(value_type))

    if kind == "string":
        rows = list(values)
        if not all(isinstance(r, str) for r in rows):
            raise DataFormatError(f"column '{name}' must hold str values")
        return pa.array(rows, type=pa.string())

    arr = np.asarray(values)
    if arr.ndim == 0:  # a scalar such as sample_rate=8000 applies to every row
        arr = np.full(n, arr.item())
    if arr.ndim != 1:
        raise DataFormatError(f"column '{name}' must be one value per row, got an array of shape {arr.shape}")
    if kind in ("int64", "int32"):
        if arr.size and arr.dtype.kind not in "iub":
            raise DataFormatError(f"column '{name}' has dtype {arr.dtype}, expected {kind}")
        return pa.array(arr.astype(np.int64 if kind == "int64" else np.int32))
    if kind == "float32":
        if arr.size and arr.dtype.kind not in "iuf":
            raise DataFormatError(f"column '{name}' has dtype {arr.dtype}, expected float32")
        return pa.array(arr.astype(np.float32))
    # factor_*: integers stay exact, float64 stays float64, other floats become float32.
    if arr.dtype.kind in "iub":
        return pa.array(arr.astype(np.int64))
    if arr.dtype.kind == "f":
        return pa.array(arr if arr.dtype == np.float64 else arr.astype(np.float32))
    raise DataFormatError(f"column '{name}' has dtype {arr.dtype}, expected int64, float32 or float64")


def _is_scalar(v: Any) -> bool:
    # Not np.ndim: it would try to build an array from ragged lists, which numpy now rejects.
    return isinstance(v, (int, float, str, np.generic)) or (isinstance(v, np.ndarray) and v.ndim == 0)


def build_table(
    modality: str,
    columns: Mapping[str, Any],
    shape: Sequence[int],
    vocab: Sequence[str] | None = None,
    *,
    source: str = "table",
) -> pa.Table:
    """Columns (numpy arrays or lists) -> a checked arrow table with genray metadata.

    A contiguous uint8 image array is wrapped, not copied: do not modify it while the table lives.
    """
    if modality not in MODALITIES:
        raise DataFormatError(f"{source}: modality {modality!r} is not one of {', '.join(MODALITIES)}")
    if (modality == "tokens") != (vocab is not None):
        raise DataFormatError(f"{source}: pass vocab for modality tokens, and only for tokens")
    if not columns:
        raise DataFormatError(f"{source}: no columns given ({_SCHEMA_TEXT[modality]})")
    meta = _metadata(modality, shape, vocab)
    lengths = {name: len(v) for name, v in columns.items() if not _is_scalar(v)}
    if not lengths:
        raise DataFormatError(f"{source}: every column is a scalar; cannot tell the number of rows")
    n = next(iter(lengths.values()))
    for name, length in lengths.items():
        if length != n:
            first = next(iter(lengths))
            raise DataFormatError(f"{source}: column '{name}' has {length} rows but column '{first}' has {n}")
    arrays, names = [], []
    for name, values in columns.items():
        try:
            arrays.append(_to_arrow(values, _column_kind(modality, name), name, n))
        except DataFormatError as e:
            raise DataFormatError(f"{source}: {e}") from None
        names.append(name)
    table = pa.table(arrays, names=names).replace_schema_metadata(meta)
    check_table(table, source)
    return table


def write_table(
    path: str | os.PathLike,
    modality: str,
    columns: Mapping[str, Any],
    shape: Sequence[int],
    vocab: Sequence[str] | None = None,
    *,
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
) -> Path:
    """Build, check and write one dataset file. Same input -> same bytes (no timestamps)."""
    path = Path(path)
    table = build_table(modality, columns, shape, vocab, source=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size, compression="zstd")
    return path


class DatasetWriter:
    """Write a dataset file one chunk at a time, each `write` a checked row group.

    For generators that should never hold the whole dataset in memory (120k rendered images):

        with DatasetWriter(path, "image", [32, 32, 3]) as w:
            for chunk in chunks:
                w.write({"image": chunk_u8, "label": chunk_labels})

    If the body raises, the half-written file is removed rather than left looking valid.
    """

    def __init__(self, path: str | os.PathLike, modality: str, shape: Sequence[int], vocab: Sequence[str] | None = None):
        self.path = Path(path)
        self.modality, self.shape, self.vocab = modality, list(shape), vocab
        self._writer: pq.ParquetWriter | None = None

    def write(self, columns: Mapping[str, Any]) -> None:
        table = build_table(self.modality, columns, self.shape, self.vocab, source=str(self.path))
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
        elif not table.schema.equals(self._writer.schema, check_metadata=True):
            raise DataFormatError(
                f"{self.path}: chunk columns {table.column_names} / types differ from the first chunk's "
                f"{self._writer.schema.names}; every chunk must have the same columns and dtypes"
            )
        self._writer.write_table(table, row_group_size=max(table.num_rows, 1))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
        if exc_type is not None and self.path.exists():
            self.path.unlink()


# ---------------------------------------------------------------------------------------------
# Decoding batches (runs on Ray Data workers)
# ---------------------------------------------------------------------------------------------


def decode_batch(
    batch: Mapping[str, Any], modality: str, shape: Sequence[int], *, normalize: bool = True,
    text_len: int = 0,
) -> dict[str, np.ndarray]:
    """Stored rows -> the model batch. Ray Data calls this through
    `map_batches(decode_batch, batch_format="numpy", fn_kwargs={"modality": ..., "shape": ...})`.

    Ray's numpy format hands a binary column over as an object array of `bytes`, and a list column
    either as an object array of 1-D arrays or, when every row has the same length, as one 2-D
    array; both are accepted. Output: image -> x float32 (B, C, H, W) in [-1, 1]; tokens -> x
    int64 (B, T); audio -> x float32 (B, T); points -> x float32 (B, D); label -> y int64;
    with text_len > 0, caption -> text int64 (B, text_len), UTF-8 bytes + 1 with 0 as padding
    (`encode_captions`). Other columns (captions by default, factors, pitch) are dropped.

    normalize=False keeps images as uint8 (B, C, H, W): a quarter of the bytes to hold in Ray's
    object store and to copy to a GPU; `normalize_images` finishes the job on the device.
    """
    if modality not in MODALITIES:
        raise DataFormatError(f"batch: modality {modality!r} is not one of {', '.join(MODALITIES)}")
    shape = tuple(int(s) for s in shape)
    main = MAIN_COLUMN[modality]
    if main not in batch:
        raise DataFormatError(
            f"batch: missing column '{main}' (modality {modality} needs: {_SCHEMA_TEXT[modality]}); got {sorted(batch)}"
        )
    if modality == "image":
        u8 = _image_rows(batch["image"], shape)  # (B, H, W, C)
        if not normalize:
            return _with_label({"x": np.ascontiguousarray(u8.transpose(0, 3, 1, 2))}, batch)
        x = u8.transpose(0, 3, 1, 2).astype(np.float32, order="C")  # (B, C, H, W), a fresh copy
        x /= np.float32(127.5)
        x -= np.float32(1.0)
    elif modality == "tokens":
        x = _list_rows(batch["tokens"], shape[0], np.int64, "tokens")  # (B, T)
    else:
        x = _list_rows(batch[main], shape[0], np.float32, main)  # (B, T) or (B, D)
    out = _with_label({"x": x}, batch)
    if text_len > 0 and "caption" in batch:
        out["text"] = encode_captions(batch["caption"], text_len)
    return out


def encode_captions(texts: Any, max_len: int) -> np.ndarray:
    """Captions -> byte tokens int64 (B, max_len): each UTF-8 byte + 1, so 0 is padding; longer
    captions are cut at max_len bytes. A byte vocabulary (257 ids) needs no tokenizer file and
    reads any language; shapes' captions are ~45 bytes."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    out = np.zeros((len(texts), max_len), dtype=np.int64)
    for i, t in enumerate(texts):
        b = (t if isinstance(t, bytes) else str(t).encode("utf-8"))[:max_len]
        out[i, : len(b)] = np.frombuffer(b, dtype=np.uint8).astype(np.int64) + 1
    return out


def decode_captions(tokens: Any) -> list[str]:
    """The inverse of encode_captions (padding dropped)."""
    rows = np.asarray(tokens)
    return [bytes((r[r > 0] - 1).astype(np.uint8).tolist()).decode("utf-8", errors="replace") for r in rows]


def _with_label(out: dict[str, np.ndarray], batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if "label" in batch:
        # Always a copy: Ray may hand over read-only zero-copy views, which torch warns about.
        out["y"] = np.array(batch["label"], dtype=np.int64).reshape(-1)
    return out


def _image_rows(column: Any, shape: tuple[int, ...]) -> np.ndarray:
    h, w, c = shape
    per_row = h * w * c
    if isinstance(column, np.ndarray) and column.dtype == np.uint8:
        # Already pixels (e.g. a caller that decoded itself): only the shape needs fixing.
        if column.size % per_row:
            raise DataFormatError(f"batch: column 'image' has {column.size} bytes, not a multiple of {per_row} ({h}x{w}x{c} uint8 HWC)")
        return column.reshape(-1, h, w, c)
    if isinstance(column, np.ndarray) and column.dtype.kind == "S":
        # Fixed-width bytes pad short rows with NULs, so only a width of exactly H*W*C is trustworthy.
        if len(column) and column.dtype.itemsize != per_row:
            raise DataFormatError(
                f"batch: column 'image' has {column.dtype.itemsize}-byte rows, expected {per_row} ({h}x{w}x{c} uint8 HWC)"
            )
        return np.frombuffer(column.tobytes(), dtype=np.uint8).reshape(-1, h, w, c)
    rows = list(column)
    data = b"".join(rows)  # one copy of all pixels, instead of B small frombuffer calls
    if len(data) != per_row * len(rows):
        bad = next(i for i, r in enumerate(rows) if len(r) != per_row)
        raise DataFormatError(
            f"batch: column 'image' has {len(rows[bad])} bytes in row {bad}, expected {per_row} ({h}x{w}x{c} uint8 HWC)"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(len(rows), h, w, c)


def _list_rows(column: Any, length: int, dtype: type, name: str) -> np.ndarray:
    if isinstance(column, np.ndarray) and column.dtype != object:
        if column.ndim == 2 and column.shape[1] == length:
            return np.array(column, dtype=dtype)  # a writable copy, as for y
        if column.size == 0:
            return np.zeros((0, length), dtype=dtype)
        raise DataFormatError(f"batch: column '{name}' has array shape {column.shape}, expected (B, {length})")
    rows = list(column)
    if not rows:
        return np.zeros((0, length), dtype=dtype)
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    if (lengths != length).any():
        bad = int(np.flatnonzero(lengths != length)[0])
        raise DataFormatError(f"batch: column '{name}' has {lengths[bad]} values in row {bad}, expected {length}")
    return np.concatenate([np.asarray(r) for r in rows]).astype(dtype, copy=False).reshape(len(rows), length)
