"""Where the training loop runs, as the five things it asks of it.

The loop (loop.py) needs its rank and world size, its device, the checkpoint to resume from, a
way to report metrics and a checkpoint, and its shard of the training data. Two places provide
them:

    RayTrainSession   a Ray Train worker (or Train's local mode, workers: 0): ray.train's API;
                      reports go to the Train controller, which persists the checkpoints
    TrialSession      inside a Ray Tune trial, one process, no Train controller and no worker
                      group: reports go straight to ray.tune.report, checkpoints stay where the
                      loop wrote them (its local checkpoint directory, which a restored trial
                      finds again), the data is the whole dataset

Why a trial does not start a TorchTrainer when it needs one worker: the controller, the worker
actor and its process group cost a tiny trial ~45 s on the 2-core machine, more than most ASHA
trials train (issue 22; benchmarks/trial_overhead.py). A multi-worker trial still runs Ray Train.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch


class LoopSession(Protocol):
    world_rank: int
    world_size: int

    def device(self) -> torch.device: ...

    def latest_checkpoint(self) -> Any | None:
        """A checkpoint (with as_directory()) to resume from, or None for a fresh run."""
        ...

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        """Metrics of a checkpoint, and the directory rank 0 wrote it to (None on other ranks)."""
        ...

    def dataset_shard(self):
        """This worker's ray.data.DataIterator over the training split."""
        ...


class RayTrainSession:
    """A Ray Train worker: ray.train.get_context(), get_checkpoint(), report(), the dataset shard.
    per_rank: the driver cut the data into one dataset per rank, `train_<rank>` (data.TrainData.shards),
    instead of handing Train one `train` dataset to split."""

    def __init__(self, *, per_rank: bool = False):
        import ray.train

        ctx = ray.train.get_context()
        self.world_rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.per_rank = per_rank

    def device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()

    def latest_checkpoint(self):
        import ray.train

        return ray.train.get_checkpoint()

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir)
                         if checkpoint_dir is not None else None)

    def dataset_shard(self):
        import ray.train

        return ray.train.get_dataset_shard(f"train_{self.world_rank}" if self.per_rank else "train")


class TrialSession:
    """One process inside a Ray Tune trial. Reports carry `checkpoint_path`, the directory the loop
    wrote, as Ray's TuneReportCallback does for a Train run inside a trial, so the sweep finds each
    trial's model the same way either way."""

    world_rank, world_size = 0, 1

    def __init__(self, dataset, *, gpu: bool):
        self._dataset = dataset
        self._gpu = gpu

    def device(self) -> torch.device:
        if self._gpu and torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def latest_checkpoint(self):
        return None  # the loop's own checkpoint directory holds what a restored trial resumes from

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        from ray import tune

        tune.report({**metrics, **({"checkpoint_path": str(Path(checkpoint_dir))} if checkpoint_dir else {})})

    def dataset_shard(self):
        return self._dataset.iterator()
