"""`genray serve` on a real `serve.run` over loopback: every route of every served family over
HTTP, limits, a fuzzed schema, a bug told apart from a user's mistake, batching, a champion
swapped under load, the gallery in headless Chromium, and weights that would run code if
unpickled. The shared app is served with an API key (--api-key-file), so every one of those
requests also passes the key check; the API key's own tests are in their section."""
from __future__ import annotations

import base64
import glob
import io
import json
import os
import pickle
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from genray.components import checkpoint
from genray.components.data import DatasetInfo, fashion_mnist, normalize_images, quantize
from genray.components.errors import UserError
from genray.components.models import build
from genray.pipelines import cli, serve, tracking

pytestmark = pytest.mark.integration

LIMITS = {"max_n": 8, "max_steps": 20, "max_new_tokens": 16, "max_audio_s": 0.2, "max_images": 4,
          "max_interpolation_steps": 6, "max_gibbs_sweeps": 50, "max_prompt_chars": 32, "max_body_bytes": 200_000, "request_timeout_s": 60}
VOCAB = tuple("abcdefghij \n")
TEXT = DatasetInfo("tokens", (12,), 100, 0, VOCAB, ("tokens",))  # 12-character rows
DOMAINS = DatasetInfo("two_domain_image", (8, 8, 1), 100, 0, None, ("image", "domain"))  # unpaired, 8x8
PAIRS = DatasetInfo("paired_image", (8, 8, 1), 100, 0, None, ("image", "image_paired"))  # edges -> items, 8x8
AUDIO = DatasetInfo("audio", (400,), 100, 3, None, ("waveform", "sample_rate", "label"), sample_rate=8000)  # 50 ms
MODELS = {  # name -> (family, data and model arguments)
    "vae-t": ("vae", {}),
    "gan-t": ("dcgan", {"num_classes": 10, "conditional": True}),
    "style-t": ("stylegan2", {"num_classes": 10, "conditional": True}),
    "p2p-t": ("pix2pix", {"data": PAIRS}),
    "cyc-t": ("cyclegan", {"data": DOMAINS}),
    "diff-t": ("diffusion", {"num_classes": 10, "conditioning": "class", "num_timesteps": 50,
                             "num_inference_steps": 5}),
    "text-t": ("diffusion", {"conditioning": "text", "text_len": 16, "num_timesteps": 50,
                             "num_inference_steps": 3, "guidance_scale": 2.0}),
    "gpt-t": ("gpt", {"data": TEXT, "block_size": 32}),
    "wave-t": ("wavenet", {"data": AUDIO, "conditioning": "class"}),
    "glow-t": ("glow", {}),
    "rbm-t": ("rbm", {"ais_temperatures": 200, "ais_runs": 20}),
    "vq-t": ("vqvae", {"codebook_size": 16, "code_dim": 8}),  # 8x8 images -> 2x2 grids of ids in [0, 16)
    "clip-t": ("clip", {}),  # trained a few steps on captioned images (register_trained_clip), not perturbed
    # unCLIP's decoder: diffusion on a (random, tiny) CLIP's image embedding of 8x8 images
    "unclip-dec-t": ("diffusion", {"conditioning": "image_embedding", "num_timesteps": 50, "num_inference_steps": 3,
                                   "image_encoder": {"ref": "models:/clip@champion", "family": "clip",
                                                     "args": {"size": "tiny", "text_len": 20},
                                                     "data": DatasetInfo("image", (8, 8, 1), 64, 10, None, (
                                                         "image", "label", "caption")).to_json()}}),
    # retrieval-augmented diffusion: the same CLIP, an index of 16 rows (as a checkpoint stores it: its
    # embeddings in the weights, here the zero placeholders); swapped indexes live under home/indexes
    "rdm-t": ("diffusion", {"conditioning": "retrieval", "num_timesteps": 50, "num_inference_steps": 3,
                            "guidance_scale": 2.0, "retrieval_k": 2,
                            "retrieval_index": {"ref": "idx", "rows": 16, "dim": 64, "encoder": "x", "meta": {}},
                            "image_encoder": {"ref": "models:/clip@champion", "family": "clip",
                                              "args": {"size": "tiny", "text_len": 20},
                                              "data": DatasetInfo("image", (8, 8, 1), 64, 10, None, (
                                                  "image", "label", "caption")).to_json()}}),
}
IMAGE_MODELS = sorted(n for n, (family, _) in MODELS.items()
                      if family not in ("gpt", "wavenet", "pix2pix", "cyclegan", "rbm", "clip"))
# Debian's dataset-fashion-mnist when it is installed, else scikit-learn's digits ("a handwritten 3").
CLIP_DATA = "fashion_mnist" if all((fashion_mnist.DEBIAN_DIR / f).is_file() for pair in fashion_mnist.FILES.values()
                                   for f in pair) else "digits"


def register_tiny(uri: str, home: Path, name: str, family: str, *, seed: int = 0, alias: str | None = "champion",
                  image_shape=(1, 8, 8), num_classes: int = 0, data: DatasetInfo | None = None, **args) -> str:
    """An untrained tiny model of `family` (on 8x8 images unless `data` says otherwise), saved
    as training saves one and registered."""
    torch.manual_seed(seed)
    data = data or DatasetInfo.for_images(image_shape, num_classes)
    args = {"size": "tiny", **args}
    model = build(family, args, data)
    with torch.no_grad():  # untrained nets start with zeroed output layers: give every weight a say
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    exp = tracking.ensure_experiment(uri, "serve-test", home)
    run_id, _ = tracking.start_run(uri, exp, f"{name}-{seed}", {}, {})
    state = {"step": 0, "mlflow_run_id": run_id, "model": checkpoint.model_state(family, args, data)}
    with tempfile.TemporaryDirectory() as d:
        checkpoint.save(d, checkpoint.Checkpoint(model=model.state_dict(), state=state))
        version = tracking.log_and_register(uri, run_id, Path(d), name)
    tracking.finish_run(uri, run_id, "FINISHED")
    if alias:
        tracking.set_alias(uri, name, version, alias, {})
    return version


# The attribute directions glow-t is served with: 64 = its latent size (8x8 grey images).
EDIT_DIRECTIONS = ("class=0", "class=1", "scale")


def attach_directions(uri: str, home: Path, name: str, version: str) -> None:
    """Random directions stored as `genray directions` stores them: a run of genray-directions
    holding them as its artifact, and the model version's tag naming it."""
    from genray.components.models import directions as dirs
    from genray.pipelines.directions import log_directions

    torch.manual_seed(1)
    found = dirs.Directions(EDIT_DIRECTIONS, 0.5 * torch.randn(3, 64), (64,), (
        dirs.Attribute("class", "label", "categorical", ("0", "1")), dirs.Attribute("scale", "factor_scale", "continuous")),
        {"model": f"models:/{name}/{version}"})
    with tempfile.TemporaryDirectory() as d:
        run_id = log_directions(uri, home, found.save(Path(d) / "directions"), [], {}, params={}, tags={})
    tracking.set_model_version_tags(uri, name, version, {tracking.DIRECTIONS_TAG: f"runs:/{run_id}/directions"})


def register_trained_clip(uri: str, home: Path, name: str):
    """A tiny CLIP trained for a few local-mode steps on CLIP_DATA's tiny split with its captions,
    as `genray train` trains one, registered as NAME (version 1) with the champion alias."""
    from genray.pipelines import config, train

    spec = config.validate({
        "data": {"dataset": CLIP_DATA, "size": "tiny"},
        "model": {"family": "clip", "size": "tiny"},
        "trainer": {"max_steps": 10, "batch_size": 32, "lr": 3e-3, "checkpoint_every": 10, "eval_every": 10,
                    "eval_batches": 1, "quality_samples": 0},
        "scaling": {"workers": 0},
        "tracking": {"experiment": "serve-test", "model_name": name},
    }, "<test>")
    out = train.run(spec, name=name, home=home, uri=uri, show_progress=False)
    tracking.set_alias(uri, name, out.model_version, "champion", {})
    return out


# The shared app's API key: random per test session, so finding it anywhere is a real leak.
API_KEY = secrets.token_urlsafe(32)
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def key_file(folder: Path, key: str = API_KEY, mode: int = 0o600) -> Path:
    path = folder / "api-key"
    path.write_text(key + "\n")
    path.chmod(mode)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(ray_session, tmp_path_factory):
    import httpx
    from ray import serve as ray_serve

    home = tmp_path_factory.mktemp("serve") / "home"
    home.mkdir()
    uri = f"sqlite:///{home / 'mlflow.db'}"
    clip = None
    for name, (family, args) in MODELS.items():
        if family == "clip":
            clip = register_trained_clip(uri, home, name)
        else:
            register_tiny(uri, home, name, family, **args)
    attach_directions(uri, home, "glow-t", "1")
    spec = serve.ServeSpec(port=free_port(), limits=LIMITS, api_key_file=str(key_file(home.parent)),
                           # sixteen models at 0.2 CPU each, with the gateway, fit the session's 4 CPUs
                           deployment={"max_batch_size": 8, "batch_wait_timeout_s": 0.05, "num_cpus": 0.2})
    deployed = serve.deploy(spec, uri=uri, home=home)
    serve.wait_until_ready(deployed.url)  # /healthz: open without the key
    with httpx.Client(base_url=deployed.url, timeout=60, headers=AUTH) as client:
        yield {"url": deployed.url, "client": client, "home": home, "uri": uri, "spec": spec,
               "clip_checkpoint": clip.checkpoint}
    ray_serve.shutdown()


def png_array(b64: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def detail_field(response) -> str:
    assert response.headers["content-type"].startswith("application/json")
    return response.json()["detail"][0]["loc"][-1]


# ----------------------------------------------------------------------------------- every route


def test_models_lists_each_family_with_its_capabilities_parameters_and_version(served):
    c = served["client"]
    assert c.get("/healthz").json() == {"status": "ok", "models": {name: "1" for name in MODELS}}
    listed = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
    assert set(listed) == set(MODELS)
    vae, gan, diff = listed["vae-t"], listed["gan-t"], listed["diff-t"]
    assert (vae["family"], gan["family"], diff["family"]) == ("vae", "dcgan", "diffusion")
    assert vae["routes"] == ["sample", "encode", "decode", "interpolate", "log_prob"]
    assert gan["routes"] == ["sample"] and diff["routes"] == ["sample", "log_prob"]
    assert "prompt" in listed["text-t"]["parameters"] and "class_label" not in listed["text-t"]["parameters"]
    assert listed["text-t"]["defaults"]["guidance_scale"] == 2.0
    assert set(vae["parameters"]) == {"n", "seed", "temperature"} and vae["defaults"] == {"temperature": 1.0}
    assert gan["parameters"]["class_label"]["max"] == 9
    assert diff["defaults"]["num_inference_steps"] == 5 and diff["defaults"]["sampler"] == "ddim"
    assert diff["parameters"]["num_inference_steps"]["max"] == LIMITS["max_steps"]
    assert all(m["version"] == "1" for m in listed.values())
    assert c.get("/v1/models/diff-t").json() == diff
    gpt = listed["gpt-t"]
    assert gpt["routes"] == ["generate"] and gpt["data"] == {"kind": "tokens", "shape": [12]}
    assert "image_shape" not in gpt and vae["image_shape"] == [1, 8, 8]
    assert {"prompt", "n", "seed", "stop", "max_new_tokens", "temperature", "top_k", "top_p"} == set(gpt["parameters"])
    assert gpt["parameters"]["max_new_tokens"]["max"] == LIMITS["max_new_tokens"]  # the limit, below the block (32)
    assert gpt["defaults"] == {"max_new_tokens": 12, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
    assert c.get("/docs").status_code == 200
    paths = c.get("/openapi.json").json()["paths"]
    assert {"/v1/models/{name}/sample", "/v1/models/{name}/encode", "/v1/models/{name}/log_prob",
            "/v1/models/{name}/generate"} <= set(paths)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_sample_same_seed_same_image_bytes(served, name):
    c = served["client"]
    first = c.post(f"/v1/models/{name}/sample", json={"n": 3, "seed": 7})
    assert first.status_code == 200, first.text
    body = first.json()
    assert first.headers[serve.VERSION_HEADER] == body["version"] == "1"
    assert len(body["images"]) == 3 and png_array(body["images"][0]).shape == (8, 8)
    again = c.post(f"/v1/models/{name}/sample", json={"n": 3, "seed": 7}).json()
    assert again["images"] == body["images"]
    other = c.post(f"/v1/models/{name}/sample", json={"n": 3, "seed": 8}).json()
    assert other["images"] != body["images"]
    grid = c.post(f"/v1/models/{name}/sample", json={"n": 4, "seed": 7}, headers={"Accept": "image/png"})
    assert grid.headers["content-type"] == "image/png"
    assert png_array(base64.b64encode(grid.content)).shape == (2 * 9 + 1, 2 * 9 + 1, 3)  # 2x2 with padding
    arrays = c.post(f"/v1/models/{name}/sample", json={"n": 2, "seed": 7, "format": "array"}).json()["arrays"]
    x = np.asarray(arrays)
    assert x.shape == (2, 1, 8, 8) and x.min() >= -1 and x.max() <= 1
    # The PNG is the array quantized as genray writes images.
    assert np.array_equal(np.rint((x[0, 0] + 1) * 127.5).astype(np.uint8), png_array(body["images"][0]))


def test_sampling_settings_change_the_samples_and_are_echoed(served):
    c = served["client"]
    base = c.post("/v1/models/diff-t/sample", json={"n": 2, "seed": 1}).json()
    assert base["settings"] == {"sampler": "ddim", "num_inference_steps": 5, "eta": 0.0, "spacing": "trailing",
                                "guidance_scale": 1.0}
    guided = c.post("/v1/models/diff-t/sample", json={"n": 2, "seed": 1, "guidance_scale": 3.0,
                                                       "num_inference_steps": 3, "class_label": [4, 5]}).json()
    assert guided["settings"]["guidance_scale"] == 3.0 and guided["images"] != base["images"]
    cold = c.post("/v1/models/vae-t/sample", json={"n": 2, "seed": 1, "temperature": 0.0}).json()
    assert cold["images"][0] == cold["images"][1]  # T = 0: every sample is the decoded prior mean
    red = c.post("/v1/models/text-t/sample", json={"n": 2, "seed": 1, "prompt": "a red square"}).json()
    assert red["images"] == c.post("/v1/models/text-t/sample", json={"n": 2, "seed": 1, "prompt": "a red square"}).json()["images"]
    assert red["images"] != c.post("/v1/models/text-t/sample", json={"n": 2, "seed": 1, "prompt": "a blue disc"}).json()["images"]
    labels = c.post("/v1/models/gan-t/sample", json={"n": 2, "seed": 1, "class_label": 3}).json()
    assert labels["images"] != c.post("/v1/models/gan-t/sample", json={"n": 2, "seed": 1}).json()["images"]


def test_encode_decode_interpolate_and_log_prob(served):
    c = served["client"]
    images = c.post("/v1/models/vae-t/sample", json={"n": 2, "seed": 3}).json()["images"]
    enc = c.post("/v1/models/vae-t/encode", json={"images": images})
    assert enc.status_code == 200 and enc.headers[serve.VERSION_HEADER] == "1"
    latents = enc.json()["latents"]
    assert enc.json()["latent_shape"] == [16] and np.asarray(latents).shape == (2, 16)
    dec = c.post("/v1/models/vae-t/decode", json={"latents": latents}).json()["images"]
    assert len(dec) == 2 and png_array(dec[0]).shape == (8, 8)
    path = c.post("/v1/models/vae-t/interpolate", json={"a": images[0], "b": images[1], "steps": 5}).json()
    assert len(path["images"]) == 5
    # The ends of a linear path are the decoded encodings of its ends.
    assert path["images"][0] == dec[0] and path["images"][-1] == dec[1]
    for name in ("vae-t", "diff-t"):
        lp = c.post(f"/v1/models/{name}/log_prob", json={"images": images, "seed": 0}).json()
        assert lp["kind"] == "bound" and len(lp["bits_per_dim"]) == 2
        nats = np.asarray(lp["neg_log_prob_nats"])
        np.testing.assert_allclose(np.asarray(lp["bits_per_dim"]), nats / (64 * np.log(2)), rtol=1e-5)
    arrays = ((png_array(images[0]).astype(np.float32) / 127.5) - 1)[None, None].tolist()
    by_array = c.post("/v1/models/vae-t/log_prob", json={"arrays": arrays, "seed": 0}).json()["bits_per_dim"]
    by_png = c.post("/v1/models/vae-t/log_prob", json={"images": images[:1], "seed": 0}).json()["bits_per_dim"]
    assert by_array == pytest.approx(by_png)


def test_a_tokenizer_round_trips_its_code_ids_as_encode_and_decode_do(served):
    c = served["client"]
    info = c.get("/v1/models/vq-t").json()
    assert info["routes"] == ["sample", "encode", "decode", "interpolate", "tokenize", "decode_tokens", "log_prob"]
    assert info["grid"] == [2, 2] and info["codebook_size"] == 16
    images = c.post("/v1/models/vq-t/sample", json={"n": 3, "seed": 4}).json()["images"]
    tok = c.post("/v1/models/vq-t/tokenize", json={"images": images})
    assert tok.status_code == 200 and tok.headers[serve.VERSION_HEADER] == "1", tok.text
    body = tok.json()
    assert body["grid"] == [2, 2] and body["codebook_size"] == 16
    ids = np.asarray(body["tokens"])
    assert ids.shape == (3, 2, 2) and ids.dtype.kind == "i" and ids.min() >= 0 and ids.max() < 16
    # Code ids carry what the quantised latents carry: decode_tokens(tokenize(x)) == decode(encode(x)).
    latents = c.post("/v1/models/vq-t/encode", json={"images": images}).json()["latents"]
    for fmt in ("png", "array"):
        via_ids = c.post("/v1/models/vq-t/decode_tokens", json={"tokens": body["tokens"], "format": fmt})
        assert via_ids.status_code == 200 and via_ids.headers[serve.VERSION_HEADER] == "1", via_ids.text
        via_latents = c.post("/v1/models/vq-t/decode", json={"latents": latents, "format": fmt}).json()
        if fmt == "png":
            assert via_ids.json()["images"] == via_latents["images"]
            assert len(via_latents["images"]) == 3 and png_array(via_latents["images"][0]).shape == (8, 8)
        else:
            np.testing.assert_allclose(via_ids.json()["arrays"], via_latents["arrays"], atol=1e-5)
    # The same images as arrays get the same ids; a bad image is refused as /encode refuses it.
    arrays = np.stack([(png_array(im).astype(np.float32) / 127.5 - 1)[None] for im in images]).tolist()
    assert c.post("/v1/models/vq-t/tokenize", json={"arrays": arrays}).json()["tokens"] == body["tokens"]
    assert detail_field(c.post("/v1/models/vq-t/tokenize", json={"images": ["%%%"]})) == "images[0]"
    assert detail_field(c.post("/v1/models/vq-t/tokenize", json={"images": images * 2})) == "images"  # > max_images


@pytest.mark.parametrize("tokens, says", [
    ([[[0, 16], [0, 0]]], ["tokens[0][0][1] is 16", "[0, 16)"]),
    ([[[0, 0], [-1, 0]]], ["tokens[0][1][0] is -1", "[0, 16)"]),
    ([[[0, 0, 0], [0, 0]]], ["tokens[0]", "2 x 2"]),
    ([[[0, 0]]], ["tokens[0]", "2 x 2"]),
    ([[0, 0, 0, 0]], ["tokens[0]", "2 x 2"]),
    ([[[0, 0], [0, 0]], [[0, 0], [0, 0], [0, 0]]], ["tokens[1]", "2 x 2"]),
    ([[[0.5, 0], [0, 0]]], ["0.5", "integers in [0, 16)"]),
    ([[[1.0, 0], [0, 0]]], ["1.0", "integers in [0, 16)"]),
    ([[["3", 0], [0, 0]]], ['"3"', "integers in [0, 16)"]),
    ([[[True, 0], [0, 0]]], ["true", "integers in [0, 16)"]),
    ([[[None, 0], [0, 0]]], ["null", "integers in [0, 16)"]),
    ([], ["at least 1"]),
    ([[[0, 0], [0, 0]]] * (LIMITS["max_images"] + 1), [f"at most {LIMITS['max_images']} (limits.max_images)"]),
    ("3", ["list"]),
])
def test_bad_token_grids_get_422_naming_tokens(served, tokens, says):
    r = served["client"].post("/v1/models/vq-t/decode_tokens", json={"tokens": tokens})
    assert r.status_code == 422 and detail_field(r) == "tokens", r.text
    msg = r.json()["detail"][0]["msg"]
    assert all(s in msg for s in says), msg


def test_a_model_that_does_not_tokenize_answers_404_on_the_token_routes(served):
    c = served["client"]
    for name in ("vae-t", "gpt-t"):
        for route, body in (("tokenize", {"arrays": [[[[0.0] * 8] * 8]]}), ("decode_tokens", {"tokens": [[[0]]]})):
            r = c.post(f"/v1/models/{name}/{route}", json=body)
            assert r.status_code == 404, (name, route, r.text)
            detail = r.json()["detail"][0]
            assert f"no {route} route" in detail["msg"] and "tokenize" not in detail["capabilities"]
            assert route not in detail["routes"]
    assert "lacks the 'tokenize' capability" in c.post("/v1/models/vae-t/decode_tokens", json={
        "tokens": [[[0]]]}).json()["detail"][0]["msg"]


def clip_inputs(served, n: int, seed: int = 0):
    """The trained CLIP rebuilt from its checkpoint (components.checkpoint.build_model), its
    description, and n random images of its shape on the 8-bit grid: (B, C, H, W) floats in
    [-1, 1] and the same as base64 PNGs."""
    from genray.components.data.images import png_bytes

    info = served["client"].get("/v1/models/clip-t").json()
    model, _ = checkpoint.build_model(served["clip_checkpoint"])
    u8 = np.random.default_rng(seed).integers(0, 256, (n, *info["image_shape"]), dtype=np.uint8)
    pngs = [base64.b64encode(png_bytes(np.moveaxis(im, 0, -1))).decode() for im in u8]
    return model, info, normalize_images(u8), pngs


def test_a_clip_embeds_captions_and_images_as_unit_vectors_the_checkpoint_computes(served):
    c = served["client"]
    model, info, x, pngs = clip_inputs(served, 3)
    assert info["family"] == "clip" and info["capabilities"] == ["embed"]
    assert info["routes"] == ["embed", "classify"] and info["parameters"] == {}  # nothing drawn: no n, no seed
    dim = info["embed_dim"]
    assert dim == model.embed_dim and info["text_len"] == model.text_len == 48
    texts = ["a photo of a sneaker", "a bag", "a handwritten 3"]
    r = c.post("/v1/models/clip-t/embed", json={"texts": texts})
    assert r.status_code == 200 and r.headers[serve.VERSION_HEADER] == "1", r.text
    body = r.json()
    z = np.asarray(body["embeddings"])
    assert body["input"] == "texts" and body["dim"] == dim and z.shape == (3, dim)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(z, model.embed_text(texts).numpy(), atol=1e-5)
        local = model.embed_images(torch.as_tensor(x)).numpy()
    # The same caption, the same embedding: asked again, and alone rather than beside others.
    assert c.post("/v1/models/clip-t/embed", json={"texts": texts}).json()["embeddings"] == body["embeddings"]
    np.testing.assert_allclose(c.post("/v1/models/clip-t/embed", json={"texts": texts[1:2]}).json()["embeddings"][0],
                               z[1], atol=1e-6)
    assert not np.allclose(z[0], z[1])
    # Images, as arrays or as PNGs: what the checkpoint computes of the same values.
    for given in ({"arrays": x.tolist()}, {"images": pngs}):
        r = c.post("/v1/models/clip-t/embed", json=given)
        assert r.status_code == 200, r.text
        images = r.json()
        assert images["input"] == "images" and images["dim"] == dim
        np.testing.assert_allclose(images["embeddings"], local, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(images["embeddings"], axis=1), 1, atol=1e-5)


def test_a_clip_classifies_images_zero_shot_among_the_labels(served):
    c = served["client"]
    model, info, x, pngs = clip_inputs(served, 3, seed=1)
    labels = ["sneaker", "bag", "pair of trousers"]
    for templates in (None, ["a photo of a {}", "{}, centred", "a {} next to a {}"]):
        body = {"images": pngs, "labels": labels, **({"templates": templates} if templates else {})}
        r = c.post("/v1/models/clip-t/classify", json=body)
        assert r.status_code == 200 and r.headers[serve.VERSION_HEADER] == "1", r.text
        out = r.json()
        used = templates or ["a photo of a {}"]
        assert out["labels"] == labels and out["templates"] == used and len(out["predictions"]) == 3
        scores = np.asarray([[p["scores"][label] for label in labels] for p in out["predictions"]])
        for p, row in zip(out["predictions"], scores):
            assert list(p["scores"]) == labels  # in the request's order
            assert p["label"] == labels[int(row.argmax())] and p["score"] == row.max()
        np.testing.assert_allclose(scores.sum(1), 1, atol=1e-9)
        # softmax(logit_scale x cosine), each label's embedding the normalised mean of its prompts'.
        prompts = [[t.replace("{}", label) for t in used] for label in labels]
        with torch.no_grad():
            scale = float(model.logit_scale())
            expected = torch.softmax(scale * model.classify(torch.as_tensor(x), prompts).double(), 1).numpy()
        assert out["logit_scale"] == pytest.approx(scale)
        np.testing.assert_allclose(scores, expected, atol=1e-5)
    # Arrays of the same pixels: the same answer.
    by_arrays = c.post("/v1/models/clip-t/classify", json={"arrays": x.tolist(), "labels": labels}).json()
    by_pngs = c.post("/v1/models/clip-t/classify", json={"images": pngs, "labels": labels}).json()
    assert [p["label"] for p in by_arrays["predictions"]] == [p["label"] for p in by_pngs["predictions"]]


def test_bad_embed_and_classify_bodies_get_422_naming_the_field(served):
    c = served["client"]
    _, info, x, pngs = clip_inputs(served, 1)
    shape, text_len, most = info["image_shape"], info["text_len"], LIMITS["max_images"]
    arrays = x.tolist()
    wrong_shape = np.zeros((1, shape[0], shape[1] // 2, shape[2] // 2)).tolist()
    too_bright = (np.ones((1, *shape)) * 1.5).tolist()
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (shape[2] * 2, shape[1] * 2)).save(buf, format="PNG")
    big_png = base64.b64encode(buf.getvalue()).decode()
    cases = [  # route, body, field, words the message holds
        ("embed", {"texts": []}, "texts", ["at least 1"]),
        ("embed", {"texts": ["a bag", "é" * (text_len // 2 + 1)]}, "texts",
         [f"texts[1] is {2 * (text_len // 2 + 1)} bytes", f"at most {text_len} bytes"]),
        ("embed", {"texts": ["a bag", 3]}, "texts", ["texts[1] is 3", "strings"]),
        ("embed", {"texts": ["a bag", None]}, "texts", ["texts[1] is null"]),
        ("embed", {"texts": ["a bag"] * (most + 1)}, "texts", [f"at most {most}", "limits.max_images"]),
        ("embed", {"texts": "a bag"}, "texts", ["list"]),
        ("embed", {}, "texts", ["exactly one"]),
        ("embed", {"texts": ["a bag"], "arrays": arrays}, "arrays", ["exactly one", "texts and arrays"]),
        ("embed", {"arrays": wrong_shape}, "arrays", [f"(B, {', '.join(map(str, shape))})"]),
        ("embed", {"arrays": too_bright}, "arrays", ["[-1, 1]"]),
        ("embed", {"images": [big_png]}, "images[0]", [f"takes {shape[2]}x{shape[1]}"]),
        ("embed", {"images": pngs * (most + 1)}, "images", ["limits.max_images"]),
        ("embed", {"texts": ["a bag"], "seed": 1}, "seed", []),
        ("classify", {"arrays": arrays, "labels": []}, "labels", ["at least 1"]),
        ("classify", {"arrays": arrays}, "labels", []),
        ("classify", {"arrays": arrays, "labels": ["bag", "coat", "bag"]}, "labels", ["labels[2]", "labels[0]", "once"]),
        ("classify", {"arrays": arrays, "labels": [f"l{i}" for i in range(most + 1)]}, "labels",
         [f"at most {most}", "limits.max_images"]),
        ("classify", {"arrays": arrays, "labels": ["bag", 7]}, "labels", ["labels[1] is 7"]),
        ("classify", {"arrays": arrays, "labels": ["bag", " "]}, "labels", ["labels[1]"]),
        ("classify", {"arrays": arrays, "labels": ["x" * text_len]}, "labels", ["labels[0] in templates[0]"]),
        ("classify", {"arrays": arrays, "labels": ["bag"], "templates": ["a photo of a {}", "a photo"]}, "templates",
         ["templates[1]", '"{}"']),
        ("classify", {"arrays": arrays, "labels": ["bag"], "templates": []}, "templates", ["at least 1"]),
        ("classify", {"arrays": arrays, "labels": ["bag"], "templates": ["y" * (text_len + 1) + "{}"]}, "templates",
         ["templates[0]"]),
        ("classify", {"arrays": arrays, "labels": ["bag"], "templates": ["{}"] * (most + 1)}, "templates",
         ["limits.max_images"]),
        ("classify", {"labels": ["bag"]}, "images", ["one of them"]),
        ("classify", {"arrays": wrong_shape, "labels": ["bag"]}, "arrays", [f"(B, {', '.join(map(str, shape))})"]),
        ("classify", {"arrays": too_bright, "labels": ["bag"]}, "arrays", ["[-1, 1]"]),
    ]
    for route, body, field, words in cases:
        r = c.post(f"/v1/models/clip-t/{route}", json=body)
        assert r.status_code == 422 and detail_field(r) == field, (route, list(body), r.text[:300])
        msg = r.json()["detail"][0]["msg"]
        assert all(w in msg for w in words), (route, list(body), msg)


def test_a_model_that_does_not_embed_answers_404_on_embed_and_classify_and_clip_on_sample(served):
    c = served["client"]
    for name in ("vae-t", "gpt-t"):
        for route, body in (("embed", {"texts": ["a bag"]}),
                            ("classify", {"arrays": [[[[0.0] * 8] * 8]], "labels": ["bag"]})):
            r = c.post(f"/v1/models/{name}/{route}", json=body)
            assert r.status_code == 404, (name, route, r.text)
            detail = r.json()["detail"][0]
            assert detail["loc"] == ["path", "name"] and f"no {route} route" in detail["msg"], detail
            assert "lacks the 'embed' capability" in detail["msg"] and "embed" not in detail["capabilities"]
            assert route not in detail["routes"]
    r = c.post("/v1/models/clip-t/sample", json={"n": 1})
    assert r.status_code == 404 and r.json()["detail"][0]["routes"] == ["embed", "classify"], r.text
    assert "draws no samples" in r.json()["detail"][0]["msg"]
    r = c.post("/v1/models/clip-t/encode", json={"arrays": [[[[0.0] * 8] * 8]]})
    assert r.status_code == 404 and "lacks the 'encode' capability" in r.json()["detail"][0]["msg"]


def test_a_flow_encodes_decodes_exactly_and_answers_its_exact_likelihood(served):
    c = served["client"]
    sampled = c.post("/v1/models/glow-t/sample", json={"n": 2, "seed": 5, "temperature": 0.7, "format": "array"})
    assert sampled.status_code == 200 and sampled.json()["settings"]["temperature"] == 0.7
    arrays = sampled.json()["arrays"]
    enc = c.post("/v1/models/glow-t/encode", json={"arrays": arrays}).json()
    assert enc["latent_shape"] == [64]
    # A flow is a bijection: decoding its encoding gives the (8-bit) image back.
    dec = c.post("/v1/models/glow-t/decode", json={"latents": enc["latents"], "format": "array"}).json()["arrays"]
    np.testing.assert_allclose(np.asarray(dec), np.round((np.asarray(arrays) + 1) * 127.5) / 127.5 - 1, atol=1e-3)
    lp = c.post("/v1/models/glow-t/log_prob", json={"arrays": arrays}).json()
    assert lp["kind"] == "exact" and lp["unit"] == "bits per 8-bit pixel (dequantized)" and "exact" in lp["note"]
    np.testing.assert_allclose(lp["bits_per_dim"], np.asarray(lp["neg_log_prob_nats"]) / (64 * np.log(2)), rtol=1e-5)
    assert len(c.post("/v1/models/glow-t/interpolate", json={"a": c.post("/v1/models/glow-t/sample", json={
        "n": 1}).json()["images"][0], "b": c.post("/v1/models/glow-t/sample", json={"n": 1, "seed": 1}).json()[
        "images"][0], "steps": 4}).json()["images"]) == 4
    # Bad input names its field: a latent of the wrong size, pixels outside [-1, 1], T <= 0.
    assert detail_field(c.post("/v1/models/glow-t/decode", json={"latents": [[0.0] * 63]})) == "latents"
    assert detail_field(c.post("/v1/models/glow-t/log_prob", json={"arrays": [[[[1.5] * 8] * 8]]})) == "arrays"
    for t in (0, -1.0):
        r = c.post("/v1/models/glow-t/sample", json={"temperature": t})
        assert r.status_code == 422 and detail_field(r) == "temperature"


def test_edit_moves_images_along_the_versions_directions_and_checks_the_request(served):
    """glow-t carries directions (attach_directions): /edit answers decode(encode(x) + amount d),
    the local checkpoint's own edit; amount 0 gives a flow's input back; a direction it lacks, an
    amount out of range, a model without directions or without encode: 422 or 404 naming why."""
    from genray.components.models import directions as dirs

    c = served["client"]
    info = c.get("/v1/models/glow-t").json()
    assert info["routes"] == ["sample", "encode", "decode", "interpolate", "edit", "log_prob"]
    assert info["edit"]["directions"] == list(EDIT_DIRECTIONS)
    assert info["edit"]["max_amount"] == dirs.MAX_AMOUNT and info["edit"]["source"] == {"model": "models:/glow-t/1"}
    arrays = c.post("/v1/models/glow-t/sample", json={"n": 2, "seed": 4, "temperature": 0.7, "format": "array"}).json()["arrays"]
    r = c.post("/v1/models/glow-t/edit", json={"arrays": arrays, "direction": "scale", "amount": 1.5, "format": "array"})
    assert r.status_code == 200 and r.headers[serve.VERSION_HEADER] == "1", r.text
    assert (r.json()["direction"], r.json()["amount"]) == ("scale", 1.5)
    # The same edit from the registered checkpoint and the stored directions, in this process:
    model, _ = checkpoint.build_model(tracking.resolve_checkpoint("models:/glow-t/1", served["uri"], served["home"] / "c"))
    found = tracking.version_directions(served["uri"], served["home"], "glow-t", "1")
    x = normalize_images(torch.as_tensor(quantize(np.asarray(arrays, np.float32))))  # the 8-bit grid the API reads
    np.testing.assert_allclose(r.json()["arrays"], dirs.edit(model.eval(), x, found, "scale", 1.5).numpy(), atol=1e-4)
    same = c.post("/v1/models/glow-t/edit", json={"arrays": arrays, "direction": "scale", "amount": 0, "format": "array"})
    np.testing.assert_allclose(same.json()["arrays"], x.numpy(), atol=1e-3)  # a bijection: no move, no change
    pngs = c.post("/v1/models/glow-t/edit", json={"arrays": arrays, "direction": "class=1"}).json()["images"]
    assert len(pngs) == 2 and png_array(pngs[0]).shape == (8, 8)
    for bad, field, says in (({"direction": "class=7"}, "direction", "its directions: class=0, class=1, scale"),
                             ({"direction": "scale", "amount": 3.5}, "amount", "3"),
                             ({"direction": "scale", "amount": "far"}, "amount", ""),
                             ({"amount": 1.0}, "direction", ""),
                             ({"direction": "scale", "arrays": [[[[2.0] * 8] * 8]]}, "arrays", "[-1, 1]")):
        r = c.post("/v1/models/glow-t/edit", json={"arrays": arrays, **bad})
        assert r.status_code == 422 and detail_field(r) == field and says in r.text, (bad, r.text)
    r = c.post("/v1/models/vae-t/edit", json={"arrays": arrays, "direction": "scale"})
    assert r.status_code == 404 and "genray directions models:/vae-t/1" in r.json()["detail"][0]["msg"]
    r = c.post("/v1/models/gan-t/edit", json={"arrays": arrays, "direction": "scale"})
    assert r.status_code == 404 and "lacks the 'encode' capability" in r.json()["detail"][0]["msg"]


def test_an_rbm_samples_by_gibbs_steps_and_answers_an_estimate_per_binary_pixel(served):
    c = served["client"]
    info = c.get("/v1/models/rbm-t").json()
    assert info["log_prob_kind"] == "estimate" and "log_prob" in info["routes"] and "encode" not in info["routes"]
    body = {"n": 2, "seed": 2, "gibbs_steps": 5, "thinning": 1, "mean_field": False}
    first = c.post("/v1/models/rbm-t/sample", json=body).json()["images"]
    assert first == c.post("/v1/models/rbm-t/sample", json=body).json()["images"]
    assert set(np.unique(png_array(first[0]))) <= {0, 255}  # binary units, shown black and white
    # By default the last sweep shows each pixel's probability of being on (mean field): greys.
    means = c.post("/v1/models/rbm-t/sample", json={**body, "mean_field": True}).json()["images"]
    assert len(set(np.unique(png_array(means[0]))) - {0, 255}) > 0
    lp = c.post("/v1/models/rbm-t/log_prob", json={"images": first}).json()
    assert lp["kind"] == "estimate" and lp["unit"] == "bits per binarised pixel" and "binarised" in lp["note"]
    assert all(0 < b < 1.5 for b in lp["bits_per_dim"])  # at most 1 bit per pixel, give or take AIS noise
    # Gibbs sweeps past the request limit (limits.max_gibbs_sweeps, not max_steps) are refused,
    # naming the field.
    assert c.post("/v1/models/rbm-t/sample", json={"gibbs_steps": LIMITS["max_steps"] + 1}).status_code == 200
    r = c.post("/v1/models/rbm-t/sample", json={"gibbs_steps": LIMITS["max_gibbs_sweeps"] + 1})
    assert r.status_code == 422 and detail_field(r) == "gibbs_steps"
    r = c.post("/v1/models/rbm-t/sample", json={"gibbs_steps": 2, "thinning": 0})
    assert r.status_code == 422 and detail_field(r) == "thinning"


def test_style_mix_keeps_the_first_seeds_coarse_styles(served):
    c = served["client"]
    info = c.get("/v1/models/style-t").json()
    layers = info["style_layers"]
    assert info["routes"] == ["sample", "style_mix"] and layers == 4  # 8x8: 4x4 conv, two at 8x8, ToRGB
    assert info["parameters"]["truncation_psi"]["max"] == 1.5 and info["defaults"]["truncation_cutoff"] is None
    body = {"n": 2, "seed": 3, "class_label": [1, 7], "truncation_psi": 0.7}
    own = c.post("/v1/models/style-t/sample", json=body).json()["images"]
    whole = c.post("/v1/models/style-t/style_mix", json={**body, "seed_b": 4, "crossover": layers})
    assert whole.status_code == 200 and whole.headers[serve.VERSION_HEADER] == "1", whole.text
    assert whole.json()["images"] == own  # every layer keeps seed's styles: seed's own images
    mixed = c.post("/v1/models/style-t/style_mix", json={**body, "seed_b": 4, "crossover": 1}).json()
    assert mixed["crossover"] == 1 and mixed["settings"]["truncation_psi"] == 0.7 and mixed["images"] != own
    for bad, field in (({"crossover": layers + 1}, "crossover"), ({"crossover": -1}, "crossover"),
                       ({"crossover": 1, "truncation_psi": 1.6}, "truncation_psi"),
                       ({"crossover": 1, "class_label": 10}, "class_label"), ({}, "crossover")):
        r = c.post("/v1/models/style-t/style_mix", json={"seed_b": 1, **bad})
        assert r.status_code == 422 and detail_field(r) == field, r.text
    r = c.post("/v1/models/gan-t/style_mix", json={"seed_b": 1, "crossover": 1})
    assert r.status_code == 404 and "style_mix" in r.json()["detail"][0]["msg"]


def png_b64(pixels: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_translate_takes_pngs_or_arrays_and_checks_them(served):
    c = served["client"]
    info = c.get("/v1/models/p2p-t").json()
    assert info["routes"] == ["translate"] and info["capabilities"] == ["translate"] and info["directions"] == []
    edges = np.zeros((8, 8), np.uint8)
    edges[2:6, 2] = edges[2:6, 5] = 255  # two strokes
    body = {"images": [png_b64(edges)], "seed": 4}
    first = c.post("/v1/models/p2p-t/translate", json=body)
    assert first.status_code == 200 and first.headers[serve.VERSION_HEADER] == "1", first.text
    out = first.json()
    assert png_array(out["images"][0]).shape == (8, 8) and out["settings"] == {"dropout": True}
    assert c.post("/v1/models/p2p-t/translate", json=body).json()["images"] == out["images"]  # a seed fixes the masks
    arrays = (edges.astype(np.float32) / 127.5 - 1)[None, None].tolist()
    by_array = c.post("/v1/models/p2p-t/translate", json={"arrays": arrays, "seed": 4, "format": "array"}).json()
    assert np.array_equal(np.rint((np.asarray(by_array["arrays"])[0, 0] + 1) * 127.5).astype(np.uint8),
                          png_array(out["images"][0]))
    # Without dropout the translation is the one deterministic map: no seed changes it.
    fixed = [c.post("/v1/models/p2p-t/translate", json={**body, "seed": s, "dropout": False}).json()["images"]
             for s in (1, 2)]
    assert fixed[0] == fixed[1]
    big = np.zeros((16, 16), np.uint8)
    for bad, field in (({"images": [png_b64(big)]}, "images[0]"),
                       ({"images": [base64.b64encode(b"GIF89a not a png").decode()]}, "images[0]"),
                       ({"arrays": [[[[0.0] * 8] * 8] * 3]}, "arrays"),  # 3 channels; the model takes 1
                       ({"arrays": [[[[1.5] * 8] * 8]]}, "arrays"),
                       ({"images": [png_b64(edges)], "direction": "b_to_a"}, "direction"),
                       ({"images": [png_b64(edges)], "dropout": "sometimes"}, "dropout"),
                       ({"images": [png_b64(edges)], "truncation_psi": 0.5}, "truncation_psi"),
                       ({}, "images")):
        r = c.post("/v1/models/p2p-t/translate", json=bad)
        assert r.status_code == 422 and detail_field(r) == field, (bad, r.text)
    # A two-way model: each direction its own map, the first the default; a direction it lacks is a 422.
    cyc = c.get("/v1/models/cyc-t").json()
    assert cyc["directions"] == ["a_to_b", "b_to_a"] and cyc["routes"] == ["translate"]
    ways = {d: c.post("/v1/models/cyc-t/translate", json={**body, "direction": d}).json()["images"]
            for d in ("a_to_b", "b_to_a")}
    assert ways["a_to_b"] != ways["b_to_a"]
    assert c.post("/v1/models/cyc-t/translate", json=body).json()["images"] == ways["a_to_b"]
    r = c.post("/v1/models/cyc-t/translate", json={**body, "direction": "c_to_d"})
    assert r.status_code == 422 and detail_field(r) == "direction" and "a_to_b" in r.json()["detail"][0]["msg"]
    r = c.post("/v1/models/p2p-t/sample", json={"n": 1})
    assert r.status_code == 404 and r.json()["detail"][0]["routes"] == ["translate"]
    r = c.post("/v1/models/gan-t/translate", json=body)
    assert r.status_code == 404 and "translate" in r.json()["detail"][0]["msg"]


def test_variations_decode_each_image_from_its_clip_embedding_and_are_checked(served):
    """unCLIP's decoder: n_per_image images per input, image i's in rows i * n_per_image ...; a
    seed fixes them, the settings are the model's and echoed; too many images, an unknown field,
    too many steps: 422 naming the field; a model without the capability: 404."""
    c = served["client"]
    info = c.get("/v1/models/unclip-dec-t").json()
    assert info["routes"] == ["sample", "log_prob", "variations"] and "variations" in info["capabilities"]
    x = np.linspace(-1, 1, 2 * 64, dtype=np.float32).reshape(2, 1, 8, 8)
    x[1] = -x[1]
    body = {"arrays": x.tolist(), "n_per_image": 2, "seed": 5, "guidance_scale": 2.0, "format": "array"}
    first = c.post("/v1/models/unclip-dec-t/variations", json=body)
    assert first.status_code == 200 and first.headers[serve.VERSION_HEADER] == "1", first.text
    out = first.json()
    assert np.asarray(out["arrays"]).shape == (4, 1, 8, 8) and out["n_per_image"] == 2
    assert out["settings"]["guidance_scale"] == 2.0 and out["settings"]["num_inference_steps"] == 3
    assert c.post("/v1/models/unclip-dec-t/variations", json=body).json()["arrays"] == out["arrays"]
    other = c.post("/v1/models/unclip-dec-t/variations", json={**body, "seed": 6}).json()["arrays"]
    assert other != out["arrays"]
    pngs = c.post("/v1/models/unclip-dec-t/variations", json={**body, "format": "png"}).json()["images"]
    assert len(pngs) == 4 and png_array(pngs[0]).shape == (8, 8)
    for bad, field in (({**body, "n_per_image": 5}, "n_per_image"),  # 2 x 5 = 10 > max_n 8
                       ({**body, "n_per_image": 0}, "n_per_image"),
                       ({**body, "temperature": 0.5}, "temperature"),
                       ({**body, "num_inference_steps": 500}, "num_inference_steps"),
                       ({**body, "guidance_scale": "high"}, "guidance_scale"),
                       ({"n_per_image": 1}, "images"),
                       ({**body, "arrays": [[[[2.0] * 8] * 8]]}, "arrays")):
        r = c.post("/v1/models/unclip-dec-t/variations", json=bad)
        assert r.status_code == 422 and detail_field(r) == field, (bad, r.text)
    r = c.post("/v1/models/vae-t/variations", json=body)
    assert r.status_code == 404 and "variations" in r.json()["detail"][0]["msg"]


def write_index(served, name: str, *, encoder: str | None = None, rows: int = 12, seed: int = 0):
    """An index of rdm-t's own CLIP (or, with `encoder`, one claiming another) under the server's home."""
    from genray.components.models.retrieval import Index, encoder_digest, save_index
    from genray.pipelines.retrieval import indexes_dir

    ckpt = tracking.resolve_checkpoint("models:/rdm-t/1", served["uri"], served["home"] / "cache")
    model, _ = checkpoint.build_model(ckpt)
    x = torch.rand(rows, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    with torch.no_grad():
        emb = model.image_encoder(x)
    save_index(indexes_dir(served["home"]) / name,
               Index(emb, torch.arange(rows) % 10, {"encoder": encoder or encoder_digest(model.image_encoder.clip)}))


def test_a_retrieval_model_samples_from_its_own_or_a_named_index_and_checks_it(served):
    c = served["client"]
    info = c.get("/v1/models/rdm-t").json()
    assert "retrieval" in info["capabilities"] and info["retrieval"]["k"] == 2 and info["retrieval"]["index_rows"] == 16
    assert "index" in info["parameters"] and "sample" in info["routes"]
    write_index(served, "swap")
    write_index(served, "foreign", encoder="0123456789abcdef")
    offered = c.get("/v1/models/rdm-t").json()
    assert offered["retrieval"]["indexes"] == ["swap"] and offered["parameters"]["index"]["choices"] == [None, "swap"]
    body = {"n": 3, "seed": 4, "format": "array"}
    own = c.post("/v1/models/rdm-t/sample", json=body)
    swapped = c.post("/v1/models/rdm-t/sample", json={**body, "index": "swap"})
    assert own.status_code == 200 and swapped.status_code == 200, swapped.text
    assert swapped.json()["arrays"] == c.post("/v1/models/rdm-t/sample", json={**body, "index": "swap"}).json()["arrays"]
    assert swapped.json()["arrays"] != own.json()["arrays"]
    for name, bad, says in [
        ("rdm-t", {"index": "nope"}, "no index named 'nope' on this server; indexes: "),
        ("rdm-t", {"index": "../swap"}, "an index name: letters, digits"),
        ("rdm-t", {"index": "foreign"}, "this index was built with another embedding model"),
        ("vae-t", {"index": "swap"}, "vae-t (vae) does not retrieve"),
    ]:
        r = c.post(f"/v1/models/{name}/sample", json={"n": 1, **bad})
        assert r.status_code == 422 and detail_field(r) == "index" and says in r.json()["detail"][0]["msg"], r.text


def sse(response) -> list[tuple[str, dict]]:
    """(event, data) of each server-sent event in a response body."""
    out = []
    for block in response.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_generate_text_by_seed_streamed_or_whole(served):
    c = served["client"]
    body = {"prompt": "ab", "n": 3, "seed": 5, "temperature": 1.5}
    first = c.post("/v1/models/gpt-t/generate", json=body)
    assert first.status_code == 200, first.text
    out = first.json()
    assert first.headers["x-genray-model-version"] == out["version"] == "1"
    assert out["prompts"] == ["ab"] * 3 and out["settings"]["temperature"] == 1.5 and out["settings"]["max_new_tokens"] == 12
    assert all(len(t) == 12 and set(t) <= set(VOCAB) for t in out["texts"])
    assert len(set(out["texts"])) > 1  # one seed, three different rows
    assert c.post("/v1/models/gpt-t/generate", json=body).json()["texts"] == out["texts"]
    assert c.post("/v1/models/gpt-t/generate", json={**body, "seed": 6}).json()["texts"] != out["texts"]

    streamed = c.post("/v1/models/gpt-t/generate", json={**body, "stream": True})
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    events = sse(streamed)
    assert events[0][0] == "start" and events[0][1]["version"] == "1" and events[-1][0] == "done"
    tokens = [d for kind, d in events if kind == "token"]
    assert len(tokens) >= 12  # piece by piece, not one block
    assert ["".join(d["text"] for d in tokens if d["index"] == i) for i in range(3)] == out["texts"]
    assert events[-1][1]["texts"] == out["texts"]

    # A stop string ends each text where it first appears, and is not returned.
    stop = out["texts"][0][4:6]
    cut = c.post("/v1/models/gpt-t/generate", json={**body, "stop": [stop]}).json()["texts"]
    assert cut[0] == out["texts"][0][: out["texts"][0].index(stop)]
    assert all(stop not in t for t in cut)


@pytest.mark.parametrize("body, field, message", [
    ({"prompt": "abz"}, "prompt", "character 'z' (position 2) is not in the model's vocabulary"),
    ({"prompt": ["a", "b"], "n": 3}, "prompt", "2 prompts for n=3"),
    ({"prompt": "a" * 33}, "prompt", "at most 32"),
    ({"max_new_tokens": 20}, "max_new_tokens", "limits.max_new_tokens"),
    ({"max_new_tokens": 40}, "max_new_tokens", "less than or equal to 32"),
    ({"prompt": "a" * 25, "max_new_tokens": 12}, "max_new_tokens", "block size 32"),
    ({"top_p": 0}, "top_p", "greater than 0"),
    ({"top_p": 1.5}, "top_p", "less than or equal to 1"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4 stop strings"),
    ({"stop": [""]}, "stop", "1 to 32 characters"),
    ({"n": 9}, "n", "limits.max_n"),
    ({"guidance_scale": 2}, "guidance_scale", "does not take guidance_scale"),
])
def test_bad_generate_requests_get_422_naming_the_field(served, body, field, message):
    for stream in (False, True):  # refused before any event is sent
        r = served["client"].post("/v1/models/gpt-t/generate", json={**body, "stream": stream})
        assert r.status_code == 422, r.text
        assert detail_field(r) == field and message in r.json()["detail"][0]["msg"], r.text


def wav_of(response) -> tuple[int, np.ndarray]:
    import wave

    with wave.open(io.BytesIO(response.content)) as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        return w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def test_audio_comes_as_a_wav_by_seed_or_as_arrays_and_long_clips_are_refused(served):
    c = served["client"]
    info = c.get("/v1/models/wave-t").json()
    assert info["routes"] == ["sample"] and info["data"] == {"kind": "audio", "shape": [400], "sample_rate": 8000}
    assert info["defaults"] == {"seconds": 0.05, "temperature": 1.0}
    assert info["parameters"]["seconds"]["max"] == LIMITS["max_audio_s"]  # the limit, below the model's own 60 s
    assert info["parameters"]["class_label"]["max"] == 2

    body = {"n": 2, "seed": 3, "class_label": [0, 2]}
    r = c.post("/v1/models/wave-t/sample", json=body)
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav", r.text
    assert r.headers["x-genray-model-version"] == "1"
    rate, pcm = wav_of(r)
    assert rate == 8000 and len(pcm) == 2 * 400 + 2000  # two clips, 0.25 s of silence between them
    assert not pcm[400:2400].any() and pcm[:400].any()
    assert c.post("/v1/models/wave-t/sample", json=body).content == r.content  # same seed, same bytes
    assert c.post("/v1/models/wave-t/sample", json={**body, "seed": 4}).content != r.content
    # format array: the same clips as floats, which the WAV holds as 16-bit PCM.
    arrays = c.post("/v1/models/wave-t/sample", json={**body, "format": "array"}).json()["arrays"]
    x = np.asarray(arrays)
    assert x.shape == (2, 400) and np.abs(x).max() <= 1
    assert np.array_equal(np.rint(x[0] * 32767).astype("<i2"), pcm[:400])
    longer = c.post("/v1/models/wave-t/sample", json={**body, "seconds": 0.2})
    assert len(wav_of(longer)[1]) == 2 * 1600 + 2000
    too_long = c.post("/v1/models/wave-t/sample", json={**body, "seconds": 1.5})
    assert too_long.status_code == 422 and detail_field(too_long) == "seconds"
    assert "at most 0.2 s per clip (limits.max_audio_s)" in too_long.json()["detail"][0]["msg"]


def test_text_and_image_routes_stay_apart(served):
    c = served["client"]
    for route, body in (("sample", {"n": 1}), ("log_prob", {"arrays": [[[[0.0] * 8] * 8]]})):
        r = c.post(f"/v1/models/gpt-t/{route}", json=body)
        assert r.status_code == 404 and r.json()["detail"][0]["routes"] == ["generate"], r.text
    r = c.post("/v1/models/vae-t/generate", json={"prompt": "a"})
    assert r.status_code == 404 and "generate_text" in r.json()["detail"][0]["msg"]


def test_routes_a_model_lacks_answer_404_with_its_capabilities(served):
    c = served["client"]
    r = c.post("/v1/models/gan-t/encode", json={"images": ["AAAA"]})
    assert r.status_code == 404
    detail = r.json()["detail"][0]
    assert detail["capabilities"] == ["condition", "sample"] and detail["routes"] == ["sample"]
    assert c.post("/v1/models/diff-t/interpolate", json={"a": "AA", "b": "AA"}).status_code == 404
    missing = c.post("/v1/models/nope/sample", json={})
    assert missing.status_code == 404 and ", ".join(sorted(MODELS)) in missing.json()["detail"][0]["msg"]


def test_the_gallery_page_is_self_contained(served):
    page = served["client"].get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: works offline


# ------------------------------------------------------------------------------------ the API key


def wrong_key(key: str = API_KEY) -> str:
    """The key with its last character changed: as long as the key, right but for one byte."""
    return key[:-1] + ("A" if key[-1] != "A" else "B")


def keyed_routes(c) -> list[tuple[str, str, dict | None]]:
    """Every route of the app, with a body the right key gets a 2xx for."""
    images = c.post("/v1/models/vae-t/sample", json={"n": 2, "seed": 0}).json()["images"]
    return [
        ("GET", "/v1/models", None),
        ("GET", "/v1/models/vae-t", None),
        ("GET", "/v1/models/vae-t/stats", None),
        ("POST", "/v1/models/vae-t/sample", {"n": 1, "seed": 0}),
        ("POST", "/v1/models/vae-t/encode", {"images": images[:1]}),
        ("POST", "/v1/models/vae-t/decode", {"latents": [[0.0] * 16]}),
        ("POST", "/v1/models/vae-t/interpolate", {"a": images[0], "b": images[1], "steps": 2}),
        ("POST", "/v1/models/vae-t/log_prob", {"images": images[:1], "seed": 0}),
        ("POST", "/v1/models/glow-t/edit", {"arrays": [[[[0.0] * 8] * 8]], "direction": "scale"}),
        ("POST", "/v1/models/vq-t/tokenize", {"images": images[:1]}),
        ("POST", "/v1/models/vq-t/decode_tokens", {"tokens": [[[0, 1], [2, 3]]]}),
        ("POST", "/v1/models/gpt-t/generate", {"prompt": "ab", "n": 1}),
        ("POST", "/v1/models/gpt-t/generate", {"prompt": "ab", "n": 1, "stream": True}),
        ("POST", "/v1/models/p2p-t/translate", {"arrays": [[[[0.0] * 8] * 8]]}),
        ("POST", "/v1/models/style-t/style_mix", {"seed_b": 1, "crossover": 1}),
        ("POST", "/v1/models/unclip-dec-t/variations", {"arrays": [[[[0.0] * 8] * 8]]}),
        ("POST", "/v1/models/clip-t/embed", {"texts": ["a bag"]}),
        ("POST", "/v1/models/clip-t/classify", {"arrays": np.zeros((1, *c.get("/v1/models/clip-t").json()[
            "image_shape"])).tolist(), "labels": ["bag", "coat"]}),
        ("GET", "/openapi.json", None),
        ("GET", "/docs", None),
        ("GET", "/docs/oauth2-redirect", None),
        ("GET", "/redoc", None),
    ]


def test_every_route_but_healthz_and_the_page_needs_the_key(served):
    """Missing, wrong (one byte off, a prefix, longer, another scheme): the same 401 with
    WWW-Authenticate: Bearer; the right key: 2xx. /healthz and the gallery page stay open."""
    import httpx

    c = served["client"]
    routes = keyed_routes(c)
    from genray.pipelines.serve.auth import OPEN_PATHS

    serving = {"/generate": "gpt-t", "/edit": "glow-t", "/translate": "p2p-t", "/style_mix": "style-t", "/tokenize": "vq-t",
               "/variations": "unclip-dec-t",
               "/decode_tokens": "vq-t", "/embed": "clip-t", "/classify": "clip-t"}
    documented = {path.replace("{name}", next((m for end, m in serving.items() if path.endswith(end)), "vae-t"))
                  for path in c.get("/openapi.json").json()["paths"]}
    assert documented - OPEN_PATHS <= {path for _, path, _ in routes}, "a new route: add it to keyed_routes"
    wrong = {"missing": {}, "one byte off": {"Authorization": f"Bearer {wrong_key()}"},
             "a prefix": {"Authorization": f"Bearer {API_KEY[:-1]}"},
             "longer": {"Authorization": f"Bearer {API_KEY}x"}, "empty": {"Authorization": "Bearer"},
             "another scheme": {"Authorization": f"Basic {API_KEY}"}, "no scheme": {"Authorization": API_KEY}}
    with httpx.Client(base_url=served["url"], timeout=60) as anon:
        for method, path, body in routes:
            answers = {why: anon.request(method, path, json=body, headers=headers) for why, headers in wrong.items()}
            for why, r in answers.items():
                assert r.status_code == 401, (method, path, why, r.text[:200])
                assert r.headers["www-authenticate"] == "Bearer"
                assert r.content == answers["missing"].content  # nothing says what was wrong with the key
            assert "Authorization: Bearer <key>" in answers["missing"].json()["detail"][0]["msg"]
            right = c.request(method, path, json=body)
            assert 200 <= right.status_code < 300, (method, path, right.text[:200])
        lower = anon.get("/v1/models", headers={"authorization": f"bearer {API_KEY}"})
        assert lower.status_code == 200  # header name and scheme are case-insensitive (RFC 7235)
        assert anon.get("/healthz").json()["status"] == "ok"
        assert anon.get("/").status_code == 200 and "api-key" in anon.get("/").text
        # The key is checked before anything else: before the body limit, and before routing.
        big = anon.post("/v1/models/vae-t/sample", content=b" " * (LIMITS["max_body_bytes"] + 1),
                        headers={"content-type": "application/json"})
        assert big.status_code == 401
        assert anon.get("/v1/nothing").status_code == 401 and c.get("/v1/nothing").status_code == 404


def test_the_key_is_in_no_deployed_spec_serve_status_or_log(served):
    """What reaches Serve is the key's salted hash: the key is in neither the spec written
    under the project home, nor what serve.status() and the dashboard show of the app, nor any
    Ray log of this session (which holds every request so far, right and wrong keys)."""
    import httpx
    import ray
    from ray import serve as ray_serve

    with httpx.Client(base_url=served["url"], timeout=60) as anon:
        assert anon.get("/v1/models", headers={"Authorization": f"Bearer {API_KEY}x"}).status_code == 401
    saved = serve.state_file(served["home"], served["spec"].app_name).read_text()
    assert json.loads(saved)["spec"]["api_key_file"] == served["spec"].api_key_file  # where, not what
    assert API_KEY not in saved
    assert API_KEY not in repr(ray_serve.status())
    context = ray.init(ignore_reinit_error=True)  # the session's own context: dashboard and session folder
    # What the dashboard shows of the app, through the public `serve status` command (it reads the
    # dashboard's REST API, with the cluster's token when token auth is on).
    status = subprocess.run([str(Path(sys.executable).with_name("serve")), "status", "-a",
                             f"http://{context.dashboard_url}"], capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr[-2000:]
    assert "Gateway" in status.stdout and "HEALTHY" in status.stdout and API_KEY not in status.stdout
    key = API_KEY.encode()
    logs = Path(context.address_info["session_dir"]) / "logs"
    files = [f for f in logs.rglob("*") if f.is_file()]
    assert any(f.name.startswith("replica_genray_Gateway") for f in files)
    assert [f for f in files if key in f.read_bytes()] == []
    assert [f for f in served["home"].rglob("*") if f.is_file() and key in f.read_bytes()] == []


def test_the_key_check_hashes_both_sides_and_prints_nothing():
    from genray.pipelines.serve import auth

    check = auth.KeyCheck.of(b"s3cret")
    assert check.matches(b"s3cret") and not check.matches(b"s3cres") and not check.matches(b"")
    assert not check.matches(b"s3cret" * 100) and auth.KeyCheck.of(b"s3cret").salt != check.salt
    assert repr(check) == "KeyCheck(salted HMAC-SHA256)" and "s3cret" not in repr(pickle.loads(pickle.dumps(check)))
    assert pickle.loads(pickle.dumps(check)).matches(b"s3cret")  # what travels to the gateway replicas
    assert auth.bearer_token([(b"authorization", b"Bearer  abc ")]) == b"abc"
    assert auth.bearer_token([(b"Authorization", b"BEARER abc")]) == b"abc"
    assert auth.bearer_token([(b"authorization", b"Basic abc")]) == b""
    assert auth.bearer_token([(b"x-other", b"Bearer abc")]) == b""


@pytest.mark.parametrize("case", ["missing", "folder", "empty", "blank", "two lines", "group-readable",
                                  "other-readable", "group-writable"])
def test_a_bad_api_key_file_is_one_line_naming_it_before_anything_starts(genray_home, tmp_path, capsys, case):
    genray_home.mkdir(parents=True)
    content, mode = {"empty": ("", 0o600), "blank": (" \n\n", 0o600), "two lines": ("zq9-a\nzq9-b", 0o600),
                     "group-readable": ("zq9-key", 0o640), "other-readable": ("zq9-key", 0o604),
                     "group-writable": ("zq9-key", 0o620)}.get(case, ("zq9-key", 0o600))
    path = tmp_path / "folder" if case == "folder" else tmp_path / f"{case.replace(' ', '-')}-key"
    if case == "folder":
        path.mkdir()
    elif case != "missing":
        path.write_text(content)
        path.chmod(mode)
    # No model is registered: a run that got past the key would fail on that instead.
    assert cli.main(["serve", "--api-key-file", str(path), "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"genray: error: API key file {path}: "), err
    assert "zq9" not in err and "Traceback" not in err  # the content is never echoed
    if "able" in case:
        assert "chmod 600" in err
    assert not (genray_home / "logs").exists() and not (genray_home / "serve").exists()  # nothing started


def test_api_key_settings_in_a_serve_config(genray_home, tmp_path, capsys, monkeypatch):
    genray_home.mkdir(parents=True)
    loose = key_file(tmp_path, mode=0o644)
    config = tmp_path / "serve.yaml"
    config.write_text(f"api_key_file: {loose}\n")
    assert cli.main(["serve", "--config", str(config)]) == 2
    assert f"API key file {loose}: group or others have access (mode 644)" in capsys.readouterr().err
    config.write_text(f"api_key_file: {loose}\napi_key_env: GENRAY_TEST_KEY\n")
    assert cli.main(["serve", "--config", str(config)]) == 2
    assert "api_key_file and api_key_env are both set" in capsys.readouterr().err
    config.write_text("api_key_env: GENRAY_TEST_KEY\n")
    monkeypatch.delenv("GENRAY_TEST_KEY", raising=False)
    assert cli.main(["serve", "--config", str(config)]) == 2
    assert "API key variable GENRAY_TEST_KEY: not set" in capsys.readouterr().err
    monkeypatch.setenv("GENRAY_TEST_KEY", API_KEY)
    spec = serve.load_spec(str(config), {})
    assert serve.key_check(spec).matches(API_KEY.encode())
    assert "$GENRAY_TEST_KEY" in serve.curl_example("http://h", None, spec) and API_KEY not in str(spec)


def test_the_rayservice_reads_the_key_from_a_secret_on_every_pod():
    import yaml

    manifest = yaml.safe_load((Path(__file__).resolve().parents[2] / "cluster" / "kuberay" / "rayservice.yaml").read_text())
    args = yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"][0]["args"]
    variable = serve.ServeSpec.model_validate(args).api_key_env
    cluster = manifest["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:  # Serve builds the app on any node
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert "secretKeyRef" in env[variable]["valueFrom"] and "value" not in env[variable]


def test_genray_serve_with_a_key_file_keeps_the_key_out_of_its_logs(tmp_path):
    """The command itself, in its own process and its own Ray, as a user runs it: the key is
    needed, and afterwards it is in none of the files genray and Ray wrote (the serve log under
    the project home, the deployed spec, every Ray session log) nor in what was printed."""
    import httpx

    home = tmp_path / "home"
    home.mkdir()
    register_tiny(tracking.tracking_uri(home), home, "vae-t", "vae")
    keyfile = key_file(tmp_path)
    port = free_port()
    ray_tmp = tempfile.mkdtemp(prefix="gk-", dir="/tmp")  # Ray's socket paths are capped at 107 bytes
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "GENRAY_VERBOSE")}
    env.update(GENRAY_HOME=str(home), RAY_TMPDIR=ray_tmp)
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "genray", "serve", "--model", "vae-t", "--port", str(port),
                                 "--api-key-file", str(keyfile)], env=env, stdout=o, stderr=e, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while b"api key" not in out.read_bytes():
            assert proc.poll() is None, err.read_text()[-2000:]
            assert time.monotonic() < deadline, "genray serve did not come up in 240 s"
            time.sleep(1)
        with httpx.Client(base_url=url, timeout=60) as c:
            assert c.get("/healthz").status_code == 200
            assert c.get("/v1/models").status_code == 401
            assert c.get("/v1/models", headers={"Authorization": f"Bearer {wrong_key()}"}).status_code == 401
            assert c.get("/v1/models", headers=AUTH).json()["models"][0]["name"] == "vae-t"
            assert c.post("/v1/models/vae-t/sample", json={"n": 1}, headers=AUTH).status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    try:
        printed = out.read_text() + err.read_text()
        assert f"Bearer $(cat {keyfile})" in printed  # how to send it, never what it is
        log = home / "logs" / "serve-genray.log"
        assert log.stat().st_size > 0
        saved = json.loads(serve.state_file(home, "genray").read_text())
        assert saved["spec"]["api_key_file"] == str(keyfile)
        ray_files = [f for f in Path(ray_tmp).rglob("*") if f.is_file() and not f.is_symlink()]
        assert any("replica_genray_Gateway" in f.name for f in ray_files)
        key = API_KEY.encode()
        written = [f for f in [*home.rglob("*"), *ray_files] if f.is_file() and key in f.read_bytes()]
        assert written == [] and API_KEY not in printed
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


# ------------------------------------------------------------------------ a bug is not a user error


def test_a_bug_answers_500_and_logs_its_traceback_while_a_mistake_still_answers_422(served):
    """A model whose sample raises RuntimeError is a bug: a short 500, the traceback in the
    gateway's Serve log. The same deployment still answers a user's mistake with a 422."""
    import httpx
    from ray import serve as ray_serve

    from genray.pipelines.serve import gateway, replica

    marker = f"simulated bug {uuid.uuid4().hex[:8]}"

    class BuggyServer(replica.ModelServer):  # defined here, so Ray ships it to the replica by value
        async def reconfigure(self, config):
            await super().reconfigure(config)

            def broken(*args, **kwargs):
                raise RuntimeError(marker)

            self.loaded.model.sample = broken

    server = ray_serve.deployment(BuggyServer).options(
        name="model-vae-t", user_config={"version": "1"}, ray_actor_options={"num_cpus": 0},
    ).bind("vae-t", served["uri"], str(served["home"]), LIMITS, {"max_batch_size": 4, "batch_wait_timeout_s": 0.0})
    ray_serve.run(gateway.Gateway.bind({"vae-t": server}, LIMITS), name="buggy", route_prefix="/buggy")
    try:
        # No key_check: this app answers without a key, as genray serve does without --api-key-file.
        with httpx.Client(base_url=served["url"] + "/buggy", timeout=60) as c:
            bug = c.post("/v1/models/vae-t/sample", json={"n": 2, "seed": 1})
            assert bug.status_code == 500, bug.text
            assert bug.json()["detail"][0]["type"] == "internal_error"
            assert marker not in bug.text and "Traceback" not in bug.text and len(bug.content) < 200
            for body, field in (({"temperature": "hot"}, "temperature"), ({"guidance_scale": 2}, "guidance_scale"),
                                ({"n": 0}, "n")):
                mistake = c.post("/v1/models/vae-t/sample", json=body)
                assert mistake.status_code == 422 and detail_field(mistake) == field, mistake.text
            assert c.get("/v1/models/vae-t").status_code == 200  # the rest of the model still answers
    finally:
        ray_serve.delete("buggy")
    # The gateway logged the replica's traceback (it travels inside the RayTaskError).
    logs = glob.glob("/tmp/gr-*/session_*/logs/serve/replica_buggy_Gateway_*.log")
    deadline = time.monotonic() + 10
    while not any(marker in Path(f).read_text() and "Traceback" in Path(f).read_text() for f in logs):
        assert time.monotonic() < deadline, f"no traceback with {marker!r} in {logs}"
        time.sleep(0.5)
        logs = glob.glob("/tmp/gr-*/session_*/logs/serve/replica_buggy_Gateway_*.log")


# ---------------------------------------------------------------------------------------- limits


@pytest.mark.parametrize("name, body, field", [
    ("diff-t", {"n": 0}, "n"),
    ("diff-t", {"n": LIMITS["max_n"] + 1}, "n"),
    ("diff-t", {"seed": -1}, "seed"),
    ("diff-t", {"guidance_scale": -0.5}, "guidance_scale"),
    ("diff-t", {"num_inference_steps": LIMITS["max_steps"] + 1}, "num_inference_steps"),
    ("diff-t", {"sampler": "euler"}, "sampler"),
    ("diff-t", {"sampler": "ddpm"}, "sampler"),  # all 50 steps > max_steps
    ("diff-t", {"eta": 2}, "eta"),
    ("diff-t", {"class_label": 10}, "class_label"),
    ("diff-t", {"n": 3, "class_label": [1, 2]}, "class_label"),
    ("diff-t", {"temperature": 0.5}, "temperature"),
    ("diff-t", {"prompt": "a cat"}, "prompt"),
    ("text-t", {"prompt": "x" * (LIMITS["max_prompt_chars"] + 1)}, "prompt"),
    ("text-t", {"class_label": 1}, "class_label"),
    ("diff-t", {"steps": 3}, "steps"),
    ("vae-t", {"guidance_scale": 2}, "guidance_scale"),
    ("vae-t", {"temperature": "hot"}, "temperature"),
    ("gan-t", {"n": "four"}, "n"),
    ("style-t", {"truncation_psi": 1.6}, "truncation_psi"),
    ("style-t", {"truncation_psi": -0.1}, "truncation_psi"),
    ("style-t", {"truncation_cutoff": 5}, "truncation_cutoff"),
    ("wave-t", {"seconds": 0.25}, "seconds"),  # over limits.max_audio_s
    ("wave-t", {"seconds": 0}, "seconds"),
    ("wave-t", {"temperature": 0}, "temperature"),
    ("wave-t", {"format": "png"}, "format"),
    ("wave-t", {"class_label": 3}, "class_label"),
    ("vae-t", {"format": "wav"}, "format"),
])
def test_out_of_range_values_get_422_naming_the_field(served, name, body, field):
    r = served["client"].post(f"/v1/models/{name}/sample", json=body)
    assert r.status_code == 422, r.text
    assert detail_field(r) == field


def test_bad_images_get_422_and_big_bodies_413(served):
    c = served["client"]
    assert detail_field(c.post("/v1/models/vae-t/encode", json={"images": ["%%%"]})) == "images[0]"
    not_png = base64.b64encode(b"GIF89a" + b"\0" * 20).decode()
    assert detail_field(c.post("/v1/models/vae-t/encode", json={"images": [not_png]})) == "images[0]"
    big = c.post("/v1/models/vae-t/sample", json={"n": 2}).json()["images"][0]
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (16, 16)).save(buf, format="PNG")
    wrong_size = base64.b64encode(buf.getvalue()).decode()
    r = c.post("/v1/models/vae-t/encode", json={"images": [big, wrong_size]})
    assert r.status_code == 422 and "16x16" in r.json()["detail"][0]["msg"]
    assert detail_field(c.post("/v1/models/vae-t/encode", json={"images": [big] * 5})) == "images"
    assert detail_field(c.post("/v1/models/vae-t/decode", json={"latents": [[0.0] * 3]})) == "latents"
    assert detail_field(c.post("/v1/models/vae-t/log_prob", json={"arrays": [[[[2.0] * 8] * 8]]})) == "arrays"
    assert detail_field(c.post("/v1/models/vae-t/interpolate", json={"a": big, "b": big, "steps": 7})) == "steps"
    r = c.post("/v1/models/vae-t/sample", content=b" " * (LIMITS["max_body_bytes"] + 1),
               headers={"content-type": "application/json"})
    assert r.status_code == 413 and "max_body_bytes" in r.json()["detail"][0]["msg"]


def test_fuzzed_bodies_never_get_a_5xx(served):
    """Hypothesis-generated bodies on every route: well-typed, out of range and of the wrong type,
    at least 500 requests; any 5xx fails."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    c = served["client"]
    statuses: list[int] = []
    json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
                          st.text(max_size=20))
    anything = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                            | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
    png = st.sampled_from([c.post("/v1/models/vae-t/sample", json={"n": 1}).json()["images"][0], "", "AAAA"])
    fields = {
        "n": st.one_of(st.integers(-2, 12), anything), "seed": st.one_of(st.integers(-5, 2**64), anything),
        "class_label": st.one_of(st.integers(-2, 12), st.lists(st.integers(-1, 11), max_size=9), anything),
        "prompt": st.one_of(st.text(max_size=40), anything),
        "guidance_scale": st.one_of(st.floats(-2, 120), anything),
        "num_inference_steps": st.one_of(st.integers(-1, 60), anything),
        "sampler": st.one_of(st.sampled_from(["ddim", "ddpm", "x"]), anything),
        "eta": st.one_of(st.floats(-1, 2), anything), "spacing": st.sampled_from(["leading", "trailing", "no"]),
        "temperature": st.one_of(st.floats(-1, 12), anything), "format": st.sampled_from(["png", "array", "gif"]),
        "images": st.one_of(st.lists(png, max_size=6), anything),
        "arrays": st.one_of(st.just([[[[0.0] * 8] * 8]]), anything),
        "latents": st.one_of(st.lists(st.lists(st.floats(-3, 3), min_size=16, max_size=16), max_size=5), anything),
        "tokens": st.one_of(st.lists(st.lists(st.lists(st.integers(-1, 17), min_size=2, max_size=2), min_size=1,
                                              max_size=3), max_size=5), anything),
        "a": png, "b": png, "steps": st.one_of(st.integers(-1, 8), anything),
        "method": st.sampled_from(["linear", "slerp", "cubic"]),
        "stop": st.one_of(st.lists(st.text(max_size=6), max_size=5), anything), "stream": st.booleans(),
        "max_new_tokens": st.one_of(st.integers(-1, 40), anything), "top_k": st.one_of(st.integers(-1, 14), anything),
        "top_p": st.one_of(st.floats(-0.5, 1.5), anything),
        "texts": st.one_of(st.lists(st.text(max_size=60), max_size=6), anything),
        "labels": st.one_of(st.lists(st.text(max_size=12), max_size=6), anything),
        "templates": st.one_of(st.lists(st.sampled_from(["a photo of a {}", "{}", "no label", "{} " * 20]),
                                        max_size=3), anything),
    }
    body = st.one_of(st.fixed_dictionaries({}, optional=fields), anything)
    route = st.sampled_from(["sample", "sample", "sample", "encode", "decode", "interpolate", "log_prob", "generate",
                             "tokenize", "decode_tokens", "embed", "classify"])
    model = st.sampled_from([*MODELS, "missing"])

    @settings(max_examples=520, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(model=model, route=route, body=body, raw=st.booleans())
    def one_request(model, route, body, raw):
        text = json.dumps(body)  # NaN and Infinity included, as Python's JSON parser reads them
        if raw:  # cut short: not JSON at all
            text = text[:-1] or "{"
        r = c.post(f"/v1/models/{model}/{route}", content=text, headers={"content-type": "application/json"})
        statuses.append(r.status_code)
        assert r.status_code < 500, (model, route, body, r.text)

    one_request()
    assert len(statuses) >= 500
    assert {200, 404, 422} <= set(statuses)  # the fuzz reached the models, not only the schema


# -------------------------------------------------------------------------------------- batching


def test_concurrent_requests_are_batched(served):
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    def one(i: int) -> int:
        with httpx.Client(base_url=served["url"], timeout=60, headers=AUTH) as c:
            r = c.post("/v1/models/diff-t/sample", json={"n": 1, "seed": i})
            assert r.status_code == 200
            return r.json()["batch_requests"]

    with ThreadPoolExecutor(16) as pool:
        sizes = list(pool.map(one, range(48)))
    assert max(sizes) > 1
    stats = served["client"].get("/v1/models/diff-t/stats").json()
    assert max(stats["batch_sizes"]) > 1


def test_a_batched_request_draws_what_it_would_draw_alone():
    torch.manual_seed(0)
    model = build("diffusion", {"size": "tiny", "conditioning": "class", "num_timesteps": 50,
                                "num_inference_steps": 4, "eta": 1.0}, DatasetInfo.for_images((1, 8, 8), 10)).eval()
    settings = {"sampler": "ddim", "num_inference_steps": 4, "eta": 1.0, "spacing": "trailing", "guidance_scale": 2.0}
    jobs = [{"n": 2, "seed": 11, "settings": settings, "conditions": {"y": [3, 4]}},
            {"n": 3, "seed": 12, "settings": settings, "conditions": {}},
            {"n": 1, "seed": 13, "settings": {**settings, "guidance_scale": 0.0}, "conditions": {}}]
    together, calls = serve.sample_batch(model, jobs)
    assert sorted(calls) == [1, 2] and [r["batch_requests"] for r in together] == [2, 2, 1]
    for job, batched in zip(jobs, together):
        alone, _ = serve.sample_batch(model, [job])
        np.testing.assert_allclose(batched["floats"], alone[0]["floats"], atol=1e-5)
        assert np.abs(batched["uint8"].astype(int) - alone[0]["uint8"].astype(int)).max() <= 1


# -------------------------------------------------------------------------- champion swap, reload


def test_swapping_the_champion_under_load_fails_no_request(served):
    """--reload swaps the new champion in place (the same replica processes) within seconds, with
    no failed request and no request that sees the old model after one has seen the new; moving
    the alias alone swaps nothing."""
    import httpx

    uri, home = served["uri"], served["home"]
    before = served["client"].post("/v1/models/vae-t/sample", json={"n": 2, "seed": 5}).json()
    pids = {name: served["client"].get(f"/v1/models/{name}/stats").json()["pid"] for name in ("vae-t", "diff-t")}
    new_version = register_tiny(uri, home, "vae-t", "vae", seed=1, alias=None)
    tracking.set_alias(uri, "vae-t", new_version, "champion", {})
    results: list[tuple[float, float, int, str | None]] = []  # (sent, answered, status, version)
    stop = threading.Event()

    def client_loop():
        with httpx.Client(base_url=served["url"], timeout=60, headers=AUTH) as c:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    r = c.post("/v1/models/vae-t/sample", json={"n": 2, "seed": 5})
                    results.append((sent, time.monotonic(), r.status_code, r.headers.get(serve.VERSION_HEADER)))
                except httpx.HTTPError as e:
                    results.append((sent, time.monotonic(), 0, repr(e)))

    threads = [threading.Thread(target=client_loop) for _ in range(3)]
    for t in threads:
        t.start()
    # Three of the replicas' registry polls with the alias moved: an alias alone swaps nothing.
    time.sleep(3 * served["spec"].deployment.version_poll_period_s)
    reload_started = time.monotonic()
    changes = serve.reload(home=home)
    reload_returned = time.monotonic()
    assert changes["vae-t"] == ("1", new_version) and changes["diff-t"] == ("1", "1")
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    assert results and all(status == 200 for _, _, status, _ in results), [r for r in results if r[2] != 200][:3]
    results.sort()  # in the order the requests were sent
    versions = [v for *_, v in results]
    assert versions[0] == "1" and versions[-1] == new_version
    assert {v for _, answered, _, v in results if answered < reload_started} == {"1"}
    first_new = min(answered for _, answered, _, v in results if v == new_version)
    # Once a client has had an answer from the new model, no request sent after it sees the old
    # one. (A batch that straddles the swap answers both versions at once, in any order: what
    # is ordered is "answered" before "sent".)
    assert {v for sent, *_, v in results if sent > first_new} == {new_version}
    # reload returns once every replica serves the new version, and that is quick.
    assert {v for sent, *_, v in results if sent > reload_returned} == {new_version}
    print(f"\nreload took {reload_returned - reload_started:.2f} s; first answer from version {new_version} "
          f"{first_new - reload_started:.2f} s after reload started; {len(results)} requests")
    assert reload_returned - reload_started < 20
    after = served["client"].post("/v1/models/vae-t/sample", json={"n": 2, "seed": 5}).json()
    assert after["version"] == new_version and after["images"] != before["images"]
    assert served["client"].get("/healthz").json()["models"]["vae-t"] == new_version
    # In place: the same replica processes serve the new version (and the untouched model).
    assert {name: served["client"].get(f"/v1/models/{name}/stats").json()["pid"] for name in pids} == pids


def test_a_replica_follows_its_registry_tag_and_outlives_registry_errors(monkeypatch, caplog):
    """The tag poll alone, without Ray: each distinct error is logged once and ends nothing; a
    version that will not load leaves the old one served; a new version is swapped in."""
    import asyncio
    import logging

    from genray.components.errors import UserError
    from genray.pipelines.serve import registry, replica

    script = ["1", OSError("database is locked"), OSError("database is locked"), RuntimeError("registry down"),
              "2", "3", "3", "3", "3"]  # what each read of the tag gives; then "3" for ever
    loads: list[str] = []

    def tagged(uri, name, tag):
        assert (name, tag) == ("m", "genray.serve.test.version")
        answer = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def load(uri, home, name, version, device="cpu"):
        loads.append(version)
        if version == "3" and loads.count("3") <= 2:
            raise UserError(f"models:/m/{version}: not yet")
        return registry.Loaded(name, version, None, {}, "vae", None)

    monkeypatch.setattr(replica, "serving_version", tagged)
    monkeypatch.setattr(replica, "load_version", load)
    monkeypatch.setattr(replica, "describe", lambda loaded, limits: {"version": loaded.version})
    monkeypatch.setattr(replica, "logger", logging.getLogger("genray.test.replica"))

    async def run() -> list[str]:
        server = replica.ModelServer("m", "sqlite://", "/nowhere", LIMITS,
                                     {"max_batch_size": 2, "batch_wait_timeout_s": 0.0},
                                     version_tag="genray.serve.test.version", poll_period_s=0.01)
        await server.reconfigure({"version": "7"})  # the tag wins over the deploy-time user_config
        served = [server.loaded.version]
        for _ in range(500):
            await asyncio.sleep(0.01)
            if served[-1] != server.loaded.version:
                served.append(server.loaded.version)
            if served[-1] == "3":
                break
        await server.check_health()
        assert not server._poll.done()
        server._poll.cancel()
        return served

    with caplog.at_level(logging.INFO, logger="genray.test.replica"):
        served = asyncio.run(run())
    assert served == ["1", "2", "3"] and loads == ["1", "2", "3", "3", "3"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3, warnings  # locked, down, not yet: once each
    assert "database is locked" in warnings[0] and "registry down" in warnings[1]
    assert "not yet" in warnings[2] and "serving version 2" in warnings[2]


# ------------------------------------------------------------------------------------ the browser


def chromium_paths() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def test_the_gallery_asks_for_the_key_once_and_shows_samples_in_headless_chromium(served):
    """The page loads without the key; the API's 401 shows the key form; a refused key asks
    again; the accepted one is kept in the page's memory only and sent with every request after."""
    paths = chromium_paths()
    if paths is None:
        if os.environ.get("GENRAY_REQUIRE_BROWSER"):
            pytest.fail("GENRAY_REQUIRE_BROWSER is set but chromium/chromedriver are missing "
                        "(apt-get install chromium chromium-driver)")
        pytest.skip("chromium and chromedriver are not installed (make test installs them as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    profile = tempfile.mkdtemp(prefix="chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=paths[1]), options=options)
    try:
        driver.get(served["url"] + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_element(By.ID, "auth").is_displayed())
        assert "needs an API key" in driver.find_element(By.ID, "auth-why").text
        driver.find_element(By.ID, "api-key").send_keys(API_KEY[:-1] + ("A" if API_KEY[-1] != "A" else "B"))
        driver.find_element(By.ID, "auth-go").click()
        wait.until(lambda d: "refused" in d.find_element(By.ID, "auth-why").text)
        assert driver.find_element(By.ID, "auth").is_displayed()
        driver.find_element(By.ID, "api-key").send_keys(API_KEY)
        driver.find_element(By.ID, "auth-go").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#model option")) == len(MODELS))
        assert not driver.find_element(By.ID, "auth").is_displayed()
        Select(driver.find_element(By.ID, "model")).select_by_value("diff-t")
        wait.until(lambda d: d.find_elements(By.ID, "p-guidance_scale"))
        n = driver.find_element(By.ID, "p-n")
        n.clear()
        n.send_keys("3")
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#samples img.sample")) == 3)
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#samples img.sample')].every(i => i.complete && i.naturalWidth === 8)"))
        assert "3 samples from diff-t" in driver.find_element(By.ID, "status").text
        assert not driver.find_element(By.ID, "auth").is_displayed()  # asked once: the sample request had the key
        # In a variable only: no storage, no cookie, and the form's field was emptied.
        assert driver.execute_script(
            "return [localStorage.length, sessionStorage.length, document.cookie, "
            "document.getElementById('api-key').value]") == [0, 0, "", ""]
        assert API_KEY not in driver.page_source

        # A text model: the prompt box, Generate, and the text streamed into its sample's box.
        Select(driver.find_element(By.ID, "model")).select_by_value("gpt-t")
        wait.until(lambda d: d.find_element(By.ID, "go").text == "Generate")
        n = driver.find_element(By.ID, "p-n")
        n.clear()
        n.send_keys("2")
        driver.find_element(By.ID, "p-prompt").send_keys("abc")
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: "2 samples from gpt-t" in d.find_element(By.ID, "status").text)
        shown = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#samples pre.text-sample")]
        expected = served["client"].post("/v1/models/gpt-t/generate", json={"prompt": "abc", "n": 2}).json()["texts"]
        assert [s.rstrip() for s in shown] == [("abc" + t).rstrip() for t in expected]

        # An audio model: the WAV in an <audio> player, and its waveform drawn beside it.
        Select(driver.find_element(By.ID, "model")).select_by_value("wave-t")
        wait.until(lambda d: d.find_elements(By.ID, "p-seconds"))
        n = driver.find_element(By.ID, "p-n")
        n.clear()
        n.send_keys("2")
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: "2 clips from wave-t" in d.find_element(By.ID, "status").text)
        canvas = driver.find_element(By.CSS_SELECTOR, "#samples canvas.waveform")
        assert canvas.get_attribute("data-samples") == str(2 * 400 + 2000)
        drawn = driver.execute_script(
            "const c = document.querySelector('#samples canvas.waveform');"
            "const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "let n = 0; for (let i = 3; i < px.length; i += 4) n += px[i] > 0; return n;")
        assert drawn > 100, drawn
        wait.until(lambda d: d.execute_script(
            "const a = document.querySelector('#samples audio'); return a.readyState >= 1 && a.duration > 0.3"))

        # A translation model: strokes drawn on the pad with the mouse, Translate, the input and
        # its translation shown; the translation is what the API gives for that input and seed.
        from selenium.webdriver.common.action_chains import ActionChains

        Select(driver.find_element(By.ID, "model")).select_by_value("p2p-t")
        wait.until(lambda d: d.find_element(By.ID, "go").text == "Translate")
        assert not driver.find_elements(By.ID, "p-n")  # one translation per input
        pad = driver.find_element(By.ID, "pad")
        ActionChains(driver).move_to_element_with_offset(pad, -40, -50).click_and_hold() \
            .move_by_offset(30, 40).move_by_offset(40, 30).release().perform()
        assert driver.execute_script(
            "const c = document.getElementById('pad'); const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "let n = 0; for (let i = 0; i < px.length; i += 4) n += px[i] > 0; return n;") > 100
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: "translated by p2p-t" in d.find_element(By.ID, "status").text)
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#samples img')].every(i => i.complete && i.naturalWidth === 8)"))
        shown_in, shown_out = [img.get_attribute("src").split(",", 1)[1]
                               for img in driver.find_elements(By.CSS_SELECTOR, "#samples img")]
        assert png_array(shown_in).max() > 0  # the strokes reached the model's 8x8 input
        direct = served["client"].post("/v1/models/p2p-t/translate", json={"images": [shown_in], "seed": 0}).json()
        assert np.array_equal(png_array(direct["images"][0]), png_array(shown_out))

        # unCLIP's decoder: the pad's strokes varied, n of them; what the API gives for that input.
        Select(driver.find_element(By.ID, "model")).select_by_value("unclip-dec-t")
        wait.until(lambda d: d.find_elements(By.ID, "vary"))
        n = driver.find_element(By.ID, "p-n")
        n.clear()
        n.send_keys("3")
        pad = driver.find_element(By.ID, "pad")
        ActionChains(driver).move_to_element_with_offset(pad, -40, -50).click_and_hold() \
            .move_by_offset(30, 40).release().perform()
        driver.find_element(By.ID, "vary").click()
        wait.until(lambda d: "3 variations from unclip-dec-t" in d.find_element(By.ID, "status").text)
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#samples img')].every(i => i.complete && i.naturalWidth === 8)"))
        shown = [img.get_attribute("src").split(",", 1)[1] for img in driver.find_elements(By.CSS_SELECTOR, "#samples img")]
        assert len(shown) == 4  # the source, then its variations
        direct = served["client"].post("/v1/models/unclip-dec-t/variations",
                                       json={"images": [shown[0]], "n_per_image": 3, "seed": 0}).json()
        assert [png_array(b).tolist() for b in direct["images"]] == [png_array(b).tolist() for b in shown[1:]]

        # Attribute directions (glow-t): a sample put on the pad, edited along a direction at five
        # amounts; each is what the API gives for that input, direction and amount.
        Select(driver.find_element(By.ID, "model")).select_by_value("glow-t")
        wait.until(lambda d: d.find_elements(By.ID, "edit"))
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: "from glow-t" in d.find_element(By.ID, "status").text)
        driver.find_element(By.ID, "edit-take").click()
        Select(driver.find_element(By.ID, "p-edit_direction")).select_by_value("scale")
        amount = driver.find_element(By.ID, "p-edit_amount")
        amount.clear()
        amount.send_keys("2")
        driver.find_element(By.ID, "edit").click()
        wait.until(lambda d: "edited along scale by glow-t" in d.find_element(By.ID, "status").text)
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#samples img')].every(i => i.complete && i.naturalWidth === 8)"))
        shown = [img.get_attribute("src").split(",", 1)[1] for img in driver.find_elements(By.CSS_SELECTOR, "#samples img")]
        assert len(shown) == 6 and png_array(shown[0]).max() > 0  # the input, then amounts -2, -1, 0, 1, 2
        for b64, a in zip(shown[1:], (-2, -1, 0, 1, 2)):
            direct = served["client"].post("/v1/models/glow-t/edit", json={"images": [shown[0]], "direction": "scale",
                                                                           "amount": a}).json()
            assert np.array_equal(png_array(direct["images"][0]), png_array(b64)), a

        # StyleGAN2: truncation psi as a slider beside its box, and style mixing.
        Select(driver.find_element(By.ID, "model")).select_by_value("style-t")
        wait.until(lambda d: d.find_elements(By.ID, "r-truncation_psi"))
        driver.execute_script("const s = document.getElementById('r-truncation_psi'); s.value = 0.5;"
                              "s.dispatchEvent(new Event('input'));")
        assert driver.find_element(By.ID, "p-truncation_psi").get_attribute("value") == "0.5"
        driver.find_element(By.ID, "mix").click()
        wait.until(lambda d: "mixed images from style-t" in d.find_element(By.ID, "status").text)
        assert "crossover 2" in driver.find_element(By.ID, "status").text  # half of its 4 style layers
        assert len(driver.find_elements(By.CSS_SELECTOR, "#samples img.sample")) == 4

        # Retrieval: the indexes built with the model's CLIP offered in a list; samples retrieved from
        # the chosen one are what the API gives for it.
        write_index(served, "swap")
        Select(driver.find_element(By.ID, "model")).select_by_value("rdm-t")
        wait.until(lambda d: d.find_elements(By.ID, "p-index"))
        offered = [o.get_attribute("value") for o in driver.find_elements(By.CSS_SELECTOR, "#p-index option")]
        assert offered[0] == "" and "swap" in offered and "foreign" not in offered
        Select(driver.find_element(By.ID, "p-index")).select_by_value("swap")
        n = driver.find_element(By.ID, "p-n")
        n.clear()
        n.send_keys("2")
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: "2 samples from rdm-t" in d.find_element(By.ID, "status").text)
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#samples img.sample')].every(i => i.complete && i.naturalWidth === 8)"))
        shown = [img.get_attribute("src").split(",", 1)[1]
                 for img in driver.find_elements(By.CSS_SELECTOR, "#samples img.sample")]
        direct = served["client"].post("/v1/models/rdm-t/sample", json={"n": 2, "seed": 0, "index": "swap"}).json()
        assert [png_array(b).tolist() for b in direct["images"]] == [png_array(b).tolist() for b in shown]
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# ------------------------------------------------------------------------------- no pickle, ever


class _Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "the payload ran"))


def test_weights_that_would_run_code_when_unpickled_are_refused(tmp_path, genray_home, capsys):
    home = genray_home
    home.mkdir(parents=True)
    uri = tracking.tracking_uri(home)
    marker = tmp_path / "pwned"
    exp = tracking.ensure_experiment(uri, "serve-test", home)
    run_id, _ = tracking.start_run(uri, exp, "evil", {}, {})
    evil = tmp_path / "evil"
    evil.mkdir()
    state = {"step": 0, "model": checkpoint.model_state("vae", {"size": "tiny"}, DatasetInfo.for_images((1, 8, 8)))}
    (evil / "model.safetensors").write_bytes(pickle.dumps(_Payload(str(marker))))
    (evil / "state.json").write_text(json.dumps(state))
    # genray's own registration refuses it (it reads the weights for the signature) ...
    with pytest.raises(UserError, match="not a safetensors file"):
        tracking.log_and_register(uri, run_id, evil, "evil")
    assert not marker.exists()
    # ... so it arrives the way another tool would register it: MLflow's API, genray's model code.
    import mlflow.pyfunc

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(name="model", python_model=str(tracking.MODEL_CODE),
                                           artifacts={"checkpoint": str(evil)}, registered_model_name="evil")
    finally:
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            os.environ.pop(var, None)
    version = str(info.registered_model_version)
    tracking.set_alias(uri, "evil", version, "champion", {})

    with pytest.raises(ValueError, match="not a safetensors file"):
        serve.load_version(uri, home, "evil", version)
    assert cli.main(["serve", "--model", "evil", "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert "genray loads no pickled weights" in err and "Traceback" not in err
    assert not marker.exists()
    # The same bytes unpickled would have run the payload: the check above can fail.
    pickle.loads((evil / "model.safetensors").read_bytes())
    assert marker.read_text() == "the payload ran"


def test_serve_cli_errors_are_one_line(genray_home, capsys):
    genray_home.mkdir(parents=True)
    assert cli.main(["serve", "--model", "nosuch"]) == 2
    assert "no version of 'nosuch' has alias 'champion'" in capsys.readouterr().err
    assert cli.main(["serve"]) == 2
    assert "no registered model" in capsys.readouterr().err
    bad = genray_home / "serve.yaml"
    bad.write_text("deployment: {max_batch_size: 0}\n")
    assert cli.main(["serve", "--config", str(bad)]) == 2
    assert "deployment.max_batch_size" in capsys.readouterr().err
    assert cli.main(["serve", "--reload"]) == 2
    assert "nothing to reload" in capsys.readouterr().err
