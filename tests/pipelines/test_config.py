"""Config validation and the CLI's handling of user mistakes: exit code 2, one plain line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from genray.pipelines import config
from genray.pipelines.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "pipelines" / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_validate(path):
    if path.parent.name == "serve":  # serve settings, not an experiment
        from genray.pipelines import serve

        assert serve.load_spec(str(path), {}) == serve.ServeSpec()  # the file documents the defaults
        return
    if "tune" in yaml.safe_load(path.read_text()):  # a sweep: every value of its space is checked too
        from genray.pipelines import tune

        sweep = tune.load(path)
        assert sweep.dims and (sweep.spec is None or sweep.spec.model.family in path.read_text())
        return
    spec = config.load(path)
    assert spec.model.family in path.read_text()


def test_a_sweep_config_given_to_train_says_to_use_tune(capsys):
    assert main(["train", str(CONFIGS / "gan" / "sweep_dcgan_digits.yaml")]) == 2
    assert "genray tune" in capsys.readouterr().err


def test_overrides_apply_and_parse_yaml_values(tmp_path):
    spec = config.load(CONFIGS / "vae" / "beta_vae_shapes.yaml",
                       ["trainer.lr=3e-4", "model.beta=8", "scaling.workers=1", "trainer.betas=[0.5, 0.9]"])
    assert spec.trainer.lr == pytest.approx(3e-4)
    assert spec.model_args()["beta"] == 8
    assert spec.scaling.workers == 1
    assert spec.trainer.betas == (0.5, 0.9)
    flat = spec.flat()
    assert flat["model.family"] == "beta_vae" and flat["trainer.lr"] == pytest.approx(3e-4)


def _write(tmp_path, raw) -> Path:
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


BASE = {"model": {"family": "vae", "size": "tiny"}, "data": {"dataset": "digits", "size": "tiny"}}

BAD = {
    "unknown_top_key": ({**BASE, "optimiser": {}}, ["optimiser", "unknown key", "trainer"]),
    "unknown_trainer_key": ({**BASE, "trainer": {"lrr": 0.1}}, ["trainer.lrr", "unknown key", "lr"]),
    "unknown_model_key": ({"model": {"family": "vae", "bta": 2}}, ["model.bta", "unknown key", "latent_dim"]),
    "wrong_type": ({**BASE, "trainer": {"max_steps": "many"}}, ["trainer.max_steps", "'many'"]),
    "negative_beta": ({"model": {"family": "beta_vae", "beta": -1}}, ["model.beta", "greater than or equal to 0", "-1"]),
    # workers: 0 is local mode (the loop in this process); below that is a mistake.
    "negative_workers": ({**BASE, "scaling": {"workers": -1}}, ["scaling.workers", "greater than or equal to 0", "-1"]),
    "unknown_family": ({"model": {"family": "vqgan"}}, ["unknown family 'vqgan'", "dcgan", "vae"]),
    "unknown_dataset": ({**BASE, "data": {"dataset": "imagenet"}}, ["unknown dataset 'imagenet'", "digits", "shapes"]),
    "uneven_batch": ({**BASE, "trainer": {"batch_size": 7}, "scaling": {"workers": 2}}, ["batch_size=7", "workers=2"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_exits_2_with_a_plain_message(case, tmp_path, capsys, genray_home):
    raw, needles = BAD[case]
    path = _write(tmp_path, raw)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"genray: error: {path}"), err
    for needle in needles:
        assert needle in err, (needle, err)
    assert "Traceback" not in err and err.count("\n") == 1


def test_missing_config_file(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: config file not found" in capsys.readouterr().err


def test_bad_set_override(tmp_path, capsys):
    path = _write(tmp_path, BASE)
    assert main(["train", str(path), "--set", "trainer.lr"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_bad_parquet_names_file_and_column(tmp_path, capsys, genray_home):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "bad.parquet"
    table = pa.table({"pixels": pa.array([b"\x00" * 64])})
    meta = {b"genray.modality": b"image", b"genray.shape": b"[8, 8, 1]"}
    pq.write_table(table.replace_schema_metadata(meta), bad)
    path = _write(tmp_path, {**BASE, "data": {"path": str(bad), "test_path": str(bad)}})
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "'image'" in err and "Traceback" not in err, err


def test_real_process_exit_code_and_no_traceback(tmp_path):
    path = _write(tmp_path, {**BASE, "scaling": {"workers": -1}})
    proc = subprocess.run([sys.executable, "-m", "genray.pipelines.cli", "train", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "scaling.workers" in proc.stderr and "Traceback" not in proc.stderr


def test_families_lists_each_familys_capabilities_sampling_settings_and_configs(capsys):
    from genray.components.models import FAMILIES

    assert main(["families"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:2] == ["family", "capabilities"] and "sampling settings" in lines[0]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == set(FAMILIES)
    assert "temperature" in rows["vae"] and "pipelines/configs/vae/vae_digits.yaml" in rows["vae"]
