"""`import genray`: the README's Python example, run as it stands, and what the API promises.

The example runs in a fresh interpreter (its own Ray, its own project home) exactly as the README
shows it; a few checks appended to it report what it made."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


CHECKS = '''
import json, torch
from pathlib import Path
again = genray.load(run.run_id).sample(8, seed=3)
from_dir = genray.load(run.checkpoint).sample(8, seed=3)
other = model.sample(8, seed=4)
errors = {}
for name, call in {"labels": lambda: model.sample(2, class_labels=[1]),
                   "setting": lambda: model.sample(2, no_such_setting=1),
                   "ref": lambda: genray.load("models:/no-such-model/1"),
                   "config": lambda: genray.train("vae/vae_digitz")}.items():
    try:
        call()
    except genray.UserError as e:
        errors[name] = str(e)
print("RESULT " + json.dumps({
    "name": run.name, "run_id": run.run_id, "model_uri": run.model_uri, "checkpoint": str(run.checkpoint),
    "shape": list(images.shape), "range": [images.min().item(), images.max().item()],
    "same_seed_same_samples": torch.equal(again, from_dir), "seeds_differ": not torch.equal(again, other),
    "metrics": scores.metrics, "eval_run": scores.eval_run_id, "training_run": scores.training_run_id,
    "errors": errors, "settings": model.settings().model_dump()}))
'''


@pytest.mark.integration
def test_the_readme_python_example_runs_as_shown(tmp_path):
    env = {**os.environ, "GENRAY_HOME": str(tmp_path / "home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-c", readme_example() + CHECKS], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT ", 1)[1])

    # train: the run, its MLflow id, the checkpoint it ended at and the registered version.
    assert out["model_uri"] == "models:/vae-digits/1"
    assert re.fullmatch(r"[0-9a-f]{32}", out["run_id"]) and out["name"].startswith("vae_digits-")
    assert Path(out["checkpoint"], "state.json").is_file() and out["checkpoint"].endswith("checkpoint_000300")
    assert f"{out['name']} {out['run_id']} {out['checkpoint']} models:/vae-digits/1" in proc.stdout

    # load + sample: any reference names the same model; a seed names the same samples.
    assert out["shape"] == [64, 1, 8, 8] and -1.0 <= out["range"][0] < out["range"][1] <= 1.0
    assert out["same_seed_same_samples"] and out["seeds_differ"]
    assert out["settings"] == {"temperature": 1.0}
    grid = np.asarray(Image.open(tmp_path / "digits.png"))
    assert grid.ndim >= 2 and grid.shape[0] > 8 * 7 and grid.std() > 10  # 8x8 tiles of digits, not a flat image

    # evaluate: scored against the floor, logged under the training run. 300 steps learn
    # something, but not the data: far from the floor, and far from noise.
    m = out["metrics"]
    assert out["training_run"] == out["run_id"] and out["eval_run"]
    assert m["fd_digits_floor"] < m["fd_digits"] < 200, m
    assert m["precision_digits"] > 0.2 and m["bits_per_dim"] > 0

    # user mistakes raise genray.UserError naming the value.
    errors = out["errors"]
    assert "class_labels" in errors["labels"] and "not class-conditional" in errors["labels"]
    assert "no_such_setting" in errors["setting"] and "temperature" in errors["setting"]
    assert "no-such-model" in errors["ref"]
    assert "vae/vae_digitz" in errors["config"] and "vae/vae_digits" in errors["config"]


def test_import_genray_is_light_and_claims_the_api():
    code = ("import sys, genray; light = not any(m in sys.modules for m in ('torch', 'ray', 'mlflow')); "
            "print(light, sorted(genray.__all__), callable(genray.train), callable(genray.load), "
            "issubclass(genray.UserError, ValueError))")
    proc = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["True", "['LoadedModel',", "'TrainOutcome',", "'UserError',", "'__version__',",
                                   "'evaluate',", "'load',", "'train',", "'tune']", "True", "True", "True"]


def test_the_api_takes_a_config_as_a_dict_and_names_mistakes_in_it():
    from genray.pipelines import config

    raw = config.read_yaml("vae/vae_digits")
    spec = config.load(raw, {"trainer.max_steps": 7, "model.latent_dim": 4})
    assert spec.trainer.max_steps == 7 and spec.model_args()["latent_dim"] == 4
    assert config.read_yaml("vae/vae_digits")["trainer"]["max_steps"] == 2000  # the dict was copied, not changed
    with pytest.raises(config.ConfigError, match=r"^config: trainer.max_stepz: unknown key"):
        config.load(raw, {"trainer.max_stepz": 7})
