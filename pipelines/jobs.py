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

A cluster that is not ready yet (its head's job agent not registered, its dashboard restarting,
a proxy answering 502/503/504) is asked again with exponential backoff for up to
GENRAY_JOBS_RETRY_S seconds (60; 0 turns retrying off), one line on stderr per retry. A refused
token, a bad request or a duplicate --name is never retried.
"""
import asyncio
import logging
import os
import re
import secrets
import shlex
import string
import sys
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from genray.pipelines import catalog
from genray.pipelines.arguments import JOBS
from genray.pipelines.config import ConfigError

T = TypeVar("T")

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


def client(address: str, what: str = "genray jobs"):
    from ray.job_submission import JobSubmissionClient

    # The constructor asks the cluster for its version: a dashboard still starting refuses it.
    return ask(what, address, lambda: JobSubmissionClient(address))


# ----------------------------------------------------------------------------- refusals that pass
#
# Just after `ray start --head` the dashboard listens before the head node's job agent has
# registered itself; until it has, the head's job manager answers a submission with HTTP 500 "No
# available agent to submit job, please try again later" (after waiting 10 s for it: Ray's
# WAIT_AVAILABLE_AGENT_TIMEOUT). A dashboard that restarts refuses connections for a while, and a
# proxy in front of it answers 502/503/504 meanwhile. Those pass, so they are asked again; every
# other answer (a refused token, a bad request, a duplicate submission id, no such job) would be
# the same the next time, so it is not.

RETRY_ENV = "GENRAY_JOBS_RETRY_S"
RETRY_S = 60.0  # how long a cluster may stay not ready before a command gives up
FIRST_WAIT_S, MAX_WAIT_S = 1.0, 16.0  # then 2, 4, 8, 16, 16, ... (cut to what is left of RETRY_S)


def retry_budget() -> float:
    raw = os.environ.get(RETRY_ENV, "").strip()
    try:
        budget = float(raw) if raw else RETRY_S
    except ValueError:
        budget = -1.0
    if not budget >= 0:  # also NaN
        raise ConfigError(f"{RETRY_ENV}={raw!r}: seconds to keep retrying a cluster that is not ready, "
                          f"e.g. {RETRY_S:.0f} (0 turns retrying off)")
    return budget


def transient(e: BaseException) -> str | None:
    """Why `e` is a refusal that passes (a short reason for the retry line), or None."""
    import requests
    from ray.exceptions import AuthenticationError

    if isinstance(e, AuthenticationError):
        return None
    text = str(e)
    # "No available agent" answers a submission; stop and delete wrap the same wait in a traceback.
    if "No available agent" in text or "Failed to get head node agent" in text:
        return "No available agent to submit job"
    status = _status_of(e)
    if status in (502, 503, 504):
        return f"HTTP {status}"
    if isinstance(e, (ConnectionError, requests.exceptions.ConnectionError)):  # refused, reset, aborted
        return "connection refused" if "refused" in text.lower() else _first_line(e)[:120]
    return None


def retrying(what: str, call: Callable[[], T], *, budget_s: float | None = None,
             sleep: Callable[[float], Any] = time.sleep, clock: Callable[[], float] = time.monotonic) -> T:
    """call(), asked again after a transient refusal with exponential backoff until budget_s
    (GENRAY_JOBS_RETRY_S) has passed; then, or at once for any other error, its exception."""
    budget = retry_budget() if budget_s is None else budget_s
    deadline = clock() + budget
    wait = FIRST_WAIT_S
    while True:
        try:
            return call()
        except Exception as e:
            why = transient(e)
            left = deadline - clock()
            if why is None or left <= 0:
                raise
            pause = min(wait, left)
            seconds = f"{pause:.0f}" if pause >= 1 else f"{pause:.1f}"
            print(f"{what}: the cluster is not ready ({why}); retrying in {seconds} s", file=sys.stderr)
            sleep(pause)
            wait = min(2 * wait, MAX_WAIT_S)


def ask(what: str, address: str, call: Callable[[], T], *,
        explain: Callable[[Exception], ConfigError | None] = lambda e: None) -> T:
    """call() through `retrying`, with the cluster's refusals as one-line user errors (`explain`
    first: the caller's own reading of an answer, such as a missing job)."""
    try:
        return retrying(what, call)
    except Exception as e:
        problem = explain(e) or refusal(address, e)
        if problem is None:  # not an answer from the cluster: a bug here, keep its traceback
            raise
        raise problem from None


def refusal(address: str, e: BaseException) -> ConfigError | None:
    import requests
    from ray.exceptions import AuthenticationError

    if isinstance(e, AuthenticationError):
        return ConfigError(f"--address {address}: no usable Ray token here ({_first_line(e)}); {TOKEN_HINT}")
    # The SDK's RuntimeErrors that carry the cluster's answer name its status code, its version or the token.
    answered = isinstance(e, RuntimeError) and (_status_of(e) is not None or "version" in str(e).lower()
                                                or _is_auth_refusal(_first_line(e)))
    if not (answered or isinstance(e, (ConnectionError, requests.exceptions.RequestException))):
        return None
    answer = _answer(e)
    if _status_of(e) in (401, 403) or _is_auth_refusal(answer):
        return ConfigError(f"--address {address}: the cluster refused this client's token ({answer}); {TOKEN_HINT}")
    why = transient(e)
    budget = retry_budget()
    retried = f" (retried for {budget:.0f} s; {RETRY_ENV} sets how long)" if budget > 0 else ""
    if why is not None and isinstance(e, (ConnectionError, requests.exceptions.ConnectionError)):
        return ConfigError(f"--address {address}: cannot reach the Ray Jobs API ({why}){retried}")
    if why is not None:
        return ConfigError(f"--address {address}: the cluster is not ready ({why}){retried}")
    return ConfigError(f"--address {address}: the cluster refused the request ({answer})")


def _status_of(e: BaseException) -> int | None:
    response = getattr(e, "response", None)  # requests.HTTPError, from raise_for_status
    if response is not None and getattr(response, "status_code", None):
        return int(response.status_code)
    m = re.search(r"status code (\d{3})", str(e))  # the SDK's "Request failed with status code N: ..."
    return int(m.group(1)) if m else None


def _answer(e: BaseException) -> str:
    """The server's answer in one line: a Python traceback in the body shrinks to its last line."""
    text = str(e).strip()
    if "Traceback (most recent call last)" in text:
        last = [line.strip() for line in text.splitlines() if line.strip()][-1]
        status = _status_of(e)
        return f"HTTP {status}: {last}"[:300] if status else last[:300]
    return _first_line(e)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _is_auth_refusal(text: str) -> bool:
    low = text.lower()
    return bool(re.search(r"\b40[13]\b", low)) or any(w in low for w in ("unauthorized", "token", "authenticat"))


# ----------------------------------------------------------------------------- what a job is


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


NONCE_KEY = "genray.submission"  # metadata: which `genray submit` made the job


def new_submission_id() -> str:
    # The shape Ray gives an id it picks itself; picked here so that every retry carries the same one.
    return "raysubmit_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(16))


# ----------------------------------------------------------------------------- submit and follow


def submit(job: str, target: str, *, overrides: list[str], address: str | None, follow: bool,
           name: str | None = None, pip: list[str] | None = None, say=print) -> int:
    address = address_of(address)
    command = entrypoint(job, target, overrides)
    c = client(address, "genray submit")
    env = runtime_env(pip=pip)
    started = time.perf_counter()
    # Ray logs every file it leaves out of the upload; the summary below says what was sent.
    logging.getLogger("ray").setLevel(logging.ERROR)
    # A retried submission must not run twice. Every attempt carries the same submission_id (Ray
    # refuses a second job under one id) and the same nonce in its metadata, so an "already exists"
    # after a retry whose job carries our nonce is the earlier attempt having got through (its
    # answer lost with the connection), not someone else's job.
    submission_id = name or new_submission_id()
    nonce = secrets.token_hex(8)
    metadata = {"genray.job": job, "genray.target": target, NONCE_KEY: nonce}
    attempts = 0

    def attempt() -> str:
        nonlocal attempts
        attempts += 1
        try:
            return c.submit_job(entrypoint=command, runtime_env=env, submission_id=submission_id,
                                entrypoint_num_cpus=0, metadata=metadata)
        except RuntimeError as e:
            if attempts > 1 and "already exists" in str(e) and _made_by(c, submission_id, nonce):
                return submission_id
            raise

    def duplicate(e: Exception) -> ConfigError | None:
        if isinstance(e, RuntimeError) and "already exists" in str(e):
            return ConfigError(f"a job with submission id {submission_id!r} already exists on this cluster; "
                               "pick another --name (genray jobs list shows them)")
        return None

    job_id = ask("genray submit", address, attempt, explain=duplicate)
    say(f"submitted      {job_id}  ({command})")
    say(f"address        {address}")
    say(f"logs           genray jobs logs {job_id} --address {address}")
    if not follow:
        return 0
    return follow_job(c, job_id, address, say=say, started=started, what="genray submit")


def _made_by(c, submission_id: str, nonce: str) -> bool:
    return (c.get_job_info(submission_id).metadata or {}).get(NONCE_KEY) == nonce


def follow_job(c, job_id: str, address: str, *, say=print, started: float | None = None,
               what: str = "genray jobs") -> int:
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
    status = ask(what, address, lambda: c.get_job_status(job_id))
    while not status.is_terminal():  # the log stream can end a moment before the status does
        time.sleep(0.5)
        status = ask(what, address, lambda: c.get_job_status(job_id))
    info = ask(what, address, lambda: c.get_job_info(job_id))
    took = f" in {time.perf_counter() - started:.0f} s" if started is not None else ""
    if status == JobStatus.SUCCEEDED:
        say(f"job {job_id} succeeded{took}")
        return 0
    message = (info.message or "").strip().splitlines()
    print(f"genray: job {job_id} {status.value.lower()}{took}: {message[-1] if message else 'no message'}",
          file=sys.stderr)
    return 130 if status == JobStatus.STOPPED else 1


# ----------------------------------------------------------------------------- genray jobs


def list_jobs(address: str | None) -> int:
    address = address_of(address)
    c = client(address)
    jobs = sorted(ask("genray jobs", address, c.list_jobs), key=lambda j: j.start_time or 0)
    rows = [("id", "status", "started", "entrypoint")]
    for j in jobs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.start_time / 1000)) if j.start_time else "-"
        rows.append((j.submission_id or j.job_id or "-", j.status.value, started, j.entrypoint))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    return 0


def job_logs(job_id: str, address: str | None, follow: bool) -> int:
    address = address_of(address)
    c = client(address)
    _check_job(c, job_id, address)
    if follow:
        return follow_job(c, job_id, address)
    sys.stdout.write(ask("genray jobs", address, lambda: c.get_job_logs(job_id)))
    return 0


def stop_job(job_id: str, address: str | None) -> int:
    address = address_of(address)
    c = client(address)
    _check_job(c, job_id, address)
    stopped = ask("genray jobs", address, lambda: c.stop_job(job_id))
    print(f"{job_id}: {'stop requested' if stopped else 'already finished'}")
    return 0


def _check_job(c, job_id: str, address: str) -> None:
    def missing(e: Exception) -> ConfigError | None:
        if isinstance(e, RuntimeError) and (_status_of(e) == 404 or "does not exist" in str(e)):
            return ConfigError(f"no job {job_id!r} on this cluster (genray jobs list shows them)")
        return None

    ask("genray jobs", address, lambda: c.get_job_status(job_id), explain=missing)
