"""Fashion-MNIST (Xiao et al. 2017): 70,000 real 28x28 greyscale photos of clothes in 10 classes,
60,000 for training and 10,000 for test, read from the four IDX files Zalando publishes.

Debian packages them as `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist/*.gz), which
`make install` installs when it runs as root with apt; `genray data prepare fashion_mnist --from
DIR` reads the same four files from anywhere. Nothing is downloaded.

The images are stored padded to 32x32 with the background value (0): genray's image families
halve the sides down to 4, so they need powers of two, and padding (unlike resizing) keeps every
original pixel. The official train/test split is kept; the seed only orders the rows.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from genray.components.errors import UserError

from .parquet import write_table

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
PACKAGE = "dataset-fashion-mnist"
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
CLASSES = ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
VALUE_NAMES = {"label": CLASSES}  # components.data.value_names
PAD = 2  # 28 + 2 * 2 = 32
SHAPE = (32, 32, 1)
SIZES = {"tiny": (512, 128), "full": (None, None)}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format, gzipped): big-endian magic 0x0000 08 <ndim>, then the
    dimensions as uint32, then uint8 data."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise UserError(f"{path}: not an IDX file of unsigned bytes (bad magic {data[:4]!r})")
    ndim = data[3]
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise UserError(f"{path}: IDX header says {dims} ({int(np.prod(dims))} bytes), the file holds {body.size}")
    return body.reshape(dims)


def load(source: Path | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (images (N, 28, 28) uint8, labels (N,) int64)} from `source` (default: Debian's)."""
    root = Path(source) if source is not None else DEBIAN_DIR
    missing = [n for pair in FILES.values() for n in pair if not (root / n).is_file()]
    if missing:
        how = (f"install Debian's {PACKAGE} (apt-get install {PACKAGE}; `make install` does it as root) "
               "or pass --from DIR with the four Fashion-MNIST .gz files")
        raise UserError(f"{root}: {', '.join(missing)} not found; {how}")
    out = {}
    for split, (images, labels) in FILES.items():
        x, y = read_idx(root / images), read_idx(root / labels).astype(np.int64)
        if x.ndim != 3 or x.shape[1:] != (28, 28) or len(x) != len(y):
            raise UserError(f"{root / images}: expected (N, 28, 28) images and N labels, got {x.shape} and {y.shape}")
        out[split] = (x, y)
    return out


def padded_splits(*, seed: int = 0, size: str = "full",
                  source: Path | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train", "test": (images (N, 32, 32, 1) uint8, labels (N,) int64)}: the official split,
    padded, rows ordered by seed and cut to `size`. The rows every Fashion-MNIST dataset stores
    (fashion_edges.py makes its pairs from the same rows)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    splits = load(source)
    rng = np.random.default_rng(seed)
    out = {}
    for split, limit in zip(("train", "test"), SIZES[size]):
        x, y = splits[split]
        order = rng.permutation(len(y))[:limit]
        out[split] = (np.pad(x[order], ((0, 0), (PAD, PAD), (PAD, PAD)))[..., None], y[order])  # (N, 32, 32, 1)
    return out


# How a caption names each class: the class names made into nouns a sentence can take.
NOUNS = ("T-shirt", "pair of trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
         "ankle boot")
# Captions are made from the class through templates (as CLIP's zero-shot prompts are, Radford
# et al. 2021, §3.1.4). Each training and test row gets one of TEMPLATES, drawn with the
# dataset's seed; HELD_OUT_TEMPLATES appear in no row, so a text encoder can be tested on
# phrasings it never saw. "{a}" is the noun's article.
TEMPLATES = ("{a} photo of {a_noun}", "{a_noun}", "a picture of {a_noun}", "{a_noun}, centred",
             "a grey photo of {a_noun}", "a small image of {a_noun}")
HELD_OUT_TEMPLATES = ("an image showing {a_noun}", "a black and white {noun}", "a low resolution photo of the {noun}")


def phrase(template: str, label: int) -> str:
    """One caption: `template` filled with class `label`'s noun ("a sneaker", "an ankle boot")."""
    noun = NOUNS[label]
    article = "an" if noun[0].lower() in "aeiou" else "a"
    return template.format(a="a", noun=noun, a_noun=f"{article} {noun}")


def captions(labels: np.ndarray, rng: np.random.Generator | None = None) -> list[str]:
    """A caption per label: "a photo of a <class>" without `rng`, else a template drawn per row."""
    if rng is None:
        return [phrase(TEMPLATES[0], int(k)) for k in labels]
    picks = rng.integers(len(TEMPLATES), size=len(labels))
    return [phrase(TEMPLATES[t], int(k)) for t, k in zip(picks, labels)]


def caption_rng(seed: int) -> np.random.Generator:
    """The templates' draws for a seed, apart from the rows' order: drawn for train, then test,
    by every dataset made of these rows (fashion_edges.py), so row i has the same caption in each."""
    return np.random.default_rng([seed, 1])


def prepare(out_dir: Path, *, seed: int = 0, size: str = "full", source: Path | None = None) -> dict[str, Path]:
    """Write out_dir/train.parquet and out_dir/test.parquet (the official split, rows ordered by seed)."""
    out_dir = Path(out_dir)
    paths = {}
    rng = caption_rng(seed)
    for split, (pixels, labels) in padded_splits(seed=seed, size=size, source=source).items():
        # test last (dicts keep their order): its file marks a complete dataset
        paths[split] = write_table(out_dir / f"{split}.parquet", "image",
                                   {"image": pixels, "label": labels, "caption": captions(labels, rng)}, shape=SHAPE)
    return paths
