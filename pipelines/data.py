"""A config's data: resolved to Parquet files (built-in datasets prepared on first use), checked
on the driver, and turned into the Ray Dataset the training workers read their shards from.

Data whose decoded pass fits in DRIVER_BUILD_MAX_BYTES (digits, Fashion-MNIST, shapes) is read and
decoded once in the driver with pyarrow and put into Ray's object store as it is, already cut
into one shard per worker (TrainData.shards): no decode tasks and no streaming-split coordinator
to start, which on 2 cores was ~9 s of a run's start-up (issue 22). Larger data is decoded in Ray
Data tasks and streamed to the workers by Ray Train's streaming split. Either way images stay
uint8 until they reach the worker's device (components.data.images.normalize_images finishes
the job there).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genray.components.data import DATASETS, MAIN_COLUMN, REVISIONS, DatasetInfo, decode_batch, read_info
from genray.components.models import caption_length
from genray.pipelines.config import ConfigError, ExperimentSpec
from genray.pipelines.env import absolute

MIN_STEPS_PER_PASS = 200
MATERIALIZE_MAX_BYTES = 2 * 2**30  # decoded uint8 data held in the object store at most
DRIVER_BUILD_MAX_BYTES = 512 * 2**20  # a decoded pass (all its copies) built in the driver's memory at most


@dataclass(frozen=True)
class DataSource:
    train: str
    test: str
    info: DatasetInfo
    text_len: int = 0  # > 0: captions are read too, as `text` byte tokens (text-conditioned models)

    @property
    def columns(self) -> list[str]:
        """The stored columns the model trains on: those the data kind decodes into batch keys
        (main columns; labels, domains when present), captions when the model reads text."""
        return self.info.kind.read_columns(self.info.columns, text=self.text_len > 0)

    @property
    def decode(self) -> dict[str, Any]:
        """decode_batch's arguments for these columns."""
        return {"modality": self.info.modality, "shape": self.info.shape,
                **({"text_len": self.text_len} if self.text_len else {})}


def resolve_data(spec: ExperimentSpec, home: Path) -> DataSource:
    d = spec.data
    if d.path is not None:
        train = absolute(d.path)
        if d.test_path is None:
            raise ConfigError("data.test_path: required with data.path (held-out Parquet for eval)")
        test = absolute(d.test_path)
    else:
        train, test = prepared(d.dataset, d.size, d.seed, home)
    info = read_info(train)
    test_info = read_info(test)
    if (test_info.modality, test_info.shape) != (info.modality, info.shape):
        raise ConfigError(f"{test}: shape {test_info.shape} differs from training data {info.shape}")
    text_len = caption_length(spec.model.family, spec.model_args())
    if text_len:
        why = ("model.conditioning=text" if spec.model_args().get("conditioning") == "text"
               else f"model.family={spec.model.family} (it trains on images with their captions)")
        for path, i in ((train, info), (test, test_info)):
            if "caption" not in i.columns:
                raise ConfigError(f"{path}: {why} needs a 'caption' column; this data has {', '.join(i.columns)}")
    return DataSource(train, test, info, text_len)


def prepared(dataset: str, size: str, seed: int, home: Path) -> tuple[str, str]:
    """A built-in dataset's train and test files under <home>/data (where `genray data prepare`
    writes them), prepared on first use."""
    revision = REVISIONS.get(dataset, 1)
    root = home / "data" / (f"{dataset}-{size}-seed{seed}" + (f"-r{revision}" if revision > 1 else ""))
    if not (root / "test.parquet").exists():  # test is written last
        DATASETS[dataset](root, seed=seed, size=size)
    return str(root / "train.parquet"), str(root / "test.parquet")


def read_decoded(path: str, columns: list[str], modality: str, shape, rows: int | None = None, *,
                 text_len: int = 0, normalize: bool = True) -> dict[str, np.ndarray]:
    """The first `rows` rows (all by default) of a Parquet dataset, decoded in this process with
    pyarrow: for data small enough not to need Ray Data tasks."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=columns)
    if rows is not None:
        table = table.slice(0, rows)
    return decode_batch({c: table.column(c).to_numpy(zero_copy_only=False) for c in columns}, modality, shape,
                        text_len=text_len, normalize=normalize)


# ----------------------------------------------------------------------------- the Ray Dataset


class TrainData:
    """The training split for the workers: a Ray Dataset streamed from Parquet, or rows decoded in
    the driver's memory that become Ray Datasets on demand (the whole pass, or one shard per
    worker). Pickles with what it has built (a Tune sweep hands one to every trial)."""

    def __init__(self, repeats: int, *, dataset: Any = None, rows: dict[str, np.ndarray] | None = None):
        if (dataset is None) == (rows is None):
            raise ValueError("TrainData takes exactly one of a streamed dataset and in-memory rows")
        self.repeats = repeats  # copies of the data in one pass (each permuted differently)
        self.rows = rows
        self._dataset = dataset

    @property
    def dataset(self):
        """The whole pass as one Ray Dataset (built from the rows on first use)."""
        if self._dataset is None:
            self._dataset = dataset_of(self.rows)
        return self._dataset

    @property
    def in_memory(self) -> bool:
        return self.rows is not None

    def shards(self, n: int) -> list[Any]:
        """n Ray Datasets of equal, contiguous row ranges of the pass, one per worker rank, for
        in-memory rows; the last len % n rows are left out, as streaming_split(equal=True) does:
        every rank must take the same number of steps per pass. The same n gives the same shards
        on every call, so a restarted worker group reads what the first one read."""
        if self.rows is None:
            raise ValueError("shards(): this data is streamed from Parquet; Ray Train's streaming split shards it")
        size = len(next(iter(self.rows.values()))) // n
        if size == 0:
            raise ValueError(f"{n} workers need at least {n} training rows")
        return [dataset_of({k: v[i * size:(i + 1) * size] for k, v in self.rows.items()}) for i in range(n)]

    @staticmethod
    def key(spec: ExperimentSpec) -> dict[str, Any]:
        """What the dataset depends on: two specs with the same key can share one."""
        return {"data": spec.data.model_dump(mode="json"), "batch_size": spec.trainer.batch_size,
                "seed": spec.trainer.seed, "text_len": caption_length(spec.model.family, spec.model_args())}


def dataset_of(rows: dict[str, np.ndarray]):
    """A materialised Ray Dataset of in-memory columns, put into the object store as one Arrow
    block (multi-dimensional columns as Ray's tensor extension type): no Ray tasks run."""
    import pyarrow as pa
    import ray.data
    from ray.data.extensions import ArrowTensorArray

    table = pa.table({k: ArrowTensorArray.from_numpy(v) if v.ndim > 1 else pa.array(v) for k, v in rows.items()})
    return ray.data.from_arrow(table)


def build_dataset(spec: ExperimentSpec, data: DataSource) -> TrainData:
    from ray.data import DataContext

    # Ray Data's progress bars fight with the training progress line (and in a Tune trial they
    # are the trial's whole log). Set here, in whichever process builds the dataset.
    DataContext.get_current().enable_progress_bars = False

    # A small dataset is repeated (each copy shuffled differently) until one pass over it is at
    # least MIN_STEPS_PER_PASS steps: starting a pass costs ~2-3 s on 2 cores, longer than a whole
    # epoch of digits. `epoch` in checkpoints counts these passes.
    repeats = math.ceil(spec.trainer.batch_size * MIN_STEPS_PER_PASS / data.info.num_rows)
    # Decoded bytes per row, from above: every column as large as the main one (uint8 pixels;
    # 8-byte tokens, samples or points), plus the caption's byte tokens.
    element = 1 if data.info.kind.is_image else 8
    row_bytes = len(data.columns) * element * math.prod(data.info.shape) + 8 * data.text_len
    if data.info.num_rows * repeats * row_bytes <= DRIVER_BUILD_MAX_BYTES:
        rows = read_decoded(data.train, data.columns, data.info.modality, data.info.shape,
                            text_len=data.text_len, normalize=False)
        if repeats > 1:
            rows = permute_rows(rows, spec.trainer.seed, repeats)
        return TrainData(repeats, rows=rows)
    return TrainData(repeats, dataset=_streamed(data, spec.trainer.seed, repeats))


def _streamed(data: DataSource, seed: int, repeats: int):
    """The pass as Ray Data decodes it from Parquet, in tasks: held in the object store when it
    fits MATERIALIZE_MAX_BYTES, else read again every pass, as Ray Data is built to."""
    import ray.data

    read = ray.data.read_parquet(data.train)
    # Blocks in file order, not in the order their decode tasks finish: a pass's order is then a
    # function of the seed, which an exact resume needs (docs/ARCHITECTURE.md, "Data order on
    # resume"). Set on this dataset's own context, so no other Ray Data use in the process changes.
    read.context.execution_options.preserve_order = True
    base = (
        read.select_columns(data.columns)
        .map_batches(decode_batch, batch_format="numpy", fn_kwargs={**data.decode, "normalize": False})
    )
    if data.info.num_rows * math.prod(data.info.shape) <= MATERIALIZE_MAX_BYTES:
        base = base.materialize()
    if repeats > 1:
        # One map over the blocks, each emitting `repeats` copies of its rows, every copy in its
        # own order: a cheap stand-in for Dataset.random_shuffle, whose all-to-all took minutes
        # for 13 copies of digits on 2 cores (and a union of copies printed a plan that long).
        base = base.map_batches(permute_rows, batch_format="numpy", batch_size=None,
                                fn_kwargs={"seed": seed, "repeats": repeats}).materialize()
    return base


def permute_rows(batch: dict[str, Any], seed: int, repeats: int = 1) -> dict[str, Any]:
    """`repeats` copies of the batch's rows, each in its own seeded order."""
    n = len(next(iter(batch.values())))
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(n) for _ in range(repeats)])
    return {k: v[order] for k, v in batch.items()}
