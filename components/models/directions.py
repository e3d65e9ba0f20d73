"""Attribute directions in a model's latent space, and images edited along them.

A model that encodes and decodes (VAE, β-VAE, Glow, VQ-VAE) maps an image to a latent z. A
labelled attribute of the training data becomes one direction d per attribute value, found from
the encoded data ("attribute vectors": White 2016, "Sampling Generative Networks", sec. 2.3;
Kingma & Dhariwal 2018, Glow, sec. 5.3):

    categorical value v (a class, a shape, a colour)    d = mean(z | a = v) - mean(z | a != v)
    continuous attribute a (size, position, rotation)   d = 2 Cov(z, a) / Std(a)

The continuous one is the least-squares slope of z on the standardised attribute, times two: the
change of E[z | a] from one standard deviation below a's mean to one above. So for both kinds,
amount 1 moves an image about as far as the data moves between typical images without and with
the attribute (a negative amount moves it away), and an edit is

    x' = decode(encode(x) + amount * d)

The latents are flattened to (N, D) (encode's (B, *latent_shape) row-major), so one formula
serves a VAE's vector, Glow's multi-scale latent and a VQ-VAE's grid of codes (whose decode snaps
the moved latent back to the nearest codes).

A direction is named `attribute=value` for a categorical attribute (`class=sneaker`,
`color=red`) and by the attribute alone for a continuous one (`scale`, `x`). Directions are
saved as safetensors (the (K, D) vectors) and JSON (names, attributes, latent shape, where they
came from): no pickle.
"""
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from genray.components.errors import UserError

CATEGORICAL, CONTINUOUS = "categorical", "continuous"
MAX_AMOUNT = 3.0  # |amount| beyond 3 leaves the data far behind: decodes become noise, not edits
MIN_ROWS_PER_SIDE = 5  # a value needs this many examples with it and without it to get a direction
MAX_CATEGORIES = 32  # an integer column with more distinct values is treated as continuous
VECTORS_FILE, META_FILE = "directions.safetensors", "directions.json"


@dataclass(frozen=True)
class Attribute:
    """One labelled attribute of the data: a column of the dataset and how it is read."""

    name: str  # as directions name it: "class" for the label, factor_x -> "x"
    column: str  # the dataset column: "label", "factor_x"
    kind: str  # CATEGORICAL | CONTINUOUS
    values: tuple[str, ...] = ()  # categorical: value i's name (the column holds i)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "column": self.column, "kind": self.kind, "values": list(self.values)}


def attributes_of(columns: Mapping[str, np.ndarray], value_names: Mapping[str, Sequence[str]] | None = None,
                  max_categories: int = MAX_CATEGORIES) -> list[Attribute]:
    """The attributes a dataset's columns give: `label` (named "class") and every `factor_*`
    column. Integer columns with at most `max_categories` values are categorical (value i named by
    value_names[column][i] when given, else "i"); other numeric columns are continuous. Constant
    columns, and factor columns equal to the label (shapes' label is its shape), are left out."""
    value_names = value_names or {}
    out = []
    for column in ["label"] + sorted(c for c in columns if c.startswith("factor_")):
        if column not in columns:
            continue
        v = np.asarray(columns[column])
        if v.ndim != 1 or len(np.unique(v)) < 2:
            continue
        if column != "label" and "label" in columns and np.array_equal(v, np.asarray(columns["label"])):
            continue
        name = "class" if column == "label" else column.removeprefix("factor_")
        if np.issubdtype(v.dtype, np.integer) and v.min() >= 0 and v.max() < max_categories:
            names = tuple(value_names.get(column, ())) or tuple(str(i) for i in range(int(v.max()) + 1))
            if len(names) <= int(v.max()):
                raise ValueError(f"value names of {column}: {len(names)} names for values up to {int(v.max())}")
            out.append(Attribute(name, column, CATEGORICAL, names))
        elif np.issubdtype(v.dtype, np.number):
            out.append(Attribute(name, column, CONTINUOUS))
    return out


@dataclass(frozen=True)
class Directions:
    """Named directions in a model's flattened latent space."""

    names: tuple[str, ...]  # K names: "class=sneaker", "scale"
    vectors: Tensor  # (K, D) float32
    latent_shape: tuple[int, ...]  # encode's per-example shape; D = prod(latent_shape)
    attributes: tuple[Attribute, ...]
    source: dict[str, Any] = field(default_factory=dict)  # the model, the data, rows: for the record

    def __post_init__(self):
        k, d = len(self.names), math.prod(self.latent_shape)
        if tuple(self.vectors.shape) != (k, d):
            raise ValueError(f"Directions: vectors must be ({k}, {d}) for {k} names and latents "
                             f"{list(self.latent_shape)}; got {tuple(self.vectors.shape)}")
        if len(set(self.names)) != k:
            raise ValueError(f"Directions: names repeat: {list(self.names)}")

    def index(self, name: str) -> int:
        """Direction `name`'s row; a UserError listing the names there are otherwise."""
        try:
            return self.names.index(name)
        except ValueError:
            raise UserError(f"direction {name!r}: no such direction; this model has {', '.join(self.names)}") from None

    def attribute(self, name: str) -> Attribute:
        """The attribute direction `name` moves."""
        attribute = name.split("=", 1)[0]
        return next(a for a in self.attributes if a.name == attribute)

    def move(self, z: Tensor, name: str, amount: float | Tensor) -> Tensor:
        """z (B, *latent_shape) moved `amount` (a number, or (B,) per row) along direction `name`."""
        check_amount(amount)
        if tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"Directions.move: z must be (B, {', '.join(map(str, self.latent_shape))}); "
                             f"got {tuple(z.shape)}")
        d = self.vectors[self.index(name)].to(z.device, z.dtype).reshape(self.latent_shape)
        amount = torch.as_tensor(amount, dtype=z.dtype, device=z.device).reshape(-1, *([1] * len(self.latent_shape)))
        return z + amount * d

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"vectors": self.vectors.contiguous()}, str(folder / VECTORS_FILE))
        meta = {"names": list(self.names), "latent_shape": list(self.latent_shape),
                "attributes": [a.to_json() for a in self.attributes], "source": self.source}
        (folder / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Directions":
        """Directions that `save` wrote; a UserError naming the file if they are not there or
        not whole."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / META_FILE).read_text())
            vectors = load_file(str(folder / VECTORS_FILE))["vectors"].float()
            attributes = tuple(Attribute(a["name"], a["column"], a["kind"], tuple(a["values"]))
                               for a in meta["attributes"])
            return cls(tuple(meta["names"]), vectors, tuple(meta["latent_shape"]), attributes, meta.get("source", {}))
        except (OSError, KeyError, TypeError, ValueError) as e:
            raise UserError(f"{folder}: not a directions folder ({META_FILE} and {VECTORS_FILE}, as `genray "
                            f"directions` writes them): {e}") from None


def check_amount(amount: float | Tensor) -> None:
    a = torch.as_tensor(amount, dtype=torch.float64)
    if not bool(torch.isfinite(a).all()) or float(a.abs().max()) > MAX_AMOUNT:
        raise UserError(f"amount {amount if a.numel() == 1 else a.tolist()}: each amount is a number in "
                        f"[-{MAX_AMOUNT:g}, {MAX_AMOUNT:g}] (1 moves an image as far as the data moves "
                        "between typical images without and with the attribute)")


def fit(latents: Tensor, columns: Mapping[str, np.ndarray], attributes: Sequence[Attribute], *,
        min_rows: int = MIN_ROWS_PER_SIDE, source: dict[str, Any] | None = None) -> Directions:
    """Directions from encoded data: latents (N, *latent_shape) and the attribute columns (N,)
    of the same rows (the formulas are in the module's docstring). Statistics in float64; a
    categorical value seen in fewer than `min_rows` rows, or in all but fewer, gets no direction."""
    n = len(latents)
    latent_shape = tuple(latents.shape[1:])
    z = latents.reshape(n, -1).double()
    names, vectors = [], []
    for a in attributes:
        v = np.asarray(columns[a.column])
        if v.shape != (n,):
            raise ValueError(f"fit: column {a.column} has shape {v.shape}; expected ({n},), one value per latent")
        if a.kind == CATEGORICAL:
            for i, value in enumerate(a.values):
                has = torch.from_numpy(v == i)
                if min_rows <= int(has.sum()) <= n - min_rows:
                    names.append(f"{a.name}={value}")
                    vectors.append(z[has].mean(0) - z[~has].mean(0))
        else:
            s = torch.from_numpy(v.astype(np.float64))
            std = float(s.std(unbiased=False))
            if std > 0:
                s = (s - s.mean()) / std
                names.append(a.name)
                vectors.append(2.0 * (s[:, None] * (z - z.mean(0))).mean(0))
    if not names:
        raise UserError("no attribute has a direction: the data needs a label or factor_* column with at least "
                        f"{min_rows} rows with and without each value")
    return Directions(tuple(names), torch.stack(vectors).float(), latent_shape, tuple(attributes), dict(source or {}))


@torch.no_grad()
def edit(model, x: Tensor, directions: Directions, name: str, amount: float | Tensor) -> Tensor:
    """Images x (B, C, H, W) in [-1, 1] moved `amount` along direction `name` in the model's
    latent space: decode(encode(x) + amount * d), (B, C, H, W)."""
    if tuple(model.latent_shape) != directions.latent_shape:
        raise UserError(f"directions for latents {list(directions.latent_shape)} do not fit this model, whose latents "
                        f"are {list(model.latent_shape)}: fit them with `genray directions` on this model")
    z = model.encode(x).float()
    return model.decode(directions.move(z, name, amount)).float()
