"""Datasets on disk: the Parquet schema (parquet.py) and the built-in datasets, one file each.

`DATASETS` maps a name to its `prepare(out_dir, *, seed=0, size="full") -> {"train": path,
"test": path}`; `genray data prepare NAME` calls it.
"""

from . import digits, moons, shapes, text, tones
from .parquet import (
    MAIN_COLUMN,
    MODALITIES,
    DataFormatError,
    DatasetInfo,
    DatasetWriter,
    build_table,
    check_table,
    decode_batch,
    decode_captions,
    encode_captions,
    read_info,
    read_table,
    write_table,
)
from .images import image_grid, normalize_images, quantize, save_png, to_uint8_image

DATASETS = {
    "digits": digits.prepare,
    "shapes": shapes.prepare,
    "moons": moons.prepare,
    "text": text.prepare,
    "tones": tones.prepare,
}

__all__ = [
    "DATASETS",
    "MAIN_COLUMN",
    "MODALITIES",
    "DataFormatError",
    "DatasetInfo",
    "DatasetWriter",
    "build_table",
    "check_table",
    "decode_batch",
    "decode_captions",
    "encode_captions",
    "image_grid",
    "normalize_images",
    "quantize",
    "read_info",
    "read_table",
    "save_png",
    "to_uint8_image",
    "write_table",
]
