"""The command line's conventions: --version, usage everywhere, configs by name from any folder,
--print-config, `genray configs`, and `genray sample` on a real checkpoint (no Ray needed)."""
from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from genray.components import checkpoint
from genray.components.data import DatasetInfo
from genray.components.models import build
from genray.pipelines import catalog
from genray.pipelines.cli import main


def test_version_and_bare_genray(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("genray ")
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: genray") and "train" in out and "sample" in out


@pytest.mark.parametrize("verb", ["train", "tune", "eval", "sample", "configs", "data", "jobs", "submit"])
def test_every_verb_without_its_arguments_prints_usage_and_one_error_line(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: genray {verb}") and err.rstrip().splitlines()[-1].startswith("genray: error:")
    assert "Traceback" not in err


def test_every_option_has_help():
    from genray.pipelines import arguments

    missing = []

    class Recording(argparse.ArgumentParser):
        def add_argument(self, *names, **kwargs):
            if any(n.startswith("-") for n in names) and not kwargs.get("help"):
                missing.append(f"{self.prog} {names[0]}")
            return super().add_argument(*names, **kwargs)

        def add_subparsers(self, **kwargs):
            return super().add_subparsers(**{**kwargs, "parser_class": Recording})

    for verb, add in arguments.ADD.items():
        add(Recording(prog=f"genray {verb}"))
    assert not missing, missing


def test_a_shipped_config_by_name_from_another_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "vae/vae_digits", "--print-config", "--set", "trainer.lr=3e-4"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["family"] == "vae" and printed["trainer"]["lr"] == 3e-4
    # The README's older spelling resolves from anywhere too.
    assert main(["train", "pipelines/configs/vae/vae_digits.yaml", "--print-config"]) == 0
    capsys.readouterr()
    assert main(["tune", "gan/sweep_dcgan_digits", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["tune"]["metric"]


def test_an_unknown_config_name_lists_close_matches(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "vae/vae_digit"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean vae/vae_digits" in err


def test_configs_list_show_copy(tmp_path, capsys):
    assert main(["configs", "list"]) == 0
    listed = capsys.readouterr().out
    for name in catalog.shipped():
        assert name in listed
    assert main(["configs", "show", "gan/dcgan_digits"]) == 0
    assert capsys.readouterr().out == (catalog.CONFIGS / "gan" / "dcgan_digits.yaml").read_text()
    assert main(["configs", "copy", "gan/dcgan_digits", str(tmp_path)]) == 0
    copied = tmp_path / "dcgan_digits.yaml"
    assert copied.read_text() == (catalog.CONFIGS / "gan" / "dcgan_digits.yaml").read_text()
    assert main(["configs", "copy", "gan/dcgan_digits", str(tmp_path)]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err


@pytest.fixture
def diffusion_checkpoint(tmp_path):
    torch.manual_seed(0)
    data = DatasetInfo.for_images((1, 8, 8), 10)
    args = {"size": "tiny", "num_timesteps": 20, "num_inference_steps": 4, "channels": 8}
    model = build("diffusion", args, data)
    ckpt = tmp_path / "ckpt"
    checkpoint.save(ckpt, checkpoint.Checkpoint(model.state_dict(), {"step": 1, "model": checkpoint.model_state("diffusion", args, data)}))
    return ckpt


def test_sample_writes_a_seeded_grid(diffusion_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GENRAY_HOME", str(tmp_path / "home"))
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for out in (a, b):
        assert main(["sample", str(diffusion_checkpoint), "-n", "9", "-o", str(out), "--class-label", "3",
                     "--set", "num_inference_steps=2", "--seed", "5"]) == 0
    assert "num_inference_steps=2" in capsys.readouterr().out
    grid = np.asarray(Image.open(a))
    assert grid.shape == (3 * 9 + 1, 3 * 9 + 1, 3)  # 3x3 tiles of 8 px, 1-px borders
    assert np.array_equal(grid, np.asarray(Image.open(b)))


@pytest.mark.parametrize("extra, needle", [
    (["-o", "x.jpg"], "name a .png file"),
    (["--class-label", "12"], "--class-label 12: this model's classes are 0..9"),
    (["--set", "guidance_scale=-1"], "--set guidance_scale"),
    (["--set", "no_such=1"], "no_such"),
    (["--prompt", "a cat"], "not text-conditional"),
])
def test_sample_mistakes_are_one_line(diffusion_checkpoint, tmp_path, monkeypatch, capsys, extra, needle):
    monkeypatch.setenv("GENRAY_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(["sample", str(diffusion_checkpoint), "-n", "2", *extra]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err


@pytest.fixture
def gpt_checkpoint(tmp_path):
    torch.manual_seed(0)
    data = DatasetInfo("tokens", (16,), 100, 0, tuple("abcdefgh \n"), ("tokens",))
    args = {"size": "tiny"}
    model = build("gpt", args, data)
    ckpt = tmp_path / "gpt-ckpt"
    checkpoint.save(ckpt, checkpoint.Checkpoint(model.state_dict(), {"step": 1, "model": checkpoint.model_state("gpt", args, data)}))
    return ckpt


def test_sample_writes_text_continuations_or_streams_them(gpt_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GENRAY_HOME", str(tmp_path / "home"))
    out = tmp_path / "s.txt"
    assert main(["sample", str(gpt_checkpoint), "-n", "3", "-o", str(out), "--prompt", "ab", "--seed", "4",
                 "--set", "max_new_tokens=10"]) == 0
    assert "max_new_tokens=10" in capsys.readouterr().out
    texts = out.read_text().rstrip("\n").split("\n" + "-" * 40 + "\n")
    assert len(texts) == 3 and all(t.startswith("ab") and len(t) == 12 for t in texts)
    # -o - : the same samples on standard output, the summary on standard error.
    assert main(["sample", str(gpt_checkpoint), "-n", "3", "-o", "-", "--prompt", "ab", "--seed", "4",
                 "--set", "max_new_tokens=10"]) == 0
    streamed = capsys.readouterr()
    assert streamed.out == out.read_text() and "3 samples of" in streamed.err


@pytest.mark.parametrize("extra, needle", [
    (["--prompt", "abz"], "--prompt: character 'z' (position 2) is not in the model's vocabulary"),
    (["-o", "x.png"], "written as a .txt file"),
    (["--set", "top_p=0"], "--set top_p"),
    (["--set", "max_new_tokens=40"], "--set max_new_tokens"),
    (["--stop", ""], "--stop: each stop string"),
    (["--class-label", "1"], "not class-conditional"),
])
def test_text_sample_mistakes_are_one_line(gpt_checkpoint, tmp_path, monkeypatch, capsys, extra, needle):
    monkeypatch.setenv("GENRAY_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(["sample", str(gpt_checkpoint), "-n", "2", *extra]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err


@pytest.fixture
def wavenet_checkpoint(tmp_path):
    torch.manual_seed(0)
    data = DatasetInfo("audio", (200,), 100, 3, None, ("waveform", "sample_rate", "label"), sample_rate=8000)
    args = {"size": "tiny", "conditioning": "class"}
    model = build("wavenet", args, data)
    ckpt = tmp_path / "wavenet-ckpt"
    checkpoint.save(ckpt, checkpoint.Checkpoint(model.state_dict(),
                                                {"step": 1, "model": checkpoint.model_state("wavenet", args, data)}))
    return ckpt


def test_sample_writes_audio_clips_as_a_wav(wavenet_checkpoint, tmp_path, monkeypatch, capsys):
    import wave

    monkeypatch.setenv("GENRAY_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(["sample", str(wavenet_checkpoint), "-n", "2", "--class-label", "2", "--set", "seconds=0.05"]) == 0
    assert "seconds=0.05" in capsys.readouterr().out
    with wave.open(str(tmp_path / "samples.wav")) as w:  # the default name for audio
        assert (w.getframerate(), w.getnchannels(), w.getnframes()) == (8000, 1, 2 * 400 + 2000)


@pytest.mark.parametrize("extra, needle", [
    (["-o", "x.png"], "-o x.png: audio samples are written as a WAV file; name a .wav file"),
    (["--set", "seconds=61"], "--set seconds"),
    (["--set", "temperature=0"], "--set temperature"),
    (["--class-label", "3"], "--class-label"),
    (["--prompt", "hi"], "--prompt"),
])
def test_audio_sample_mistakes_are_one_line(wavenet_checkpoint, tmp_path, monkeypatch, capsys, extra, needle):
    monkeypatch.setenv("GENRAY_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(["sample", str(wavenet_checkpoint), "-n", "2", *extra]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err


def test_genray_help_runs_without_torch():
    """What makes `genray --help` quick: parsing imports no torch (timing lives in benchmarks)."""
    code = "import sys; from pipelines import cli; cli.parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
