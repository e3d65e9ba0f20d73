"""A real multi-node Ray cluster on this machine (cluster/local.sh): head + 2 worker nodes and an
MLflow tracking server, jobs submitted through the Ray Jobs API with `genray submit`.

Marked `cluster`: these start their own cluster, separate from the test session's Ray, and stop
it by pid whatever happens."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
LOCAL_SH = ROOT / "cluster" / "local.sh"
PORTS = {"GENRAY_RAY_PORT": "6391", "GENRAY_DASHBOARD_PORT": "8267", "GENRAY_MLFLOW_PORT": "5056"}


def read_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            k, _, v = line.removeprefix("export ").partition("=")
            env[k] = v
    return env


def processes_of(pids_file: Path) -> list[str]:
    """Every process still alive in the process groups `up` recorded."""
    groups = [line.split()[1] for line in pids_file.read_text().splitlines()] if pids_file.exists() else []
    alive = []
    for g in groups:
        out = subprocess.run(["pgrep", "-g", g], capture_output=True, text=True).stdout.split()
        alive.extend(out)
    return alive


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("cluster")
    env = {**os.environ, **PORTS}
    env.pop("RAY_ADDRESS", None)
    up = subprocess.run(["bash", str(LOCAL_SH), "up", "--workers", "2", "--cpus-per-worker", "1",
                         "--dir", str(state)], capture_output=True, text=True, env=env, timeout=300)
    groups = [line.split()[1] for line in (state / "pids").read_text().splitlines()] if (state / "pids").exists() else []
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        client_env = read_env(state / "env.sh")
        yield {"dir": state, "env": client_env, "up": up.stdout, "groups": groups}
    finally:
        down = subprocess.run(["bash", str(LOCAL_SH), "down", "--dir", str(state)], capture_output=True, text=True,
                              env=env, timeout=120)
        for g in groups:  # whatever `down` missed, so a failure never leaves a cluster behind
            subprocess.run(["pkill", "-KILL", "-g", g], capture_output=True)
        assert down.returncode == 0, down.stderr


def genray(args: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    full = {**os.environ, **env}
    full.pop("GENRAY_HOME", None)
    full["GENRAY_HOME"] = env["GENRAY_STORAGE"].rsplit("/", 1)[0] + "/home"
    return subprocess.run([sys.executable, "-m", "genray.pipelines.cli", *args], capture_output=True, text=True,
                          env=full, cwd=ROOT, timeout=timeout)


def mlflow_get(uri: str, path: str, **params) -> dict:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    with urllib.request.urlopen(f"{uri}/api/2.0/mlflow/{path}?{query}", timeout=30) as r:
        return json.loads(r.read())


def test_up_starts_three_nodes_and_an_mlflow_server(cluster):
    assert "head + 2 worker nodes" in cluster["up"] and "token" in cluster["up"]
    # `up` returned once the Jobs API had run a probe job, and deleted it: no job to see yet.
    assert "3 nodes alive" in cluster["up"] and "the Jobs API ran a probe job" in cluster["up"]
    env = cluster["env"]
    listed = genray(["jobs", "list"], env, timeout=120)
    assert listed.returncode == 0 and len(listed.stdout.strip().splitlines()) == 1, listed.stdout  # the header only
    assert env["RAY_ADDRESS"].startswith("http://127.0.0.1:") and env["MLFLOW_TRACKING_URI"].startswith("http://127.0.0.1:")
    with urllib.request.urlopen(env["MLFLOW_TRACKING_URI"] + "/health", timeout=10) as r:
        assert r.status == 200
    names = [line.split()[0] for line in (cluster["dir"] / "pids").read_text().splitlines()]
    assert names == ["head", "worker1", "worker2", "mlflow"]
    assert (Path(env["RAY_AUTH_TOKEN_PATH"]).stat().st_mode & 0o077) == 0  # the token is private


def test_a_spread_training_job_tracks_on_the_server_and_checkpoints_to_shared_storage(cluster):
    env = cluster["env"]
    started = time.perf_counter()
    out = genray(["submit", "train", "pipelines/configs/vae/vae_digits.yaml", "--follow", "--name", "spread-train",
                  "--set", "data.size=tiny", "--set", "model.size=tiny", "--set", "trainer.max_steps=40",
                  "--set", "trainer.checkpoint_every=20", "--set", "trainer.eval_every=20",
                  "--set", "trainer.log_every=10", "--set", "scaling.workers=2", "--set", "scaling.cpus_per_worker=1",
                  "--set", "scaling.placement_strategy=SPREAD", "--set", "tracking.run_name=spread-train"], env)
    took = time.perf_counter() - started
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "job spread-train succeeded" in out.stdout and " 40/40 | " in out.stdout  # the driver's progress line, last tenth
    # SPREAD put the two Train workers on two different nodes (Ray's state API keeps dead actors).
    nodes = subprocess.run([sys.executable, "-c", (
        "import json, os; from ray.util.state import list_actors; "
        "print(json.dumps([a.node_id for a in list_actors(address=os.environ['RAY_ADDRESS'], "
        "filters=[('class_name', '=', 'RayTrainWorker')], detail=True)]))")],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=120)
    worker_nodes = json.loads(nodes.stdout.strip().splitlines()[-1])
    assert len(worker_nodes) == 2 and len(set(worker_nodes)) == 2, nodes.stdout + nodes.stderr
    # The MLflow run is on the server, found over its REST API.
    exps = mlflow_get(env["MLFLOW_TRACKING_URI"], "experiments/get-by-name", experiment_name="genray-vae")
    runs = json.loads(urllib.request.urlopen(urllib.request.Request(
        env["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/runs/search", method="POST",
        data=json.dumps({"experiment_ids": [exps["experiment"]["experiment_id"]],
                         "filter": "tags.`genray.run_name` = 'spread-train'"}).encode(),
        headers={"Content-Type": "application/json"}), timeout=30).read())["runs"]
    assert len(runs) == 1 and runs[0]["info"]["status"] == "FINISHED"
    metrics = {m["key"] for m in runs[0]["data"]["metrics"]}
    assert {"train/loss", "eval/loss"} <= metrics
    # Its checkpoints are in the shared storage path.
    storage = Path(env["GENRAY_STORAGE"])
    assert sorted(p.name for p in (storage / "spread-train").glob("checkpoint_*"))
    assert list((storage / "spread-train").rglob("model.safetensors"))
    print(f"submit -> finished: {took:.0f} s")


def test_a_failing_job_ends_failed_and_follow_exits_nonzero_with_its_error(cluster):
    out = genray(["submit", "train", "pipelines/configs/vae/vae_digits.yaml", "--follow",
                  "--set", "trainer.lr=-1"], cluster["env"])
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    assert "failed" in out.stderr and "trainer.lr" in out.stdout + out.stderr
    listed = genray(["jobs", "list"], cluster["env"])
    assert listed.returncode == 0 and "FAILED" in listed.stdout


def test_a_submission_without_the_token_is_rejected(cluster):
    env = {k: v for k, v in cluster["env"].items() if not k.startswith("RAY_AUTH")}
    no_token = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(cluster["dir"] / "no-such-token"),
                "HOME": str(cluster["dir"])}  # and no ~/.ray/auth_token to fall back on
    out = genray(["submit", "train", "pipelines/configs/vae/vae_digits.yaml"], no_token, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "token" in out.stderr and "Traceback" not in out.stderr
    wrong = cluster["dir"] / "wrong-token"
    wrong.write_text("0" * 64)
    out = genray(["submit", "train", "pipelines/configs/vae/vae_digits.yaml"],
                 {**no_token, "RAY_AUTH_TOKEN_PATH": str(wrong)}, timeout=120)
    assert out.returncode == 2 and "token" in out.stderr, out.stdout + out.stderr


def test_down_leaves_no_process_behind(tmp_path):
    env = {**os.environ, "GENRAY_RAY_PORT": "6393", "GENRAY_DASHBOARD_PORT": "8269", "GENRAY_MLFLOW_PORT": "5058"}
    env.pop("RAY_ADDRESS", None)
    state = tmp_path / "c"
    try:
        up = subprocess.run(["bash", str(LOCAL_SH), "up", "--workers", "1", "--dir", str(state)], capture_output=True,
                            text=True, env=env, timeout=300)
        assert up.returncode == 0, up.stderr
        assert processes_of(state / "pids")
        pids = (state / "pids").read_text()
        down = subprocess.run(["bash", str(LOCAL_SH), "down", "--dir", str(state)], capture_output=True, text=True,
                              env=env, timeout=120)
        assert down.returncode == 0
        (state / "pids").write_text(pids)
        assert processes_of(state / "pids") == []
        (state / "pids").unlink()
    finally:
        if (state / "pids").exists():
            for line in (state / "pids").read_text().splitlines():
                subprocess.run(["pkill", "-KILL", "-g", line.split()[1]], capture_output=True)


# --------------------------------------------------------------------- configs for real clusters


def test_the_cluster_launcher_yaml_validates_against_rays_schema():
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    jsonschema.validate(config, schema)
    gpu = config["available_node_types"]["gpu"]
    assert gpu["node_config"]["InstanceType"].startswith(("g5", "g6", "p4", "p5"))
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0}
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def test_the_kuberay_manifests_carry_what_matters():
    docs = {p.stem: yaml.safe_load(p.read_text()) for p in (ROOT / "cluster" / "kuberay").glob("*.yaml")}
    assert set(docs) == {"raycluster", "rayjob-train", "rayjob-tune", "rayservice"}
    rc = docs["raycluster"]
    assert rc["kind"] == "RayCluster" and rc["spec"]["enableInTreeAutoscaling"] is True
    assert rc["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"
    head = _containers(rc["spec"]["headGroupSpec"]["template"])[0]
    assert head["image"].startswith("ghcr.io/") and {p["containerPort"] for p in head["ports"]} >= {6379, 8265, 8000}
    assert {"name": "RAY_AUTH_MODE", "value": "token"} in head["env"]
    gpu = rc["spec"]["workerGroupSpecs"][0]
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 1
    assert _containers(gpu["template"])[0]["resources"]["limits"]["nvidia.com/gpu"] == "1"

    train = docs["rayjob-train"]
    assert train["kind"] == "RayJob" and train["spec"]["entrypoint"].startswith("python -m genray.pipelines.train ")
    assert (ROOT / train["spec"]["entrypoint"].split()[3]).is_file()  # the config it trains exists
    assert "scaling.gpu=true" in train["spec"]["entrypoint"]
    worker = train["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert _containers(worker["template"])[0]["resources"]["limits"]["nvidia.com/gpu"] == "1"

    tune = docs["rayjob-tune"]
    assert tune["spec"]["entrypoint"].startswith("python -m genray.pipelines.tune ")
    assert (ROOT / tune["spec"]["entrypoint"].split()[3]).is_file()
    assert tune["spec"]["clusterSelector"] == {"ray.io/cluster": rc["metadata"]["name"]}

    svc = docs["rayservice"]
    serve_config = yaml.safe_load(svc["spec"]["serveConfigV2"])
    app = serve_config["applications"][0]
    assert app["import_path"] == "genray.pipelines.serve:app_builder"
    from genray.pipelines import serve

    spec = serve.ServeSpec.model_validate(app["args"])  # the args are valid serve settings
    assert spec.alias == "champion" and spec.deployment.num_gpus == 1
    ports = {p["containerPort"] for p in _containers(svc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"])[0]["ports"]}
    assert 8000 in ports
