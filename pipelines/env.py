"""Where genray keeps things and how it reaches Ray: the project home, checkpoint storage, Ray
start-up. Every job imports this; it imports no job.

    GENRAY_HOME      the project home (default ./genray-runs): data, MLflow store, caches, sweeps
    GENRAY_STORAGE   where Ray Train writes checkpoints (default <home>/ray_results); a path every
                     node sees, or a pyarrow URI (s3://bucket/genray, gs://...)
    RAY_ADDRESS      the cluster to join (default: start a local Ray)
    GENRAY_VERBOSE   1: Ray's, Tune's and the workers' output on the console too (--verbose)
"""
from __future__ import annotations

import os
from pathlib import Path

VERBOSE_ENV = "GENRAY_VERBOSE"  # --verbose: Ray's and the workers' output on the console too


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0", "false")


def set_verbose(on: bool) -> None:
    """--verbose: for this process and what it starts (Ray workers read it from the environment)."""
    if on:
        os.environ[VERBOSE_ENV] = "1"


def project_home() -> Path:
    return Path(os.environ.get("GENRAY_HOME", "genray-runs")).resolve()


def storage_path(home: Path) -> str:
    """Where Ray Train writes checkpoints: GENRAY_STORAGE when set, else <home>/ray_results."""
    return os.environ.get("GENRAY_STORAGE") or str(home / "ray_results")


def absolute(path: str) -> str:
    """A local path made absolute (Ray workers run in another working directory); a URI such as
    s3://bucket/data or gs://... as it is, for pyarrow's filesystems and Ray Data."""
    return path if "://" in path else str(Path(path).resolve())


def init_ray() -> None:
    """Join RAY_ADDRESS or start a local Ray. Workers' output reaches this console only with
    --verbose (GENRAY_VERBOSE); otherwise it stays in Ray's session logs, and the driver shows
    genray's own lines (pipelines/console.py)."""
    import ray
    from ray.data import DataContext

    if ray.is_initialized():
        return
    ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=verbose(), configure_logging=False)
    DataContext.get_current().print_on_execution_start = verbose()


def log_path(home: Path, job: str, name: str) -> Path:
    """Where a job's library output goes when the console is quiet."""
    return home / "logs" / f"{job}-{name}.log"
