"""`genray eval` on tiny trained runs: real Ray generation, a real MLflow store."""
from __future__ import annotations

import json

import numpy as np
import pytest

from genray.pipelines import cli, config, evaluate, train

pytestmark = pytest.mark.integration


def tiny_spec(family: str, feature_net: str, **model):
    return config.validate({
        "data": {"dataset": "digits", "size": "tiny"},
        "model": {"family": family, "size": "tiny", **model},
        "trainer": {"max_steps": 30, "batch_size": 16, "checkpoint_every": 30, "eval_every": 30, "log_every": 10,
                    "eval_batches": 1, "num_samples": 16, "quality_samples": 16, "feature_net": feature_net},
        "scaling": {"workers": 0},  # local mode: evaluation is under test here, not data-parallel training
        "tracking": {"experiment": "test"},
    }, "<test>")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("eval") / "home"


@pytest.fixture(scope="module")
def trained(ray_session, home, digits_classifier):
    """A VAE (likelihood, encode/decode) and a class-conditional GAN, trained for 30 steps."""
    fnet = str(digits_classifier)
    return {
        "vae": train.run(tiny_spec("vae", fnet), name="e-vae", home=home),
        "gan": train.run(tiny_spec("dcgan", fnet, conditional=True), name="e-gan", home=home),
    }


@pytest.fixture
def env_home(home, monkeypatch):
    monkeypatch.setenv("GENRAY_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


def client_for(home):
    from mlflow import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_eval_of_a_run_logs_every_metric_with_its_settings(trained, env_home, digits_classifier, capsys):
    vae = trained["vae"]
    code = cli.main(["eval", f"runs:/{vae.run_id}", "--num-samples", "200", "--workers", "2", "--batch-size", "50",
                     "--feature-net", str(digits_classifier), "--likelihood-rows", "64"])
    assert code == 0
    shown = capsys.readouterr().out
    assert "fd_digits" in shown and "floor" in shown and "(bound; bits per 8-bit pixel" in shown

    client = client_for(env_home)
    run = client.get_run(client.get_run(vae.run_id).data.tags["genray.eval.last_run"])
    assert run.data.tags["mlflow.parentRunId"] == vae.run_id  # nested under the training run
    m, p = run.data.metrics, run.data.params
    for key in ("fd_digits", "fd_digits_floor", "kid_digits", "kid_digits_floor", "precision_digits",
                "recall_digits", "precision_digits_floor", "recall_digits_floor", "classifier_accuracy_real",
                "bits_per_dim", "recon_mse", "recon_psnr", "samples_per_s", "batch_latency_s", "interp_evenness",
                "interp_detour"):
        assert key in m and np.isfinite(m[key]), key
    # 30 training steps are far from the data; two real splits are close to each other.
    assert m["fd_digits"] > m["fd_digits_floor"] and m["kid_digits"] > m["kid_digits_floor"]
    assert 0 <= m["precision_digits"] <= 1 and 0 <= m["recall_digits"] <= 1
    assert m["bits_per_dim"] > 0 and m["recon_mse"] > 0
    assert 1 <= m["interp_evenness"] <= 16 and m["interp_detour"] >= 1  # K = 16 steps
    from genray.components.metrics.classifier import classifier_id

    assert p["eval.num_samples"] == "200" and p["eval.reference_split"] == "test"
    assert p["eval.feature_nets"] == classifier_id(digits_classifier)
    assert p["eval.bits_per_dim_kind"] == "bound" and p["eval.compared_rows"] == "200"
    # The training run carries the figures too, at the checkpoint's step.
    history = client.get_metric_history(vae.run_id, "eval_full/fd_digits")
    assert history[-1].value == pytest.approx(m["fd_digits"]) and history[-1].step == 30
    files = [f.path for f in client.list_artifacts(run.info.run_id, "samples")]
    assert files == ["samples/eval_samples.png"]
    saved = json.loads(open(client.download_artifacts(run.info.run_id, "eval/metrics.json")).read())
    assert saved["metrics"]["fd_digits"] == pytest.approx(m["fd_digits"])


def test_eval_of_a_registered_conditional_model_measures_class_consistency(trained, env_home, digits_classifier):
    gan = trained["gan"]
    client = client_for(env_home)
    client.set_registered_model_alias(gan.model_name, "champion", gan.model_version)
    out = evaluate.evaluate(evaluate.EvalRequest(
        target=f"models:/{gan.model_name}@champion", num_samples=100, batch_size=50, workers=0,
        feature_net=str(digits_classifier)))
    assert 0 <= out.metrics["class_consistency"] <= 1
    assert "bits_per_dim" not in out.metrics and "recon_mse" not in out.metrics  # a GAN has neither
    run = client.get_run(out.eval_run_id)
    assert run.data.tags["genray.eval.model_version"] == gan.model_version
    assert run.data.tags["mlflow.parentRunId"] == gan.run_id
    # The training loop logged the cheap subset at its eval step.
    train_metrics = client.get_run(gan.run_id).data.metrics
    assert "eval/kid_digits" in train_metrics and "eval/class_consistency" in train_metrics


def test_samples_do_not_depend_on_how_many_workers_generate_them(trained):
    ckpt = trained["gan"].checkpoint
    conditions = {"y": np.arange(40) % 10}
    kw = dict(sampling={}, conditions=conditions, batch_size=16, seed=3)
    local, speed = evaluate.generate(ckpt, 40, workers=0, **kw)
    spread, _ = evaluate.generate(ckpt, 40, workers=2, **kw)
    assert local.shape == (40, 1, 8, 8) and local.dtype == np.uint8
    assert np.array_equal(local, spread)
    other, _ = evaluate.generate(ckpt, 40, workers=0, **{**kw, "seed": 4})
    assert not np.array_equal(local, other)
    assert speed["samples_per_s"] > 0 and speed["batch_latency_s"] > 0


@pytest.mark.parametrize("target, message", [
    ("runs:/0123456789abcdef0123456789abcdef", "not found in the MLflow store"),
    ("0123456789abcdef0123456789abcdef", "not found in the MLflow store"),
    ("models:/no-such-model@champion", "not found in the MLflow store"),
    ("no/such/dir", "not a checkpoint directory"),
])
def test_a_bad_target_exits_2_with_a_plain_message(target, message, genray_home, capsys):
    assert cli.main(["eval", target]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]  # a fresh store has MLflow log its table creation first
    assert line.startswith("genray: error: TARGET") and message in line
    assert "runs:/RUN_ID" in line  # says what is accepted


def test_bad_sampling_settings_exit_2_naming_what_the_model_takes(trained, env_home, capsys):
    vae = trained["vae"]
    assert cli.main(["eval", vae.run_id, "--set", "sampling.guidance_scale=2", "--workers", "0"]) == 2
    assert "--set sampling.guidance_scale: this model's sampler takes sampling.temperature" in capsys.readouterr().err
    assert cli.main(["eval", vae.run_id, "--set", "guidance_scale=2"]) == 2
    assert "expected sampling.KEY=VALUE" in capsys.readouterr().err
    assert cli.main(["eval", vae.run_id, "--num-samples", "1"]) == 2
    assert "--num-samples must be >= 2" in capsys.readouterr().err


def test_fid_runs_on_an_inception_weights_file_the_user_supplies(trained, env_home, tmp_path):
    """The Inception path end to end, with random weights standing in for pytorch-fid's file."""
    import torch

    from genray.components.metrics.inception import InceptionFeatures, inception_id

    torch.manual_seed(0)
    path = tmp_path / "inception.pth"
    torch.save(InceptionFeatures().state_dict(), path)
    out = evaluate.evaluate(evaluate.EvalRequest(
        target=trained["vae"].run_id, num_samples=12, batch_size=12, workers=0, feature_net="none",
        inception=str(path), likelihood_rows=8, log=False))
    for key in ("fd_inception", "fd_inception_floor", "kid_inception", "precision_inception", "recall_inception"):
        assert np.isfinite(out.metrics[key]), key
    assert "fd_digits" not in out.metrics and "class_consistency" not in out.metrics
    assert out.params["eval.feature_nets"] == inception_id(path) and out.eval_run_id is None


def test_a_shapes_autoencoder_gets_disentanglement_scores(ray_session, tmp_path, monkeypatch):
    """MIG on the factor columns and the β-VAE metric on pairs rendered on the fly (few points:
    the metric's behaviour is tested in tests/components/metrics)."""
    monkeypatch.setattr(evaluate, "BETA_VAE_POINTS", {"pairs_per_point": 4, "num_train": 40, "num_eval": 20})
    home = tmp_path / "home"
    spec = config.validate({
        "data": {"dataset": "shapes", "size": "tiny"},
        "model": {"family": "beta_vae", "size": "tiny"},
        "trainer": {"max_steps": 6, "batch_size": 16, "checkpoint_every": 6, "eval_every": 6, "log_every": 3,
                    "eval_batches": 1, "num_samples": 16, "quality_samples": 0},
        "scaling": {"workers": 2, "cpus_per_worker": 0.5},
        "tracking": {"experiment": "test"},
    }, "<test>")
    out = train.run(spec, name="e-bvae", home=home)
    ev = evaluate.evaluate(evaluate.EvalRequest(target=out.run_id, num_samples=20, batch_size=20, workers=0,
                                                feature_net="none", likelihood_rows=8, log=False), home=home)
    m = ev.metrics
    assert 0 <= m["mig"] <= 1 and 0 <= m["beta_vae_score"] <= 1
    assert {"mig_shape", "mig_color", "mig_x", "mig_rotation"} <= set(m)
    assert ev.params["eval.beta_vae.num_eval"] == "20"
    assert m["recon_psnr"] > 0 and np.isfinite(m["bits_per_dim"])


def test_an_audio_model_is_scored_in_nats_per_sample_beside_its_baselines_and_by_pitch(ray_session, tmp_path, capsys):
    """A class-conditional WaveNet on the tones, trained a few steps in local mode: exact nats
    per sample on held-out clips with the uniform, unigram and bigram baselines, the pitch of
    its samples beside that of the real clips, and the samples logged as a WAV."""
    home = tmp_path / "home"
    spec = config.validate({
        "data": {"dataset": "tones", "size": "tiny"},
        "model": {"family": "wavenet", "size": "tiny", "conditioning": "class"},
        "trainer": {"max_steps": 20, "batch_size": 8, "lr": 3e-3, "checkpoint_every": 20, "eval_every": 20,
                    "eval_batches": 1, "num_samples": 4},
        "scaling": {"workers": 0},
        "tracking": {"experiment": "test"},
    }, "<test>")
    out = train.run(spec, name="e-wavenet", home=home)
    ev = evaluate.evaluate(evaluate.EvalRequest(target=f"runs:/{out.run_id}", num_samples=6, batch_size=6,
                                                workers=0, likelihood_rows=16), home=home)
    m = ev.metrics
    assert m["uniform_nats_per_sample"] == pytest.approx(np.log(256))
    # Tones are smooth: the previous value says much about the next, so bigram < unigram < uniform.
    assert m["bigram_nats_per_sample"] < m["unigram_nats_per_sample"] < m["uniform_nats_per_sample"]
    assert 0 < m["nats_per_sample"] < m["uniform_nats_per_sample"]
    assert ev.params["eval.nats_per_sample_kind"] == "exact" and ev.params["eval.reference_samples"] == str(16 * 2000)
    assert m["pitch_accuracy_real"] == 1.0 and 0 <= m["pitch_accuracy"] <= 1
    assert "nats_per_active_sample" not in m  # tones are sound from end to end: no padding to leave out
    assert m["audio_samples_per_s"] == pytest.approx(m["samples_per_s"] * 2000)
    assert m["real_time_factor"] == pytest.approx(m["audio_samples_per_s"] / 8000)
    files = [f.path for f in client_for(home).list_artifacts(ev.eval_run_id, "samples")]
    assert any(f.endswith(".wav") for f in files), files
    evaluate.print_report(ev)
    assert "8-bit mu-law; uniform 5.545" in capsys.readouterr().out


@pytest.mark.parametrize("family", ["gpt", "maskgit"])
def test_a_token_model_is_scored_beside_n_gram_baselines(family, ray_session, tmp_path):
    """Token models on the built-in text, a few steps in local mode: GPT's exact bits per char
    beside the unigram and bigram of the other split; MaskGIT, which has no likelihood, its own
    held-out masked-token loss instead; both the speed of generation."""
    home = tmp_path / "home"
    spec = config.validate({
        "data": {"dataset": "text", "size": "tiny"},
        "model": {"family": family, "size": "tiny"},
        "trainer": {"max_steps": 10, "batch_size": 8, "lr": 3e-3, "checkpoint_every": 10, "eval_every": 10,
                    "eval_batches": 1, "num_samples": 4},
        "scaling": {"workers": 0},
        "tracking": {"experiment": "test"},
    }, "<test>")
    out = train.run(spec, name=f"e-{family}", home=home)
    ev = evaluate.evaluate(evaluate.EvalRequest(target=f"runs:/{out.run_id}", num_samples=4, batch_size=4,
                                                workers=0, likelihood_rows=16), home=home)
    m, p = ev.metrics, ev.params
    assert 0 < m["bigram_bits_per_token"] < m["unigram_bits_per_token"] < np.log2(96)
    assert p["eval.token_unit"] == "char" and m["tokens_per_s"] > 0
    if family == "gpt":
        assert p["eval.bits_per_token_kind"] == "exact" and 0 < m["bits_per_token"] < 8
    else:
        assert "bits_per_token" not in m and "eval.bits_per_token_kind" not in p
        assert 0 < m["heldout_loss"] < np.log(96) * 1.5  # nats per masked char, near uniform after 10 steps


def test_an_rbm_is_scored_per_binarised_pixel_with_its_ais_log_partition_and_error(ray_session, tmp_path, capsys):
    """An RBM's likelihood is an estimate: genray eval reports bits per binarised pixel, the AIS
    log Z behind it and that estimate's standard error over the runs, with the schedule."""
    home = tmp_path / "home"
    spec = config.validate({
        "data": {"dataset": "digits", "size": "tiny"},
        "model": {"family": "rbm", "size": "tiny", "ais_temperatures": 300, "ais_runs": 16},
        "trainer": {"max_steps": 20, "batch_size": 16, "lr": 0.05, "checkpoint_every": 20, "eval_every": 20,
                    "eval_batches": 1, "num_samples": 4, "feature_net": "none", "quality_samples": 0},
        "scaling": {"workers": 0},
        "tracking": {"experiment": "test"},
    }, "<test>")
    out = train.run(spec, name="e-rbm", home=home)
    ev = evaluate.evaluate(evaluate.EvalRequest(target=f"runs:/{out.run_id}", num_samples=8, batch_size=8, workers=0,
                                                feature_net="none", likelihood_rows=32,
                                                sampling={"gibbs_steps": 20}), home=home)
    m, p = ev.metrics, ev.params
    assert p["eval.bits_per_dim_kind"] == "estimate" and p["eval.bits_per_dim_unit"] == "bits per binarised pixel"
    assert 0 < m["bits_per_dim"] <= 1.0  # a binary pixel costs at most a bit under a sane model
    assert np.isfinite(m["log_partition"]) and 0 <= m["log_partition_stderr"] < 1
    assert p["eval.log_partition_method"].startswith("AIS, 300 temperatures x 16 runs")
    evaluate.print_report(ev)
    shown = capsys.readouterr().out
    assert f"± {m['log_partition_stderr']:.2g}" in shown and "log_partition_stderr" not in shown


def test_a_translation_model_is_scored_on_its_translations_of_held_out_inputs(ray_session, tmp_path):
    """Pix2Pix on the edges -> items pairs, a few local-mode steps: genray eval translates the
    test split's first inputs and scores them against their true targets (what a translation
    made here from the same checkpoint, seed and rows gives), logging inputs, translations and
    targets."""
    import torch

    from genray.components import checkpoint
    from genray.components.data import normalize_images, quantize
    from genray.pipelines.data import read_decoded, resolve_data

    home = tmp_path / "home"
    spec = config.validate({
        "data": {"dataset": "fashion_edges", "size": "tiny"},
        "model": {"family": "pix2pix", "size": "tiny"},
        "trainer": {"max_steps": 6, "batch_size": 8, "checkpoint_every": 6, "eval_every": 6, "eval_batches": 1,
                    "num_samples": 4, "quality_samples": 0},
        "scaling": {"workers": 0},
        "tracking": {"experiment": "test"},
    }, "<test>")
    out = train.run(spec, name="e-pix2pix", home=home)
    ev = evaluate.evaluate(evaluate.EvalRequest(target=f"runs:/{out.run_id}", num_samples=24, batch_size=10,
                                                workers=0, feature_net="none", seed=3), home=home)
    m = ev.metrics
    assert set(m) == {"l1", "psnr", "translations_per_s"}  # no feature net asked for: pixels only

    model, _ = checkpoint.build_model(out.checkpoint)
    model.eval()
    data = resolve_data(spec, home)
    pairs = read_decoded(data.test, ["image", "image_paired"], "paired_image", data.info.shape, 24)
    x, truth = normalize_images(torch.as_tensor(pairs["x"])), normalize_images(torch.as_tensor(pairs["x_paired"]))
    gen = torch.Generator().manual_seed(3)
    fake = torch.cat([model.translate(x[i:i + 10], generator=gen) for i in range(0, 24, 10)])
    fake = normalize_images(torch.as_tensor(quantize(fake)))
    assert m["l1"] == pytest.approx(float((fake - truth).abs().mean()), rel=1e-5)
    mse = ((fake - truth) / 2).pow(2).flatten(1).mean(1).double()
    assert m["psnr"] == pytest.approx(float((10 * torch.log10(1 / mse)).mean()), rel=1e-5)
    assert m["l1"] != pytest.approx(float((fake - x).abs().mean()), rel=1e-3)  # scored against targets, not inputs
    files = [f.path for f in client_for(home).list_artifacts(ev.eval_run_id, "samples")]
    assert any(f.endswith(".png") for f in files), files


def test_a_two_way_translation_model_is_scored_per_direction_with_its_cycle(ray_session, tmp_path):
    """CycleGAN on sneakers <-> ankle boots, a few local-mode steps: per direction, the source
    domain's test images are translated, translated back, and the cycle's PSNR is that of the
    round trip made here from the same checkpoint."""
    import torch

    from genray.components import checkpoint
    from genray.components.data import normalize_images, quantize
    from genray.pipelines.data import read_decoded, resolve_data

    home = tmp_path / "home"
    spec = config.validate({
        "data": {"dataset": "fashion_halves", "size": "tiny"},
        "model": {"family": "cyclegan", "size": "tiny"},
        "trainer": {"max_steps": 4, "batch_size": 8, "checkpoint_every": 4, "eval_every": 4, "eval_batches": 1,
                    "num_samples": 4, "quality_samples": 0},
        "scaling": {"workers": 0},
        "tracking": {"experiment": "test"},
    }, "<test>")
    out = train.run(spec, name="e-cyclegan", home=home)
    ev = evaluate.evaluate(evaluate.EvalRequest(target=f"runs:/{out.run_id}", num_samples=12, batch_size=5,
                                                workers=0, feature_net="none"), home=home)
    m = ev.metrics
    assert set(m) == {"cycle_psnr_a_to_b", "cycle_psnr_b_to_a", "translations_per_s_a_to_b", "translations_per_s_b_to_a"}

    model, _ = checkpoint.build_model(out.checkpoint)
    model.eval()
    data = resolve_data(spec, home)
    ref = read_decoded(data.test, ["image", "domain"], "two_domain_image", data.info.shape)
    boots = normalize_images(torch.as_tensor(ref["x"][ref["domain"] == 1][:12]))  # domain 1: b
    there = normalize_images(torch.as_tensor(quantize(model.translate(boots, direction="b_to_a"))))
    back = normalize_images(torch.as_tensor(quantize(model.translate(there, direction="a_to_b"))))
    mse = ((back - boots) / 2).pow(2).flatten(1).mean(1).double()
    assert m["cycle_psnr_b_to_a"] == pytest.approx(float((10 * torch.log10(1 / mse)).mean()), rel=1e-5)


@pytest.fixture(scope="module")
def clip_run(ray_session, tmp_path_factory):
    """A tiny CLIP trained for 60 local-mode steps on captioned Fashion-MNIST (tiny)."""
    home = tmp_path_factory.mktemp("clip") / "home"
    spec = config.validate({
        "data": {"dataset": "fashion_mnist", "size": "tiny"},
        "model": {"family": "clip", "size": "tiny"},
        "trainer": {"max_steps": 60, "batch_size": 64, "lr": 3e-3, "checkpoint_every": 60, "eval_every": 60,
                    "eval_batches": 1, "quality_samples": 0},
        "scaling": {"workers": 0},
        "tracking": {"experiment": "test"},
    }, "<test>")
    return home, spec, train.run(spec, name="e-clip", home=home)


def test_a_clip_model_is_scored_zero_shot_from_the_training_captions_and_held_out_templates(clip_run):
    """genray eval classifies the test split zero-shot from each class's training captions (the
    six templates) and from the three held-out templates, as model.classify does here from the
    same checkpoint, and scores the contrastive loss and in-batch retrieval on held-out pairs."""
    import torch

    from genray.components import checkpoint
    from genray.components.data import fashion_mnist
    from genray.pipelines.data import resolve_data
    from genray.pipelines.quality import read_split

    home, spec, out = clip_run
    ev = evaluate.evaluate(evaluate.EvalRequest(target=f"runs:/{out.run_id}", batch_size=32, workers=0,
                                                feature_net="none"), home=home)
    m = ev.metrics
    assert set(m) == {"zero_shot_accuracy", "zero_shot_accuracy_held_out", "images_per_s", "contrastive_loss",
                      "i2t_top1", "t2i_top1", "logit_scale"}

    model, _ = checkpoint.build_model(out.checkpoint)
    model.eval()
    data = resolve_data(spec, home)
    train_split, test_split = read_split(data.train, None), read_split(data.test, None)
    prompts = evaluate.class_prompts(train_split.captions, train_split.y, 10)
    nouns = [fashion_mnist.phrase("{noun}", k) for k in range(10)]
    # Each class's prompts are the templates filled with its name, and only its name.
    assert all(len(p) == len(fashion_mnist.TEMPLATES) and all(nouns[k] in c for c in p) for k, p in enumerate(prompts))
    pred = model.classify(test_split.x, prompts).argmax(1).numpy()
    assert m["zero_shot_accuracy"] == pytest.approx(float((pred == test_split.y).mean()))
    assert m["zero_shot_accuracy"] > 0.3  # chance is 0.1; 60 steps of a tiny CLIP already learn the classes
    assert 0 <= m["zero_shot_accuracy_held_out"] <= 1 and ev.params["eval.zero_shot.prompts_per_class"] == "6"
    assert m["contrastive_loss"] < np.log(32)  # below chance for a batch of 32
    assert 0 <= m["i2t_top1"] <= 1 and 0 <= m["t2i_top1"] <= 1


def test_a_text_model_on_a_frozen_clip_gets_a_clip_score(clip_run, capsys, monkeypatch):
    """Stable-Diffusion style through the pipeline: a text-conditioned diffusion model names the
    trained CLIP by runs:/ (resolved, its weights carried in the new checkpoint), trains a few
    steps, and `genray eval --clip` scores its samples against their prompts with that CLIP, as
    evaluate.clip_score computes here, beside the real images' score."""
    import torch

    from genray.components import checkpoint
    from genray.components.data import encode_captions
    from genray.pipelines.quality import read_split

    home, _, clip_out = clip_run
    spec = config.validate({
        "data": {"dataset": "fashion_mnist", "size": "tiny"},
        "model": {"family": "diffusion", "size": "tiny", "conditioning": "text", "text_len": 48,
                  "text_encoder": f"runs:/{clip_out.run_id}", "num_timesteps": 50, "num_inference_steps": 2,
                  "vlb_timesteps": 2, "eval_guidance_scales": [0.0, 2.0]},
        "trainer": {"max_steps": 4, "batch_size": 16, "checkpoint_every": 4, "eval_every": 4, "eval_batches": 1,
                    "num_samples": 4, "quality_samples": 0},
        "scaling": {"workers": 0},
        "tracking": {"experiment": "test"},
    }, "<test>")
    out = train.run(spec, name="e-sd", home=home)
    model, _ = checkpoint.build_model(out.checkpoint)
    clip, _ = checkpoint.build_model(clip_out.checkpoint)
    # The frozen text tower in the diffusion checkpoint is the trained CLIP's, unchanged.
    for k, v in clip.text_tower.state_dict().items():
        assert torch.equal(model.text_encoder.clip.text_tower.state_dict()[k], v), k

    ev = evaluate.evaluate(evaluate.EvalRequest(target=f"runs:/{out.run_id}", num_samples=8, batch_size=8, workers=0,
                                                feature_net="none", clip=f"runs:/{clip_out.run_id}"), home=home)
    assert ev.params["eval.clip"] == f"runs:/{clip_out.run_id}"
    assert 0 <= ev.metrics["clip_score"] <= 100 and 0 < ev.metrics["clip_score_real"] <= 100
    test = read_split(str(home / "data" / "fashion_mnist-tiny-seed0-r2" / "test.parquet"), None)
    prompts = test.captions[:8]
    tokens = torch.as_tensor(encode_captions(prompts, clip.text_len))
    real = 100 * (clip.embed_images(test.x[:8]) * clip.embed_text(tokens)).sum(-1).clamp(min=0).mean()
    assert ev.metrics["clip_score_real"] == pytest.approx(float(real), rel=1e-5)

    # A --clip that is not a CLIP is named before anything is generated.
    monkeypatch.setenv("GENRAY_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rc = cli.main(["eval", f"runs:/{out.run_id}", "--no-log", "--feature-net", "none", "--workers", "0",
                   "--clip", f"runs:/{out.run_id}"])
    assert rc == 2 and "the CLIP score needs a genray clip" in capsys.readouterr().err
