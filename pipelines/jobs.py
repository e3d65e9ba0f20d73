"""`genray submit` and `genray jobs`: genray's jobs on a Ray cluster, through the Ray Jobs API.

    genray submit [--address URL] {train|tune|eval} CONFIG_OR_TARGET [--set k=v ...] [--follow]
    genray jobs list [--address URL]
    genray jobs logs ID [--address URL] [--follow]
    genray jobs stop ID [--address URL]

A submission is the same job `genray train|tune|eval` runs here, as `python -m genray.pipelines.<job>`
on the cluster, with this project as the runtime_env working_dir (the virtual environment, the
runs folder and git's files left out) and the environment it needs passed through:
MLFLOW_TRACKING_URI (a tracking server every node reaches, not a local SQLite file),
GENRAY_HOME and GENRAY_STORAGE (paths or URIs every node sees), and the Ray token settings.
The address defaults to RAY_ADDRESS, then http://127.0.0.1:8265. `--follow` streams the job's
logs and exits with 0 when it succeeded, 1 when it failed (with the job's error), 130 when stopped.
"""
import asyncio
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from genray.pipelines import catalog
from genray.pipelines.arguments import JOBS
from genray.pipelines.config import ConfigError

PROJECT = Path(__file__).resolve().parents[1]
# What a job on the cluster needs from here. RAY_AUTH_TOKEN itself is never copied into the job's
# environment, where `ray job list` would show it: the cluster has its own.
PASSED_ENV = ("MLFLOW_TRACKING_URI", "GENRAY_HOME", "GENRAY_STORAGE", "GENRAY_INCEPTION_WEIGHTS",
              "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "NCCL_SOCKET_IFNAME", "NCCL_DEBUG")
EXCLUDES = [".venv", ".git", "genray-runs", "**/__pycache__", ".pytest_cache", ".hypothesis", "*.egg-info",
            "docs/*.png"]
DEFAULT_ADDRESS = "http://127.0.0.1:8265"


def address_of(explicit: str | None) -> str:
    address = explicit or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    if address.startswith("ray://") or not address.startswith(("http://", "https://")):
        raise ConfigError(f"--address {address!r}: the Ray Jobs API is the dashboard's HTTP address, "
                          f"e.g. {DEFAULT_ADDRESS} (not the GCS port or ray://)")
    return address


TOKEN_HINT = "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH (or RAY_AUTH_TOKEN) to the cluster's token"


def client(address: str):
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except AuthenticationError as e:
        raise ConfigError(f"--address {address}: no usable Ray token here ({_first_line(e)}); {TOKEN_HINT}") from None
    except (OSError, RuntimeError) as e:  # unreachable, a bad URL (requests' errors are OSErrors), or refused
        first = _first_line(e)
        if _is_auth_refusal(first):
            raise ConfigError(f"--address {address}: the cluster refused this client's token ({first}); "
                              f"{TOKEN_HINT}") from None
        raise ConfigError(f"--address {address}: cannot reach the Ray Jobs API ({first})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _is_auth_refusal(text: str) -> bool:
    low = text.lower()
    return "401" in low or "403" in low or "unauthorized" in low or "token" in low or "authenticat" in low


def entrypoint(job: str, target: str, overrides: list[str]) -> str:
    if job not in JOBS:
        raise ConfigError(f"job {job!r}: allowed are {', '.join(JOBS)}")
    sets = [a for o in overrides for a in ("--set", o)]
    if job != "eval":
        local = catalog.find(target)  # a file, or a shipped config by name
        # The job runs in the uploaded copy of this project: name the config relative to it.
        try:
            target = str(local.resolve().relative_to(PROJECT))
        except ValueError:
            raise ConfigError(f"{target}: the config must lie inside the project ({PROJECT}), which is what "
                              "the job uploads") from None
    return shlex.join(["python", "-m", JOBS[job], target, *sets])


def runtime_env(pip: list[str] | None = None) -> dict[str, Any]:
    env = {k: os.environ[k] for k in PASSED_ENV if os.environ.get(k)}
    uri = env.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        print("genray submit: MLFLOW_TRACKING_URI is not set: the job will track into a SQLite file under its "
              "GENRAY_HOME on the cluster", file=sys.stderr)
    out: dict[str, Any] = {"working_dir": str(PROJECT), "excludes": EXCLUDES, "env_vars": env}
    if pip:
        out["pip"] = pip
    return out


def submit(job: str, target: str, *, overrides: list[str], address: str | None, follow: bool,
           name: str | None = None, pip: list[str] | None = None, say=print) -> int:
    address = address_of(address)
    command = entrypoint(job, target, overrides)
    c = client(address)
    started = time.perf_counter()
    # Ray logs every file it leaves out of the upload; the summary below says what was sent.
    logging.getLogger("ray").setLevel(logging.ERROR)
    try:
        job_id = c.submit_job(entrypoint=command, runtime_env=runtime_env(pip=pip), submission_id=name,
                              entrypoint_num_cpus=0,
                              metadata={"genray.job": job, "genray.target": target})
    except RuntimeError as e:
        first = _first_line(e)
        if _is_auth_refusal(first):
            raise ConfigError(f"--address {address}: the cluster refused this client's token ({first}); "
                              f"{TOKEN_HINT}") from None
        raise ConfigError(f"--address {address}: the submission was refused ({first})") from None
    say(f"submitted      {job_id}  ({command})")
    say(f"address        {address}")
    say(f"logs           genray jobs logs {job_id} --address {address}")
    if not follow:
        return 0
    return follow_job(c, job_id, say=say, started=started)


def follow_job(c, job_id: str, *, say=print, started: float | None = None) -> int:
    from ray.job_submission import JobStatus

    async def stream() -> None:
        async for lines in c.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    try:
        asyncio.run(stream())
    except KeyboardInterrupt:
        say(f"genray: stopped following {job_id}; it goes on (genray jobs stop {job_id})")
        return 130
    status = c.get_job_status(job_id)
    while not status.is_terminal():  # the log stream can end a moment before the status does
        time.sleep(0.5)
        status = c.get_job_status(job_id)
    info = c.get_job_info(job_id)
    took = f" in {time.perf_counter() - started:.0f} s" if started is not None else ""
    if status == JobStatus.SUCCEEDED:
        say(f"job {job_id} succeeded{took}")
        return 0
    message = (info.message or "").strip().splitlines()
    print(f"genray: job {job_id} {status.value.lower()}{took}: {message[-1] if message else 'no message'}",
          file=sys.stderr)
    return 130 if status == JobStatus.STOPPED else 1


def list_jobs(address: str | None) -> int:
    c = client(address_of(address))
    jobs = sorted(c.list_jobs(), key=lambda j: j.start_time or 0)
    rows = [("id", "status", "started", "entrypoint")]
    for j in jobs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.start_time / 1000)) if j.start_time else "-"
        rows.append((j.submission_id or j.job_id or "-", j.status.value, started, j.entrypoint))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    return 0


def job_logs(job_id: str, address: str | None, follow: bool) -> int:
    c = client(address_of(address))
    _check_job(c, job_id)
    if follow:
        return follow_job(c, job_id)
    sys.stdout.write(c.get_job_logs(job_id))
    return 0


def stop_job(job_id: str, address: str | None) -> int:
    c = client(address_of(address))
    _check_job(c, job_id)
    stopped = c.stop_job(job_id)
    print(f"{job_id}: {'stop requested' if stopped else 'already finished'}")
    return 0


def _check_job(c, job_id: str) -> None:
    try:
        c.get_job_status(job_id)
    except RuntimeError:
        raise ConfigError(f"no job {job_id!r} on this cluster (genray jobs list shows them)") from None
