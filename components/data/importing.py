"""Other people's images into genray's Parquet: an image folder (one subfolder per class) or a
Hugging Face `datasets` Parquet export (images as struct<bytes, path>, an int label column).

    genray data import ~/photos --out data/photos --size 32
    genray data import train-00000-of-00001.parquet --out data/cifar --size 32 --grayscale

Every image is decoded with Pillow, converted to RGB (or greyscale), resized so its shorter side
is `size` (bicubic, antialiased) and centre-cropped to size x size. Rows are split into train and
test by a seeded draw (`test_fraction`). An image that cannot be read is never dropped silently:
it is counted, named with the reason, and listed in `<out>/skipped.tsv`. Streaming: at most one
chunk of decoded images is held in memory, so the input may be larger than RAM.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from components.errors import UserError

from .parquet import DatasetWriter

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CHUNK = 1024  # decoded images per written row group


@dataclass
class ImportReport:
    train: Path
    test: Path
    rows: dict[str, int]
    classes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image, why)
    skipped_file: Path | None = None


def to_square(data: bytes | Path, size: int, grayscale: bool) -> np.ndarray:
    """One image -> (size, size, C) uint8: shorter side resized to `size`, centre crop."""
    from PIL import Image

    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
        im = im.convert("L" if grayscale else "RGB")
        w, h = im.size
        scale = size / min(w, h)
        im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC,
                       reducing_gap=None)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        arr = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return arr[..., None] if grayscale else arr


# ----------------------------------------------------------------------------- sources


def folder_items(root: Path) -> tuple[list[str], Iterator[tuple[str, bytes | Path, int]]]:
    """(class names, items): every image file under root/<class>/, labelled by its folder."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"{root}: no class subfolders; an image folder holds one subfolder of images per class "
                        "(e.g. cats/, dogs/)")

    def items():
        for label, name in enumerate(classes):
            for path in sorted((root / name).rglob("*")):
                if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                    yield str(path), path, label

    return classes, items()


def hf_parquet_items(path: Path, image_column: str = "image", label_column: str = "label"):
    """(class names, items) from a Hugging Face `datasets` Parquet file or folder of them."""
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
    has_labels = label_column in schema.names
    classes = _hf_class_names(schema, label_column) if has_labels else []

    def items():
        for f in files:
            pf = pq.ParquetFile(f)
            for g in range(pf.num_row_groups):
                cols = [image_column] + ([label_column] if has_labels else [])
                table = pf.read_row_group(g, columns=cols)
                images = table.column(image_column).to_pylist()
                labels = table.column(label_column).to_pylist() if has_labels else [-1] * len(images)
                for i, (image, label) in enumerate(zip(images, labels)):
                    name = (image or {}).get("path") or f"{f.name}:group{g}:row{i}"
                    yield name, (image or {}).get("bytes") or b"", int(label if label is not None else -1)

    return classes, items()


def _hf_class_names(schema, label_column: str) -> list[str]:
    """ClassLabel names from the `huggingface` schema metadata, when the export kept them."""
    import json

    meta = (schema.metadata or {}).get(b"huggingface")
    try:
        features = json.loads(meta)["info"]["features"] if meta else {}
        return list(features[label_column]["names"])
    except (KeyError, TypeError, ValueError):
        return []


# ----------------------------------------------------------------------------- the import


def import_images(source: Path, out: Path, *, size: int = 32, grayscale: bool = False, test_fraction: float = 0.1,
                  seed: int = 0, image_column: str = "image", label_column: str = "label") -> ImportReport:
    source, out = Path(source).expanduser(), Path(out).expanduser()
    if not source.exists():
        raise UserError(f"{source}: no such file or folder")
    if size < 8 or size & (size - 1):
        raise UserError(f"--size {size}: genray's image families need a power of two >= 8 (8, 16, 32, 64, ...)")
    if not 0 < test_fraction < 1:
        raise UserError(f"--test-fraction {test_fraction}: must be between 0 and 1")
    is_parquet = source.suffix == ".parquet" or (source.is_dir() and any(source.glob("*.parquet")))
    classes, items = (hf_parquet_items(source, image_column, label_column) if is_parquet else folder_items(source))
    shape = (size, size, 1 if grayscale else 3)
    rng = np.random.default_rng(seed)
    report = ImportReport(out / "train.parquet", out / "test.parquet", {"train": 0, "test": 0}, classes)
    buffers = {"train": ([], []), "test": ([], [])}
    with DatasetWriter(report.train, "image", shape) as train, DatasetWriter(report.test, "image", shape) as test:
        writers = {"train": train, "test": test}

        def flush(split: str) -> None:
            pixels, labels = buffers[split]
            if pixels:
                writers[split].write(_columns(pixels, labels, classes))
                report.rows[split] += len(pixels)
                buffers[split] = ([], [])

        for name, data, label in items:
            try:
                if isinstance(data, bytes) and not data:
                    raise ValueError("no image bytes")
                pixels = to_square(data, size, grayscale)
            except Exception as e:  # noqa: BLE001 - any undecodable file is reported, by name, not raised
                report.skipped.append((name, f"{type(e).__name__}: {e}"))
                continue
            split = "test" if rng.random() < test_fraction else "train"
            buffers[split][0].append(pixels)
            buffers[split][1].append(label)
            if len(buffers[split][0]) >= CHUNK:
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
