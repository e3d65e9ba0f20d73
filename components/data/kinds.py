"""Data kinds: what a genray dataset holds, described once per kind.

A kind is one `DataKind` in the plain dict `KINDS`. Validation and writing (parquet.py), decoding
into the model batch (decode.py, run by Ray Data on workers), and showing data to a person all
read the same entry, so a new kind is one entry here:

    kind              columns -> model batch keys                per-example shape   shown as
    image             image -> x                                 [H, W, C]           grid
    paired_image      image -> x, image_paired -> x_paired       [H, W, C] (both)    grid
    two_domain_image  image -> x, domain -> domain (0 or 1)      [H, W, C]           grid
    tokens            tokens -> x                                [T]                 text
    audio             waveform -> x (sample_rate kept on disk)   [T]                 player
    points            point -> x                                 [D]                 scatter

Every kind also decodes an optional `label` to `y`, and a `caption` to `text` byte tokens when a
model reads text (captions.py). Stored types decode the same way in every kind: binary pixels
(row-major H x W x C uint8) -> float32 (B, C, H, W) in [-1, 1] (uint8 with normalize=False),
list<int32> -> int64 (B, T), list<float32> -> float32 (B, T), int64 -> int64 (B,).

A `tokens` dataset made from images by a tokenizer (`genray data tokenize`: a VQ-VAE's code ids)
is an ordinary tokens dataset, so a GPT trains on it unchanged: each row is the h x w grid of
code ids flattened row-major to [h*w], and the vocabulary is the ids as strings "0".."K-1". Its
files also carry genray.token_grid ([h, w]), genray.tokenizer (the model, resolved to a version),
genray.tokenizer_run and genray.source_dataset (parquet.py), so a prior's samples can be decoded
back to images and compared with the images the tokens came from.

Why two_domain_image is one image column plus an int64 `domain` in {0, 1}, rather than two image
columns or two files: the domains of an unpaired translation dataset (CycleGAN's horse2zebra:
1067 horses, 1334 zebras) differ in size, so a row cannot hold one of each without inventing
pairs; a row per image keeps the same row-per-example layout, reader and shuffle as `image`, and
a batch is a random mix that the recipe splits with `batch["domain"]`. The domains may still be
two files (trainA.parquet, trainB.parquet) in one dataset directory, as CycleGAN ships them.

This module imports no pyarrow: a model builder receives a `DatasetInfo` and reads its kind
without loading the Parquet machinery. Stored types are therefore named by their spelling in
messages ("list<int32>"); parquet.py maps each spelling to its arrow type.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from genray.components.errors import UserError


class DataFormatError(UserError):
    """A dataset file (or batch) does not match the genray Parquet schema.

    The message always starts with the file (or "batch") and names the offending column or
    metadata key, plus what would have been accepted.
    """


# Stored types, spelled as the schema docs and messages spell them. A factor is any numeric
# ground-truth attribute: integers stay exact, float64 stays float64.
BINARY, LIST_INT32, LIST_FLOAT32 = "binary", "list<int32>", "list<float32>"
INT64, INT32, FLOAT32, STRING = "int64", "int32", "float32", "string"
FACTOR = "int64, float32 or float64"


@dataclass(frozen=True)
class Column:
    """One stored column of a kind."""

    name: str
    stored: str  # one of the stored types above
    key: str | None = None  # the model batch key decode_batch fills from it; None: kept on disk only
    values: tuple[int, ...] | None = None  # the only values an integer column may hold

    def text(self) -> str:
        return f"{self.name} {self.stored}"


@dataclass(frozen=True)
class DataKind:
    """One kind of data: its columns, its per-example shape, how it decodes and how it is shown."""

    name: str  # also the value of the genray.modality metadata key
    main: tuple[Column, ...]  # per-example arrays, all of the shape in genray.shape
    rank: int  # len(genray.shape)
    shape_example: str  # a valid genray.shape, for messages
    unit: str  # what one entry of a main column is called in messages: "bytes", "ids", "samples"
    show: str  # how a person sees examples: "grid" | "player" | "text" | "scatter" | "none"
    required: tuple[Column, ...] = ()  # besides the main columns
    optional: tuple[Column, ...] = ()
    factors: bool = False  # factor_<name> columns (FACTOR) allowed
    vocab: bool = False  # needs metadata genray.vocab (index = token id)

    @property
    def columns(self) -> tuple[Column, ...]:
        return self.main + self.required + self.optional

    @property
    def is_image(self) -> bool:
        """Examples are (H, W, C) pixels: the kinds image families train on."""
        return self.main[0].stored == BINARY

    def column(self, name: str) -> Column | None:
        """The description of a column `name`, or None when this kind does not allow it."""
        for c in self.columns:
            if c.name == name:
                return c
        if self.factors and name.startswith("factor_") and len(name) > len("factor_"):
            return Column(name, FACTOR)
        return None

    def schema_text(self) -> str:
        """The whole schema in one line, so every schema error teaches it."""
        text = ", ".join(c.text() for c in self.main + self.required)
        optional = [c.text() for c in self.optional] + (["factor_*"] if self.factors else [])
        if optional:
            text += "; optional " + ", ".join(optional)
        if self.vocab:
            text += "; metadata genray.vocab"
        return text

    def shape_text(self, shape: Sequence[int]) -> str:
        if self.is_image:
            h, w, c = shape
            return f"{h}x{w}x{c} uint8 HWC"
        return f"shape {list(shape)}"

    def read_columns(self, present: Sequence[str], *, text: bool = False) -> list[str]:
        """The stored columns decode_batch turns into batch keys, of those `present`: what a
        pipeline selects before decoding. Captions count only when the model reads text."""
        return [c.name for c in self.columns
                if c.key is not None and c.name in present and (c.stored != STRING or text)]


LABEL = Column("label", INT64, key="y")  # class index >= 0; num_classes = max + 1
CAPTION = Column("caption", STRING, key="text")  # decoded only when a model reads text
IMAGE = Column("image", BINARY, key="x")
# 1 for a test row whose combination of attributes training never shows (scenes' held-out pairs
# of objects), 0 otherwise; kept on disk for evaluation, never decoded into a batch.
HELD_OUT = Column("held_out", INT64, values=(0, 1))
IMAGE_SHAPE_EXAMPLE = "[8, 8, 1] (H, W, C)"

KINDS: dict[str, DataKind] = {
    "image": DataKind("image", (IMAGE,), 3, IMAGE_SHAPE_EXAMPLE, "bytes", "grid",
                      optional=(LABEL, CAPTION, HELD_OUT), factors=True),
    # Pix2Pix's aligned pairs (Isola et al. 2017): image_paired[i] is image[i] in the other domain.
    "paired_image": DataKind("paired_image", (IMAGE, Column("image_paired", BINARY, key="x_paired")), 3,
                             IMAGE_SHAPE_EXAMPLE, "bytes", "grid", optional=(LABEL, CAPTION)),
    # CycleGAN's unpaired domains (Zhu et al. 2017); see the module docstring for the layout.
    "two_domain_image": DataKind("two_domain_image", (IMAGE,), 3, IMAGE_SHAPE_EXAMPLE, "bytes", "grid",
                                 required=(Column("domain", INT64, key="domain", values=(0, 1)),),
                                 optional=(LABEL, CAPTION)),
    "tokens": DataKind("tokens", (Column("tokens", LIST_INT32, key="x"),), 1, "[128]", "ids", "text",
                       optional=(LABEL,), vocab=True),
    "audio": DataKind("audio", (Column("waveform", LIST_FLOAT32, key="x"),), 1, "[16000]", "samples", "player",
                      required=(Column("sample_rate", INT32),),
                      optional=(Column("pitch_hz", FLOAT32), LABEL)),
    "points": DataKind("points", (Column("point", LIST_FLOAT32, key="x"),), 1, "[2]", "values", "scatter",
                       optional=(LABEL,)),
}

# Kept for code that predates KINDS.
MODALITIES = tuple(KINDS)
MAIN_COLUMN = {name: kind.main[0].name for name, kind in KINDS.items()}


def get_kind(name: str, source: str = "batch") -> DataKind:
    if name not in KINDS:
        raise DataFormatError(f"{source}: modality {name!r} is not one of {', '.join(KINDS)}")
    return KINDS[name]


@dataclass(frozen=True)
class DatasetInfo:
    """What a pipeline needs to know about a dataset before building a model for it."""

    modality: str  # a key of KINDS
    shape: tuple[int, ...]
    num_rows: int
    num_classes: int  # max label + 1, or 0 without a label column
    vocab: tuple[str, ...] | None
    columns: tuple[str, ...]
    # Audio only: the one sample rate every row shares (models and serving need it to play
    # a waveform back). Defaulted so the fields above stay the documented constructor.
    sample_rate: int | None = None

    @property
    def kind(self) -> DataKind:
        return get_kind(self.modality, "dataset")

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
