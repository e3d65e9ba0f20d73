"""How a genray command ends, and what it prints when it succeeds.

    a user's mistake (UserError: ConfigError, DataFormatError, ...)   one line, exit 2
    Ctrl-C                                                              one line, exit 130
    anything else                                                       its traceback, exit 1

Every entry point runs its command through `run`: `genray <verb>` (pipelines/cli.py), each job's
`python -m genray.pipelines.<job>` and the demo, so a mistake reads the same everywhere and a bug is
never dressed up as one. This module imports no job; the jobs and the CLI import it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

from genray.components.errors import UserError
from genray.pipelines.env import set_verbose, verbose  # noqa: F401 (the jobs call console.set_verbose)

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
CONFIGS = Path(__file__).with_name("configs")  # the shipped experiment and sweep configs
INTERRUPTED = "genray: interrupted"
TRAIN_INTERRUPTED = "genray: interrupted; rerun with the same --name to continue from the latest checkpoint"


def run(command: Callable[..., int], *args: Any, interrupted: str = INTERRUPTED) -> int:
    """command(*args)'s exit code; a UserError is one line on stderr and exit 2, Ctrl-C the
    `interrupted` line and exit 130. Every other exception propagates with its traceback."""
    try:
        return command(*args)
    except UserError as e:
        print(f"genray: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED


# ----------------------------------------------------------------------------- what is shown
#
# By default the console shows genray's own lines: the job header, the driver's progress bar,
# eval lines and the closing summary. Ray's, Ray Data's, Tune's, Serve's and MLflow's log
# records and Python's warnings go to a log file under the project home, named in the header;
# --verbose (GENRAY_VERBOSE=1) shows everything, workers' output included.

LIBRARY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve", "mlflow", "py.warnings", "alembic", "optuna", "filelock", "urllib3", "httpx",
                   "fastapi", "uvicorn", "matplotlib", "PIL")


def route_logs(path: Path) -> Path | None:
    """Unless verbose, send library log records and Python warnings to `path` (appended). Returns
    the file, or None when everything is shown."""
    global _LOG_FILE
    if verbose():
        return None
    # Ray, Ray Data and MLflow set up their loggers when first imported: import them first,
    # then reroute. ray.init() empties the "ray" logger again, so what it logs while starting
    # (the token-auth notice) reaches logging's handler of last resort, which is set here too.
    import mlflow  # noqa: F401
    import ray  # noqa: F401
    import ray.data  # noqa: F401

    path.parent.mkdir(parents=True, exist_ok=True)
    _LOG_FILE = path
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.captureWarnings(True)
    logging.lastResort = handler
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                logger.removeHandler(h)
        if not any(getattr(h, "baseFilename", None) == str(path) for h in logger.handlers):
            logger.addHandler(handler)
        logger.propagate = False
    # Libraries that print instead of logging: MLflow's download bars, Ray Data's plan.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    # Tune's newer console output prints its experiment box and a TensorBoard hint even at
    # verbose=0; the classic reporter at verbose=0 prints nothing (Ray's documented switch).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    return path


_LOG_FILE: Path | None = None


@contextlib.contextmanager
def library_output():
    """Around a library call that prints instead of logging (MLflow's "Successfully registered
    model" lines): its stdout and stderr go to the log file when the console is quiet."""
    if _LOG_FILE is None or verbose():
        yield
        return
    with open(_LOG_FILE, "a", encoding="utf-8") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        yield


# ----------------------------------------------------------------------------- what succeeded


def print_summary(out) -> None:
    """A finished training run (train.TrainOutcome): where its run, checkpoint and samples are."""
    from genray.pipelines import tracking

    print()
    print(f"run            {out.name}  (rerun with --name {out.name} to continue it)")
    print(f"mlflow run     {out.run_id}  in {out.tracking_uri}")
    print(f"checkpoint     {out.checkpoint}")
    grid = tracking.latest_sample_grid(out.tracking_uri, out.run_id)
    if grid:
        print(f"sample grid    {grid}")
    if out.model_version:
        print(f"registered     models:/{out.model_name}/{out.model_version}")
    shown = {k: v for k, v in out.metrics.items() if k.startswith("eval/")}
    if shown:
        print("final eval     " + "  ".join(f"{k[5:]}={v:.4f}" for k, v in shown.items()))
    if out.tracking_uri.startswith("sqlite:"):
        mlflow_cmd = Path(sys.executable).with_name("mlflow")
        print(f"open the UI    {mlflow_cmd} ui --backend-store-uri {out.tracking_uri} --port 5000")


def print_serving(deployed) -> None:
    """A deployed Serve app: what it serves, where, and a request to try."""
    from genray.pipelines import serve

    for name, version in deployed.versions.items():
        print(f"serving        models:/{name}/{version}  ({deployed.spec.alias})")
    print(f"gallery        {deployed.url}/")
    print(f"API docs       {deployed.url}/docs")
    first = next(iter(deployed.versions))
    print(f"try            {serve.curl_example(deployed.url, {'name': first})}")
    print("               (Ctrl-C stops the server; `genray serve --reload` swaps in re-aliased versions)",
          flush=True)


def stop_serving() -> None:
    """Ctrl-C while serving: take the app down and leave; a second Ctrl-C during the shutdown is
    ignored."""
    import signal

    from ray import serve as ray_serve

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print("genray serve: stopping", flush=True)
    # Serve's shutdown kills its controller while the controller's own graceful-shutdown task is
    # still queued; Ray then prints a "(raylet) Task ... failed" line that asks nothing of the
    # user. It goes to the log file with the rest of Ray's output.
    with library_output():
        ray_serve.shutdown()
    print("genray serve: stopped", flush=True)
