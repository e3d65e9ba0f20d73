"""Retrieval-augmented diffusion through the real pipeline, in Ray Train's local mode: a tiny CLIP
on captioned digits, `genray data index` on Ray Data (the embeddings against the CLIP run here,
a class subset, the digest), a tiny RDM naming the index by name, its checkpoint carrying the
index, samples from a swapped index, and the refusals (a model that does not embed, an unknown
class, an unknown index, an index of another CLIP)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from genray.pipelines import cli, config, train

pytestmark = pytest.mark.integration


def tiny(model: dict, steps: int = 3) -> config.ExperimentSpec:
    return config.validate({
        "data": {"dataset": "digits", "size": "tiny"},
        "model": {"size": "tiny", **model},
        "trainer": {"max_steps": steps, "batch_size": 16, "checkpoint_every": steps, "eval_every": steps,
                    "log_every": 1, "eval_batches": 1, "num_samples": 4, "quality_samples": 0},
        "scaling": {"workers": 0},
        "tracking": {"experiment": "test", "register_model": False},
    }, "<test>")


RDM = {"family": "diffusion", "conditioning": "retrieval", "retrieval_k": 3, "num_timesteps": 20,
       "num_inference_steps": 2, "vlb_timesteps": 2, "eval_guidance_scales": [0.0, 2.0]}


@pytest.fixture(scope="module")
def clip_runs(ray_session, tmp_path_factory):
    home = tmp_path_factory.mktemp("rdm-home")
    a = train.run(tiny({"family": "clip", "text_len": 20}), name="r-clip", home=home)
    b = train.run(tiny({"family": "clip", "text_len": 20}, steps=4), name="r-clip-other", home=home)
    return home, a, b


def test_an_index_holds_the_clips_embeddings_of_the_split_and_a_model_retrieves_from_it(clip_runs, monkeypatch,
                                                                                         capsys):
    from genray.components.checkpoint import build_model
    from genray.components.models.retrieval import encoder_digest, load_index
    from genray.pipelines.data import read_decoded
    from genray.pipelines.retrieval import indexes_dir

    home, clip, other = clip_runs
    monkeypatch.setenv("GENRAY_HOME", str(home))
    assert cli.main(["data", "index", f"runs:/{clip.run_id}", "--data", "digits", "--size", "tiny"]) == 0
    assert "index " in capsys.readouterr().out
    index = load_index(indexes_dir(home) / "digits-tiny-seed0-train")

    # The rows are the CLIP's embeddings of the split's images, in order, with their labels.
    model, _ = build_model(clip.checkpoint)
    from genray.components.data import normalize_images
    from genray.pipelines.data import resolve_data

    spec = tiny({"family": "clip", "text_len": 20})
    train_path = resolve_data(spec, home).train
    d = read_decoded(train_path, ["image", "label"], "image", (8, 8, 1), None, normalize=False)
    with torch.no_grad():
        want = model.embed_images(normalize_images(torch.as_tensor(d["x"])))
    torch.testing.assert_close(index.embeddings, want, atol=1e-5, rtol=1e-5)
    assert np.array_equal(index.labels.numpy(), d["y"]) and index.encoder == encoder_digest(model)
    assert index.meta["clip"] == f"runs:/{clip.run_id}" and index.meta["split"] == "train"

    # A class subset, named.
    assert cli.main(["data", "index", f"runs:/{clip.run_id}", "--data", "digits", "--size", "tiny",
                     "--classes", "3,5", "--name", "three-five"]) == 0
    subset = load_index(indexes_dir(home) / "three-five")
    assert set(subset.labels.tolist()) == {3, 5} and subset.meta["classes"] == [3, 5]
    assert subset.rows == int(np.isin(d["y"], [3, 5]).sum())

    # A tiny RDM names the index by name; its checkpoint carries the index.
    out = train.run(tiny({**RDM, "image_encoder": f"runs:/{clip.run_id}",
                          "retrieval_index": "digits-tiny-seed0-train"}), name="r-rdm", home=home)
    rdm, state = build_model(out.checkpoint)
    assert torch.equal(rdm.index_embeddings, index.embeddings) and torch.equal(rdm.index_labels, index.labels)
    stored = state["model"]["args"]["retrieval_index"]
    assert stored["ref"] == "digits-tiny-seed0-train" and stored["rows"] == index.rows and stored["encoder"] == index.encoder
    assert "retrieval" in rdm.capabilities

    # The swapped index: same CLIP, other rows; the model's guidance-0 samples ignore it.
    rows = torch.arange(4) % subset.rows
    a = rdm.sample(4, generator=torch.Generator().manual_seed(0), index=subset, query_rows=rows)
    assert a.shape == (4, 1, 8, 8)
    # Another CLIP's index is refused, at sampling and at training.
    assert cli.main(["data", "index", f"runs:/{other.run_id}", "--data", "digits", "--size", "tiny",
                     "--name", "other-clip"]) == 0
    capsys.readouterr()
    foreign = load_index(indexes_dir(home) / "other-clip")
    from genray.components.errors import UserError

    with pytest.raises(UserError, match="index: this index was built with another embedding model"):
        rdm.sample(2, index=foreign)
    with pytest.raises(UserError, match="model.retrieval_index other-clip: this index was built with another"):
        train.run(tiny({**RDM, "image_encoder": f"runs:/{clip.run_id}", "retrieval_index": "other-clip"}),
                  name="r-rdm-bad", home=home)


def test_bad_input_is_one_line_and_exit_2(clip_runs, monkeypatch, capsys):
    home, clip, _ = clip_runs
    monkeypatch.setenv("GENRAY_HOME", str(home))
    cases = [
        (["data", "index", f"runs:/{clip.run_id}", "--data", "digits", "--size", "tiny", "--classes", "3,eleven"],
         "--classes 3,eleven: 'eleven' is not a class of this data"),
        (["data", "index", f"runs:/{clip.run_id}", "--data", "digits", "--size", "tiny", "--name", "../up"],
         "--name '../up': letters, digits"),
        (["data", "index", f"runs:/{clip.run_id}", "--data", "nope"], "--data nope: not a built-in dataset"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    with pytest.raises(config.ConfigError, match="model.retrieval_index nowhere: no such folder, and no index of that "
                                                 "name in"):
        train.run(tiny({**RDM, "image_encoder": f"runs:/{clip.run_id}", "retrieval_index": "nowhere"}),
                  name="r-rdm-none", home=home)
