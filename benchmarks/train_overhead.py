"""Ray Train's overhead: the same model, data and steps through genray's training step alone and in
`genray train` (local mode, 1 and 2 workers).

    .venv/bin/python benchmarks/train_overhead.py [--steps 300] [--family vae] [--size small]

Reports steady-state examples/s (the median over log windows after the first, eval excluded),
start-up time separately (and the loop's startup/* marks: seconds from the start of train.run to
each stage, the first step included), and the ratios Ray(1 worker)/bare and Ray(2 workers)/Ray(1 worker).
Ray sets OMP_NUM_THREADS=1 in a worker that asks for less than one CPU, so the bare loop runs
with one intra-op thread too: the comparison is per worker, not per machine.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def bare_loop(spec, data, steps: int) -> dict:
    """genray's training step (components.training.Engine: the recipe's phases, clipping, AdamW,
    EMA) on in-memory batches, without Ray."""
    from genray.components.models import build
    from genray.components.training import Engine, OptimDefaults, StepSettings
    from genray.pipelines.data import read_decoded

    torch.set_num_threads(1)
    t = spec.trainer
    from genray.components.models import caption_length

    arrays = read_decoded(data.train, data.columns, data.info.modality, data.info.shape,
                          text_len=caption_length(spec.model.family, spec.model_args()))  # CLIP reads captions
    tensors = {k: torch.as_tensor(v) for k, v in arrays.items()}
    n = len(tensors["x"])
    torch.manual_seed(t.seed)
    model = build(spec.model.family, spec.model_args(), data.info)
    engine = Engine(model, defaults=OptimDefaults(t.lr, tuple(t.betas), t.weight_decay),
                    settings=StepSettings(max_steps=steps, grad_clip=t.grad_clip, warmup_steps=t.warmup_steps,
                                          min_lr_ratio=t.min_lr_ratio, ema_decay=t.ema_decay))
    b = t.batch_size
    rates, window, start = [], time.perf_counter(), time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, n, (b,))
        engine.train_step({k: v[idx] for k, v in tensors.items()})
        if (step + 1) % t.log_every == 0:
            now = time.perf_counter()
            rates.append(t.log_every * b / (now - window))
            window = now
    return {"examples_per_s": statistics.median(rates[1:]), "wall_s": time.perf_counter() - start}


def bare_in_ray_task(spec, data, steps: int) -> dict:
    """The same bare loop, run as a Ray task with a Train worker's CPU request: separates the cost
    of sharing the machine with Ray's daemons from the cost of Ray Train's loop and data path."""
    import ray

    from genray.pipelines.env import init_ray

    init_ray()
    task = ray.remote(num_cpus=spec.scaling.cpus_per_worker)(bare_loop)
    return ray.get(task.remote(spec, data, steps))


def ray_run(spec, workers: int, name: str, home: Path) -> dict:
    from mlflow import MlflowClient

    from genray.pipelines import train

    spec = spec.model_copy(deep=True)
    spec.scaling.workers = workers
    start = time.perf_counter()
    out = train.run(spec, name=name, home=home)
    wall = time.perf_counter() - start
    client = MlflowClient(tracking_uri=out.tracking_uri)
    history = client.get_metric_history(out.run_id, "train/examples_per_s")
    rates = [m.value for m in sorted(history, key=lambda m: m.step)][1:]  # first window: start-up
    steady = statistics.median(rates)
    steps = spec.trainer.max_steps
    # The loop's marks: seconds from train.run's start to each stage (pipelines/training/loop.py).
    startup = {k.removeprefix("startup/"): v for k, v in client.get_run(out.run_id).data.metrics.items()
               if k.startswith("startup/")}
    return {"examples_per_s": steady, "wall_s": wall,
            "startup_s": wall - steps * spec.trainer.batch_size / steady,
            "first_step_s": startup.get("first_step_s"), "startup_marks_s": startup}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--family", default="vae")
    p.add_argument("--size", default="small")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()

    from genray.pipelines import config
    from genray.pipelines.data import resolve_data

    home = Path(tempfile.mkdtemp(prefix="genray-bench-"))
    spec = config.validate({
        "data": {"dataset": args.dataset},
        "model": {"family": args.family, "size": args.size},
        "trainer": {"max_steps": args.steps, "batch_size": args.batch_size, "log_every": 25,
                    "eval_every": 10**6, "checkpoint_every": 10**6, "eval_batches": 1, "num_samples": 16},
        "scaling": {"workers": 1, "cpus_per_worker": 0.5},
        "tracking": {"experiment": "bench", "register_model": False},
    }, "<benchmark>")
    data = resolve_data(spec, home)

    results = {"bare": bare_loop(spec, data, args.steps)}
    results["bare_in_ray_task"] = bare_in_ray_task(spec, data, args.steps)
    results["ray_local"] = ray_run(spec, 0, "bench-0", home)  # Ray Train's local mode: the loop in-process
    results["ray_1"] = ray_run(spec, 1, "bench-1", home)
    two = spec.model_copy(deep=True)
    results["ray_2"] = ray_run(two, 2, "bench-2", home)
    results["ratio_ray1_over_bare"] = results["ray_1"]["examples_per_s"] / results["bare"]["examples_per_s"]
    results["ratio_ray1_over_bare_in_ray_task"] = (
        results["ray_1"]["examples_per_s"] / results["bare_in_ray_task"]["examples_per_s"]
    )
    results["ratio_local_over_bare"] = results["ray_local"]["examples_per_s"] / results["bare"]["examples_per_s"]
    results["ratio_ray2_over_ray1"] = results["ray_2"]["examples_per_s"] / results["ray_1"]["examples_per_s"]
    print(json.dumps({"config": vars(args), **results}, indent=2))


if __name__ == "__main__":
    main()
