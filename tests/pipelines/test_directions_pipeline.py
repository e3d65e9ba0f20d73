"""`genray directions`: a tiny VAE trained in local mode on the tiny digits and registered, its
class directions fitted and scored through the CLI, stored in MLflow and found again by the
registered version's tag, as serving finds them."""
from __future__ import annotations

import json
import tempfile

import numpy as np
import pytest
import torch

from genray.components import checkpoint
from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.models import build
from genray.components.models import directions as dirs
from genray.pipelines import cli, config, tracking, train
from genray.pipelines.quality import read_split

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("directions") / "home"


@pytest.fixture(scope="module")
def vae(ray_session, home):
    spec = config.validate({
        "data": {"dataset": "digits", "size": "tiny"},
        "model": {"family": "vae", "size": "tiny"},
        "trainer": {"max_steps": 8, "batch_size": 16, "checkpoint_every": 8, "eval_every": 8, "log_every": 4,
                    "eval_batches": 1, "num_samples": 4, "quality_samples": 0, "ema_decay": None},
        "scaling": {"workers": 0},
        "tracking": {"experiment": "test"},
    }, "<test>")
    return train.run(spec, name="t-vae", home=home, show_progress=False)


@pytest.fixture
def env_home(home, monkeypatch):
    monkeypatch.setenv("GENRAY_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


@pytest.fixture(scope="module")
def fitted(vae, home, digits_classifier):
    """The CLI run, once: `genray directions models:/vae-digits/latest --rows 200 --test-rows 40`."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENRAY_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        code = cli.main(["directions", f"models:/{vae.model_name}/latest", "--rows", "200", "--test-rows", "40",
                         "--amount", "2", "--feature-net", str(digits_classifier)])
    assert code == 0
    return home / "directions" / f"{vae.model_name}-v{vae.model_version}"


def test_directions_are_the_class_mean_differences_of_the_encoded_training_rows(vae, home, fitted):
    found = dirs.Directions.load(fitted)
    assert found.names == tuple(f"class={k}" for k in range(10))
    model, _ = checkpoint.build_model(vae.checkpoint)
    split = read_split(str(home / "data" / "digits-tiny-seed0" / "train.parquet"), 200)
    with torch.no_grad():
        z = model.eval().encode(split.x).flatten(1).double()
    for k in range(10):
        has = torch.from_numpy(split.y == k)
        np.testing.assert_allclose(found.vectors[k].numpy(), (z[has].mean(0) - z[~has].mean(0)).numpy(), atol=1e-5)
    assert found.source["model"] == f"models:/{vae.model_name}/{vae.model_version}" and found.source["rows"] == 200


def test_the_scores_are_logged_and_the_registered_version_names_the_stored_directions(vae, home, fitted, capsys):
    uri = tracking.tracking_uri(home)
    scores = json.loads((fitted / "scores.json").read_text())
    assert scores["amount"] == 2.0 and len(scores["directions"]) == 10
    from PIL import Image

    # edits.png: per direction, 4 held-out images (rows) then their edits at -2, -1, 0, 1, 2; 9 px a cell
    assert Image.open(fitted / "edits.png").size == (6 * 9 + 1, 10 * 4 * 9 + 1)
    assert 0.0 <= scores["summary"]["edit_moved"] <= 1.0 and "edit_kept" not in scores["summary"]  # digits: labels only
    tag = tracking.model_version_tags(uri, vae.model_name, vae.model_version)[tracking.DIRECTIONS_TAG]
    run_id = tag.removeprefix("runs:/").split("/")[0]
    run = tracking._client(uri).get_run(run_id)
    assert run.data.metrics["edit_moved"] == pytest.approx(scores["summary"]["edit_moved"])
    assert "moved/class=3".replace("=", "_") in run.data.metrics and run.data.params["amount"] == "2.0"
    assert run.data.tags["genray.training_run"] == vae.run_id
    logged = {f.path for f in tracking._client(uri).list_artifacts(run_id, "directions")}
    assert logged == {f"directions/{f}" for f in ("directions.json", "directions.safetensors", "scores.json", "edits.png")}
    served = tracking.version_directions(uri, home, vae.model_name, vae.model_version)  # what a replica loads
    assert served.names == dirs.Directions.load(fitted).names
    assert torch.equal(served.vectors, dirs.Directions.load(fitted).vectors)


def test_genray_load_of_the_version_edits_along_its_directions(vae, fitted, env_home):
    import genray

    loaded = genray.load(f"models:/{vae.model_name}/{vae.model_version}")
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    found = dirs.Directions.load(env_home / "directions" / f"{vae.model_name}-v{vae.model_version}")
    assert loaded.directions.names == found.names
    assert torch.allclose(loaded.edit(x, "class=4", 1.5), dirs.edit(loaded.module, x, found, "class=4", 1.5))
    plain = genray.load(vae.checkpoint)  # a checkpoint folder has no registry version, so no directions
    with pytest.raises(UserError, match="genray directions"):
        plain.edit(x, "class=4")


def tiny_checkpoint(folder, family: str) -> str:
    model = build(family, {"size": "tiny"}, DatasetInfo.for_images((1, 8, 8), 10))
    state = {"step": 0, "model": checkpoint.model_state(family, {"size": "tiny"}, DatasetInfo.for_images((1, 8, 8), 10))}
    checkpoint.save(folder, checkpoint.Checkpoint(model=model.state_dict(), state=state))
    return str(folder)


@pytest.mark.parametrize("args, says", [
    (["--amount", "5"], "amount 5.0: each amount is a number in [-3, 3]"),
    (["--rows", "3"], "--rows 3: at least 10"),
    (["--feature-net", "/nowhere"], "--feature-net '/nowhere'"),
])
def test_bad_arguments_are_one_line_naming_them(vae, env_home, capsys, args, says):
    assert cli.main(["directions", f"models:/{vae.model_name}/latest", *args]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_a_model_that_does_not_encode_is_refused_by_name(env_home, capsys):
    with tempfile.TemporaryDirectory() as d:
        assert cli.main(["directions", tiny_checkpoint(d, "dcgan"), "--no-log"]) == 2
    err = capsys.readouterr().err
    assert "is a dcgan model" in err and "need a model that encodes and decodes" in err and "Traceback" not in err
