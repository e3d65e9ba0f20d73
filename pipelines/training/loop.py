"""The per-worker training loop that Ray Train runs: data shard in, engine steps, metrics and
sample grids to MLflow (rank 0), checkpoints out. It knows a model only through the Protocol
(components/models/protocol.py) and its recipe only through the engine
(components/training/engine.py); it never names a family.

    setup     build the model (components.models.build), the engine, resume from the latest
              checkpoint Ray Train hands back
    loop      a fresh run's first batch initialises data-dependent parameters; a resumed one
              skips the batches its interrupted pass already trained on; then per batch:
              reseed, engine.train_step, log every log_every, eval every eval_every (rank 0),
              checkpoint every checkpoint_every (every rank reports); all three at the last
              step: max_steps, or the first step past trainer.max_minutes of training
    teardown  the last metrics, returned to the driver
"""
from __future__ import annotations

import itertools
import math
import shutil
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genray.components import checkpoint
from genray.components.data import DatasetInfo, normalize_images
from genray.components.data.show import density, render
from genray.components.models import build
from genray.components.training import Engine, OptimDefaults, StepSettings, step_seed
from genray.pipelines import tracking
from genray.pipelines.config import ExperimentSpec
from genray.pipelines.data import read_decoded
from genray.pipelines.quality import QualityProbe
from genray.pipelines.training.session import LoopSession, RayTrainSession


def train_loop_per_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """Ray Train's entry point (a worker, or the caller's process in local mode)."""
    return run_loop(cfg, RayTrainSession(per_rank=cfg.get("per_rank_shards", False)))


def run_loop(cfg: dict[str, Any], session: LoopSession) -> dict[str, Any]:
    """The loop, wherever `session` says it runs (session.py): a Ray Train worker, or a Tune
    trial's own process."""
    # ------------------------------------------------------------------------- setup
    startup = {**cfg.get("startup", {}), "loop": time.time()}  # the driver's marks, then this process's
    spec = ExperimentSpec.model_validate(cfg["spec"])
    t = spec.trainer
    rank, world = session.world_rank, session.world_size
    device = session.device()
    use_bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")
    data = DatasetInfo.from_json(cfg["data"])

    torch.manual_seed(t.seed)  # the same initial weights on every rank (the engine broadcasts rank 0's too)
    model = build(spec.model.family, cfg["model_args"], data).to(device)
    engine = Engine(model, defaults=OptimDefaults(t.lr, tuple(t.betas), t.weight_decay),
                    settings=StepSettings(max_steps=t.max_steps, grad_accum=t.grad_accum, grad_clip=t.grad_clip,
                                          warmup_steps=t.warmup_steps, min_lr_ratio=t.min_lr_ratio,
                                          lr_schedule=t.lr_schedule, lr_decay_start=t.lr_decay_start,
                                          ema_decay=t.ema_decay, bf16=use_bf16))
    epoch = 0  # passes over the training data completed
    trained_before = 0.0  # seconds of training before this process (a resumed run's, for trainer.max_minutes)
    into_epoch = 0  # batches of pass `epoch` trained on (the same count on every rank)
    # After a restart or a rerun: the latest reported checkpoint (Ray Train), or where the session
    # keeps no checkpoints of its own (local mode, a trial's process), the latest this loop wrote.
    local_dir = Path(cfg["local_checkpoints"]) if cfg.get("local_checkpoints") else None
    resumed = session.latest_checkpoint() or (_latest_local(local_dir) if local_dir else None)
    if resumed is not None:
        with resumed.as_directory() as d:
            ck = checkpoint.load(d, map_location=device)
        model.load_state_dict(ck.model)
        engine.load_state_dict(ck.optimizer, step=ck.state["step"], ema=ck.ema)
        epoch = ck.state["epoch"]
        into_epoch = ck.state.get("batches_into_epoch", 0)  # older checkpoints: the pass starts over
        trained_before = float(ck.state.get("train_seconds", 0.0))
        if rank == 0 and cfg.get("echo"):
            say(f"[{cfg['name']}] resumed from step {engine.step} (epoch {epoch}, batch {into_epoch} of it)")

    startup["model"] = time.time()  # built, resumed, on the device; the process group is up
    # Rank 0's MLflow client: importing mlflow takes ~2 s, so it happens in a thread while the
    # probe loads and the first batch arrives; the loop takes it at the first step (or at the end,
    # for a run with nothing left to train).
    logger = None
    pending_logger = _start_logger(cfg["uri"], cfg["run_id"], engine.step) if rank == 0 else None
    quality = QualityProbe(cfg["quality"], t.quality_samples, t.seed) if rank == 0 and cfg.get("quality") else None
    startup["probe"] = time.time()  # the quality probe's feature network is loaded

    per_worker = t.batch_size // world
    train_shard = session.dataset_shard()
    startup["shard"] = time.time()
    held_out: list[dict[str, torch.Tensor]] = []
    last_eval: dict[str, float] = {}
    sums: dict[str, float] = {}  # train logs summed over summed_steps steps, for the next log line
    summed_steps = 0
    window_start, window_steps = time.perf_counter(), 0
    data_wait = 0.0  # seconds this window spent waiting for the next batch
    budget_s = t.max_minutes * 60 if t.max_minutes is not None else None
    clock_start, eval_seconds = time.perf_counter(), 0.0

    def train_seconds() -> float:
        """Seconds of training so far, this run's earlier processes included and evals excluded:
        what trainer.max_minutes counts."""
        return trained_before + time.perf_counter() - clock_start - eval_seconds

    def out_of_time() -> bool:
        """Whether trainer.max_minutes is spent, as rank 0's clock says: every rank must stop
        at the same step, or the next report hangs the group."""
        if budget_s is None:
            return False
        over = torch.tensor([float(train_seconds() >= budget_s)], device=device)
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.broadcast(over, src=0)
        return bool(over.item())

    def evaluate() -> dict[str, float]:
        """Rank 0: held-out scores on a fixed set of test batches, the model's sample grids, and
        the cheap quality metrics on fresh samples."""
        if not held_out:
            held_out.extend(_held_out_batches(cfg["test"], per_worker, t.eval_batches, device))
        net = engine.ema.model if engine.ema is not None else model
        net.eval()
        gen = torch.Generator().manual_seed(t.seed)
        totals: dict[str, float] = {}
        with engine.autocast():
            for b in held_out:
                for k, v in net.evaluate(b, generator=gen).items():
                    totals[k] = totals.get(k, 0.0) + float(v) / len(held_out)
            grids = net.eval_samples(t.num_samples, generator_seed=t.seed, batch=held_out[0])
            shown_density = None
            if "log_prob" in net.capabilities and data.modality == "points" and data.shape == (2,):
                # A 2-D density (a flow on the moons): exp(log p) over the box around the data.
                shown_density = density(lambda p: net.log_prob(torch.as_tensor(p, device=device)).float().cpu().numpy(),
                                        held_out[0]["x"].cpu().numpy())
            if quality is not None:
                totals.update(quality.score(net))
        model.train()
        for key, samples in grids.items():
            logger.samples(render(samples.cpu(), data), f"samples/step_{engine.step:06d}{'_' + key if key else ''}",
                           key=f"samples{'_' + key if key else ''}", step=engine.step)
        if shown_density is not None:
            logger.samples(shown_density, f"density/step_{engine.step:06d}", key="density", step=engine.step)
        scores = {f"eval/{k}": v for k, v in totals.items()}
        logger.metrics(scores, step=engine.step)
        return scores

    def save_and_report() -> None:
        metrics = {"step": engine.step, "epoch": epoch, "train_seconds": train_seconds(), **last_eval}
        if rank != 0:
            session.report(metrics, None)  # every rank reports, or the group hangs
            return
        d = tempfile.mkdtemp(prefix="genray-ckpt-") if local_dir is None else str(local_dir / f"checkpoint_{engine.step:06d}")
        try:
            checkpoint.save(d, checkpoint.Checkpoint(
                model=model.state_dict(),
                ema=engine.ema.model.state_dict() if engine.ema is not None else None,
                optimizer=engine.state_dict(),
                state={
                    "step": engine.step,
                    "epoch": epoch,
                    "batches_into_epoch": into_epoch,
                    "train_seconds": train_seconds(),
                    "rng": checkpoint.get_rng_state(),
                    "run_name": cfg["name"],
                    "mlflow_run_id": cfg["run_id"],
                    "config": cfg["spec"],
                    "model": checkpoint.model_state(spec.model.family, cfg["model_args"], data),
                },
            ))
            session.report(metrics, d)
        finally:
            if local_dir is None:
                shutil.rmtree(d, ignore_errors=True)
            else:  # local mode keeps what it wrote, num_to_keep of them
                for old in sorted(local_dir.glob("checkpoint_*"))[: -t.num_to_keep]:
                    shutil.rmtree(old, ignore_errors=True)

    # ------------------------------------------------------------------------- loop
    model.train()
    done = out_of_time()  # a resumed run whose time budget is spent trains nothing more
    while engine.step < t.max_steps and not done:
        batches = train_shard.iter_torch_batches(
            batch_size=per_worker,
            drop_last=True,
            device=device,
            local_shuffle_buffer_size=4 * per_worker if cfg["local_shuffle"] else None,
            local_shuffle_seed=step_seed(t.seed, rank, epoch) if cfg["local_shuffle"] else None,
        )
        # A pass's batches are a function of (seed, pass, workers) (docs/ARCHITECTURE.md, "Data
        # order on resume"), so a resumed run skips those its checkpoint already trained on, like
        # accelerate's skip_first_batches, and reads what the uninterrupted run would have read.
        # Read and dropped, not trained on: the local shuffle buffer must see them to match.
        batches = itertools.islice(batches, into_epoch, None)
        fetch_start = time.perf_counter()
        for batch in batches:
            data_wait += time.perf_counter() - fetch_start
            if "first_batch" not in startup:
                startup["first_batch"] = time.time()
            into_epoch += 1
            batch = {k: normalize_images(v) for k, v in batch.items()}  # uint8 pixels -> [-1, 1] on the device
            if engine.step == 0 and resumed is None:
                engine.initialize(batch)  # data-dependent init, then rank 0's result everywhere
            torch.manual_seed(step_seed(t.seed, rank, engine.step))
            logs = engine.train_step(batch)
            window_steps += 1
            if "first_step" not in startup:
                startup["first_step"] = time.time()
                if rank == 0:
                    logger = pending_logger.result()
                    startup["logger"] = time.time()  # the client was ready (seconds after the first step's)
                    if "start" in startup:
                        logger.metrics(startup_seconds(startup), step=engine.step)
            if rank == 0:
                summed_steps += 1
                for k, v in logs.items():
                    sums[f"train/{k}"] = sums.get(f"train/{k}", 0.0) + v
            step = engine.step
            # The last step: max_steps, or the first step past trainer.max_minutes. Either way it
            # is logged, evaluated and checkpointed, so a time budget keeps its last step.
            done = step >= t.max_steps or out_of_time()

            if rank == 0 and (step % t.log_every == 0 or done):
                elapsed = time.perf_counter() - window_start
                rate = window_steps * t.batch_size / max(elapsed, 1e-9)
                means = {k: v / summed_steps for k, v in sums.items()}
                diverged = sorted(k for k, v in means.items() if not math.isfinite(v))
                if diverged:
                    # A diverged run only wastes compute from here on (and a sweep's trial is
                    # recorded as failed with this message): stop it with the reason.
                    raise FloatingPointError(
                        f"[{cfg['name']}] training diverged: {', '.join(diverged)} is not finite by step {step} "
                        f"(lr {t.lr:g}, grad_clip {t.grad_clip}); lower trainer.lr or set trainer.grad_clip")
                means["train/lr"] = engine.lr()
                means["train/examples_per_s"] = rate
                if data.modality == "tokens":
                    means["train/tokens_per_s"] = rate * data.shape[0]
                means["train/steps_per_s"] = rate / t.batch_size
                means["train/data_wait_frac"] = data_wait / max(elapsed, 1e-9)
                logger.metrics(means, step=step)
                if cfg.get("echo"):  # --verbose: the worker's own line too (the driver shows a bar)
                    _progress(cfg["name"], step, t.max_steps, rate / t.batch_size, means)
                sums.clear()
                summed_steps = 0
                window_start, window_steps, data_wait = time.perf_counter(), 0, 0.0
            if rank == 0 and (step % t.eval_every == 0 or done):
                eval_start = time.perf_counter()
                last_eval = evaluate()
                # Eval time is not training time (nor time budget).
                eval_seconds += time.perf_counter() - eval_start
                window_start, window_steps, data_wait = time.perf_counter(), 0, 0.0
            if step % t.checkpoint_every == 0 or done:
                save_and_report()
            if done:
                break
            fetch_start = time.perf_counter()
        else:
            epoch, into_epoch = epoch + 1, 0

    # ------------------------------------------------------------------------- teardown
    if pending_logger is not None:
        pending_logger.result()  # a run with no step left to train: its resumed_from_step is logged
    return {"step": engine.step, "epoch": epoch, "train_seconds": train_seconds(), **last_eval}


def _start_logger(uri: str, run_id: str, step: int) -> Future:
    """tracking.RunLogger for the run, built in a thread, which logs resumed_from_step first."""
    def make() -> tracking.RunLogger:
        logger = tracking.RunLogger(uri, run_id)
        logger.metrics({"resumed_from_step": step}, step=step)
        return logger

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genray-mlflow")
    future = pool.submit(make)
    pool.shutdown(wait=False)  # the thread ends with `make`
    return future


def startup_seconds(marks: dict[str, float]) -> dict[str, float]:
    """Wall-clock marks -> startup/<mark>_s, seconds from the run's start to each, in order:
    data (prepared or found), model_inputs (references resolved, the model built once on the
    driver), mlflow_run, ray_init, dataset (the Ray Dataset materialised), loop (this process
    entered the loop: with Ray Train, its controller, worker group and process group are up),
    model, probe (the quality probe's feature network loaded), shard (the dataset shard handed
    over), first_batch, first_step, then logger (rank 0's MLflow client, started in a thread at
    `model`, taken at the first step)."""
    start = marks["start"]
    return {f"startup/{k}_s": round(v - start, 3) for k, v in marks.items() if k != "start"}


def _latest_local(root: Path):
    import ray.train

    done = latest_checkpoint_dir(root)
    return ray.train.Checkpoint.from_directory(str(done)) if done else None


def latest_checkpoint_dir(root: Path) -> Path | None:
    """The newest complete checkpoint_* directory the loop wrote under root (local mode, trials)."""
    done = sorted(p for p in root.glob("checkpoint_*") if (p / checkpoint.STATE_FILE).is_file())
    return done[-1] if done else None


def _held_out_batches(test: dict[str, Any], batch_size: int, num_batches: int, device) -> list[dict[str, torch.Tensor]]:
    """The first num_batches batches of the test split, the same every eval so scores compare.
    Read with pyarrow on rank 0: a few batches do not justify starting Ray Data tasks."""
    decoded = read_decoded(test["path"], test["columns"], test["modality"], test["shape"], batch_size * num_batches,
                           text_len=test.get("text_len", 0))
    num_rows = len(decoded["x"])
    return [
        {k: torch.as_tensor(np.asarray(v[i : i + batch_size])).to(device) for k, v in decoded.items()}
        for i in range(0, num_rows, batch_size)
    ]


def _progress(name: str, step: int, total: int, steps_per_s: float, means: dict[str, float]) -> None:
    losses = " ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in means.items() if k.endswith("loss"))
    eta = (total - step) / max(steps_per_s, 1e-9)
    say(
        f"[{name}] step {step}/{total} | {means['train/examples_per_s']:.0f} ex/s "
        f"(data wait {100 * means['train/data_wait_frac']:.0f}%) | {losses} "
        f"| eta {int(eta // 60)}m{int(eta % 60):02d}s"
    )


def say(line: str) -> None:
    # Not print(): Ray Train patches it to tee into its logger, which doubles every line.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
