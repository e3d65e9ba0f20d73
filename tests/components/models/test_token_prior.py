"""A prior over a frozen VQ-VAE's codes seen as an image model (components/models/token_prior.py),
with GPT as the token network: tokens in, images out, the VQ-VAE bound with the prior in place of
the unigram, and the tokenizer frozen in its checkpoint."""
import math

import pydantic
import pytest
import torch

from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.models import build
from genray.components.models.layers import StackedGenerators
from genray.components.models.refs import ModelRef
from genray.components.training import Engine, OptimDefaults, StepSettings

IMAGES = DatasetInfo.for_images((1, 16, 16), 10)  # 4x4 grids of codes
VQ_ARGS = {"size": "tiny", "codebook_size": 16, "code_dim": 8}


def vq_ref(image_shape=(1, 16, 16), family="vqvae", args=None) -> ModelRef:
    return ModelRef("models:/vq@champion", family, args or VQ_ARGS, DatasetInfo.for_images(image_shape).to_json())


def prior(conditioning="class", seed=0, **kw):
    torch.manual_seed(seed)
    return build("gpt", {"size": "tiny", "conditioning": conditioning, "tokenizer": vq_ref(), **kw}, IMAGES)


def images(n=8, seed=0):
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_the_prior_models_the_tokenizers_code_grid_row_major():
    model = prior()
    tok = model.tokenizer
    assert (model.net.seq_len, model.net.vocab_size) == (16, 16)
    x = images()
    assert torch.equal(model.tokens(x), tok.tokens(x).flatten(1))
    # Training is the token network's loss on those codes, labels passed through.
    y = torch.arange(8) % 10
    loss, logs = model({"x": x, "y": y})
    net_loss, _ = model.net({"x": tok.tokens(x).flatten(1), "y": y})
    assert torch.allclose(loss, net_loss)
    assert float(logs["bits_per_token"]) == pytest.approx(loss.item() / math.log(2), rel=1e-5)


def test_samples_are_the_networks_code_grids_decoded():
    model = prior()
    y = torch.tensor([3, 1, 4])
    got = model.sample(3, generator=torch.Generator().manual_seed(5), y=y, temperature=0.8)
    ids = model.net.sample(3, generator=torch.Generator().manual_seed(5), y=y, temperature=0.8)
    assert got.shape == (3, 1, 16, 16) and got.abs().max() <= 1
    assert torch.equal(got, model.tokenizer.decode_tokens(ids.view(3, 4, 4)))
    # A row is its own: the same seed gives the same first image whatever the batch.
    def gen(seed):
        return torch.Generator().manual_seed(seed)

    one = model.sample(1, generator=StackedGenerators([(gen(11), 1)]), y=y[:1])
    three = model.sample(3, generator=StackedGenerators([(gen(11), 1), (gen(12), 2)]), y=y)
    assert torch.allclose(one[0], three[0], atol=1e-5)


def test_the_likelihood_is_the_vqvae_bound_with_the_prior_in_place_of_the_unigram():
    model = prior()
    x, y = images(), torch.arange(8) % 10
    tok = model.tokenizer
    ids = tok.tokens(x).flatten(1)
    unigram = tok.quantizer.log_prior()[ids].sum(1)
    # vqvae.log_prob = -recon + unigram; the prior's = -recon + log P_gpt(ids | y).
    expected = tok.log_prob(x) - unigram + model.net.log_prob(ids, y=y)
    assert torch.allclose(model.log_prob(x, y=y), expected, atol=1e-4)
    assert model.log_prob_kind == "bound" and model.log_prob_space == tok.log_prob_space
    assert {"sample", "condition", "log_prob"} == set(model.capabilities)


def test_the_tokenizer_is_frozen_and_carried_in_the_checkpoint():
    model = prior()
    before = {k: v.clone() for k, v in model.tokenizer.state_dict().items()}
    engine = Engine(model, defaults=OptimDefaults(lr=0.1), settings=StepSettings(max_steps=3, grad_clip=None))
    stepped = {id(p) for p in engine.params["main"]}
    assert stepped and not any(id(p) in stepped for p in model.tokenizer.parameters())
    model.train()
    assert not model.tokenizer.training and model.net.training
    for _ in range(3):
        engine.train_step({"x": images(), "y": torch.arange(8) % 10})
    for k, v in model.tokenizer.state_dict().items():
        assert torch.equal(v, before[k]), k  # codebook EMA included: the tokenizer never trains
    assert {k for k in model.state_dict() if k.startswith("tokenizer.")} == {f"tokenizer.{k}" for k in before}


def test_settings_are_the_networks_without_the_length():
    model = prior()
    assert set(model.sampling_settings.model_fields) == {"temperature", "top_k", "top_p"}
    with pytest.raises(pydantic.ValidationError, match="max_new_tokens"):
        model.sampling_settings.model_validate({"max_new_tokens": 3})
    with pytest.raises(pydantic.ValidationError, match="temperature"):
        model.sampling_settings.model_validate({"temperature": 0})
    assert model.sampling_cost(model.sampling_settings()) == 16  # one pass per code


@pytest.mark.parametrize("ref, data, match", [
    (vq_ref((1, 32, 32)), IMAGES, r"trained on images \(1, 32, 32\), this data is \(1, 16, 16\)"),
    (vq_ref(family="vae", args={"size": "tiny"}), IMAGES, "does not tokenize images; name a trained vqvae"),
    (vq_ref(), DatasetInfo("tokens", (16,), 8, 0, tuple("abcd"), ("tokens",)), "image"),
])
def test_a_tokenizer_that_does_not_fit_is_explained(ref, data, match):
    with pytest.raises(UserError, match=match):
        build("gpt", {"size": "tiny", "tokenizer": ref}, data)


def test_class_conditioning_needs_labels():
    with pytest.raises(UserError, match="needs class labels"):
        build("gpt", {"size": "tiny", "conditioning": "class", "tokenizer": vq_ref()},
              DatasetInfo.for_images((1, 16, 16)))
