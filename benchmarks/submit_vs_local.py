"""The same training run submitted to the local multi-node cluster and run with `genray train`:
time to the first training step and to the end, each.

    .venv/bin/python benchmarks/submit_vs_local.py [--steps 300] [--out docs/submit_vs_local.json]

Starts its own cluster with cluster/local.sh (head + 2 worker nodes of 2 CPUs, MLflow server;
ports 6397/8273/5062) and stops it at the end. Both runs train the small VAE on digits with
2 workers; the cluster run places them with SPREAD, one per worker node. Times are taken by
this script as the command's output arrives: "first step" is the first progress line
(`step N/M`), which comes at log_every steps.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PORTS = {"GENRAY_RAY_PORT": "6397", "GENRAY_DASHBOARD_PORT": "8273", "GENRAY_MLFLOW_PORT": "5062"}
STEP = re.compile(r"step (\d+)/(\d+)")


def timed(cmd: list[str], env: dict[str, str]) -> dict:
    started = time.perf_counter()
    first = None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    tail = []
    for line in proc.stdout:
        tail = (tail + [line])[-20:]
        if first is None and STEP.search(line):
            first = time.perf_counter() - started
    rc = proc.wait()
    total = time.perf_counter() - started
    if rc != 0:
        sys.stderr.write("".join(tail))
        raise SystemExit(f"{' '.join(cmd[:4])} failed with {rc}")
    return {"first_step_s": round(first, 1) if first else None, "total_s": round(total, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    sets = ["--set", f"trainer.max_steps={args.steps}", "--set", "trainer.log_every=10",
            "--set", f"trainer.checkpoint_every={args.steps}", "--set", f"trainer.eval_every={args.steps}",
            "--set", "scaling.workers=2", "--set", "scaling.cpus_per_worker=1"]
    config = "pipelines/configs/vae/vae_digits.yaml"
    state = Path(tempfile.mkdtemp(prefix="submit-bench-"))
    env = {**os.environ, **PORTS}
    env.pop("RAY_ADDRESS", None)
    up = subprocess.run(["bash", "cluster/local.sh", "up", "--workers", "2", "--cpus-per-worker", "2",
                         "--dir", str(state / "cluster")], cwd=ROOT, env=env, capture_output=True, text=True)
    if up.returncode != 0:
        raise SystemExit(up.stderr)
    try:
        cluster_env = dict(env)
        for line in (state / "cluster" / "env.sh").read_text().splitlines():
            if line.startswith("export "):
                k, _, v = line.removeprefix("export ").partition("=")
                cluster_env[k] = v
        cluster_env["GENRAY_HOME"] = str(state / "cluster" / "home")
        genray = [sys.executable, "-m", "genray.pipelines.cli"]
        # Once untimed, so both timed runs find the data prepared and the code uploaded before.
        timed([*genray, "submit", "train", config, *sets, "--set", "trainer.max_steps=10", "--follow"], cluster_env)
        submitted = timed([*genray, "submit", "train", config, *sets, "--set", "scaling.placement_strategy=SPREAD",
                           "--follow"], cluster_env)
    finally:
        subprocess.run(["bash", "cluster/local.sh", "down", "--dir", str(state / "cluster")], cwd=ROOT, env=env,
                       capture_output=True)
    local_env = {k: v for k, v in env.items() if not k.startswith(("MLFLOW_", "GENRAY_STORAGE"))}
    local_env["GENRAY_HOME"] = str(state / "local")
    timed([*genray, "train", config, *sets, "--set", "trainer.max_steps=10"], local_env)
    local = timed([*genray, "train", config, *sets], local_env)
    result = {"steps": args.steps, "submit": submitted, "local": local,
              "total_ratio": round(submitted["total_s"] / local["total_s"], 2)}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
