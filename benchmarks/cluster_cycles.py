"""N cycles of cluster/local.sh up -> genray submit --follow train -> down, as cluster/README.md
runs them: is a submission made the moment `up` returns ever refused?

    .venv/bin/python benchmarks/cluster_cycles.py [--cycles 5] [--out docs/cluster_cycles.json]

Each cycle starts a fresh cluster (head + 2 worker nodes of 1 CPU, MLflow server; ports
6399/8277/5066) in a new state folder, reads its client settings from env.sh, submits a tiny VAE
training run at once, follows it to the end and stops the cluster. A submission counts as
refused when it exits nonzero or had to retry (a "the cluster is not ready" line on its stderr:
the cluster was not ready when `up` returned); an `up` that fails is counted apart. Times are
wall-clock seconds per step; after `down`, no process may be left with the cluster's temp dir.
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PORTS = {"GENRAY_RAY_PORT": "6399", "GENRAY_DASHBOARD_PORT": "8277", "GENRAY_MLFLOW_PORT": "5066"}
CONFIG = "pipelines/configs/vae/vae_digits.yaml"
OVERRIDES = ["data.size=tiny", "model.size=tiny", "trainer.max_steps=20", "trainer.eval_every=20",
             "trainer.checkpoint_every=20", "trainer.log_every=10", "scaling.workers=2"]
RETRY_LINE = "the cluster is not ready"


def client_env(state: Path, env: dict[str, str]) -> dict[str, str]:
    out = dict(env)
    for line in (state / "env.sh").read_text().splitlines():
        if line.startswith("export "):
            k, _, v = line.removeprefix("export ").partition("=")
            out[k] = v
    out["GENRAY_HOME"] = str(state / "home")
    return out


def cycle(n: int, env: dict[str, str]) -> dict:
    state = Path(tempfile.mkdtemp(prefix=f"cycle{n}-"))
    local_sh = ["bash", "cluster/local.sh"]
    row: dict = {"cycle": n}
    started = time.perf_counter()
    try:
        up = subprocess.run([*local_sh, "up", "--workers", "2", "--cpus-per-worker", "1", "--dir", str(state)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        row["up_s"] = round(time.perf_counter() - started, 1)
        row["ready"] = next((line.removeprefix("ready").strip() for line in up.stdout.splitlines()
                             if line.startswith("ready ")), None)
        if up.returncode != 0:
            row.update(up_failed=" / ".join(up.stderr.strip().splitlines()[-3:])[:500], refused=False)
            return row
        t = time.perf_counter()
        sets = [a for o in OVERRIDES for a in ("--set", o)]
        sub = subprocess.run([sys.executable, "-m", "genray.pipelines.cli", "submit", "--follow", "train", CONFIG,
                              *sets], cwd=ROOT, env=client_env(state, env), capture_output=True, text=True,
                             timeout=1800)
        row["submit_s"] = round(time.perf_counter() - t, 1)
        row["submit_rc"] = sub.returncode
        row["retries"] = sum(RETRY_LINE in line for line in sub.stderr.splitlines())
        row["refused"] = sub.returncode != 0 or row["retries"] > 0
        if sub.returncode != 0:
            row["error"] = (sub.stderr.strip().splitlines() or ["(no stderr)"])[-1][:300]
        return row
    finally:
        t = time.perf_counter()
        subprocess.run([*local_sh, "down", "--dir", str(state)], cwd=ROOT, env=env, capture_output=True, timeout=300)
        row["down_s"] = round(time.perf_counter() - t, 1)
        # `down` stops every process of the cluster: none may be left with its temp dir in its command line.
        left = subprocess.run(["pgrep", "-f", f"/tmp/grc-{PORTS['GENRAY_RAY_PORT']}"], capture_output=True, text=True)
        row["processes_left"] = len(left.stdout.split())
        row["total_s"] = round(time.perf_counter() - started, 1)
        # Worker nodes `up` started again after Ray's raylet gave up on their agents (cluster/local.sh).
        row["node_restarts"] = sum(log.read_text(errors="replace").count("the node failed to start")
                                   for log in (state / "logs").glob("worker*.log"))
        shutil.rmtree(state, ignore_errors=True)


def summary(rows: list[dict]) -> dict:
    done = [r for r in rows if r.get("submit_rc") is not None]  # cycles whose `up` got as far as a submission

    def median(key: str) -> float | None:
        return round(statistics.median(r[key] for r in done), 1) if done else None

    return {"cycles": len(rows), "refused": sum(r["refused"] for r in rows),
            "up_failed": sum(bool(r.get("up_failed")) for r in rows), "median_cycle_s": median("total_s"),
            "median_up_s": median("up_s"), "median_submit_s": median("submit_s")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--cycles", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "cluster_cycles.json")
    args = p.parse_args(argv)
    env = {**os.environ, **PORTS}
    for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_URI",
              "GENRAY_STORAGE"):
        env.pop(k, None)  # a sourced env.sh of another cluster must not leak in
    rows = []
    for n in range(1, args.cycles + 1):
        row = cycle(n, env)
        rows.append(row)
        print(f"cycle {n}: up {row.get('up_s')} s ({row.get('ready') or 'not ready'}), "
              f"submit+follow {row.get('submit_s')} s (rc {row.get('submit_rc')}, {row.get('retries', 0)} retries), "
              f"down {row['down_s']} s ({row['processes_left']} processes left), total {row['total_s']} s, "
              f"refused: {'yes' if row['refused'] else 'no'}"
              + (f" ({row['error']})" if row.get("error") else "")
              + (f"; up failed: {row['up_failed']}" if row.get("up_failed") else ""), flush=True)
    result = {**summary(rows), "config": CONFIG, "overrides": OVERRIDES,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                         f"load average {os.getloadavg()[0]:.1f} at the end",
              "runs": rows}
    print(f"{result['refused']} of {args.cycles} submissions refused, {result['up_failed']} `up` failed; "
          f"median of the completed cycles {result['median_cycle_s']} s (up {result['median_up_s']} s, "
          f"submit to finished {result['median_submit_s']} s)")
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result["refused"] or result["up_failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
