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


@pytest.fixture(scope="session")
def digits_classifier(tmp_path_factory):
    """A small digits domain classifier (seconds of training, not the 1000-step recipe), saved the
    way `genray eval` caches one: feature network for the pipelines' quality metrics."""
    import torch

    from genray.components.data import digits
    from genray.components.metrics import classifier

    images, labels = digits.load()
    x = torch.as_tensor(images, dtype=torch.float32)[:, None] / 8.0 - 1.0  # 0..16 -> [-1, 1]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = classifier.train_classifier(x, labels, num_classes=10, steps=150, batch_size=64, seed=0)
    finally:
        torch.set_num_threads(threads)
    return classifier.save_classifier(model, tmp_path_factory.mktemp("feature-net") / "digits")
