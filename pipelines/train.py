"""Train any genray family data-parallel with Ray Train, tracked in MLflow.

    genray train pipelines/configs/vae/beta_vae_shapes.yaml --workers 2 --name shapes-b4
    python -m pipelines.train CONFIG [--set k=v ...]     # the same job, for `ray job submit`

Rerunning with the same --name continues that run from its latest checkpoint, in the same
MLflow run. Layout under the project home (GENRAY_HOME, default ./genray-runs):

    data/<dataset>-<size>-seed<S>/{train,test}.parquet   built-in datasets, prepared on first use
    ray_results/<name>/checkpoint_*/                      Ray Train checkpoints (components.checkpoint)
    mlflow.db, mlartifacts/                               the local MLflow store
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components import checkpoint
from components.data import DATASETS, DatasetInfo, decode_batch, image_grid, normalize_images, read_info
from components.models import FAMILIES
from pipelines import tracking
from pipelines.config import ConfigError, ExperimentSpec

# ----------------------------------------------------------------------------- setup (driver)

MIN_STEPS_PER_PASS = 200
MATERIALIZE_MAX_BYTES = 2 * 2**30  # decoded uint8 data held in the object store at most


def project_home() -> Path:
    return Path(os.environ.get("GENRAY_HOME", "genray-runs")).resolve()


def storage_path(home: Path) -> str:
    """Where Ray Train writes checkpoints: GENRAY_STORAGE when set (a path every node sees, or a
    pyarrow-filesystem URI such as s3://bucket/genray or gs://...), else <home>/ray_results."""
    return os.environ.get("GENRAY_STORAGE") or str(home / "ray_results")


@dataclass(frozen=True)
class DataSource:
    train: str
    test: str
    info: DatasetInfo
    text_len: int = 0  # > 0: captions are read too, as `text` byte tokens (text-conditioned models)

    @property
    def columns(self) -> list[str]:
        """The stored columns the image families train on."""
        return (["image"] + (["label"] if "label" in self.info.columns else [])
                + (["caption"] if self.text_len else []))

    @property
    def decode(self) -> dict[str, Any]:
        """decode_batch's arguments for these columns."""
        return {"modality": self.info.modality, "shape": self.info.shape,
                **({"text_len": self.text_len} if self.text_len else {})}

    def model_args(self) -> dict[str, Any]:
        """What the model builder learns from the data rather than from the config."""
        if self.info.modality != "image":
            raise ConfigError(f"{self.train}: modality {self.info.modality!r}; these families train on images")
        h, w, c = self.info.shape
        return {"image_shape": (c, h, w), "num_classes": self.info.num_classes}


def _absolute(path: str) -> str:
    """A local path made absolute (the workers' working directory is not ours); a URI such as
    s3://bucket/data or gs://... as it is, for pyarrow's filesystems and Ray Data."""
    return path if "://" in path else str(Path(path).resolve())


def resolve_data(spec: ExperimentSpec, home: Path) -> DataSource:
    d = spec.data
    if d.path is not None:
        train = _absolute(d.path)
        if d.test_path is None:
            raise ConfigError("data.test_path: required with data.path (held-out Parquet for eval)")
        test = _absolute(d.test_path)
    else:
        root = home / "data" / f"{d.dataset}-{d.size}-seed{d.seed}"
        if not (root / "test.parquet").exists():  # test is written last
            DATASETS[d.dataset](root, seed=d.seed, size=d.size)
        train, test = str(root / "train.parquet"), str(root / "test.parquet")
    info = read_info(train)
    test_info = read_info(test)
    if (test_info.modality, test_info.shape) != (info.modality, info.shape):
        raise ConfigError(f"{test}: shape {test_info.shape} differs from training data {info.shape}")
    text_len = 0
    if spec.model_args().get("conditioning") == "text":
        for path, i in ((train, info), (test, test_info)):
            if "caption" not in i.columns:
                raise ConfigError(
                    f"{path}: model.conditioning=text needs a 'caption' column; this data has {', '.join(i.columns)}"
                )
        text_len = int(spec.model_args().get("text_len", 64))
    return DataSource(train, test, info, text_len)


@dataclass
class ModelInputs:
    """What the builder needs beyond the config, worked out on the driver: arguments derived from
    the data or from models the config names, and weights for submodules of a fresh model."""

    args: dict[str, Any]
    init_weights: dict[str, bytes]
    # The feature network for the cheap quality metrics at each eval (None: off): its config,
    # safetensors weights, id, metric name and the held-out features it compares against.
    quality: dict[str, Any] | None = None


def resolve_model_inputs(spec: ExperimentSpec, data: DataSource, *, uri: str, home: Path) -> ModelInputs:
    """Derive the builder's data arguments, resolve a latent-diffusion autoencoder reference, and
    build the model once here so a bad combination is a ConfigError before Ray starts."""
    args = data.model_args()
    init_weights: dict[str, bytes] = {}
    ref = spec.model_args().get("autoencoder")
    if ref:
        from safetensors.torch import save as save_safetensors

        try:
            ckpt_dir = tracking.resolve_checkpoint(ref, uri, home / "cache")
        except ValueError as e:
            raise ConfigError(f"model.autoencoder: {e}") from None
        ae, state = checkpoint.build_model(ckpt_dir)
        args["autoencoder_model"] = state["model"]
        args["latent_scale"] = latent_scale(ae, data)
        init_weights["autoencoder"] = save_safetensors({k: v.contiguous() for k, v in ae.state_dict().items()})
    try:
        FAMILIES[spec.model.family](**spec.model_args(), **_data_args(args))
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
    return ModelInputs(args, init_weights, quality_inputs(spec, data, home))


def latent_scale(autoencoder: torch.nn.Module, data: DataSource, rows: int = 2048, seed: int = 0) -> float:
    """Rombach et al. 2022, appendix G: scale latents to unit variance, 1 / std of posterior
    samples over (the first `rows` of) the training data."""
    x = normalize_images(torch.as_tensor(read_decoded(data.train, ["image"], data.info.modality, data.info.shape, rows)["x"]))
    gen = torch.Generator().manual_seed(seed)
    zs = [autoencoder.sample_posterior(x[i : i + 256], gen) for i in range(0, len(x), 256)]
    std = float(torch.cat(zs).std())
    if not math.isfinite(std) or std <= 0:
        raise ConfigError(f"model.autoencoder: its latents have std {std} on {data.train}; is it trained?")
    return 1.0 / std


def init_ray() -> None:
    import ray

    if ray.is_initialized():
        return
    ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=True, configure_logging=False)


@dataclass(frozen=True)
class TrainData:
    """The training split as a Ray Dataset, ready for the workers' shards."""

    dataset: Any  # ray.data.Dataset
    repeats: int  # copies of the data in one pass (each permuted differently)

    @staticmethod
    def key(spec: ExperimentSpec) -> dict[str, Any]:
        """What the dataset depends on: two specs with the same key can share one."""
        return {"data": spec.data.model_dump(mode="json"), "batch_size": spec.trainer.batch_size,
                "seed": spec.trainer.seed, "text_len": spec.model_args().get("text_len"),
                "conditioning": spec.model_args().get("conditioning")}


def build_dataset(spec: ExperimentSpec, data: DataSource) -> TrainData:
    import ray.data
    from ray.data import DataContext

    # Ray Data's progress bars fight with the training progress line (and in a Tune trial they
    # are the trial's whole log). Set here, in whichever process builds the dataset.
    DataContext.get_current().enable_progress_bars = False

    # Decoding runs in Ray Data tasks, never on the driver; images stay uint8 until they reach
    # the worker's device. The decoded blocks are materialised once in the object store, and a
    # small dataset is repeated (each copy shuffled differently) until one pass over it is at
    # least MIN_STEPS_PER_PASS steps: starting a pass costs ~2-3 s on 2 cores, longer than a whole
    # epoch of digits. `epoch` in checkpoints counts these passes.
    base = (
        ray.data.read_parquet(data.train)
        .select_columns(data.columns)
        .map_batches(decode_batch, batch_format="numpy", fn_kwargs={**data.decode, "normalize": False})
    )
    if data.info.num_rows * math.prod(data.info.shape) <= MATERIALIZE_MAX_BYTES:
        base = base.materialize()  # else: stream from Parquet every pass, as Ray Data is built to
    repeats = math.ceil(spec.trainer.batch_size * MIN_STEPS_PER_PASS / data.info.num_rows)
    train_ds = base
    if repeats > 1:
        # Each copy permutes its blocks' rows with its own seed: a cheap stand-in for
        # Dataset.random_shuffle, whose all-to-all took minutes for 13 copies of digits on 2 cores.
        copies = [
            base.map_batches(permute_rows, batch_format="numpy", batch_size=None,
                             fn_kwargs={"seed": spec.trainer.seed + i})
            for i in range(repeats)
        ]
        train_ds = copies[0].union(*copies[1:]).materialize()
    return TrainData(train_ds, repeats)


def build_trainer(spec: ExperimentSpec, data: DataSource, inputs: ModelInputs, *, name: str, home: Path, uri: str, run_id: str,
                  callbacks: list | None = None, train_data: TrainData | None = None):
    """The TorchTrainer for one run. `train_data` is a dataset built beforehand by build_dataset
    (a sweep builds one for all its trials when they share TrainData.key); else one is built."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    train_data = train_data or build_dataset(spec, data)
    columns, decode, repeats = data.columns, data.decode, train_data.repeats

    s = spec.scaling
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "spec": spec.model_dump(mode="json"),
            "data_args": inputs.args,
            "init_weights": inputs.init_weights,
            "quality": inputs.quality,
            "name": name,
            "uri": uri,
            "run_id": run_id,
            "test": {"path": data.test, "columns": columns, **decode},
            # Repeated copies are already permuted row by row; a local shuffle buffer on top costs
            # ~6 ms of worker CPU per batch here for nothing.
            "local_shuffle": repeats == 1,
        },
        scaling_config=ScalingConfig(
            num_workers=s.workers,
            use_gpu=s.gpu,
            resources_per_worker={"CPU": s.cpus_per_worker, **({"GPU": 1} if s.gpu else {})},
            placement_strategy=s.placement_strategy,
        ),
        # NCCL between GPUs, gloo between CPU processes, unless the config says otherwise.
        torch_config=TorchConfig(backend=s.backend if s.backend != "auto" else ("nccl" if s.gpu else "gloo")),
        # Every worker streams its own shard; rank 0 reads a few held-out batches for eval.
        datasets={"train": train_data.dataset},
        run_config=RunConfig(
            name=name,
            storage_path=storage_path(home),
            checkpoint_config=CheckpointConfig(num_to_keep=spec.trainer.num_to_keep),
            failure_config=FailureConfig(max_failures=s.max_failures),
            callbacks=callbacks,
        ),
    )


# ----------------------------------------------------------------------------- the loop (workers)


def permute_rows(batch: dict[str, Any], seed: int) -> dict[str, Any]:
    order = np.random.default_rng(seed).permutation(len(next(iter(batch.values()))))
    return {k: v[order] for k, v in batch.items()}


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup, then cosine decay to min_ratio (Loshchilov & Hutter 2017)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def step_seed(seed: int, rank: int, step: int) -> int:
    # Reseeding every step makes a resumed run draw exactly the noise the uninterrupted run would.
    return (seed * 1_000_003 + rank * 10_007 + step) % (2**63)


class EMA:
    """Exponential moving average of the weights, with the usual warmup so short runs are not
    dominated by the initialisation: decay_t = min(decay, (1 + t) / (10 + t))."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        ema_p = list(self.model.parameters())
        torch._foreach_lerp_(ema_p, [p.detach() for p in model.parameters()], 1 - d)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)


def train_loop_per_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    import ray.train
    import ray.train.torch
    from safetensors.torch import load as load_safetensors

    spec = ExperimentSpec.model_validate(cfg["spec"])
    t = spec.trainer
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    use_bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")

    # --- model, optimizers, schedules (same init on every rank; DDP also broadcasts rank 0's)
    torch.manual_seed(t.seed)
    resumed = ray.train.get_checkpoint()  # after a restart or a rerun: the latest reported one
    model = FAMILIES[spec.model.family](**spec.model_args(), **_data_args(cfg["data_args"]))
    if resumed is None:
        # Pretrained parts of a fresh model (the frozen autoencoder of latent diffusion).
        for submodule, blob in cfg.get("init_weights", {}).items():
            model.get_submodule(submodule).load_state_dict(load_safetensors(blob))
    model.to(device)
    phases = tuple(model.phases)
    optimizers = {
        p: torch.optim.AdamW(model.parameters_for(p), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
        for p in phases
    }
    schedulers = {
        p: torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, t.warmup_steps, t.max_steps, t.min_lr_ratio)
        )
        for p, opt in optimizers.items()
    }
    step, epoch = 0, 0

    # --- resume from that checkpoint
    ema_state = None
    if resumed is not None:
        with resumed.as_directory() as d:
            ck = checkpoint.load(d, map_location=device)
        model.load_state_dict(ck.model)
        for p in phases:
            optimizers[p].load_state_dict(ck.optimizer["optimizers"][p])
            schedulers[p].load_state_dict(ck.optimizer["schedulers"][p])
        step, epoch, ema_state = ck.state["step"], ck.state["epoch"], ck.ema
        if rank == 0:
            _say(f"[{cfg['name']}] resumed from step {step} (epoch {epoch})")

    ema = None
    if rank == 0 and t.ema_decay is not None:
        ema = EMA(model, t.ema_decay)
        if ema_state is not None:
            ema.model.load_state_dict(ema_state)

    # GANs step different submodules per phase: DDP must tolerate parameters without grads.
    ddp = ray.train.torch.prepare_model(
        model, move_to_device=False, parallel_strategy_kwargs={"find_unused_parameters": len(phases) > 1}
    )
    logger = tracking.RunLogger(cfg["uri"], cfg["run_id"]) if rank == 0 else None
    if logger is not None:
        logger.metrics({"resumed_from_step": step}, step=step)

    per_worker = t.batch_size // world
    micro = per_worker // t.grad_accum
    train_shard = ray.train.get_dataset_shard("train")
    held_out: list[dict[str, torch.Tensor]] = []
    last_eval: dict[str, float] = {}
    sums: dict[str, float] = {}
    window_start, window_steps, started = time.perf_counter(), 0, time.perf_counter()
    data_wait = 0.0  # seconds this window spent waiting for the next batch

    quality = _QualityProbe(cfg["quality"], t.quality_samples, t.seed) if rank == 0 and cfg.get("quality") else None

    def evaluate() -> dict[str, float]:
        """Rank 0: held-out scores on a fixed set of test batches, a sample grid, and the cheap
        quality metrics on fresh samples."""
        if not held_out:
            held_out.extend(_held_out_batches(cfg["test"], per_worker, t.eval_batches, device))
        net = ema.model if ema is not None else model
        net.eval()
        gen = torch.Generator().manual_seed(t.seed)
        totals: dict[str, float] = {}
        with _autocast(device, use_bf16):
            for b in held_out:
                for k, v in net.evaluate(b, generator=gen).items():
                    totals[k] = totals.get(k, 0.0) + float(v) / len(held_out)
            if hasattr(net, "eval_samples"):  # e.g. one grid per guidance scale
                grids = net.eval_samples(t.num_samples, generator_seed=t.seed, batch=held_out[0])
            else:
                grids = {"": net.sample(t.num_samples, generator=torch.Generator().manual_seed(t.seed))}
            if quality is not None:
                totals.update(quality.score(net))
        net.train()
        model.train()
        for key, samples in grids.items():
            logger.image(image_grid(samples.float().cpu()), f"samples/step_{step:06d}{'_' + key if key else ''}.png")
        scores = {f"eval/{k}": v for k, v in totals.items()}
        logger.metrics(scores, step=step)
        return scores

    def save_and_report() -> None:
        metrics = {"step": step, "epoch": epoch, **last_eval}
        if rank != 0:
            ray.train.report(metrics, checkpoint=None)  # every rank reports, or the group hangs
            return
        d = tempfile.mkdtemp(prefix="genray-ckpt-")
        try:
            checkpoint.save(
                d,
                checkpoint.Checkpoint(
                    model=model.state_dict(),
                    ema=ema.model.state_dict() if ema is not None else None,
                    optimizer={
                        "optimizers": {p: o.state_dict() for p, o in optimizers.items()},
                        "schedulers": {p: s.state_dict() for p, s in schedulers.items()},
                    },
                    state={
                        "step": step,
                        "epoch": epoch,
                        "rng": checkpoint.get_rng_state(),
                        "run_name": cfg["name"],
                        "mlflow_run_id": cfg["run_id"],
                        "config": cfg["spec"],
                        "model": {
                            "family": spec.model.family,
                            "args": spec.model_args(),
                            "data_args": cfg["data_args"],
                        },
                    },
                ),
            )
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        finally:
            shutil.rmtree(d, ignore_errors=True)

    # --- loop
    while step < t.max_steps:
        batches = train_shard.iter_torch_batches(
            batch_size=per_worker,
            drop_last=True,
            device=device,
            local_shuffle_buffer_size=4 * per_worker if cfg["local_shuffle"] else None,
            local_shuffle_seed=step_seed(t.seed, rank, epoch) if cfg["local_shuffle"] else None,
        )
        fetch_start = time.perf_counter()
        for batch in batches:
            data_wait += time.perf_counter() - fetch_start
            batch["x"] = normalize_images(batch["x"])
            torch.manual_seed(step_seed(t.seed, rank, step))
            if hasattr(model, "set_step"):
                model.set_step(step)
            for phase in phases:
                opt = optimizers[phase]
                opt.zero_grad(set_to_none=True)
                for i in range(t.grad_accum):
                    mb = {k: v[i * micro : (i + 1) * micro] for k, v in batch.items()}
                    # Only the last micro-batch all-reduces its gradients.
                    sync = i == t.grad_accum - 1 or not hasattr(ddp, "no_sync")
                    with (contextlib.nullcontext() if sync else ddp.no_sync()):
                        with _autocast(device, use_bf16):
                            loss, logs = ddp(mb, phase)
                        (loss / t.grad_accum).backward()
                    if rank == 0:
                        _accumulate(sums, phase, loss, logs, 1 / t.grad_accum)
                if t.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(list(model.parameters_for(phase)), t.grad_clip)
                opt.step()
                schedulers[phase].step()
            step += 1
            window_steps += 1
            if ema is not None:
                ema.update(model, step)

            if rank == 0 and (step % t.log_every == 0 or step == t.max_steps):
                elapsed = time.perf_counter() - window_start
                rate = window_steps * t.batch_size / max(elapsed, 1e-9)
                means = {k: v / window_steps for k, v in sums.items()}
                diverged = sorted(k for k, v in means.items() if not math.isfinite(v))
                if diverged:
                    # A diverged run only wastes compute from here on (and a sweep's trial is
                    # recorded as failed with this message): stop it with the reason.
                    raise FloatingPointError(
                        f"[{cfg['name']}] training diverged: {', '.join(diverged)} is not finite by step {step} "
                        f"(lr {t.lr:g}, grad_clip {t.grad_clip}); lower trainer.lr or set trainer.grad_clip")
                means["train/lr"] = schedulers[phases[0]].get_last_lr()[0]
                means["train/examples_per_s"] = rate
                means["train/data_wait_frac"] = data_wait / max(elapsed, 1e-9)
                logger.metrics(means, step=step)
                _progress(cfg["name"], step, t.max_steps, rate / t.batch_size, means, started)
                sums.clear()
                window_start, window_steps, data_wait = time.perf_counter(), 0, 0.0
            if rank == 0 and (step % t.eval_every == 0 or step == t.max_steps):
                last_eval = evaluate()
                # Eval time is not training time.
                window_start, window_steps, data_wait = time.perf_counter(), 0, 0.0
            if step % t.checkpoint_every == 0 or step == t.max_steps:
                save_and_report()
            if step >= t.max_steps:
                break
            fetch_start = time.perf_counter()
        else:
            epoch += 1

    return {"step": step, "epoch": epoch, **last_eval}


def _held_out_batches(test: dict[str, Any], batch_size: int, num_batches: int, device) -> list[dict[str, torch.Tensor]]:
    """The first num_batches batches of the test split, the same every eval so scores compare.
    Read with pyarrow on rank 0: a few batches do not justify starting Ray Data tasks."""
    decoded = read_decoded(test["path"], test["columns"], test["modality"], test["shape"], batch_size * num_batches,
                           text_len=test.get("text_len", 0))
    num_rows = len(decoded["x"])
    return [
        {k: torch.as_tensor(v[i : i + batch_size]).to(device) for k, v in decoded.items()}
        for i in range(0, num_rows, batch_size)
    ]


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


def _data_args(data_args: dict[str, Any]) -> dict[str, Any]:
    return {**data_args, "image_shape": tuple(data_args["image_shape"])}


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def _accumulate(sums: dict[str, float], phase: str, loss, logs, weight: float) -> None:
    key = "train/loss" if phase == "main" else f"train/{phase}_loss"
    sums[key] = sums.get(key, 0.0) + float(loss.detach()) * weight
    for k, v in logs.items():
        sums[f"train/{k}"] = sums.get(f"train/{k}", 0.0) + float(v) * weight


def _progress(name: str, step: int, total: int, steps_per_s: float, means: dict[str, float], started: float) -> None:
    losses = " ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in means.items() if k.endswith("loss"))
    eta = (total - step) / max(steps_per_s, 1e-9)
    _say(
        f"[{name}] step {step}/{total} | {means['train/examples_per_s']:.0f} ex/s "
        f"(data wait {100 * means['train/data_wait_frac']:.0f}%) | {losses} "
        f"| eta {int(eta // 60)}m{int(eta % 60):02d}s"
    )


def _say(line: str) -> None:
    # Not print(): Ray Train patches it to tee into its logger, which doubles every line.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# ----------------------------------------------------------------------------- the driver


@dataclass
class TrainOutcome:
    name: str
    run_id: str
    checkpoint: Path
    metrics: dict[str, Any]
    model_name: str | None
    model_version: str | None
    tracking_uri: str


def run(spec: ExperimentSpec, *, name: str, home: Path | None = None, uri: str | None = None,
        parent_run_id: str | None = None, callbacks: list | None = None,
        train_data: TrainData | None = None) -> TrainOutcome:
    """Train `spec` as run `name` (continuing it if it exists) and register the final model.

    A Tune trial (pipelines/tune.py) passes the sweep's MLflow run as `parent_run_id`, so its run
    nests under the sweep's, Ray's TuneReportCallback in `callbacks`, and the dataset the sweep
    built once for all its trials as `train_data`."""
    from ray.train.v2.api.exceptions import TrainingFailedError

    home = home or project_home()
    home.mkdir(parents=True, exist_ok=True)
    data = resolve_data(spec, home)
    uri = uri or tracking.tracking_uri(home)
    inputs = resolve_model_inputs(spec, data, uri=uri, home=home)
    experiment_id = tracking.ensure_experiment(uri, spec.tracking.experiment, home)
    tags = {"genray.family": spec.model.family, "genray.dataset": spec.data.dataset or spec.data.path or ""}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run_id, resumed = tracking.start_run(uri, experiment_id, name, spec.flat(), tags)
    print(f"[{name}] MLflow run {run_id} ({'continued' if resumed else 'new'}) in {uri}", flush=True)

    init_ray()
    trainer = build_trainer(spec, data, inputs, name=name, home=home, uri=uri, run_id=run_id, callbacks=callbacks,
                            train_data=train_data)
    try:
        result = trainer.fit()
    except KeyboardInterrupt:
        tracking.finish_run(uri, run_id, "KILLED")
        raise
    except TrainingFailedError:
        tracking.finish_run(uri, run_id, "FAILED")
        raise

    if result.checkpoint is None:
        raise RuntimeError(f"run {name} finished without a checkpoint under {storage_path(home)}/{name}")
    model_name = version = None
    # A local directory as it is; from s3:// or gs:// storage, a temporary download.
    with result.checkpoint.as_directory() as local:
        ckpt_dir = Path(local)
        logger = tracking.RunLogger(uri, run_id)
        logger.artifacts(ckpt_dir, "checkpoint")
        if spec.tracking.register_model:
            model_name = spec.tracking.model_name or f"{spec.model.family}-{spec.data.dataset or 'custom'}"
            version = tracking.log_and_register(uri, run_id, ckpt_dir, model_name)
    tracking.finish_run(uri, run_id, "FINISHED")
    where = Path(result.checkpoint.path) if result.checkpoint.filesystem.type_name == "local" else \
        f"{result.checkpoint.filesystem.type_name}://{result.checkpoint.path}"
    return TrainOutcome(name, run_id, where, dict(result.metrics or {}), model_name, version, uri)


def default_run_name(config_path: str | Path) -> str:
    return f"{Path(config_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


if __name__ == "__main__":
    from pipelines.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
