"""`genray data tokenize`: a tiny VQ-VAE trained in local mode and registered, run over the tiny
digits on 2 Ray Data actors through the CLI, then a class-conditional GPT trained on its tokens."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from genray.components import checkpoint
from genray.components.data import DatasetInfo, decode_batch, normalize_images, read_info, read_metadata, write_table
from genray.pipelines import cli, config, train

pytestmark = pytest.mark.integration

K = 16  # codebook size of the tiny tokenizer: 8x8 digits -> 2x2 codes


def tiny_spec(data: dict, model: dict):
    return config.validate({
        "data": data,
        "model": {"size": "tiny", **model},
        "trainer": {"max_steps": 8, "batch_size": 16, "checkpoint_every": 8, "eval_every": 8, "log_every": 4,
                    "eval_batches": 1, "num_samples": 4, "quality_samples": 0, "ema_decay": None},
        "scaling": {"workers": 0},  # local mode: tokenizing is under test here, not training
        "tracking": {"experiment": "test"},
    }, "<test>")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("tokenize") / "home"


@pytest.fixture(scope="module")
def vqvae(ray_session, home):
    spec = tiny_spec({"dataset": "digits", "size": "tiny"}, {"family": "vqvae", "codebook_size": K, "code_dim": 8})
    return train.run(spec, name="t-vqvae", home=home, show_progress=False)


@pytest.fixture
def env_home(home, monkeypatch):
    monkeypatch.setenv("GENRAY_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


@pytest.fixture(scope="module")
def tokenized(vqvae, home):
    """The CLI run, once: `genray data tokenize models:/vqvae-digits/latest --data digits --size tiny`."""
    out = home / "digits-tokens"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENRAY_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        code = cli.main(["data", "tokenize", f"models:/{vqvae.model_name}/latest", "--data", "digits", "--size", "tiny",
                         "--out", str(out), "--actors", "2", "--batch-size", "40"])
    assert code == 0
    return out


def read_images(path):
    """A split's images as the model sees them, (N, C, H, W) in [-1, 1], and its labels."""
    table = pq.read_table(path, columns=["image", "label"])
    batch = decode_batch({c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names},
                         "image", (8, 8, 1), normalize=False)
    return normalize_images(torch.from_numpy(batch["x"])), batch["y"]


def test_tokens_are_the_models_codes_of_every_image_in_order(vqvae, home, tokenized, capsys):
    model, _ = checkpoint.build_model(vqvae.checkpoint)
    source = home / "data" / "digits-tiny-seed0"
    for split in ("train", "test"):
        x, labels = read_images(source / f"{split}.parquet")
        table = pq.read_table(tokenized / f"{split}.parquet")
        assert table.num_rows == len(x)
        tokens = np.array(table.column("tokens").to_pylist())  # (N, h*w)
        assert tokens.min() >= 0 and tokens.max() < K
        # Row i of the tokens is row i of the images (preserve_order), each grid row-major.
        expected = model.tokens(x).flatten(1).numpy()
        assert np.array_equal(tokens, expected), f"{split}: {(tokens != expected).any(1).sum()} rows differ"
        assert np.array_equal(np.asarray(table.column("label")), labels)

    info = read_info(tokenized / "train.parquet")
    assert info.modality == "tokens" and info.shape == (4,) and info.vocab == tuple(str(i) for i in range(K))
    assert info.num_classes == 10 and info.columns == ("tokens", "label")
    meta = read_metadata(tokenized / "test.parquet")
    assert json.loads(meta["genray.token_grid"]) == [2, 2]
    assert meta["genray.tokenizer"] == f"models:/{vqvae.model_name}/{vqvae.model_version}"  # latest, resolved
    assert meta["genray.tokenizer_run"] == vqvae.run_id
    assert json.loads(meta["genray.source_dataset"]) == {"dataset": "digits", "size": "tiny", "seed": 0}


def test_a_class_conditional_gpt_trains_on_the_tokens(ray_session, home, tokenized):
    spec = tiny_spec({"path": str(tokenized / "train.parquet"), "test_path": str(tokenized / "test.parquet")},
                     {"family": "gpt", "conditioning": "class"})
    out = train.run(spec, name="t-prior", home=home, show_progress=False)
    assert np.isfinite(out.metrics["eval/loss"])


def test_bad_inputs_exit_2_with_one_line_naming_them(vqvae, env_home, tokenized, tmp_path, capsys):
    from genray.components.models import build

    # A DCGAN checkpoint directory: a model, but not one that tokenizes.
    gan = tmp_path / "dcgan"
    data = DatasetInfo.for_images((1, 8, 8))
    model = build("dcgan", {"size": "tiny"}, data)
    checkpoint.save(gan, checkpoint.Checkpoint(model.state_dict(), {"model": checkpoint.model_state(
        "dcgan", {"size": "tiny"}, data)}))
    # Images of another shape than the tokenizer's 8x8x1.
    big = tmp_path / "big"
    for split in ("train", "test"):
        write_table(big / f"{split}.parquet", "image", {"image": np.zeros((4, 16, 16, 1), np.uint8)}, [16, 16, 1])

    ref = f"models:/{vqvae.model_name}/{vqvae.model_version}"
    cases = [
        ([str(gan), "--data", "digits"], ["dcgan", "does not tokenize", "families that do: vqvae"]),
        ([ref, "--data", str(big)], ["16x16x1", "takes 8x8x1"]),
        ([ref, "--data", "nosuch"], ["--data nosuch", "not a built-in dataset", "digits"]),
        ([ref, "--data", "digits", "--size", "tiny", "--out", str(tokenized)], ["already exists", "--overwrite"]),
        (["models:/nosuch/1", "--data", "digits"], ["tokenizer 'models:/nosuch/1'", "not found"]),
    ]
    for args, words in cases:
        assert cli.main(["data", "tokenize", *args]) == 2, args
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("genray: error:") and "Traceback" not in err, err
        for word in words:
            assert word in lines[0], (word, lines[0])


def test_extra_metadata_must_be_genray_keys_with_string_values(tmp_path):
    from genray.components.data import DataFormatError

    columns = {"tokens": np.zeros((2, 4), np.int32)}
    write_table(tmp_path / "t.parquet", "tokens", columns, [4], ["0", "1"], metadata={"genray.token_grid": "[2, 2]"})
    assert read_metadata(tmp_path / "t.parquet")["genray.token_grid"] == "[2, 2]"
    for bad, word in (({"grid": "[2, 2]"}, "must start with 'genray.'"), ({"genray.shape": "[4]"}, "genray.shape"),
                      ({"genray.token_grid": [2, 2]}, "must be a string")):
        with pytest.raises(DataFormatError, match=word):
            write_table(tmp_path / "u.parquet", "tokens", columns, [4], ["0", "1"], metadata=bad)
