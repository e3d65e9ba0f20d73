"""The registered MLflow model runs outside genray's CLI: a signature with the model's sampling
settings as params, an input example, genray's code bundled, and `mlflow models predict` works."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from genray.components import checkpoint
from genray.components.data import DatasetInfo
from genray.components.models import build
from genray.pipelines import tracking

pytestmark = pytest.mark.integration


def register(home: Path, family: str, args: dict, name: str, data: DatasetInfo | None = None) -> tuple[str, str]:
    torch.manual_seed(0)
    data = data or DatasetInfo.for_images((1, 8, 8), 10)
    model = build(family, args, data)
    with torch.no_grad():  # away from the zero-initialised output layers, so settings show
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ckpt = home / f"ckpt-{name}"
    checkpoint.save(ckpt, checkpoint.Checkpoint(model.state_dict(), {"step": 1, "model": checkpoint.model_state(family, args, data)}))
    uri = tracking.tracking_uri(home)
    run_id, _ = tracking.start_run(uri, tracking.ensure_experiment(uri, "test", home), name, {}, {})
    return uri, tracking.log_and_register(uri, run_id, ckpt, name)


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    uri, version = register(home, "vae", {"size": "tiny"}, "vae-t")
    _, diff_version = register(home, "diffusion", {"size": "tiny", "num_timesteps": 20, "num_inference_steps": 4,
                                                   "channels": 8}, "diff-t")
    return home, uri, version, diff_version


def load(uri: str, ref: str):
    import mlflow.pyfunc

    mlflow.set_registry_uri(uri)
    try:
        return mlflow.pyfunc.load_model(ref)
    finally:
        os.environ.pop("MLFLOW_REGISTRY_URI", None)


def test_signature_lists_the_settings_as_params(registered):
    _, uri, version, diff_version = registered
    vae = load(uri, f"models:/vae-t/{version}")
    sig = vae.metadata.signature
    assert [c.name for c in sig.inputs.inputs] == ["n", "seed"]
    assert [(p.name, p.dtype.name, p.default) for p in sig.params.params] == [("temperature", "double", 1.0)]
    diff = load(uri, f"models:/diff-t/{diff_version}").metadata.signature
    assert [c.name for c in diff.inputs.inputs] == ["n", "seed", "y"]  # class-conditional: labels
    assert {p.name: (p.dtype.name, p.default) for p in diff.params.params} == {
        "sampler": ("string", "ddim"), "num_inference_steps": ("long", 4), "eta": ("double", 0.0),
        "spacing": ("string", "trailing"), "guidance_scale": ("double", 1.0)}


def test_params_reach_the_sampler_and_are_checked(registered):
    _, uri, version, _ = registered
    model = load(uri, f"models:/vae-t/{version}")
    x = model.predict({"n": 3, "seed": 1})
    assert x.shape == (3, 1, 8, 8) and x.dtype == np.float32
    assert np.array_equal(x, model.predict({"n": 3, "seed": 1}))
    cold = model.predict({"n": 3, "seed": 1}, params={"temperature": 0.0})
    assert not np.allclose(cold, x) and np.allclose(cold[0], cold[1])  # T = 0: the prior mean, every sample
    with pytest.raises(Exception, match="sampling.temperature"):
        model.predict({"n": 3, "seed": 1}, params={"temperature": -1.0})


def test_mlflow_models_predict_rebuilds_it(registered, tmp_path):
    home, uri, version, _ = registered
    request = tmp_path / "in.json"
    request.write_text(json.dumps({"dataframe_records": [{"n": 2, "seed": 0}], "params": {"temperature": 0.5}}))
    out = subprocess.run(
        [str(Path(sys.executable).with_name("mlflow")), "models", "predict", "-m", f"models:/vae-t/{version}",
         "--env-manager", "local", "-i", str(request), "-t", "json"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,  # not the repo: the bundled code must do
        env={**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri})
    assert out.returncode == 0, out.stderr[-2000:]
    predictions = np.asarray(json.loads(out.stdout.strip().splitlines()[-1])["predictions"])
    assert predictions.shape == (2, 1, 8, 8)
    expected = load(uri, f"models:/vae-t/{version}").predict({"n": 2, "seed": 0}, params={"temperature": 0.5})
    np.testing.assert_allclose(predictions, expected, atol=1e-6)


def test_a_text_model_continues_a_prompt_and_stops(tmp_path):
    vocab = tuple("abcdefgh \n")
    data = DatasetInfo("tokens", (16,), 100, 0, vocab, ("tokens",))
    uri, version = register(tmp_path, "gpt", {"size": "tiny"}, "gpt-t", data)
    model = load(uri, f"models:/gpt-t/{version}")
    sig = model.metadata.signature
    assert [c.name for c in sig.inputs.inputs] == ["n", "seed", "prompt", "stop"]
    assert {p.name for p in sig.params.params} == {"max_new_tokens", "temperature", "top_k", "top_p"}
    texts = model.predict({"n": 3, "seed": 2, "prompt": "ab"}, params={"max_new_tokens": 10})
    assert len(texts) == 3 and all(len(t) == 10 and set(t) <= set(vocab) for t in texts)
    assert model.predict({"n": 3, "seed": 2, "prompt": "ab"}, params={"max_new_tokens": 10}) == texts
    stop = texts[0][3:5]
    cut = model.predict({"n": 3, "seed": 2, "prompt": "ab", "stop": [stop]}, params={"max_new_tokens": 10})
    assert cut[0] == texts[0][: texts[0].index(stop)]
    with pytest.raises(Exception, match="character 'z'"):
        model.predict({"n": 1, "prompt": "z"})
    with pytest.raises(Exception, match="sampling.top_p"):
        model.predict({"n": 1}, params={"top_p": 2.0})
