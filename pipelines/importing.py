"""`genray data import` for large inputs: images decoded on Ray Data tasks, written on the driver.

    genray data import ~/photos --out data/photos --size 32                 # auto: Ray Data above 20,000 images
    genray data import train-*.parquet --out data/cifar --workers 8         # Ray Data, at most 8 decode tasks
    genray data import ~/photos --out data/photos --workers 0               # this process only

The Ray Data path runs the same three steps as the in-process import
(components/data/importing.py): the driver plans the units of work, Ray tasks run `decode_unit`
on them, and the driver feeds the decoded units, in plan order, to the same writer. Order is
preserved (the dataset's `execution_options.preserve_order`) and the train/test split is a function
of each image's name, so both paths write the same rows in the same row groups.

On a multi-node cluster (RAY_ADDRESS) the source must be on storage every node sees at the same
path (NFS, a shared volume): the tasks open the files themselves. The output is written by the
driver, on its own disk.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from genray.components.data.importing import (
    ImportReport, check_options, decode_unit, import_images, num_images, plan, write_import,
)
from genray.components.errors import UserError
from genray.pipelines import console
from genray.pipelines.env import init_ray, log_path, project_home, verbose

# Images. Starting Ray and its first tasks costs ~15 s (measured on 2 cores); one core decodes a
# few hundred (photos) to a few thousand (thumbnails) images a second, so below this the start
# costs more than the extra cores save.
RAY_FROM = 20_000


def run_import(source: Path, out: Path, *, workers: int | None = None, size: int = 32, grayscale: bool = False,
               test_fraction: float = 0.1, seed: int = 0, image_column: str = "image", label_column: str = "label",
               say: Callable[[str], Any] = print) -> ImportReport:
    """`genray data import`: in this process (workers 0, or None below RAY_FROM images) or on Ray
    Data (workers > 0: at most that many decode tasks; None from RAY_FROM images up: as many as
    the cluster's CPUs allow). Says which in one line."""
    source = Path(source).expanduser()
    check_options(source, size, test_fraction)
    if workers is not None and workers < 0:
        raise UserError(f"--workers {workers}: 0 decodes in this process, N > 0 on N Ray Data tasks")
    # Counting plans the input once more than the import itself does: a folder listing or the
    # Parquet footers, nothing next to decoding the images.
    n = num_images(plan(source, image_column, label_column)[1])
    on_ray = workers != 0 and (workers is not None or n >= RAY_FROM)
    options = dict(size=size, grayscale=grayscale, test_fraction=test_fraction, seed=seed,
                   image_column=image_column, label_column=label_column)
    if not on_ray:
        say(f"decoding {n:,} images in this process")
        return import_images(source, out, **options)
    say(f"decoding {n:,} images on Ray Data")
    logs = console.route_logs(log_path(project_home(), "import", time.strftime("%Y%m%d-%H%M%S")))
    if logs is not None:
        say(f"Ray and library output: {logs} (--verbose shows it here)")
    return import_images_ray(source, out, workers=workers, say=say, **options)


def import_images_ray(source: Path, out: Path, *, size: int = 32, grayscale: bool = False, test_fraction: float = 0.1,
                      seed: int = 0, image_column: str = "image", label_column: str = "label",
                      workers: int | None = None, say: Callable[[str], Any] = print) -> ImportReport:
    """components.data.importing.import_images with decode_unit on Ray Data tasks (at most
    `workers` at once; None: as many as the CPUs allow). Same files, same report. On a multi-node
    cluster the source must be on storage every node sees, at the same path."""
    import ray.data

    # ----------------------------------------------------------------- setup: plan on the driver
    source = Path(source).expanduser()
    check_options(source, size, test_fraction)
    classes, units = plan(source, image_column, label_column)
    total = num_images(units)
    options = dict(size=size, grayscale=grayscale, test_fraction=test_fraction, seed=seed,
                   image_column=image_column, label_column=label_column)
    if not units:  # nothing to decode: the writer says so, as in this process
        return write_import([], out, source=source, size=size, grayscale=grayscale, classes=classes)
    init_ray()

    # ----------------------------------------------------------------- decode on Ray tasks
    # One block per unit, so every unit can be its own task; a unit travels as its JSON text.
    ds = ray.data.from_items([{"unit": json.dumps(u)} for u in units], override_num_blocks=len(units))
    ds.context.execution_options.preserve_order = True  # this dataset's own copy of the context
    ds.context.enable_progress_bars = verbose()  # genray's tenth lines below instead
    ds = ds.map_batches(decode_rows, batch_size=1, batch_format="numpy", fn_kwargs=options,
                        compute=ray.data.TaskPoolStrategy(size=workers))

    # ----------------------------------------------------------------- write on the driver, in plan order
    def decoded():
        seen, shown = 0, 0
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            yield from_rows(batch)
            seen += len(batch["name"])
            if seen * 10 // total > shown and seen < total:
                shown = seen * 10 // total
                say(f"decoded {seen:,}/{total:,} images")

    return write_import(decoded(), out, source=source, size=size, grayscale=grayscale, classes=classes)


# ----------------------------------------------------------------------------- a unit as Ray Data rows
#
# A decoded unit becomes one row per image, the unreadable ones included (blank pixels, and the
# reason in `why`), so that Ray Data carries plain columns: a fixed-shape tensor, ints, bools,
# strings. The driver splits them back into decode_unit's dict.


def decode_rows(batch: dict[str, np.ndarray], **options) -> dict[str, np.ndarray]:
    """Ray Data task: the batch's one unit (JSON) -> its images as rows."""
    (text,) = batch["unit"]
    unit = decode_unit(json.loads(text), **options)
    k, bad = len(unit["names"]), len(unit["skipped"])
    blank = np.zeros((bad, *unit["pixels"].shape[1:]), np.uint8)
    return {
        "pixels": np.concatenate([unit["pixels"], blank]),
        "label": np.concatenate([unit["labels"], np.full(bad, -1, np.int64)]),
        "test": np.concatenate([unit["test"], np.zeros(bad, bool)]),
        "name": np.asarray(unit["names"] + [name for name, _ in unit["skipped"]], dtype=object),
        "why": np.asarray([""] * k + [why for _, why in unit["skipped"]], dtype=object),
    }


def from_rows(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """decode_rows' rows (any number of units' worth, in order) -> decode_unit's dict."""
    kept = batch["why"] == ""
    return {"pixels": batch["pixels"][kept], "labels": batch["label"][kept], "test": batch["test"][kept],
            "names": [str(n) for n in batch["name"][kept]],
            "skipped": [(str(n), str(why)) for n, why in zip(batch["name"][~kept], batch["why"][~kept])]}
