"""Time to the first training step of `genray train`, as a user runs it: a fresh process per run,
broken down by the loop's start-up marks (issue 22, item 3).

    .venv/bin/python benchmarks/first_step.py [--configs vae/vae_digits diffusion/ddpm_digits]
        [--workers 2] [--repeats 3] [--cluster] [--out docs/first_step.json]

Each run is `genray train CONFIG --workers N --set trainer.max_steps=20` in a new process, with
the dataset prepared and the quality probe's feature network trained beforehand (a first run that
is not timed), so what is measured is what every later run pays. `from_launch_s` is the seconds
from starting the process (imports included) to its first step; `first_step_s` and the stages are
seconds from the start of train.run (pipelines/training/loop.py, startup_seconds):

    ray_init        a local Ray started (or, with --cluster, a running one joined)
    dataset         the Ray Dataset built (in the driver's memory for small data)
    loop            Train's controller, worker group and process group up; the loop entered
    model           the model and optimizer built on every rank
    first_batch     the first batch of the shard in hand
    first_step      the first optimizer step done

--cluster starts a local cluster with `ray start --head` first and points RAY_ADDRESS at it, as a
user who keeps one running would; it is stopped at the end. Medians over --repeats runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("data", "model_inputs", "mlflow_run", "ray_init", "dataset", "loop", "model", "probe", "shard",
          "first_batch", "first_step")


def one_run(config: str, workers: int, name: str, env: dict[str, str]) -> dict:
    from mlflow import MlflowClient

    launched = time.time()
    subprocess.run([str(ROOT / ".venv/bin/genray"), "train", config, "--workers", str(workers), "--name", name,
                    "--set", "trainer.max_steps=20", "--set", "trainer.eval_every=1000000",
                    "--set", "trainer.checkpoint_every=1000000", "--set", "tracking.register_model=false"],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    home = Path(env["GENRAY_HOME"])
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    run = client.search_runs([e.experiment_id for e in client.search_experiments()],
                             filter_string=f"attributes.run_name = '{name}'")[0]
    marks = {k.removeprefix("startup/").removesuffix("_s"): v for k, v in run.data.metrics.items()
             if k.startswith("startup/")}
    # The run's start, on the wall clock: MLflow stamps the run as it is created, right before
    # the mlflow_run mark.
    started = run.info.start_time / 1000 - marks["mlflow_run"]
    return {"from_launch_s": round(started + marks["first_step"] - launched, 2),
            **{f"{k}_s": marks[k] for k in STAGES if k in marks}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--configs", nargs="+", default=["vae/vae_digits", "diffusion/ddpm_digits"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cluster", action="store_true", help="join a running local cluster (ray start --head)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    home = Path(tempfile.mkdtemp(prefix="genray-first-step-"))
    env = {**os.environ, "GENRAY_HOME": str(home)}
    env.pop("RAY_ADDRESS", None)
    ray = str(ROOT / ".venv/bin/ray")
    if args.cluster:
        subprocess.run([ray, "start", "--head", "--num-cpus", str(os.cpu_count()), "--disable-usage-stats"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env["RAY_ADDRESS"] = "auto"
    results = {}
    try:
        for config in args.configs:
            tag = config.replace("/", "-")
            one_run(config, args.workers, f"{tag}-warm", env)  # data prepared, feature network trained
            runs = [one_run(config, args.workers, f"{tag}-{i}", env) for i in range(args.repeats)]
            median = {k: round(statistics.median(r[k] for r in runs if k in r), 2) for k in runs[0]}
            results[config] = {"median": median, "runs": runs}
            print(f"{config}: first step {median['first_step_s']} s after train.run started, "
                  f"{median['from_launch_s']} s after launch", file=sys.stderr, flush=True)
    finally:
        if args.cluster:
            subprocess.run([ray, "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = {"workers": args.workers, "cluster": args.cluster, "repeats": args.repeats, "cpus": os.cpu_count(),
           "results": results}
    print(json.dumps(out, indent=2))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
