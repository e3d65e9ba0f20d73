"""The fixed cost of a sweep's training trial: one-step trials, run in the trial's own process
(the default for one worker) and as a Ray Train run per trial (`tune.in_process_trials=false`,
what every trial did before issue 22).

    .venv/bin/python benchmarks/trial_overhead.py [--trials 4] [--out docs/trial_overhead.json]

Each mode runs two sweeps of the tiny VAE on digits, one trial at a time: one of a single trial
and one of `--trials` trials, every trial one training step (then its checkpoint, its MLflow run
and its last report). The fixed cost per trial is the difference of their wall times divided by
the extra trials, so the sweep's own setup (Ray, the MLflow run, the dataset built once for every
trial, the table and the champion) cancels out; that setup is reported beside it. The dataset is
prepared before any clock starts.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

BASE = {
    "data": {"dataset": "digits", "size": "tiny"},
    "model": {"family": "vae", "size": "tiny"},
    "trainer": {"max_steps": 1, "batch_size": 16, "checkpoint_every": 1, "eval_every": 1, "log_every": 1,
                "eval_batches": 1, "num_samples": 16, "quality_samples": 0, "warmup_steps": 0},
    "scaling": {"workers": 1, "cpus_per_worker": 1.0},
    "tracking": {"experiment": "bench"},
}


def sweep_wall(trials: int, in_process: bool, home: Path, tag: str) -> float:
    from genray.pipelines import tune

    cfg = {**BASE, "tune": {"metric": "eval/loss", "mode": "min", "num_samples": trials, "max_concurrent_trials": 1,
                            "register_model": False, "in_process_trials": in_process,
                            "space": {"trainer.lr": {"loguniform": [1e-4, 1e-3]}}}}
    started = time.perf_counter()
    out = tune.run(tune.load(cfg), name=f"bench-{tag}-{trials}", home=home, say=lambda line: None)
    wall = time.perf_counter() - started
    if any(r.status != "finished" for r in out.rows) or len(out.rows) != trials:
        raise RuntimeError(f"{tag}: not every trial finished: {[(r.trial_id, r.status, r.error) for r in out.rows]}")
    return wall


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    from genray.pipelines.config import validate
    from genray.pipelines.data import resolve_data
    from genray.pipelines.env import init_ray

    with tempfile.TemporaryDirectory(prefix="genray-bench-") as tmp:
        home = Path(tmp)
        resolve_data(validate(json.loads(json.dumps(BASE)), "bench"), home)  # prepared before any clock
        init_ray()
        results = {}
        for tag, in_process in (("in_process", True), ("ray_train", False)):
            one = sweep_wall(1, in_process, home, tag)
            many = sweep_wall(args.trials, in_process, home, tag)
            per_trial = (many - one) / (args.trials - 1)
            results[tag] = {"sweep_1_trial_s": round(one, 1), f"sweep_{args.trials}_trials_s": round(many, 1),
                            "per_trial_s": round(per_trial, 1), "sweep_setup_s": round(one - per_trial, 1)}
            print(f"{tag:>10}: {per_trial:5.1f} s per one-step trial; the sweep's own setup {one - per_trial:5.1f} s "
                  f"(1 trial {one:.1f} s, {args.trials} trials {many:.1f} s)", flush=True)
    ratio = results["ray_train"]["per_trial_s"] / max(results["in_process"]["per_trial_s"], 1e-9)
    print(f"a trial in its own process costs 1/{ratio:.1f} of a Ray Train trial")
    report = {"trials": args.trials, "config": BASE, **results, "ray_train_over_in_process": round(ratio, 2),
              "date": time.strftime("%Y-%m-%d")}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
