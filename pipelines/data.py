"""A config's data: resolved to Parquet files (built-in datasets prepared on first use), checked
on the driver, and turned into the Ray Dataset the training workers stream their shards from.

Decoding runs in Ray Data tasks, never on the driver; images stay uint8 until they reach the
worker's device (components.data.images.normalize_images finishes the job there).
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
                 text_len: int = 0) -> dict[str, np.ndarray]:
    """The first `rows` rows (all by default) of a Parquet dataset, decoded in this process with
    pyarrow: for data small enough not to need Ray Data."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=columns)
    if rows is not None:
        table = table.slice(0, rows)
    return decode_batch({c: table.column(c).to_numpy(zero_copy_only=False) for c in columns}, modality, shape,
                        text_len=text_len)


# ----------------------------------------------------------------------------- the Ray Dataset


@dataclass(frozen=True)
class TrainData:
    """The training split as a Ray Dataset, ready for the workers' shards."""

    dataset: Any  # ray.data.Dataset
    repeats: int  # copies of the data in one pass (each permuted differently)

    @staticmethod
    def key(spec: ExperimentSpec) -> dict[str, Any]:
        """What the dataset depends on: two specs with the same key can share one."""
        return {"data": spec.data.model_dump(mode="json"), "batch_size": spec.trainer.batch_size,
                "seed": spec.trainer.seed, "text_len": caption_length(spec.model.family, spec.model_args())}


def build_dataset(spec: ExperimentSpec, data: DataSource) -> TrainData:
    import ray.data
    from ray.data import DataContext

    # Ray Data's progress bars fight with the training progress line (and in a Tune trial they
    # are the trial's whole log). Set here, in whichever process builds the dataset.
    DataContext.get_current().enable_progress_bars = False

    # The decoded blocks are materialised once in the object store, and a small dataset is
    # repeated (each copy shuffled differently) until one pass over it is at least
    # MIN_STEPS_PER_PASS steps: starting a pass costs ~2-3 s on 2 cores, longer than a whole
    # epoch of digits. `epoch` in checkpoints counts these passes.
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
        base = base.materialize()  # else: stream from Parquet every pass, as Ray Data is built to
    repeats = math.ceil(spec.trainer.batch_size * MIN_STEPS_PER_PASS / data.info.num_rows)
    train_ds = base
    if repeats > 1:
        # One map over the blocks, each emitting `repeats` copies of its rows, every copy in its
        # own order: a cheap stand-in for Dataset.random_shuffle, whose all-to-all took minutes
        # for 13 copies of digits on 2 cores (and a union of copies printed a plan that long).
        train_ds = base.map_batches(permute_rows, batch_format="numpy", batch_size=None,
                                    fn_kwargs={"seed": spec.trainer.seed, "repeats": repeats}).materialize()
    return TrainData(train_ds, repeats)


def permute_rows(batch: dict[str, Any], seed: int, repeats: int = 1) -> dict[str, Any]:
    """`repeats` copies of the batch's rows, each in its own seeded order."""
    n = len(next(iter(batch.values())))
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(n) for _ in range(repeats)])
    return {k: v[order] for k, v in batch.items()}
