"""Other people's images into genray's Parquet: an image folder (one subfolder per class) or a
Hugging Face `datasets` Parquet export (images as struct<bytes, path>, an int label column).

    genray data import ~/photos --out data/photos --size 32
    genray data import train-00000-of-00001.parquet --out data/cifar --size 32 --grayscale

Every image is decoded with Pillow, converted to RGB (or greyscale), resized so its shorter side
is `size` (bicubic, antialiased) and centre-cropped to size x size. An image goes to test when a
hash of the seed and its name falls below `test_fraction` (`is_test`), so the split does not
depend on the order images are decoded in. An image that cannot be read is never dropped
silently: it is counted, named with the reason, and listed in `<out>/skipped.tsv`.

The import is three steps, so that the Ray Data path (pipelines/importing.py) runs the very same
code with only the middle one moved onto Ray tasks:

    plan(source)          -> class names, and the input cut into units of <= CHUNK images (JSON-able)
    decode_unit(unit)     -> that unit's pixels, labels, test flags, names, and what was skipped
    write_import(decoded) -> train.parquet / test.parquet from the decoded units, in plan order

The writer buffers rows per split and writes a row group every CHUNK rows, whatever the units'
sizes, so the files depend only on the sequence of decoded images. Streaming: a unit and at most
one chunk per split are held in memory, so the input may be larger than RAM.
"""
from __future__ import annotations

import io
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from genray.components.errors import UserError

from .parquet import DatasetWriter

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CHUNK = 1024  # images per unit of work, and decoded images per written row group


@dataclass
class ImportReport:
    train: Path
    test: Path
    rows: dict[str, int]
    classes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image, why)
    skipped_file: Path | None = None


class _ImageBytes(io.BytesIO):
    """Pillow names a stream it cannot read by its repr; the default repr holds a memory address,
    and a skipped image's reason must read the same on every run, in every process."""

    def __repr__(self) -> str:
        return "<image bytes>"


def to_square(data: bytes | Path, size: int, grayscale: bool) -> np.ndarray:
    """One image -> (size, size, C) uint8: shorter side resized to `size`, centre crop."""
    from PIL import Image

    with Image.open(_ImageBytes(data) if isinstance(data, bytes) else data) as im:
        im = im.convert("L" if grayscale else "RGB")
        w, h = im.size
        scale = size / min(w, h)
        im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC,
                       reducing_gap=None)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        arr = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return arr[..., None] if grayscale else arr


def is_test(key: str, seed: int, test_fraction: float) -> bool:
    """The train/test draw of one image: crc32 of "seed:key" as a fraction of 2**32. A function of
    the image alone, so every decoding order (in this process, on Ray tasks) gives the same split;
    a folder's key is the path inside the folder, so moving the folder keeps it too."""
    return zlib.crc32(f"{seed}:{key}".encode("utf-8")) / 2**32 < test_fraction


def check_options(source: Path, size: int, test_fraction: float) -> None:
    if not source.exists():
        raise UserError(f"{source}: no such file or folder")
    if size < 8 or size & (size - 1):
        raise UserError(f"--size {size}: genray's image families need a power of two >= 8 (8, 16, 32, 64, ...)")
    if not 0 < test_fraction < 1:
        raise UserError(f"--test-fraction {test_fraction}: must be between 0 and 1")


# ----------------------------------------------------------------------------- plan: units of work
#
# A unit is a small JSON-able dict (it travels to a Ray task as a string):
#   image folder   {"root": folder, "files": [path inside it, ...], "labels": [class index, ...]}
#   HF Parquet     {"parquet": file, "group": row group, "rows": [start, stop]} (a slice of the group)
# Paths are absolute: a Ray task runs in another working directory.


def plan(source: Path, image_column: str = "image", label_column: str = "label") -> tuple[list[str], list[dict]]:
    """(class names, units of at most CHUNK images, in the order the output lists them)."""
    source = Path(source).expanduser()
    is_parquet = source.suffix == ".parquet" or (source.is_dir() and any(source.glob("*.parquet")))
    return hf_parquet_plan(source, image_column, label_column) if is_parquet else folder_plan(source)


def num_images(units: list[dict]) -> int:
    """Images in a plan (unreadable ones included): folder files, Parquet rows from the footers."""
    return sum(len(u["files"]) if "files" in u else u["rows"][1] - u["rows"][0] for u in units)


def folder_plan(root: Path) -> tuple[list[str], list[dict]]:
    """Every image file under root/<class>/, labelled by its folder, sorted by class then path."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"{root}: no class subfolders; an image folder holds one subfolder of images per class "
                        "(e.g. cats/, dogs/)")
    files, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                files.append(path.relative_to(root).as_posix())
                labels.append(label)
    units = [{"root": str(root.absolute()), "files": files[i:i + CHUNK], "labels": labels[i:i + CHUNK]}
             for i in range(0, len(files), CHUNK)]
    return classes, units


def hf_parquet_plan(path: Path, image_column: str = "image",
                    label_column: str = "label") -> tuple[list[str], list[dict]]:
    """A Hugging Face `datasets` Parquet file or folder of them: one unit per row group, or per
    CHUNK rows of a larger group. Reads only the files' footers."""
    import pyarrow.parquet as pq

    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise UserError(f"{path}: no .parquet files")
    schema = pq.read_schema(files[0])
    if image_column not in schema.names:
        raise UserError(f"{files[0]}: no {image_column!r} column (columns: {', '.join(schema.names)}); "
                        "Hugging Face image datasets store images as struct<bytes, path>")
    image_type = schema.field(image_column).type
    if not (str(image_type).startswith("struct") and image_type.get_field_index("bytes") >= 0):
        raise UserError(f"{files[0]}: column {image_column!r} is {image_type}; expected struct<bytes, path> "
                        "(Hugging Face `datasets` Image feature)")
    classes = _hf_class_names(schema, label_column) if label_column in schema.names else []
    units = []
    for f in files:
        meta = pq.ParquetFile(f).metadata
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            units += [{"parquet": str(f.absolute()), "group": g, "rows": [start, min(start + CHUNK, n)]}
                      for start in range(0, n, CHUNK)]
    return classes, units


def _hf_class_names(schema, label_column: str) -> list[str]:
    """ClassLabel names from the `huggingface` schema metadata, when the export kept them."""
    meta = (schema.metadata or {}).get(b"huggingface")
    try:
        features = json.loads(meta)["info"]["features"] if meta else {}
        return list(features[label_column]["names"])
    except (KeyError, TypeError, ValueError):
        return []


# ----------------------------------------------------------------------------- decode one unit


def decode_unit(unit: dict, *, size: int, grayscale: bool, test_fraction: float, seed: int,
                image_column: str = "image", label_column: str = "label") -> dict[str, Any]:
    """One unit's images, decoded: pixels (k, size, size, C) uint8, labels (k,) int64 (-1: none),
    test (k,) bool, names (k names), and skipped [(name, why)] for the images that could not be
    read. Runs wherever it is called: in this process or on a Ray task."""
    channels = 1 if grayscale else 3
    pixels, labels, test, names, skipped = [], [], [], [], []
    for name, key, data, label in _unit_items(unit, image_column, label_column):
        try:
            if isinstance(data, bytes) and not data:
                raise ValueError("no image bytes")
            pixels.append(to_square(data, size, grayscale))
        except Exception as e:  # noqa: BLE001 - any undecodable file is reported, by name, not raised
            skipped.append((name, f"{type(e).__name__}: {e}"))
            continue
        labels.append(label)
        test.append(is_test(key, seed, test_fraction))
        names.append(name)
    return {"pixels": np.stack(pixels) if pixels else np.zeros((0, size, size, channels), np.uint8),
            "labels": np.asarray(labels, dtype=np.int64), "test": np.asarray(test, dtype=bool),
            "names": names, "skipped": skipped}


def _unit_items(unit: dict, image_column: str, label_column: str):
    """(name shown in reports, split key, file path or image bytes, label) for each image of a unit."""
    if "files" in unit:
        root = Path(unit["root"])
        for rel, label in zip(unit["files"], unit["labels"]):
            yield str(root / rel), rel, root / rel, int(label)
        return
    import pyarrow.parquet as pq

    f, g, (start, stop) = Path(unit["parquet"]), unit["group"], unit["rows"]
    pf = pq.ParquetFile(f)
    has_labels = label_column in pf.schema_arrow.names
    table = pf.read_row_group(g, columns=[image_column] + ([label_column] if has_labels else []))
    table = table.slice(start, stop - start)
    images = table.column(image_column).to_pylist()
    labels = table.column(label_column).to_pylist() if has_labels else [-1] * len(images)
    for i, (image, label) in enumerate(zip(images, labels), start=start):
        name = (image or {}).get("path") or f"{f.name}:group{g}:row{i}"
        yield name, name, (image or {}).get("bytes") or b"", int(label if label is not None else -1)


# ----------------------------------------------------------------------------- write the decoded units


def write_import(decoded: Iterable[dict], out: Path, *, source: Path, size: int, grayscale: bool,
                 classes: list[str]) -> ImportReport:
    """Decoded units, in plan order, into <out>/train.parquet and test.parquet (a row group every
    CHUNK rows of a split) and <out>/skipped.tsv; raises a UserError when a split is empty."""
    out = Path(out).expanduser()
    shape = (size, size, 1 if grayscale else 3)
    report = ImportReport(out / "train.parquet", out / "test.parquet", {"train": 0, "test": 0}, classes)
    buffers: dict[str, list[tuple[np.ndarray, int]]] = {"train": [], "test": []}
    with DatasetWriter(report.train, "image", shape) as train, DatasetWriter(report.test, "image", shape) as test:
        writers = {"train": train, "test": test}

        def flush(split: str) -> None:
            if buffers[split]:
                pixels, labels = zip(*buffers[split])
                writers[split].write(_columns(list(pixels), list(labels), classes))
                report.rows[split] += len(pixels)
                buffers[split] = []

        for unit in decoded:
            report.skipped += unit["skipped"]
            for pixels, label, in_test in zip(unit["pixels"], unit["labels"], unit["test"]):
                split = "test" if in_test else "train"
                buffers[split].append((pixels, int(label)))
                if len(buffers[split]) >= CHUNK:
                    flush(split)
        flush("train")
        flush("test")
        if report.rows["train"] == 0 or report.rows["test"] == 0:
            raise UserError(f"{source}: {report.rows['train']} training and {report.rows['test']} test images were "
                            f"readable ({len(report.skipped)} skipped); need at least one of each")
    if report.skipped:
        report.skipped_file = out / "skipped.tsv"
        report.skipped_file.write_text("".join(f"{n}\t{why}\n" for n, why in report.skipped))
    return report


def _columns(pixels: list[np.ndarray], labels: list[int], classes: list[str]) -> dict:
    cols = {"image": np.stack(pixels)}
    if any(label >= 0 for label in labels):
        cols["label"] = np.asarray(labels, dtype=np.int64)
        if classes:
            cols["caption"] = [f"a photo of a {classes[k]}" if 0 <= k < len(classes) else "" for k in labels]
    return cols


# ----------------------------------------------------------------------------- the import, in this process


def import_images(source: Path, out: Path, *, size: int = 32, grayscale: bool = False, test_fraction: float = 0.1,
                  seed: int = 0, image_column: str = "image", label_column: str = "label") -> ImportReport:
    source = Path(source).expanduser()
    check_options(source, size, test_fraction)
    classes, units = plan(source, image_column, label_column)
    options = dict(size=size, grayscale=grayscale, test_fraction=test_fraction, seed=seed,
                   image_column=image_column, label_column=label_column)
    decoded = (decode_unit(unit, **options) for unit in units)
    return write_import(decoded, out, source=source, size=size, grayscale=grayscale, classes=classes)
