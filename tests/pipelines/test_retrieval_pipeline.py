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
def rdm_home(ray_session, tmp_path_factory):
    """Two tiny CLIPs, the first one's index of the tiny digits' training split (all classes, and
    3 and 5 only) and the other's, and a tiny RDM retrieving from the first index."""
    home = tmp_path_factory.mktemp("rdm-home")
    clip = train.run(tiny({"family": "clip", "text_len": 20}), name="r-clip", home=home)
    other = train.run(tiny({"family": "clip", "text_len": 20}, steps=4), name="r-clip-other", home=home)
    mp = pytest.MonkeyPatch()
    mp.setenv("GENRAY_HOME", str(home))
    try:
        for extra in ([], ["--classes", "3,5", "--name", "three-five"]):
            assert cli.main(["data", "index", f"runs:/{clip.run_id}", "--data", "digits", "--size", "tiny", *extra]) == 0
        assert cli.main(["data", "index", f"runs:/{other.run_id}", "--data", "digits", "--size", "tiny",
                         "--name", "other-clip"]) == 0
    finally:
        mp.undo()
    rdm = train.run(tiny({**RDM, "image_encoder": f"runs:/{clip.run_id}", "retrieval_index": "digits-tiny-seed0-train"}),
                    name="r-rdm", home=home)
    return {"home": home, "clip": clip, "other": other, "rdm": rdm}


def test_an_index_holds_the_clips_embeddings_of_the_split_in_order(rdm_home):
    from genray.components.checkpoint import build_model
    from genray.components.data import normalize_images
    from genray.components.models.retrieval import encoder_digest, load_index
    from genray.pipelines.data import read_decoded, resolve_data
    from genray.pipelines.retrieval import indexes_dir

    home, clip = rdm_home["home"], rdm_home["clip"]
    index = load_index(indexes_dir(home) / "digits-tiny-seed0-train")
    model, _ = build_model(clip.checkpoint)
    train_path = resolve_data(tiny({"family": "clip", "text_len": 20}), home).train
    d = read_decoded(train_path, ["image", "label"], "image", (8, 8, 1), None, normalize=False)
    with torch.no_grad():
        want = model.embed_images(normalize_images(torch.as_tensor(d["x"])))
    torch.testing.assert_close(index.embeddings, want, atol=1e-5, rtol=1e-5)
    assert np.array_equal(index.labels.numpy(), d["y"]) and index.encoder == encoder_digest(model)
    assert index.meta["clip"] == f"runs:/{clip.run_id}" and index.meta["split"] == "train"
    subset = load_index(indexes_dir(home) / "three-five")
    assert set(subset.labels.tolist()) == {3, 5} and subset.meta["classes"] == [3, 5]
    assert subset.rows == int(np.isin(d["y"], [3, 5]).sum())


def test_the_model_carries_its_index_and_refuses_another_clips(rdm_home):
    from genray.components.checkpoint import build_model
    from genray.components.errors import UserError
    from genray.components.models.retrieval import load_index
    from genray.pipelines.retrieval import indexes_dir

    home, clip = rdm_home["home"], rdm_home["clip"]
    index = load_index(indexes_dir(home) / "digits-tiny-seed0-train")
    rdm, state = build_model(rdm_home["rdm"].checkpoint)
    assert torch.equal(rdm.index_embeddings, index.embeddings) and torch.equal(rdm.index_labels, index.labels)
    stored = state["model"]["args"]["retrieval_index"]
    assert stored["ref"] == "digits-tiny-seed0-train" and stored["rows"] == index.rows
    assert stored["encoder"] == index.encoder and "retrieval" in rdm.capabilities
    subset = load_index(indexes_dir(home) / "three-five")
    a = rdm.sample(4, generator=torch.Generator().manual_seed(0), index=subset, query_rows=torch.arange(4))
    assert a.shape == (4, 1, 8, 8)
    foreign = load_index(indexes_dir(home) / "other-clip")
    with pytest.raises(UserError, match="index: this index was built with another embedding model"):
        rdm.sample(2, index=foreign)
    with pytest.raises(UserError, match="model.retrieval_index other-clip: this index was built with another"):
        train.run(tiny({**RDM, "image_encoder": f"runs:/{clip.run_id}", "retrieval_index": "other-clip"}),
                  name="r-rdm-bad", home=home)


def test_eval_scores_retrieval_against_the_same_model_without_it_and_a_swapped_index(rdm_home, digits_classifier,
                                                                                     monkeypatch, capsys):
    home = rdm_home["home"]
    monkeypatch.setenv("GENRAY_HOME", str(home))
    base = ["eval", f"runs:/{rdm_home['rdm'].run_id}", "--num-samples", "40", "--workers", "0", "--batch-size", "20",
            "--feature-net", str(digits_classifier), "--no-log"]
    from genray.pipelines import evaluate

    own = evaluate.evaluate(evaluate.EvalRequest(base[1], num_samples=40, workers=0, batch_size=20,
                                                 feature_net=str(digits_classifier), log=False), home=home)
    m = own.metrics
    for key in ("fd_digits", "fd_digits_no_retrieval", "class_consistency", "class_consistency_no_retrieval",
                "index_share", "index_share_no_retrieval"):
        assert key in m and np.isfinite(m[key]), key
    assert m["index_share"] == 1.0  # every class is in the model's own index
    swapped = evaluate.evaluate(evaluate.EvalRequest(base[1], num_samples=40, workers=0, batch_size=20,
                                                     feature_net=str(digits_classifier), index="three-five",
                                                     log=False), home=home)
    assert 0 <= swapped.metrics["index_share"] <= 1 and swapped.params["eval.index_classes"] == "3,5"
    assert swapped.params["eval.index"] == "three-five"
    # Through the CLI, and its refusals.
    assert cli.main(base + ["--index", "three-five"]) == 0
    assert "index_share" in capsys.readouterr().out
    assert cli.main(base + ["--index", "other-clip"]) == 2
    assert "--index: this index was built with another embedding model" in capsys.readouterr().err
    assert cli.main(base + ["--index", "nowhere"]) == 2
    assert "--index nowhere: no such folder, and no index of that name" in capsys.readouterr().err


def test_bad_input_is_one_line_and_exit_2(rdm_home, monkeypatch, capsys):
    home, clip = rdm_home["home"], rdm_home["clip"]
    monkeypatch.setenv("GENRAY_HOME", str(home))
    cases = [
        (["data", "index", f"runs:/{clip.run_id}", "--data", "digits", "--size", "tiny", "--classes", "3,eleven"],
         "--classes 3,eleven: 'eleven' is not a class of this data"),
        (["data", "index", f"runs:/{clip.run_id}", "--data", "digits", "--size", "tiny", "--name", "../up"],
         "--name '../up': letters, digits"),
        (["data", "index", f"runs:/{clip.run_id}", "--data", "nope"], "--data nope: not a built-in dataset"),
        (["data", "index", f"runs:/{rdm_home['rdm'].run_id}", "--data", "digits", "--size", "tiny"],
         "which does not embed images; an index needs a trained genray clip"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    with pytest.raises(config.ConfigError, match="model.retrieval_index nowhere: no such folder, and no index of that "
                                                 "name in"):
        train.run(tiny({**RDM, "image_encoder": f"runs:/{clip.run_id}", "retrieval_index": "nowhere"}),
                  name="r-rdm-none", home=home)


def test_genray_sample_and_load_take_a_swapped_index(rdm_home, monkeypatch, capsys, tmp_path):
    import genray

    home, rdm = rdm_home["home"], rdm_home["rdm"]
    monkeypatch.setenv("GENRAY_HOME", str(home))
    out = tmp_path / "s.png"
    assert cli.main(["sample", f"runs:/{rdm.run_id}", "-n", "4", "-o", str(out), "--index", "three-five"]) == 0
    assert out.is_file()
    model = genray.load(f"runs:/{rdm.run_id}")
    a = model.sample(4, seed=1, index="three-five")
    assert torch.equal(a, model.sample(4, seed=1, index="three-five"))
    assert not torch.equal(a, model.sample(4, seed=1))  # the model's own index: other pseudo-queries and neighbours
    assert cli.main(["sample", f"runs:/{rdm.run_id}", "-n", "2", "-o", str(out), "--index", "other-clip"]) == 2
    assert "--index: this index was built with another embedding model" in capsys.readouterr().err
    assert cli.main(["sample", f"runs:/{rdm_home['clip'].run_id}", "-n", "2", "-o", str(out), "--index", "x"]) == 2
