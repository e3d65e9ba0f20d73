"""The pieces of `genray eval` that need neither Ray nor MLflow."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pydantic import BaseModel, Field

from genray.components.errors import UserError
from genray.components.models.protocol import SETTINGS_CONFIG
from genray.pipelines import evaluate, quality
from genray.pipelines.sampling import parse_overrides
from genray.pipelines.config import ConfigError


def test_sampling_overrides_parse_as_yaml_and_only_under_sampling():
    assert parse_overrides(["sampling.guidance_scale=2", "sampling.sampler=ddim", "sampling.eta=0"]) == {
        "guidance_scale": 2, "sampler": "ddim", "eta": 0}
    for bad in ("guidance_scale=2", "sampling.a.b=1", "sampling.eta"):
        with pytest.raises(ConfigError, match="expected sampling.KEY=VALUE"):
            parse_overrides([bad])


class Settings(BaseModel):
    model_config = SETTINGS_CONFIG
    guidance_scale: float = Field(1.0, ge=0, description="classifier-free guidance")
    num_inference_steps: int = Field(20, ge=1, le=50, description="sampler steps")


class SettingsModel:
    sampling_settings = Settings


def test_sampling_keys_are_checked_against_the_models_settings_type():
    chosen = evaluate.sampling_settings(SettingsModel(), {"guidance_scale": 3.0})
    assert chosen.model_dump(exclude_unset=True) == {"guidance_scale": 3.0}  # the model fills in the rest
    assert chosen.model_dump() == {"guidance_scale": 3.0, "num_inference_steps": 20}  # what eval logs
    with pytest.raises(UserError, match="takes sampling.guidance_scale, sampling.num_inference_steps"):
        evaluate.sampling_settings(SettingsModel(), {"temperature": 0.7})
    # A champion's sampling_defaults apply under what the request says.
    both = evaluate.sampling_settings(SettingsModel(), {"guidance_scale": 3.0}, {"guidance_scale": 1.5,
                                                                                 "num_inference_steps": 10})
    assert both.model_dump(exclude_unset=True) == {"guidance_scale": 3.0, "num_inference_steps": 10}


@pytest.mark.parametrize("given, message", [
    ({"num_inference_steps": 500}, "--set sampling.num_inference_steps=500: Input should be less than or equal to "
                                   "50; allowed: an integer >= 1 and <= 50 (default 20)"),
    ({"num_inference_steps": 2.5}, "--set sampling.num_inference_steps=2.5: Input should be a valid integer"),
    ({"guidance_scale": -1}, "allowed: a number >= 0 (default 1.0)"),
    ({"guidance_scale": "high"}, "--set sampling.guidance_scale='high'"),
])
def test_a_bad_sampling_value_names_the_setting_and_what_is_allowed(given, message):
    with pytest.raises(UserError) as e:
        evaluate.sampling_settings(SettingsModel(), given)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_sample_quality_sits_at_its_floor_for_real_data_and_above_it_for_shifted_data():
    rng = np.random.default_rng(0)
    real, pool = rng.normal(size=(500, 8)), rng.normal(size=(800, 8))
    same = evaluate.sample_quality(rng.normal(size=(400, 8)), real, pool, "toy")
    far = evaluate.sample_quality(rng.normal(size=(400, 8)) + 1.0, real, pool, "toy")
    # A sample from the data's own distribution scores like a real split of the same size.
    assert same["fd_toy"] == pytest.approx(same["fd_toy_floor"], abs=0.1)
    assert abs(same["kid_toy"] - same["kid_toy_floor"]) < 0.02
    assert far["fd_toy"] > 5 * far["fd_toy_floor"] and far["fd_toy"] == pytest.approx(8.0, rel=0.2)  # ||1||^2 = 8
    assert far["precision_toy"] < same["precision_toy"] and far["recall_toy"] < same["recall_toy"]
    # The floor uses as many real rows as there are samples, when the pool has them.
    small = evaluate.sample_quality(rng.normal(size=(50, 8)), real, pool, "toy")
    assert small["fd_toy_floor"] > same["fd_toy_floor"]  # FD's small-sample bias, which the floor shows
    # A pool smaller than the sample set: the samples are scored on as many rows as the floor.
    fake = rng.normal(size=(400, 8))
    short = evaluate.sample_quality(fake, real, pool[:100], "toy")
    assert short["fd_toy"] == pytest.approx(evaluate.sample_quality(fake[:100], real, pool[:100], "toy")["fd_toy"])


def test_reconstruction_metrics_on_the_unit_pixel_scale():
    class Identity:
        def encode(self, x):
            return x

        def decode(self, z):
            return z

    class Offset(Identity):
        def decode(self, z):
            return z + 0.2  # 0.1 on the [0, 1] scale

    x = torch.rand(10, 1, 4, 4) * 1.6 - 0.8
    off = evaluate.reconstruction(Offset(), x)
    assert off["recon_mse"] == pytest.approx(0.01, rel=1e-5)
    assert off["recon_psnr"] == pytest.approx(20.0, rel=1e-4)  # 10 log10(1 / 0.01)
    assert evaluate.reconstruction(Identity(), x)["recon_mse"] == 0.0


def test_factor_columns_become_integer_codes():
    f = {"factor_shape": np.array([0, 2, 1, 2]), "factor_x": np.linspace(0, 1, 4),
         "factor_const": np.ones(4)}
    names, codes = quality.factor_codes(f, max_values=3)
    assert names == ["factor_shape", "factor_x"]  # the constant column carries no information
    assert codes[:, 0].tolist() == [0, 2, 1, 2]
    assert codes[:, 1].tolist() == [0, 6, 13, 19]  # 4 distinct values > max_values: 20 equal bins


def test_conditions_cycle_classes_or_captions():
    class ClassModel:
        capabilities = frozenset({"sample", "condition"})
        conditioning = "class"
        num_classes = 3

    class TextModel:
        capabilities = frozenset({"sample", "condition"})
        conditioning = "text"
        num_classes = 0

    class PlainModel:
        capabilities = frozenset({"sample"})
        conditioning = "none"
        num_classes = 0

    ref = quality.Split(x=torch.zeros(2, 1, 8, 8), y=np.array([4, 5]), captions=["a", "b"], factors={})
    assert evaluate.conditions_for(ClassModel(), 5, ref)["y"].tolist() == [0, 1, 2, 0, 1]
    text = evaluate.conditions_for(TextModel(), 3, ref)
    assert text["prompt"] == ["a", "b", "a"] and text["rows"].tolist() == [0, 1, 0]
    assert evaluate.conditions_for(PlainModel(), 3, ref) == {}
    no_captions = quality.Split(x=ref.x, y=ref.y, captions=None, factors={})
    assert evaluate.conditions_for(TextModel(), 3, no_captions) == {}


def test_a_feature_net_for_other_images_is_a_config_error(tmp_path):
    from genray.components.data import DATASETS
    from genray.components.metrics.classifier import DomainClassifier, save_classifier

    paths = DATASETS["shapes"](tmp_path / "shapes", size="tiny")
    grey = save_classifier(DomainClassifier(in_channels=1, num_classes=10), tmp_path / "grey")
    with pytest.raises(ConfigError, match="takes 1-channel images"):
        quality.domain_classifier(str(grey), train_path=str(paths["train"]), dataset="shapes", home=tmp_path)
    with pytest.raises(ConfigError, match="feature_net .*nowhere.*saved classifier directory"):
        quality.domain_classifier(str(tmp_path / "nowhere"), train_path=str(paths["train"]), dataset="shapes",
                                   home=tmp_path)
    assert quality.domain_classifier("none", train_path=str(paths["train"]), dataset="shapes", home=tmp_path) is None


# ----------------------------------------------------------------------------- how the job ends


@pytest.mark.parametrize("bug", [ValueError("a bug, not the user's"), KeyError("boom")])
def test_a_bug_inside_the_job_keeps_its_traceback(bug, monkeypatch, genray_home):
    from genray.pipelines import cli

    def broken(*args, **kwargs):
        raise bug

    monkeypatch.setattr(evaluate, "resolve_target", broken)
    # Neither entry point turns it into "your input is wrong": it propagates, traceback and all.
    with pytest.raises(type(bug)):
        evaluate.main(["some/checkpoint", "--workers", "0"])
    with pytest.raises(type(bug)):
        cli.main(["eval", "some/checkpoint", "--workers", "0"])


def test_a_user_mistake_is_one_line_and_exit_2(genray_home, capsys):
    assert evaluate.main(["no/such/dir"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genray: error: TARGET 'no/such/dir' is not a checkpoint directory"), err
    assert len(err.strip().splitlines()) == 1


BROKEN_JOB = """
import sys
from genray.pipelines import evaluate

def broken(*args, **kwargs):
    raise ValueError("a bug, not the user's")

evaluate.resolve_target = broken
sys.exit(evaluate.main(sys.argv[1:]))
"""


def test_in_a_real_process_a_bug_exits_1_with_its_traceback_a_mistake_2_without(genray_home):
    import os
    import subprocess
    import sys

    env = {**os.environ, "GENRAY_HOME": str(genray_home)}
    bug = subprocess.run([sys.executable, "-c", BROKEN_JOB, "some/checkpoint"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert bug.returncode == 1, bug.stderr[-2000:]
    assert "Traceback" in bug.stderr and "ValueError: a bug, not the user's" in bug.stderr
    mistake = subprocess.run([sys.executable, "-m", "genray.pipelines.evaluate", "no/such/dir"], capture_output=True,
                             text=True, env=env, timeout=300)
    assert mistake.returncode == 2, mistake.stderr[-2000:]
    assert "Traceback" not in mistake.stderr
    assert mistake.stderr.strip().splitlines()[-1].startswith("genray: error: TARGET 'no/such/dir'")


def test_the_active_span_of_a_clip_runs_from_its_first_sound_to_its_last():
    clips = np.zeros((3, 8), dtype=np.float32)
    clips[0, 2:5] = [0.1, 0.0, -0.2]  # a zero inside the span stays in it
    clips[1, :] = 0.5
    span = evaluate.active_span(clips)
    assert span[0].tolist() == [False, False, True, True, True, False, False, False]
    assert span[1].all() and not span[2].any()  # all sound; all silence


@pytest.mark.parametrize("kind", ["paired_image", "two_domain_image"])
def test_a_split_of_translation_data_is_the_images_a_model_makes(kind, tmp_path):
    """The domain classifier and reference features read a split through read_split: of pairs,
    the targets; of two domains, every image (the domain column read, as decoding needs it)."""
    from genray.components.data.parquet import write_table

    rng = np.random.default_rng(0)
    inputs = rng.integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
    columns = {"image": inputs, "label": np.arange(6) % 2}
    if kind == "paired_image":
        targets = 255 - inputs
        columns["image_paired"] = targets
    else:
        targets = inputs
        columns["domain"] = np.arange(6) % 2
    path = write_table(tmp_path / "train.parquet", kind, columns, shape=(8, 8, 1))
    split = quality.read_split(str(path), None)
    expected = torch.as_tensor(targets).permute(0, 3, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(split.x, expected)
    assert list(split.y) == [0, 1, 0, 1, 0, 1]


def test_codebook_use_counts_the_codes_any_position_chose_and_their_perplexity():
    class Tokenizer:  # a 2x2 grid of codes from a 4-code book: each image's first pixel picks them
        codebook_size = 4

        def tokens(self, x):
            return torch.stack([x[:, 0, 0, 0].long()] * 4, dim=1).view(-1, 2, 2)

    x = torch.zeros(6, 1, 2, 2)
    x[:3, 0, 0, 0] = 1  # three images use code 1 everywhere, three code 0
    use = evaluate.codebook_use(Tokenizer(), x, batch_size=4)
    assert use["codebook_usage"] == 0.5  # codes 0 and 1 of 4
    assert use["codebook_perplexity"] == pytest.approx(2.0)  # two codes, equally often


def test_variation_identity_compares_each_variation_with_its_source_and_an_unrelated_one():
    """A model whose variation of an image is the image itself: similarity 1 (up to the 8-bit
    rounding the saved images get), the unrelated figure the hand-computed cosine of image i
    with image i + 1 (cyclic), and full class agreement for a classifier that agrees with y;
    one that flips the labels agrees with none."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(7, 1, 4, 4, generator=g) * 2 - 1

    class Echo:
        def variations(self, images, n, *, generator=None, **settings):
            assert n == 1 and settings == {"guidance_scale": 2.0}
            return images

    class Sign:
        def __init__(self, flip: bool):
            self.flip = flip

        def predict(self, images):
            return ((images.mean((1, 2, 3)) > 0).numpy() != self.flip).astype(int)

    def embed(images):
        return torch.nn.functional.normalize(images.flatten(1), dim=-1)

    y = (x.mean((1, 2, 3)) > 0).numpy().astype(int)
    out = evaluate.variation_identity(Echo(), x, y, embed, Sign(False), seed=0, batch_size=3, guidance_scale=2.0)
    unrelated = float((embed(x) * embed(x).roll(-1, dims=0)).sum(-1).mean())
    assert out["variation_similarity"] == pytest.approx(1.0, abs=1e-3)
    assert out["variation_similarity_unrelated"] == pytest.approx(unrelated, abs=1e-2)
    assert out["variation_class_agreement"] == 1.0
    flipped = evaluate.variation_identity(Echo(), x, y, embed, Sign(True), seed=0, batch_size=3, guidance_scale=2.0)
    assert flipped["variation_class_agreement"] == 0.0
    assert "variation_class_agreement" not in evaluate.variation_identity(Echo(), x, None, embed, Sign(False), seed=0,
                                                                          batch_size=3, guidance_scale=2.0)


def test_the_report_keeps_every_value_in_one_column_however_long_a_name(capsys):
    from genray.pipelines.evaluate import EvalOutcome, print_report

    metrics = {"fd_digits": 2.5, "fd_digits_floor": 2.7, "variation_similarity_unrelated": 0.103,
               "variation_similarity": 0.949, "samples_per_s": 10.7}
    print_report(EvalOutcome(metrics, {}, None, None, "sqlite://"))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 4  # the floor is shown beside its metric, not on a line of its own
    starts = {len(line) - len(line[len(line.split()[0]):].lstrip()) for line in lines}  # where each value begins
    assert starts == {len("variation_similarity_unrelated") + 1}
    assert "(floor 2.7: two real splits, same size)" in lines[0]


def test_style_mix_identity_scores_each_mix_against_its_reference_its_donor_and_an_unrelated_reference():
    """A mixer whose images are the styles' seed written into every pixel (a's seed below the
    crossover, b's above, averaged over the layers): at crossover 0 a mix is its donor, at num_ws
    its reference; a classifier whose features are the pixels themselves. The cosines are then
    known: 1 to what the mix copies, and the class (the sign) agrees or not accordingly."""
    class Mixer:
        num_ws = 4

        def style_mix(self, n, *, generator_a, generator_b, crossover, y=None, **settings):
            assert settings == {"truncation_psi": 0.7} and y is not None and len(y) == n
            a = torch.rand(n, 1, 1, 1, generator=generator_a) * 2 - 1
            b = torch.rand(n, 1, 1, 1, generator=generator_b) * 2 - 1
            w = crossover / self.num_ws
            return (w * a + (1 - w) * b).expand(n, 1, 4, 4) * torch.linspace(0.5, 1, 16).reshape(1, 1, 4, 4)

    class Pixels:
        def features(self, x):
            return x.flatten(1).numpy()

        def predict(self, x):
            return (x.mean((1, 2, 3)) > 0).numpy().astype(int)

    y = torch.arange(9) % 3
    as_ref = evaluate.style_mix_identity(Mixer(), 9, Pixels(), seed=1, batch_size=4, y=y, crossover=4, truncation_psi=0.7)
    assert as_ref["style_mix_similarity"] == pytest.approx(1.0, abs=1e-3) and as_ref["style_mix_class_agreement"] == 1.0
    as_donor = evaluate.style_mix_identity(Mixer(), 9, Pixels(), seed=1, batch_size=4, y=y, crossover=0, truncation_psi=0.7)
    assert as_donor["style_mix_similarity_donor"] == pytest.approx(1.0, abs=1e-3)
    assert as_donor["style_mix_similarity"] < 0.9 and as_donor["style_mix_crossover"] == 0.0
    half = evaluate.style_mix_identity(Mixer(), 9, Pixels(), seed=1, batch_size=4, y=y, truncation_psi=0.7)
    assert half["style_mix_crossover"] == 2.0  # num_ws // 2 unless told
    assert -1.0 <= half["style_mix_similarity_unrelated"] <= 1.0


def test_style_mix_identity_runs_on_a_real_stylegan2_and_domain_classifier():
    from genray.components.data import DatasetInfo
    from genray.components.metrics.classifier import DomainClassifier
    from genray.components.models import build

    torch.manual_seed(0)
    model = build("stylegan2", {"size": "tiny", "conditional": True}, DatasetInfo.for_images((1, 8, 8), 10)).eval()
    net = quality.FeatureNet("digits", "test", DomainClassifier(in_channels=1, num_classes=10).eval(), "classifier")
    out = evaluate.style_mix_identity(model, 6, net, seed=0, batch_size=4, y=torch.arange(6) % 10, truncation_psi=0.8)
    assert out["style_mix_crossover"] == model.num_ws // 2
    assert all(-1.0 <= out[k] <= 1.0 for k in ("style_mix_similarity", "style_mix_similarity_donor",
                                               "style_mix_similarity_unrelated"))
    full = evaluate.style_mix_identity(model, 6, net, seed=0, batch_size=4, y=torch.arange(6) % 10,
                                       crossover=model.num_ws, truncation_psi=0.8)
    assert full["style_mix_similarity"] == pytest.approx(1.0, abs=1e-6)  # every layer the reference's: the reference
