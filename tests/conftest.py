"""One local Ray instance per test session, shared by every pipeline test."""
from __future__ import annotations

import tempfile

import pytest


@pytest.fixture(scope="session")
def ray_session():
    import ray
    from ray.data import DataContext

    # Ray's Unix socket paths are capped at 107 bytes: a short temp dir, never pytest's tmp_path.
    temp_dir = tempfile.mkdtemp(prefix="gr-", dir="/tmp")
    DataContext.get_current().enable_progress_bars = False
    # More logical CPUs than cores: 2 training workers plus Ray Data tasks must all fit at once.
    ray.init(address="local", num_cpus=4, _temp_dir=temp_dir, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def genray_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("GENRAY_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home
