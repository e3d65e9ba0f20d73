"""`genray serve` on a real `serve.run` over loopback: every route of every served family over
HTTP, limits, a fuzzed schema, a bug told apart from a user's mistake, batching, a champion
swapped under load, the gallery in headless Chromium, and weights that would run code if
unpickled."""
from __future__ import annotations

import base64
import glob
import io
import json
import os
import pickle
import shutil
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from genray.components import checkpoint
from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.models import build
from genray.pipelines import cli, serve, tracking

pytestmark = pytest.mark.integration

LIMITS = {"max_n": 8, "max_steps": 20, "max_images": 4, "max_interpolation_steps": 6, "max_prompt_chars": 32,
          "max_body_bytes": 200_000, "request_timeout_s": 60}
MODELS = {  # name -> (family, data and model arguments)
    "vae-t": ("vae", {}),
    "gan-t": ("dcgan", {"num_classes": 10, "conditional": True}),
    "diff-t": ("diffusion", {"num_classes": 10, "conditioning": "class", "num_timesteps": 50,
                             "num_inference_steps": 5}),
    "text-t": ("diffusion", {"conditioning": "text", "text_len": 16, "num_timesteps": 50,
                             "num_inference_steps": 3, "guidance_scale": 2.0}),
}


def register_tiny(uri: str, home: Path, name: str, family: str, *, seed: int = 0, alias: str | None = "champion",
                  image_shape=(1, 8, 8), num_classes: int = 0, **args) -> str:
    """An untrained tiny model of `family`, saved as training saves one and registered."""
    torch.manual_seed(seed)
    data = DatasetInfo.for_images(image_shape, num_classes)
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
    for name, (family, args) in MODELS.items():
        register_tiny(uri, home, name, family, **args)
    spec = serve.ServeSpec(port=free_port(), limits=LIMITS,
                           deployment={"max_batch_size": 8, "batch_wait_timeout_s": 0.05, "num_cpus": 0.5})
    deployed = serve.deploy(spec, uri=uri, home=home)
    serve.wait_until_ready(deployed.url)
    with httpx.Client(base_url=deployed.url, timeout=60) as client:
        yield {"url": deployed.url, "client": client, "home": home, "uri": uri, "spec": spec}
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
    assert c.get("/docs").status_code == 200
    paths = c.get("/openapi.json").json()["paths"]
    assert {"/v1/models/{name}/sample", "/v1/models/{name}/encode", "/v1/models/{name}/log_prob"} <= set(paths)


@pytest.mark.parametrize("name", sorted(MODELS))
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


def test_routes_a_model_lacks_answer_404_with_its_capabilities(served):
    c = served["client"]
    r = c.post("/v1/models/gan-t/encode", json={"images": ["AAAA"]})
    assert r.status_code == 404
    detail = r.json()["detail"][0]
    assert detail["capabilities"] == ["condition", "sample"] and detail["routes"] == ["sample"]
    assert c.post("/v1/models/diff-t/interpolate", json={"a": "AA", "b": "AA"}).status_code == 404
    missing = c.post("/v1/models/nope/sample", json={})
    assert missing.status_code == 404 and "diff-t, gan-t, text-t, vae-t" in missing.json()["detail"][0]["msg"]


def test_the_gallery_page_is_self_contained(served):
    page = served["client"].get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: works offline


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
        "a": png, "b": png, "steps": st.one_of(st.integers(-1, 8), anything),
        "method": st.sampled_from(["linear", "slerp", "cubic"]),
    }
    body = st.one_of(st.fixed_dictionaries({}, optional=fields), anything)
    route = st.sampled_from(["sample", "sample", "sample", "encode", "decode", "interpolate", "log_prob"])
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
        with httpx.Client(base_url=served["url"], timeout=60) as c:
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
        with httpx.Client(base_url=served["url"], timeout=60) as c:
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


def test_the_gallery_shows_samples_in_headless_chromium(served):
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
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#model option")) == len(MODELS))
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
