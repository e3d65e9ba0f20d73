"""Fashion-MNIST sneakers <-> ankle boots: two unpaired domains for CycleGAN (Zhu et al. 2017),
kind `two_domain_image`, made from the Fashion-MNIST photos (fashion_mnist.py).

    image   the item, as fashion_mnist (32x32 grey)  -> batch key x
    domain  0 = A, a sneaker (class 7); 1 = B, an ankle boot (class 9)  -> batch key domain
    label   the Fashion-MNIST class (int64, 7 or 9), caption "a photo of a <class noun>" (fashion_mnist.captions)

CycleGAN's datasets are unpaired: no image of one domain has a counterpart in the other. Here
the two domains are also drawn from two disjoint halves of the data, so that no photo, and no
photo's near-duplicate shot of the same product, can appear in both: each split's rows, in
fashion_mnist's seeded order (`padded_splits` at size full, a permutation by the seed), are cut
into a first and a second half; domain A takes the sneakers of the first half, domain B the
ankle boots of the second. The test split is halved the same way from the official test set,
so its domains are as independent as the training ones (about 500 of each, against about 3,000
of each for training). Rows are A then B, shuffled together by the seed.

Size "tiny" keeps the first 128 (train) / 64 (test) images of each domain; "full" all of them.
`genray data prepare fashion_halves --from DIR` reads the four IDX files from DIR as
fashion_mnist does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import fashion_mnist
from .parquet import write_table

SHAPE = fashion_mnist.SHAPE  # (32, 32, 1)
CLASSES = (7, 9)  # domain 0: sneaker, domain 1: ankle boot (fashion_mnist.CLASSES)
SIZES = {"tiny": (128, 64), "full": (None, None)}  # images per domain: train, test


def halves(labels: np.ndarray, per_domain: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Domain A's class from the first half of the rows, domain B's from the second, at most
    `per_domain` of each: (row indices (N,), domains (N,) int64), A rows first."""
    mid = len(labels) // 2
    picked = []
    for domain, (start, stop) in enumerate(((0, mid), (mid, len(labels)))):
        rows = start + np.flatnonzero(labels[start:stop] == CLASSES[domain])[:per_domain]
        picked.append(rows)
    rows = np.concatenate(picked)
    domains = np.concatenate([np.full(len(p), d, np.int64) for d, p in enumerate(picked)])
    return rows, domains


def prepare(out_dir: Path, *, seed: int = 0, size: str = "full", source: Path | None = None) -> dict[str, Path]:
    """Write out_dir/train.parquet and out_dir/test.parquet: sneakers (domain 0) from the first
    half of each split's seeded rows and ankle boots (domain 1) from the second half."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    out_dir = Path(out_dir)
    rng = np.random.default_rng([seed, 1])  # the final shuffle; fashion_mnist's seed orders the rows
    paths = {}
    splits = fashion_mnist.padded_splits(seed=seed, size="full", source=source)
    for (split, (items, labels)), per_domain in zip(splits.items(), SIZES[size]):
        rows, domains = halves(labels, per_domain)
        order = rng.permutation(len(rows))
        rows, domains = rows[order], domains[order]
        # test last (dicts keep their order): its file marks a complete dataset
        paths[split] = write_table(
            out_dir / f"{split}.parquet", "two_domain_image",
            {"image": items[rows], "domain": domains, "label": labels[rows],
             "caption": fashion_mnist.captions(labels[rows])},
            shape=SHAPE,
        )
    return paths
