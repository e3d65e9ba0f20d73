"""The on-disk dataset format: Parquet files whose columns a data kind (kinds.py) prescribes.

Every genray dataset is one Parquet file or a directory of them. Each file names what it holds in
its key-value schema metadata, so a reader never guesses:

    genray.modality   the kind: a key of components.data.kinds.KINDS ("image", "tokens", ...)
    genray.shape      JSON list, the per-example shape of the main column(s)
                      ([H, W, C] for images, [T] for tokens and audio, [D] for points)
    genray.vocab      tokens only: JSON list of strings, index = token id

A writer may add more genray.* keys that describe where the data came from (`metadata=`); readers
that do not know a key ignore it, and `read_metadata` returns them all. The ones genray writes:

    genray.token_grid      tokens made by a tokenizer (`genray data tokenize`): JSON [h, w], the
                           grid the row-major [h*w] sequence came from
    genray.tokenizer       the model that made them, resolved: models:/NAME/VERSION, runs:/ID or
                           a checkpoint directory
    genray.tokenizer_run   its MLflow training run id ("" when the store does not know it)
    genray.source_dataset  JSON: the image data as a config's data section names it
                           ({"dataset", "size", "seed"} or {"path", "test_path"})

The columns of each kind are listed in kinds.py; anything else is an error, so a typo cannot
silently drop a column. This module only reads, checks and writes: `write_table`/`DatasetWriter`
are the writers the built-in datasets use, and `check_table`/`read_info` are what the pipelines
call before training (a bad file fails in seconds on the driver, not an hour into a run on a
worker). Decoding rows into the model batch is decode.py's.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .kinds import (
    BINARY, FACTOR, FLOAT32, INT32, INT64, KINDS, LIST_FLOAT32, LIST_INT32, STRING,
    Column, DataFormatError, DataKind, DatasetInfo, get_kind,
)

# Metadata keys, kept in one place because the README and the Ray pipeline quote them.
KEY_MODALITY = "genray.modality"
KEY_SHAPE = "genray.shape"
KEY_VOCAB = "genray.vocab"
CORE_KEYS = (KEY_MODALITY, KEY_SHAPE, KEY_VOCAB)
KEY_TOKEN_GRID = "genray.token_grid"
KEY_TOKENIZER = "genray.tokenizer"
KEY_TOKENIZER_RUN = "genray.tokenizer_run"
KEY_SOURCE_DATASET = "genray.source_dataset"

# The arrow types each stored type accepts. Readers accept only the types writers produce; a file
# from elsewhere that uses large_binary or float64 waveforms should be rewritten with write_table
# rather than half-supported here.
_ARROW = {
    BINARY: (pa.binary(),),
    LIST_INT32: (pa.list_(pa.int32()),),
    LIST_FLOAT32: (pa.list_(pa.float32()),),
    INT64: (pa.int64(),),
    INT32: (pa.int32(),),
    FLOAT32: (pa.float32(),),
    STRING: (pa.string(),),
    FACTOR: (pa.int64(), pa.float32(), pa.float64()),
}

# Parquet row groups are the unit Ray Data reads in parallel; ~10k rows keeps a 32x32x3 image
# row group around 30 MB uncompressed, small enough to stream and large enough to compress well.
DEFAULT_ROW_GROUP_SIZE = 10_000


# ---------------------------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------------------------


def _metadata(kind: DataKind, shape: Sequence[int], vocab: Sequence[str] | None,
              extra: Mapping[str, str] | None = None, source: str = "table") -> dict[str, str]:
    meta = {KEY_MODALITY: kind.name, KEY_SHAPE: json.dumps([int(s) for s in shape])}
    if vocab is not None:
        meta[KEY_VOCAB] = json.dumps(list(vocab))
    for key, value in (extra or {}).items():
        # The core keys come from the arguments above, so a second spelling cannot disagree.
        if not (isinstance(key, str) and key.startswith("genray.")) or key in CORE_KEYS:
            raise DataFormatError(f"{source}: extra metadata key {key!r} must start with 'genray.' and not be one "
                                  f"of {', '.join(CORE_KEYS)} (pass those as modality, shape and vocab)")
        if not isinstance(value, str):
            raise DataFormatError(f"{source}: metadata {key!r} must be a string (JSON-encode lists), got "
                                  f"{type(value).__name__}")
        meta[key] = value
    return meta


def _parse_metadata(
    metadata: Mapping[bytes, bytes] | None, source: str
) -> tuple[DataKind, tuple[int, ...], tuple[str, ...] | None]:
    """Read and check the genray.* keys; returns (kind, shape, vocab)."""
    meta = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in (metadata or {}).items()}
    hint = (
        f"every genray Parquet file needs metadata {KEY_MODALITY} (one of {', '.join(KINDS)}) "
        f"and {KEY_SHAPE}; write files with components.data.write_table"
    )
    if KEY_MODALITY not in meta:
        raise DataFormatError(f"{source}: missing metadata key '{KEY_MODALITY}' ({hint})")
    if meta[KEY_MODALITY] not in KINDS:
        raise DataFormatError(
            f"{source}: metadata '{KEY_MODALITY}' is {meta[KEY_MODALITY]!r}, expected one of {', '.join(KINDS)}"
        )
    kind = KINDS[meta[KEY_MODALITY]]
    if KEY_SHAPE not in meta:
        raise DataFormatError(f"{source}: missing metadata key '{KEY_SHAPE}' ({hint})")
    shape = _parse_shape(meta[KEY_SHAPE], kind, source)

    vocab = None
    if kind.vocab:
        if KEY_VOCAB not in meta:
            raise DataFormatError(
                f"{source}: missing metadata key '{KEY_VOCAB}' (modality {kind.name} needs a JSON list "
                "of vocabulary strings, index = token id)"
            )
        try:
            raw = json.loads(meta[KEY_VOCAB])
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{source}: metadata '{KEY_VOCAB}' is not valid JSON ({e})") from None
        vocab = _check_vocab(raw, source)
    return kind, shape, vocab


def _parse_shape(text: str, kind: DataKind, source: str) -> tuple[int, ...]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        raw = None
    ok = (
        isinstance(raw, list)
        and len(raw) == kind.rank
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in raw)
    )
    if not ok:
        raise DataFormatError(
            f"{source}: metadata '{KEY_SHAPE}' is {text!r}, expected a JSON list of {kind.rank} positive "
            f"int(s) for modality {kind.name}, e.g. {kind.shape_example}"
        )
    return tuple(raw)


def _check_vocab(raw: Any, source: str) -> tuple[str, ...]:
    if not (isinstance(raw, list) and raw and all(isinstance(s, str) for s in raw)):
        raise DataFormatError(f"{source}: metadata '{KEY_VOCAB}' must be a non-empty JSON list of strings")
    if len(set(raw)) != len(raw):
        # Duplicates would make decode(encode(s)) lossy without anyone noticing.
        raise DataFormatError(f"{source}: metadata '{KEY_VOCAB}' has duplicate entries")
    return tuple(raw)


# ---------------------------------------------------------------------------------------------
# Checking
# ---------------------------------------------------------------------------------------------


def _first_true(mask: pa.ChunkedArray | pa.Array) -> int:
    """Index of the first true entry of a boolean arrow array (caller knows there is one)."""
    return int(pc.index(mask, pa.scalar(True)).as_py())


def check_table(table: pa.Table, source: str) -> DatasetInfo:
    """Validate a table against its kind's schema and describe it.

    Every row is checked, but with pyarrow.compute kernels over whole columns rather than a Python
    loop, so a 100k-row file checks in milliseconds. `source` is the file name used in messages.
    """
    kind, shape, vocab = _parse_metadata(table.schema.metadata, source)
    needs = f"modality {kind.name} needs: {kind.schema_text()}"

    # Columns and types.
    for c in kind.main + kind.required:
        if c.name not in table.column_names:
            raise DataFormatError(f"{source}: missing column '{c.name}' ({needs})")
    for field in table.schema:
        c = kind.column(field.name)
        if c is None:
            raise DataFormatError(f"{source}: unexpected column '{field.name}' ({needs})")
        if not any(field.type.equals(t) for t in _ARROW[c.stored]):
            raise DataFormatError(
                f"{source}: column '{field.name}' has type {_type_text(field.type)}, expected {c.stored}"
            )
        column = table.column(field.name)
        if column.null_count:
            row = _first_true(pc.is_null(column))
            raise DataFormatError(
                f"{source}: column '{field.name}' has {column.null_count} null value(s) (first in row {row}); "
                "genray columns may not contain nulls"
            )

    # Per-row values.
    if table.num_rows:
        for c in kind.main:
            _check_main(table.column(c.name), c, kind, shape, vocab, source)
        for c in kind.required + kind.optional:
            if c.values is not None and c.name in table.column_names:
                bad = pc.invert(pc.is_in(table.column(c.name), value_set=pa.array(c.values, _ARROW[c.stored][0])))
                if pc.any(bad).as_py():
                    row = _first_true(bad)
                    raise DataFormatError(
                        f"{source}: column '{c.name}' has {table.column(c.name)[row].as_py()} in row {row}; "
                        f"modality {kind.name} allows only {', '.join(map(str, c.values))}"
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
    if "sample_rate" in table.column_names and table.num_rows:
        lo, hi = _min_max(table.column("sample_rate"))
        if lo != hi or lo <= 0:
            # One waveform shape [T] only means one duration if every row shares the rate.
            raise DataFormatError(
                f"{source}: column 'sample_rate' ranges over [{lo}, {hi}]; expected one positive rate for every row"
            )
        sample_rate = lo

    return DatasetInfo(
        modality=kind.name,
        shape=shape,
        num_rows=table.num_rows,
        num_classes=num_classes,
        vocab=vocab,
        columns=tuple(table.column_names),
        sample_rate=sample_rate,
    )


def _check_main(column: pa.ChunkedArray, c: Column, kind: DataKind, shape: tuple[int, ...],
                vocab: tuple[str, ...] | None, source: str) -> None:
    """Every row of a main column holds one example of `shape`, and its values are allowed."""
    expected = math.prod(shape)  # bytes of an H x W x C image, or entries of a [T] list
    lengths = pc.binary_length(column) if c.stored == BINARY else pc.list_value_length(column)
    bad = pc.not_equal(lengths, pa.scalar(expected, lengths.type))
    if pc.any(bad).as_py():
        row = _first_true(bad)
        raise DataFormatError(
            f"{source}: column '{c.name}' has {lengths[row].as_py()} {kind.unit} in row {row}, "
            f"expected {expected} ({kind.shape_text(shape)})"
        )
    if c.stored == BINARY:
        return

    # Every row has exactly T entries by now, so flat index i lies in row i // T.
    flat = pc.list_flatten(column)
    if flat.null_count:
        # A null inside a list is not counted by the column's null_count.
        i = _first_true(pc.is_null(flat))
        raise DataFormatError(f"{source}: column '{c.name}' has a null entry in row {i // expected}")
    if vocab is not None:
        bad = pc.or_(pc.less(flat, 0), pc.greater_equal(flat, len(vocab)))
        if pc.any(bad).as_py():
            i = _first_true(bad)
            raise DataFormatError(
                f"{source}: column '{c.name}' has id {flat[i].as_py()} in row {i // expected}, but "
                f"metadata '{KEY_VOCAB}' has {len(vocab)} entries; ids must be in [0, {len(vocab)})"
            )
    if c.stored == LIST_FLOAT32:
        bad = pc.invert(pc.is_finite(flat))
        if pc.any(bad).as_py():
            i = _first_true(bad)
            raise DataFormatError(
                f"{source}: column '{c.name}' has non-finite value {flat[i].as_py()} in row {i // expected}"
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


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Every genray.* key of a dataset's first file (sorted order, as read_info checks them), the
    ones that describe where the data came from included; values as stored (JSON text)."""
    fs, files = _list_files(path)
    fs_path, shown = files[0]
    try:
        with fs.open_input_file(fs_path) as f:
            metadata = pq.read_schema(f).metadata or {}
    except (pa.ArrowInvalid, OSError) as e:
        raise DataFormatError(f"{shown}: not a readable Parquet file ({e})") from None
    meta = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in metadata.items()}
    return {k: v for k, v in meta.items() if k.startswith("genray.")}


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


def _to_arrow(values: Any, stored: str, name: str, n: int, shape: Sequence[int]) -> pa.Array:
    """Convert one user column (numpy array or list) to the arrow type its stored type names."""
    if _is_scalar(values) and stored in (BINARY, LIST_INT32, LIST_FLOAT32, STRING):
        raise DataFormatError(f"column '{name}' needs one value per row, got the scalar {values!r}")
    if stored == BINARY:
        if isinstance(values, np.ndarray) and values.dtype != object:
            if values.dtype != np.uint8:
                raise DataFormatError(
                    f"column '{name}' has dtype {values.dtype}, expected uint8 arrays (N, H, W, C) or a list of bytes"
                )
            if values.ndim == 4 and tuple(values.shape[1:]) != tuple(shape):
                raise DataFormatError(
                    f"column '{name}' holds images of shape (N, {', '.join(map(str, values.shape[1:]))}), "
                    f"expected (N, {', '.join(map(str, shape))}) as metadata genray.shape {list(shape)} says"
                )
            row_bytes = math.prod(values.shape[1:])
            flat = np.ascontiguousarray(values).reshape(len(values), row_bytes)
            if len(flat) * row_bytes >= 2**31:
                raise DataFormatError(f"column '{name}' holds over 2 GiB in one table; write it in chunks with DatasetWriter")
            # Wrap the pixel buffer as the binary column without copying or making per-row bytes
            # objects; every row has the same length, so the offsets are just multiples of it.
            offsets = (np.arange(len(flat) + 1, dtype=np.int32) * row_bytes).astype(np.int32)
            return pa.Array.from_buffers(pa.binary(), len(flat), [None, pa.py_buffer(offsets), pa.py_buffer(flat)])
        rows = list(values)
        if not all(isinstance(r, (bytes, bytearray, memoryview)) for r in rows):
            raise DataFormatError(f"column '{name}' must be a uint8 array (N, H, W, C) or a list of bytes")
        return pa.array([bytes(r) for r in rows], type=pa.binary())

    if stored in (LIST_INT32, LIST_FLOAT32):
        ints = stored == LIST_INT32
        dtype, value_type = (np.int32, pa.int32()) if ints else (np.float32, pa.float32())
        allowed_kinds = "iu" if ints else "iuf"
        if isinstance(values, np.ndarray) and values.dtype != object and values.ndim == 2:
            if values.dtype.kind not in allowed_kinds:
                raise DataFormatError(f"column '{name}' has dtype {values.dtype}, expected {'integer' if ints else 'float'} values")
            if ints and values.size and (values.min() < np.iinfo(np.int32).min or values.max() > np.iinfo(np.int32).max):
                raise DataFormatError(f"column '{name}' has ids outside the int32 range")
            flat = pa.array(np.ascontiguousarray(values, dtype=dtype).reshape(-1), type=value_type)
            offsets = pa.array(np.arange(len(values) + 1, dtype=np.int32) * values.shape[1], type=pa.int32())
            return pa.ListArray.from_arrays(offsets, flat)
        # Ragged or per-row input: let check_table report the row whose length is wrong.
        rows = []
        for i, r in enumerate(values):
            arr = np.asarray(r)
            if arr.ndim != 1 or (arr.size and arr.dtype.kind not in allowed_kinds):
                raise DataFormatError(f"column '{name}' row {i} is not a 1-D {'integer' if ints else 'numeric'} sequence")
            rows.append(arr.astype(dtype))
        return pa.array(rows, type=pa.list_(value_type))

    if stored == STRING:
        rows = list(values)
        if not all(isinstance(r, str) for r in rows):
            raise DataFormatError(f"column '{name}' must hold str values")
        return pa.array(rows, type=pa.string())

    arr = np.asarray(values)
    if arr.ndim == 0:  # a scalar such as sample_rate=8000 applies to every row
        arr = np.full(n, arr.item())
    if arr.ndim != 1:
        raise DataFormatError(f"column '{name}' must be one value per row, got an array of shape {arr.shape}")
    if stored in (INT64, INT32):
        if arr.size and arr.dtype.kind not in "iub":
            raise DataFormatError(f"column '{name}' has dtype {arr.dtype}, expected {stored}")
        return pa.array(arr.astype(np.int64 if stored == INT64 else np.int32))
    if stored == FLOAT32:
        if arr.size and arr.dtype.kind not in "iuf":
            raise DataFormatError(f"column '{name}' has dtype {arr.dtype}, expected float32")
        return pa.array(arr.astype(np.float32))
    # FACTOR: integers stay exact, float64 stays float64, other floats become float32.
    if arr.dtype.kind in "iub":
        return pa.array(arr.astype(np.int64))
    if arr.dtype.kind == "f":
        return pa.array(arr if arr.dtype == np.float64 else arr.astype(np.float32))
    raise DataFormatError(f"column '{name}' has dtype {arr.dtype}, expected {FACTOR}")


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
    metadata: Mapping[str, str] | None = None,
) -> pa.Table:
    """Columns (numpy arrays or lists) -> a checked arrow table with genray metadata; `metadata`
    adds genray.* keys beyond modality, shape and vocab (see the module docstring).

    A contiguous uint8 image array is wrapped, not copied: do not modify it while the table lives.
    """
    kind = get_kind(modality, source)
    if kind.vocab != (vocab is not None):
        with_vocab = " or ".join(k.name for k in KINDS.values() if k.vocab)
        raise DataFormatError(f"{source}: pass vocab for modality {with_vocab}, and only for {with_vocab}")
    if not columns:
        raise DataFormatError(f"{source}: no columns given ({kind.schema_text()})")
    meta = _metadata(kind, shape, vocab, metadata, source)
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
        c = kind.column(name)
        if c is None:
            raise DataFormatError(f"{source}: column '{name}' is not part of modality {kind.name} ({kind.schema_text()})")
        try:
            arrays.append(_to_arrow(values, c.stored, name, n, shape))
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
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Build, check and write one dataset file. Same input -> same bytes (no timestamps)."""
    path = Path(path)
    table = build_table(modality, columns, shape, vocab, source=str(path), metadata=metadata)
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

    def __init__(self, path: str | os.PathLike, modality: str, shape: Sequence[int], vocab: Sequence[str] | None = None,
                 *, metadata: Mapping[str, str] | None = None):
        self.path = Path(path)
        self.modality, self.shape, self.vocab, self.metadata = modality, list(shape), vocab, metadata
        self._writer: pq.ParquetWriter | None = None

    def write(self, columns: Mapping[str, Any]) -> None:
        table = build_table(self.modality, columns, self.shape, self.vocab, source=str(self.path),
                            metadata=self.metadata)
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
