"""The Ray Train TorchTrainer for one run: scaling, the collective backend, the dataset, the
storage and failure settings, and what the workers' loop needs (pipelines/training/loop.py);
or, for a one-worker Tune trial, the same loop in the trial's own process (run_in_process)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genray.pipelines import console
from genray.pipelines.config import ExperimentSpec
from genray.pipelines.data import DataSource, TrainData, build_dataset
from genray.pipelines.env import storage_path
from genray.pipelines.training.loop import latest_checkpoint_dir, run_loop, train_loop_per_worker
from genray.pipelines.training.session import TrialSession


@dataclass
class ModelInputs:
    """What the workers need to build the model beyond the config, worked out on the driver: the
    builder's arguments with model references resolved (weights included), the data's
    description, and the quality probe's feature network (None: off)."""

    args: dict[str, Any]
    data: dict[str, Any]
    quality: dict[str, Any] | None = None


def loop_config(spec: ExperimentSpec, data: DataSource, inputs: ModelInputs, train_data: TrainData, *, name: str,
                home: Path, uri: str, run_id: str, keep_checkpoints: bool,
                startup: dict[str, float] | None = None) -> dict[str, Any]:
    """What the loop (loop.py) is handed, wherever it runs. keep_checkpoints: the loop writes its
    checkpoints under the run's storage folder itself (Train's local mode persists none; a trial's
    process has no Train controller to persist them). startup: the driver's wall-clock marks
    (time.time()) since the run started, which the loop completes and logs at its first step."""
    return {
        "startup": dict(startup or {}),
        "spec": spec.model_dump(mode="json"),
        "model_args": inputs.args,
        "data": inputs.data,
        "quality": inputs.quality,
        "name": name,
        "uri": uri,
        "run_id": run_id,
        "test": {"path": data.test, "columns": data.columns, **data.decode},
        # Repeated copies are already permuted row by row; a local shuffle buffer on top costs
        # ~6 ms of worker CPU per batch here for nothing.
        "local_shuffle": train_data.repeats == 1,
        "local_checkpoints": str(Path(storage_path(home)) / name) if keep_checkpoints else None,
        "echo": console.verbose(),  # the workers' own progress lines (the driver shows a bar either way)
    }


def run_in_process(spec: ExperimentSpec, data: DataSource, inputs: ModelInputs, *, name: str, home: Path, uri: str,
                   run_id: str, train_data: TrainData | None = None,
                   startup: dict[str, float] | None = None) -> tuple[Path, dict[str, Any]]:
    """The loop in this process without Ray Train: what a one-worker Tune trial runs (session.py
    says why). Returns the final checkpoint's directory and the loop's last metrics."""
    startup = dict(startup or {})
    train_data = train_data or build_dataset(spec, data)
    startup["dataset"] = time.time()
    cfg = loop_config(spec, data, inputs, train_data, name=name, home=home, uri=uri, run_id=run_id,
                      keep_checkpoints=True, startup=startup)
    metrics = run_loop(cfg, TrialSession(train_data.dataset, gpu=spec.scaling.gpu))
    final = latest_checkpoint_dir(Path(cfg["local_checkpoints"]))
    if final is None:
        raise RuntimeError(f"run {name} finished without a checkpoint under {cfg['local_checkpoints']}")
    return final, metrics


def build_trainer(spec: ExperimentSpec, data: DataSource, inputs: ModelInputs, *, name: str, home: Path, uri: str,
                  run_id: str, callbacks: list | None = None, train_data: TrainData | None = None,
                  startup: dict[str, float] | None = None):
    """The TorchTrainer for one run. `train_data` is a dataset built beforehand by build_dataset
    (a sweep builds one for all its trials when they share TrainData.key); else one is built.
    scaling.workers = 0 runs the same loop in this process (Ray Train's local mode)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    startup = dict(startup or {})
    train_data = train_data or build_dataset(spec, data)
    startup["dataset"] = time.time()  # Train's controller, worker group and process group come next
    s = spec.scaling
    # Train's streaming_split hands each block to the worker with the fewest rows so far: the
    # same shards every pass and every restart when the blocks arrive in order. Its default
    # options drop the dataset's preserve_order, and locality hints would let block placement
    # decide; preserve_order turns both off (docs/ARCHITECTURE.md, "Data order on resume").
    ingest = DataConfig.default_ingest_options()
    ingest.preserve_order = True
    cfg = loop_config(spec, data, inputs, train_data, name=name, home=home, uri=uri, run_id=run_id,
                      keep_checkpoints=s.workers == 0, startup=startup)
    if train_data.in_memory and s.workers > 0:
        # Data decoded in the driver's memory is cut into one dataset per rank here, and Train
        # splits nothing: no streaming-split coordinator to start (~4 s to the first batch on
        # 2 cores), and every pass reads the same contiguous shard (data.TrainData.shards).
        datasets = {f"train_{rank}": shard for rank, shard in enumerate(train_data.shards(s.workers))}
        dataset_config = DataConfig(datasets_to_split=[], execution_options=ingest)
        cfg["per_rank_shards"] = True
    else:
        datasets = {"train": train_data.dataset}
        dataset_config = DataConfig(execution_options=ingest)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=cfg,
        scaling_config=ScalingConfig(
            num_workers=s.workers,
            use_gpu=s.gpu,
            resources_per_worker={"CPU": s.cpus_per_worker, **({"GPU": 1} if s.gpu else {})},
            placement_strategy=s.placement_strategy,
        ),
        # NCCL between GPUs, gloo between CPU processes, unless the config says otherwise.
        torch_config=TorchConfig(backend=s.backend if s.backend != "auto" else ("nccl" if s.gpu else "gloo")),
        datasets=datasets,
        dataset_config=dataset_config,
        run_config=RunConfig(
            name=name,
            storage_path=storage_path(home),
            checkpoint_config=CheckpointConfig(num_to_keep=spec.trainer.num_to_keep),
            failure_config=FailureConfig(max_failures=s.max_failures),
            callbacks=callbacks,
        ),
    )
