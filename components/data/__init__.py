"""Datasets: the kinds of data genray trains on (kinds.py), their Parquet files (parquet.py),
decoding rows into model batches (decode.py), pixels (images.py), captions as byte tokens
(captions.py), and the built-in datasets, one file each.

`DATASETS` maps a name to its `prepare(out_dir, *, seed=0, size="full") -> {"train": path,
"test": path}`; `genray data prepare NAME` calls it.

Importing this package loads NumPy only. The names that need pyarrow (the Parquet reader and
writers, and DATASETS, whose modules write Parquet) load on first use through the module
`__getattr__` (PEP 562), so a model file that imports `DatasetInfo` or `encode_captions` does not
pull in the Parquet stack.
"""

from .captions import decode_captions, encode_captions
from .decode import decode_batch
from .images import image_grid, normalize_images, quantize, save_png, to_uint8_image
from .kinds import KINDS, MAIN_COLUMN, MODALITIES, DataFormatError, DataKind, DatasetInfo

_PARQUET = ("DatasetWriter", "build_table", "check_table", "read_info", "read_metadata", "read_table",
            "write_table")


# A built-in dataset whose prepared files changed gets a revision: pipelines/data.py prepares it
# afresh in a folder of its own, so a project's older copy is not read as the new one. (2:
# Fashion-MNIST's captions drawn from templates, and the edges made of its rows.)
REVISIONS = {"fashion_mnist": 2, "fashion_edges": 2, "scenes": 2}


def value_names(dataset: str | None) -> dict[str, tuple[str, ...]]:
    """What the integer values of a built-in dataset's label and factor columns stand for, by
    column (`VALUE_NAMES` of its module: Fashion-MNIST's classes, shapes' shapes and colours);
    empty for other data, whose values are shown as numbers."""
    if dataset not in ("digits", "fashion_mnist", "fashion_edges", "fashion_halves", "shapes", "scenes", "moons", "text",
                       "tones", "spoken_digits"):
        return {}
    import importlib

    return dict(getattr(importlib.import_module(f".{dataset}", __name__), "VALUE_NAMES", {}))


def __getattr__(name: str):
    if name in _PARQUET:
        from . import parquet

        return getattr(parquet, name)
    if name == "DATASETS":
        from . import (digits, fashion_edges, fashion_halves, fashion_mnist, moons, scenes, shapes, spoken_digits, text,
                       tones)

        globals()["DATASETS"] = datasets = {
            "digits": digits.prepare,
            "fashion_mnist": fashion_mnist.prepare,
            "fashion_edges": fashion_edges.prepare,
            "fashion_halves": fashion_halves.prepare,
            "shapes": shapes.prepare,
            "scenes": scenes.prepare,
            "moons": moons.prepare,
            "text": text.prepare,
            "tones": tones.prepare,
            "spoken_digits": spoken_digits.prepare,
        }
        return datasets
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DATASETS",
    "REVISIONS",
    "KINDS",
    "MAIN_COLUMN",
    "MODALITIES",
    "DataFormatError",
    "DataKind",
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
    "read_metadata",
    "read_table",
    "save_png",
    "to_uint8_image",
    "value_names",
    "write_table",
]
