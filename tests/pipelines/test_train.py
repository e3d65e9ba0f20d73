"""Real Ray Train runs of every family on tiny configs, tracked in a real MLflow store."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from genray.components.models import FAMILIES, build, example_data
from genray.pipelines import config, train

pytestmark = pytest.mark.integration

FAMILY_ARGS = {"dcgan": {"conditional": True},
               "diffusion": {"num_timesteps": 100, "num_inference_steps": 5, "vlb_timesteps": 5}}
# The GAN also exercises gradient accumulation across its two optimizers.
FAMILY_TRAINER = {"dcgan": {"grad_accum": 2}}
# The built-in dataset of each family's kind; digits for images. Pix2Pix's edges -> items pairs
# and CycleGAN's sneakers / ankle boots are made from Debian's Fashion-MNIST, which `make test` installs.
FAMILY_DATA = {"gpt": "text", "maskgit": "text", "wavenet": "tones", "pix2pix": "fashion_edges", "cyclegan": "fashion_halves"}
SHOWN_AS = {"text": ".txt", "tones": ".wav"}  # how each kind's samples are logged; images: .png
# Families that cannot train without other trained models (components.models.EXAMPLE_REFS), each
# with the test that trains those first and then the family.
NEEDS_TRAINED_PARTS = {"unclip": "unclip needs a trained CLIP and decoder: tests/pipelines/test_unclip_pipeline.py trains all three"}


def tiny_spec(family: str, workers: int = 2, **trainer):
    raw = {
        "data": {"dataset": FAMILY_DATA.get(family, "digits"), "size": "tiny"},
        "model": {"family": family, "size": "tiny", **FAMILY_ARGS.get(family, {})},
        "trainer": {"max_steps": 6, "batch_size": 16, "checkpoint_every": 3, "eval_every": 3,
                    "log_every": 2, "eval_batches": 1, "num_samples": 16, "quality_samples": 0, **trainer},
        "scaling": {"workers": workers, "cpus_per_worker": 0.5},
        "tracking": {"experiment": "test"},
    }
    return config.validate(raw, "<test>")


def model_capabilities(family: str) -> frozenset[str]:
    spec = tiny_spec(family)
    data = example_data(family)
    return build(family, spec.model_args(), replace(data, num_classes=10 if data.kind.is_image else 0)).capabilities


def mlflow_client(home: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def runs_named(client, name: str):
    exp = client.get_experiment_by_name("test")
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`genray.run_name` = '{name}'")


def artifact_paths(client, run_id: str, path: str = "") -> list[str]:
    out = []
    for f in client.list_artifacts(run_id, path):
        out += artifact_paths(client, run_id, f.path) if f.is_dir else [f.path]
    return out


@pytest.mark.parametrize("family, workers", [
    *(pytest.param(f, 0, marks=pytest.mark.skip(reason=NEEDS_TRAINED_PARTS[f])) if f in NEEDS_TRAINED_PARTS else (f, 0)
      for f in sorted(FAMILIES)),
    ("dcgan", 2)])
def test_run_is_tracked_checkpointed_and_registered(family, workers, ray_session, genray_home, digits_classifier):
    """Every family through the real loop in Ray Train's local mode (workers: 0: the same
    ray.train API in this process); a multi-network recipe with accumulation on 2 real workers.
    Every family also logs the cheap quality metrics at each eval, on a small digits classifier."""
    embeds = "embed" in model_capabilities(family)  # CLIP: nothing to draw, so no quality or grids
    images = family not in FAMILY_DATA and not embeds
    translates = "translate" in model_capabilities(family)
    quality = {"quality_samples": 16, "feature_net": str(digits_classifier)} if images else {}
    spec = tiny_spec(family, workers, **FAMILY_TRAINER.get(family, {}), **quality)
    out = train.run(spec, name=f"t-{family}-{workers}", home=genray_home)

    assert out.metrics["step"] == 6
    assert (out.checkpoint / "model.safetensors").exists() and (out.checkpoint / "state.json").exists()
    client = mlflow_client(genray_home)
    [run] = runs_named(client, f"t-{family}-{workers}")
    assert run.info.status == "FINISHED"
    # Artifacts stay under the project home, and registering the model (which uses mlflow's
    # fluent API) left no MLFLOW_TRACKING_URI behind for the next run in this process to inherit.
    assert client.get_experiment_by_name("test").artifact_location.startswith((genray_home / "mlartifacts").as_uri())
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert run.data.params["model.family"] == family and run.data.params["scaling.workers"] == str(workers)
    assert "eval/loss" in run.data.metrics
    if images:
        assert run.data.metrics["eval/kid_digits"] > -1 and run.data.metrics["eval/fd_digits_n16"] >= 0
    if "condition" in model_capabilities(family):
        assert 0 <= run.data.metrics["eval/class_consistency"] <= 1
    assert any(k.startswith("train/") and k.endswith("loss") for k in run.data.metrics)
    # Where the time to the first step went, each mark after the one before it.
    marks = ["data", "model_inputs", "mlflow_run", "ray_init", "dataset", "loop", "model", "first_batch", "first_step"]
    startup = [run.data.metrics[f"startup/{m}_s"] for m in marks]
    assert startup == sorted(startup) and startup[0] >= 0, dict(zip(marks, startup))
    files = artifact_paths(client, run.info.run_id)
    # Samples at each eval, as the data kind shows them: one grid per eval (a conditional
    # diffusion model logs one per guidance scale), or a text file.
    for step in ("000003", "000006") if not embeds else ():
        suffix = SHOWN_AS.get(spec.data.dataset, ".png")
        assert any(f.startswith(f"samples/step_{step}") and f.endswith(suffix) for f in files), files
    assert "checkpoint/model.safetensors" in files
    # The grids are MLflow step images too, for the UI's step slider.
    assert any(f.startswith("images/samples") for f in files) == (images or translates), files

    # The registered model loads from safetensors + genray's code, and samples.
    import mlflow.pyfunc

    mlflow.set_registry_uri(f"sqlite:///{genray_home / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"models:/{family}-{spec.data.dataset}/{out.model_version}")
    assert out.model_version is not None
    if translates:  # pix2pix: edges in, 32x32 items out; cyclegan: sneakers in, boots out; same seed, same out
        edges = np.full((2, 1, 32, 32), -1.0, np.float32)
        edges[:, :, 8:24, 16] = 1.0
        x = model.predict({"x": edges.ravel().tolist(), "seed": 1})
        assert x.shape == (2, 1, 32, 32) and x.min() >= -1 and x.max() <= 1
        assert np.array_equal(x, model.predict({"x": edges.ravel().tolist(), "seed": 1}))
        if family == "cyclegan":  # unpaired: no target to compare with, the held-out cycle L1
            assert "eval/cycle_a" in run.data.metrics and "eval/cycle_b" in run.data.metrics
            back = model.predict({"x": edges.ravel().tolist(), "seed": 1, "direction": "b_to_a"})
            assert back.shape == x.shape and not np.array_equal(back, x)
        else:
            assert "eval/l1" in run.data.metrics and "eval/psnr" in run.data.metrics
        return
    if embeds:  # captions or images in, unit-norm embeddings out
        z = model.predict({"texts": ["a handwritten 3", "a handwritten 5"]})
        assert z.shape[0] == 2 and np.allclose(np.linalg.norm(z, axis=1), 1, atol=1e-4)
        assert model.predict({"x": [-1.0] * 64}).shape == (1, z.shape[1])  # one blank 8x8 digit
        assert "eval/i2t_top1" in run.data.metrics
        return
    x = model.predict({"n": 3, "seed": 1})
    if family == "wavenet":  # three clips as long as the training clips, at 8-bit mu-law values
        assert x.shape == (3, 2000) and x.min() >= -1 and x.max() <= 1
        assert len(np.unique(x)) <= 256
        return
    if not images:  # text: three continuations of the empty prompt
        assert len(x) == 3 and all(isinstance(t, str) and len(t) == 128 for t in x)
        assert run.data.metrics["train/tokens_per_s"] > 0
        return
    assert x.shape == (3, 1, 8, 8) and x.min() >= -1 and x.max() <= 1
    if family == "diffusion":  # sampling settings pass through to the model, checked there
        x2 = model.predict({"n": 3, "seed": 1}, params={"guidance_scale": 3.0, "num_inference_steps": 2})
        assert x2.shape == x.shape and not (x2 == x).all()
        with pytest.raises(Exception, match="guidance_scale"):
            model.predict({"n": 3, "seed": 1}, params={"guidance_scale": -1.0})


def test_local_mode_continues_from_its_own_checkpoints(ray_session, genray_home):
    """Ray Train's local mode keeps no checkpoints; genray's loop writes them under the run's
    storage folder, so `--workers 0` resumes like a real run."""
    spec = tiny_spec("vae", 0)
    first = train.run(spec, name="t-local", home=genray_home)
    assert sorted(p.name for p in (genray_home / "ray_results" / "t-local").glob("checkpoint_*")) == [
        "checkpoint_000003", "checkpoint_000006"]
    longer = tiny_spec("vae", 0, max_steps=9)
    out = train.run(longer, name="t-local", home=genray_home)
    assert first.metrics["step"] == 6 and out.metrics["step"] == 9
    client = mlflow_client(genray_home)
    [run] = runs_named(client, "t-local")
    resumed = [m.value for m in client.get_metric_history(run.info.run_id, "resumed_from_step")]
    assert resumed == [0, 6]


def _worker_pids() -> list[int]:
    """Train workers of this test session's Ray instance only (another Ray on the machine, such
    as a user's sweep, keeps its workers): those whose RAY_RAYLET_PID is our raylet."""
    import psutil

    raylets = {str(c.pid) for c in psutil.Process().children(recursive=True) if c.name() == "raylet"}
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if not any("RayTrainWorker" in part for part in (p.info["cmdline"] or [])):
            continue
        try:
            if p.environ().get("RAY_RAYLET_PID") in raylets:
                found.append(p.pid)
        except psutil.Error:
            pass  # gone, or not ours to read
    return found


def _wait_for_checkpoint(root: Path, timeout: float = 180) -> str:
    """Wait until Ray Train has registered a checkpoint (not merely written it): the controller
    records registered checkpoints in checkpoint_manager_snapshot.json."""
    import json

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            snapshot = json.loads((root / "checkpoint_manager_snapshot.json").read_text())
            if snapshot.get("checkpoint_results"):
                return snapshot["checkpoint_results"][-1]["checkpoint_dir_name"]
        except (FileNotFoundError, json.JSONDecodeError):
            pass  # not written yet, or caught mid-write
        time.sleep(0.05)
    raise TimeoutError(f"no registered checkpoint under {root}")


def test_killed_worker_resumes_from_checkpoint_in_the_same_mlflow_run(ray_session, genray_home):
    spec = tiny_spec("vae", max_steps=120, checkpoint_every=20, eval_every=120, log_every=10)
    spec.scaling.max_failures = 1
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(out=train.run(spec, name="t-kill", home=genray_home)))
    runner.start()
    _wait_for_checkpoint(genray_home / "ray_results" / "t-kill")
    pids = _worker_pids()
    assert pids, "no Ray Train worker process found"
    os.kill(pids[-1], signal.SIGKILL)
    runner.join(timeout=300)

    assert outcome["out"].metrics["step"] == 120
    client = mlflow_client(genray_home)
    [run] = runs_named(client, "t-kill")  # one MLflow run, not one per attempt
    resumed = [m.value for m in client.get_metric_history(run.info.run_id, "resumed_from_step")]
    assert resumed[0] == 0 and len(resumed) == 2 and resumed[1] >= 20, resumed

    # Exact resume (issue 23): the restarted workers read the batches the uninterrupted run reads,
    # so with the same seed the weights after 120 steps are equal bit for bit. The kill lands
    # inside the first pass (200 steps), so the resumed loop must skip what it already trained on.
    straight = train.run(spec, name="t-straight", home=genray_home, show_progress=False)
    for weights in ("model.safetensors", "ema.safetensors"):
        a = load_file(str(straight.checkpoint / weights))
        b = load_file(str(outcome["out"].checkpoint / weights))
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        assert a.keys() == b.keys() and not differ, f"{weights}: {differ} differ after the kill and resume"


def test_stopped_driver_continues_with_the_same_name(ray_session, genray_home, tmp_path):
    import ray
    import yaml

    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": {"dataset": "digits", "size": "tiny"},
        "model": {"family": "vae", "size": "tiny"},
        "trainer": {"max_steps": 150, "batch_size": 16, "checkpoint_every": 20, "eval_every": 150, "log_every": 10,
                    "quality_samples": 0},
        "scaling": {"workers": 1, "cpus_per_worker": 0.5},
        "tracking": {"experiment": "test"},
    }))
    # Drive the shared cluster from a real `genray train` process.
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    cmd = [sys.executable, "-m", "genray.pipelines.cli", "train", str(cfg), "--name", "t-stop"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_checkpoint(genray_home / "ray_results" / "t-stop")
    first.send_signal(signal.SIGINT)  # Ctrl-C
    first.communicate(timeout=120)
    assert first.returncode != 0

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    log = second.stdout + second.stderr
    resumed_at = int(log.split("resumed from step ")[1].split()[0])
    assert 20 <= resumed_at < 150
    client = mlflow_client(genray_home)
    [run] = runs_named(client, "t-stop")
    assert run.info.status == "FINISHED"


def test_text_conditioned_latent_diffusion_on_a_genray_autoencoder(ray_session, genray_home):
    """Train an autoencoder with a latent map, then diffuse in its latent space conditioned on the
    captions, naming the autoencoder by its MLflow run; the result rebuilds from its checkpoint."""
    import torch

    from genray.components.checkpoint import build_model

    ae_spec = tiny_spec("beta_vae", 0)  # local mode: what is tested here is the reference, not DDP
    ae_spec = config.validate({**ae_spec.model_dump(mode="json"), "model": {
        "family": "beta_vae", "size": "tiny", "latent_channels": 2, "latent_downsample": 1, "beta": 0.01}}, "<test>")
    ae = train.run(ae_spec, name="t-ae", home=genray_home)

    raw = tiny_spec("diffusion", 0).model_dump(mode="json")
    raw["model"] = {"family": "diffusion", "size": "tiny", "autoencoder": f"runs:/{ae.run_id}",
                    "conditioning": "text", "text_len": 24, "num_timesteps": 50, "num_inference_steps": 4,
                    "eval_guidance_scales": [0.0, 2.0]}
    out = train.run(config.validate(raw, "<test>"), name="t-ldm", home=genray_home)
    assert out.metrics["step"] == 6

    model, state = build_model(out.checkpoint)
    ref = state["model"]["args"]["autoencoder"]
    assert ref["family"] == "beta_vae" and ref["ref"] == f"runs:/{ae.run_id}" and "weights" not in ref
    # Data-dependent init set the latent scale from the first batch (Rombach et al. 2022, app. G).
    assert float(model.latent_scale) > 0 and float(model.latent_scale) != 1.0
    assert model.latent_shape == (2, 4, 4)
    # The frozen autoencoder inside the checkpoint is the one the autoencoder run trained.
    ae_model, _ = build_model(ae.checkpoint)
    for k, v in ae_model.state_dict().items():
        assert torch.equal(model.state_dict()[f"autoencoder.{k}"], v), k
    x = model.sample(3, generator=torch.Generator().manual_seed(0), prompt="a handwritten 7", guidance_scale=2.0)
    assert x.shape == (3, 1, 8, 8) and x.abs().max() <= 1

    client = mlflow_client(genray_home)
    [run] = runs_named(client, "t-ldm")
    files = artifact_paths(client, run.info.run_id)
    assert "samples/step_000006_guidance_0.png" in files and "samples/step_000006_guidance_2.png" in files


@pytest.fixture
def digits_tokenizer(ray_session, genray_home):
    """A tiny VQ-VAE trained on digits: 8x8 images -> 2x2 grids of 16 codes."""
    raw = tiny_spec("vqvae", 0).model_dump(mode="json")
    raw["model"] = {"family": "vqvae", "size": "tiny", "codebook_size": 16, "code_dim": 8}
    return train.run(config.validate(raw, "<test>"), name="t-vq", home=genray_home)


@pytest.mark.parametrize("family", ["gpt", "maskgit"])
def test_a_prior_over_a_trained_tokenizers_codes_samples_and_scores_images(family, digits_tokenizer, ray_session,
                                                                           genray_home, digits_classifier):
    """VQ-VAE's second stage: a token model over the codes of a VQ-VAE named by its run, trained on
    the images the tokenizer saw, sampling images; genray eval scores them as images (FD against
    the floor, class consistency; the GPT's VQ-VAE bound with the prior in place of the unigram)."""
    import torch

    from genray.components.checkpoint import build_model
    from genray.pipelines import evaluate

    raw = tiny_spec(family, 0, quality_samples=16, feature_net=str(digits_classifier)).model_dump(mode="json")
    raw["data"]["dataset"] = "digits"
    raw["model"] = {"family": family, "size": "tiny", "conditioning": "class",
                    "tokenizer": f"runs:/{digits_tokenizer.run_id}"}
    out = train.run(config.validate(raw, "<test>"), name=f"t-{family}-prior", home=genray_home)
    assert out.metrics["step"] == 6

    model, state = build_model(out.checkpoint)
    ref = state["model"]["args"]["tokenizer"]
    assert ref["family"] == "vqvae" and ref["ref"] == f"runs:/{digits_tokenizer.run_id}" and "weights" not in ref
    vq, _ = build_model(digits_tokenizer.checkpoint)
    for k, v in vq.state_dict().items():  # the frozen tokenizer in the checkpoint is the run's, untouched
        assert torch.equal(model.state_dict()[f"tokenizer.{k}"], v), k
    x = model.sample(3, generator=torch.Generator().manual_seed(0), y=torch.tensor([0, 1, 2]))
    assert x.shape == (3, 1, 8, 8) and x.abs().max() <= 1
    client = mlflow_client(genray_home)
    [run] = runs_named(client, f"t-{family}-prior")
    assert 0 <= run.data.metrics["eval/class_consistency"] <= 1 and run.data.metrics["eval/fd_digits_n16"] >= 0
    assert "samples/step_000006.png" in artifact_paths(client, run.info.run_id)

    scored = evaluate.evaluate(evaluate.EvalRequest(f"runs:/{out.run_id}", num_samples=32, workers=0, batch_size=16,
                                                    feature_net=str(digits_classifier), likelihood_rows=32),
                               home=genray_home, say=lambda *a: None)
    m, p = scored.metrics, scored.params
    assert m["fd_digits"] > 0 and m["fd_digits_floor"] > 0 and 0 <= m["class_consistency"] <= 1
    if family == "gpt":
        assert p["eval.bits_per_dim_kind"] == "bound" and m["bits_per_dim"] > 0
    else:  # MaskGIT has no likelihood
        assert "bits_per_dim" not in m


def test_an_autoencoder_that_names_nothing_is_a_config_error(genray_home):
    raw = tiny_spec("diffusion", 0).model_dump(mode="json")
    raw["model"] = {"family": "diffusion", "size": "tiny", "autoencoder": "models:/no-such-model@champion"}
    with pytest.raises(config.ConfigError, match="model.autoencoder: 'models:/no-such-model@champion': not found"):
        train.run(config.validate(raw, "<test>"), name="t-bad-ae", home=genray_home)
    raw["model"]["autoencoder"] = str(genray_home / "nowhere")
    with pytest.raises(config.ConfigError, match="not a checkpoint directory"):
        train.run(config.validate(raw, "<test>"), name="t-bad-ae", home=genray_home)
