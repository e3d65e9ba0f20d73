"""How a genray command ends, and what it prints when it succeeds.

    a user's mistake (UserError: ConfigError, DataFormatError, ...)   one line, exit 2
    Ctrl-C                                                              one line, exit 130
    anything else                                                       its traceback, exit 1

Every entry point runs its command through `run`: `genray <verb>` (pipelines/cli.py), each job's
`python -m pipelines.<job>` and the demo, so a mistake reads the same everywhere and a bug is
never dressed up as one. This module imports no job; the jobs and the CLI import it.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

from components.errors import UserError

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


# ----------------------------------------------------------------------------- what succeeded


def print_summary(out) -> None:
    """A finished training run (train.TrainOutcome): where its run, checkpoint and samples are."""
    from pipelines import tracking

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
    from pipelines import serve

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
    ray_serve.shutdown()
    print("genray serve: stopped", flush=True)
