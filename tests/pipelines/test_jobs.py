"""`genray submit` / `genray jobs` mistakes that need no cluster: one line, exit 2."""
from __future__ import annotations

import shlex

import pytest

from genray.pipelines import cli, jobs


def test_the_entrypoint_is_the_local_command_on_the_uploaded_project():
    command = jobs.entrypoint("train", str(jobs.PROJECT / "pipelines/configs/vae/vae_digits.yaml"),
                              ["trainer.lr=3e-4", "model.beta=2 "])
    assert shlex.split(command) == ["python", "-m", "genray.pipelines.train", "pipelines/configs/vae/vae_digits.yaml",
                                    "--set", "trainer.lr=3e-4", "--set", "model.beta=2 "]
    assert jobs.entrypoint("eval", "models:/vae-digits@champion", []).startswith(
        "python -m genray.pipelines.evaluate models:/vae-digits@champion")


def test_the_runtime_env_uploads_the_project_and_passes_the_tracking_uri(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("GENRAY_STORAGE", "s3://bucket/genray")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret")
    env = jobs.runtime_env()
    assert env["working_dir"] == str(jobs.PROJECT) and ".venv" in env["excludes"]
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["env_vars"]["GENRAY_STORAGE"] == "s3://bucket/genray"
    assert "RAY_AUTH_TOKEN" not in env["env_vars"]  # the token never lands in the job's visible env


@pytest.mark.parametrize("argv, message", [
    (["submit", "train", "no/such.yaml"], "config file not found"),
    (["submit", "--address", "ray://head:10001", "train", "pipelines/configs/vae/vae_digits.yaml"],
     "the Ray Jobs API is the dashboard's HTTP address"),
    (["submit", "--address", "http://127.0.0.1:1", "train", "pipelines/configs/vae/vae_digits.yaml"],
     "cannot reach the Ray Jobs API"),
    (["jobs", "list", "--address", "http://127.0.0.1:1"], "cannot reach the Ray Jobs API"),
])
def test_submit_mistakes_exit_2_with_one_line(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_config_outside_the_project_is_refused(tmp_path, capsys):
    outside = tmp_path / "x.yaml"
    outside.write_text("data: {dataset: digits}\n")
    assert cli.main(["submit", "train", str(outside)]) == 2
    assert "must lie inside the project" in capsys.readouterr().err


def test_data_paths_may_be_uris_for_shared_storage(tmp_path):
    """data.path as a pyarrow-filesystem URI (file:// here; s3:// and gs:// the same way) is
    read as it is, not made into a local path."""
    from genray.components.data import DATASETS
    from genray.pipelines import config, train

    paths = DATASETS["digits"](tmp_path / "d", seed=0, size="tiny")
    spec = config.validate({"data": {"path": paths["train"].as_uri(), "test_path": paths["test"].as_uri()},
                            "model": {"family": "vae", "size": "tiny"}}, "<test>")
    data = train.resolve_data(spec, tmp_path / "home")
    assert data.train == paths["train"].as_uri() and data.info.shape == (8, 8, 1)
