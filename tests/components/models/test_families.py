"""The test every family passes: a config-shaped builder, a recipe whose every phase gives its
networks gradients, typed sampling settings, samples in range and reproducible by seed, a state
round trip through safetensors after a real engine step.

A new family adds its entry to CASES (builder kwargs for a couple of data shapes; `size` is
"tiny" unless a case says otherwise; `image_shape`/`num_classes` (with `paired` for pairs of
images, x -> x_paired, or `two_domain` for images of two domains, x and domain), or `tokens` =
(sequence length, vocabulary size), or `audio` = (clip samples, sample rate), or `points` = D
(vectors of D numbers), describe the data the builder receives) and, if its batches are of a new
kind, to make_batch. A translation model (capability `translate`) is drawn from by translating an
example batch where other families sample (`draw`).
"""
import inspect
import typing
from dataclasses import replace

import pydantic
import pytest
import torch
from safetensors.torch import load_file, save_file

from genray.components.data import DatasetInfo
from genray.components.models import FAMILIES, example_args
from genray.components.models import build as build_model
from genray.components.models.protocol import CAPABILITIES, GenerativeModel
from genray.components.models.refs import ModelRef
from genray.components.training import Engine, OptimDefaults, StepSettings
from genray.components.training.recipe import optimizer_parameters

DIGITS = {"image_shape": (1, 8, 8), "num_classes": 10}  # sklearn's 8x8 digits
COLOUR = {"image_shape": (3, 32, 32)}  # CIFAR-shaped, unlabelled
FAST_DIFFUSION = {"num_timesteps": 50, "num_inference_steps": 4, "vlb_timesteps": 3}
TEXT = {"tokens": (16, 20)}  # 16-token rows over a 20-symbol vocabulary
TONES = {"audio": (96, 8000)}  # 96-sample clips at 8 kHz
PAIRS = {"image_shape": (1, 8, 8), "paired": True}  # 8x8 grey inputs and their targets
TWO_DOMAINS = {"image_shape": (1, 8, 8), "two_domain": True}  # 8x8 grey images of domains A and B
MOONS = {"points": 2}  # 2-D points (the moons toy)
CAPTIONED = {**DIGITS, "captions": True, "text_len": 12}  # 8x8 grey images with captions (CLIP's pairs)
# A trained CLIP of captioned 8x8 digits, and an unCLIP decoder on them whose image_encoder is that
# CLIP: a reference inside a reference's arguments, in the JSON form a checkpoint stores.
CLIP_REF = ModelRef("models:/clip@champion", "clip", {"size": "tiny", "text_len": 20},
                    DatasetInfo("image", (8, 8, 1), 64, 10, None, ("image", "label", "caption")).to_json())
DECODER_REF = ModelRef("models:/decoder@champion", "diffusion",
                       {"size": "tiny", "conditioning": "image_embedding", "image_encoder": CLIP_REF.to_json(),
                        **FAST_DIFFUSION}, DatasetInfo.for_images((1, 8, 8), 10).to_json())

CASES = {
    "vae": [DIGITS, COLOUR, {**DIGITS, "decoder_sigma": 0.1}],
    "beta_vae": [DIGITS, COLOUR, {**DIGITS, "capacity_max": 5.0, "capacity_steps": 10},
                 {**COLOUR, "latent_channels": 4, "latent_downsample": 2}],
    "dcgan": [DIGITS, COLOUR, {**DIGITS, "conditional": True}],
    "stylegan2": [DIGITS, {**COLOUR, "mixing_prob": 0.0}, {**DIGITS, "conditional": True, "r1_every": 2}],
    "diffusion": [
        {**DIGITS, **FAST_DIFFUSION},  # class-conditional with guidance
        {**COLOUR, **FAST_DIFFUSION, "prediction": "v", "schedule": "sigmoid", "min_snr_gamma": 5.0},
        {**DIGITS, "conditioning": "none", "num_timesteps": 8, "sampler": "ddpm", "prediction": "v",
         "schedule": "linear", "zero_terminal_snr": True},
        {**COLOUR, **FAST_DIFFUSION, "conditioning": "text", "text_len": 12, "guidance_scale": 2.0},
        {**COLOUR, **FAST_DIFFUSION, "autoencoder": ModelRef(
            "models:/ae@champion", "beta_vae", {"size": "tiny", "latent_channels": 4, "latent_downsample": 2},
            DatasetInfo.for_images((3, 32, 32)).to_json())},
        # Stable-Diffusion style: the frozen text tower of a trained CLIP encodes the captions
        {**COLOUR, **FAST_DIFFUSION, "conditioning": "text", "text_len": 12, "text_encoder": ModelRef(
            "models:/clip@champion", "clip", {"size": "tiny", "text_len": 8},
            DatasetInfo("image", (8, 8, 1), 64, 10, None, ("image", "label", "caption")).to_json())},
        # unCLIP's decoder: conditioned on a trained CLIP's image embeddings, in pixel space
        {**DIGITS, **FAST_DIFFUSION, "conditioning": "image_embedding", "image_encoder": CLIP_REF,
         "guidance_scale": 2.0},
        # retrieval-augmented (RDM): a CLIP's embeddings of 16 images as the index (as a checkpoint
        # stores it: resolved, its embeddings in the weights, here the zero placeholders)
        {**DIGITS, **FAST_DIFFUSION, "conditioning": "retrieval", "image_encoder": CLIP_REF, "retrieval_k": 2,
         "retrieval_index": {"ref": "idx", "rows": 16, "dim": 64, "encoder": "x", "meta": {}}},
        # ... and in a latent space
        {**DIGITS, **FAST_DIFFUSION, "conditioning": "image_embedding", "image_encoder": CLIP_REF, "autoencoder": ModelRef(
            "models:/ae@champion", "beta_vae", {"size": "tiny", "latent_channels": 4, "latent_downsample": 1},
            DatasetInfo.for_images((1, 8, 8)).to_json())},
    ],
    "gpt": [TEXT, {**TEXT, "num_classes": 3, "conditioning": "class", "dropout": 0.1},
            {"tokens": (8, 512), "block_size": 24},  # a VQ-VAE-sized code vocabulary
            {"image_shape": (1, 16, 16), "num_classes": 10, "conditioning": "class", "tokenizer": ModelRef(
                "models:/vq@champion", "vqvae", {"size": "tiny", "codebook_size": 16, "code_dim": 8},
                DatasetInfo.for_images((1, 16, 16)).to_json())}],  # VQ-VAE's prior: images through a tokenizer
    "pixelcnn": [DIGITS, {**DIGITS, "conditioning": "class", "kernel": 5}, {"image_shape": (1, 5, 7)}],
    "wavenet": [TONES, {**TONES, "num_classes": 15, "conditioning": "class", "stacks": 2}],
    "pix2pix": [PAIRS, {"image_shape": (3, 32, 32), "paired": True, "lambda_l1": 10.0}],
    "cyclegan": [TWO_DOMAINS, {"image_shape": (3, 32, 32), "two_domain": True, "lambda_identity": 0.0,
                               "pool_size": 2}],
    "realnvp": [DIGITS, {**COLOUR, "levels": 3}, MOONS],
    "glow": [DIGITS, {**COLOUR, "levels": 3, "steps": 1}, MOONS, {"points": 5, "steps": 3}],
    "rbm": [{**DIGITS, "ais_temperatures": 100, "ais_runs": 8},
            {"image_shape": (1, 5, 7), "persistent": True, "k": 2, "num_chains": 4, "ais_temperatures": 50,
             "ais_runs": 4}],
    "vqvae": [{**DIGITS, "codebook_size": 16, "code_dim": 8}, {**COLOUR, "restart_dead_codes": False},
              {**DIGITS, "codebook_size": 8, "ema_decay": 0.5, "dead_code_threshold": 0.9}],  # restarts every step
    "maskgit": [TEXT, {**TEXT, "num_classes": 3, "conditioning": "class", "dropout": 0.1, "cond_dropout": 0.5},
                {**TEXT, "conditioning": "text", "text_len": 12},  # Muse: cross-attention to the caption
                # MaskGIT over a VQ-VAE's 4x4 codes: a model of images
                {"image_shape": (1, 16, 16), "num_classes": 10, "conditioning": "class", "tokenizer": ModelRef(
                    "models:/vq@champion", "vqvae", {"size": "tiny", "codebook_size": 16, "code_dim": 8},
                    DatasetInfo.for_images((1, 16, 16)).to_json())}],
    "consistency": [
        DIGITS,  # consistency training (no teacher), class-conditional
        {**COLOUR, "distance": "l2", "num_levels": 5, "steps": 4},
        # consistency distillation from a class-conditional v-prediction DDPM teacher
        {**DIGITS, "num_levels": 6, "teacher": ModelRef(
            "models:/teacher@champion", "diffusion", {"size": "tiny", "num_timesteps": 50, "prediction": "v"},
            DatasetInfo.for_images((1, 8, 8), 10).to_json())},
        # ... and an unconditional student started from an eps teacher's weights (init "teacher")
        {**DIGITS, "size": "small", "num_levels": 6, "init": "teacher", "conditioning": "none", "teacher": ModelRef(
            "models:/teacher@champion", "diffusion", {"size": "tiny", "num_timesteps": 50},
            DatasetInfo.for_images((1, 8, 8), 10).to_json())}],
    "clip": [CAPTIONED, {"image_shape": (3, 32, 32), "captions": True, "text_len": 20, "learn_temperature": False}],
    # unCLIP's prior between a CLIP and a decoder (whose own image encoder is a nested reference)
    "unclip": [{**CAPTIONED, "text_len": 20, "clip": CLIP_REF, "decoder": DECODER_REF, "num_timesteps": 40,
                "prior_steps": 3},
               {**CAPTIONED, "text_len": 32, "clip": CLIP_REF, "decoder": DECODER_REF, "p_uncond": 0.5,
                "prior_guidance_scale": 2.0, "decoder_steps": 2, "guidance_scale": 3.0}],
}
# Families that model images of any size (no stride-2 stack): only a wrong channel count is refused.
ANY_SIZE = {"pixelcnn", "rbm"}
# Translation families with no noise (a translation is the same for every seed), and embedders.
DETERMINISTIC = {"cyclegan", "clip"}
# They describe the data, which the builder gets as a DatasetInfo.
DATA_KEYS = ("image_shape", "num_classes", "paired", "two_domain", "tokens", "audio", "points", "captions")


PARAMS = [
    pytest.param(name, {"size": "tiny", **kw}, id=f"{name}-{i}")
    for name in FAMILIES
    for i, kw in enumerate(CASES.get(name, []))
]


def data_of(kwargs: dict) -> DatasetInfo:
    if "tokens" in kwargs:
        seq_len, vocab_size = kwargs["tokens"]
        vocab = tuple(chr(0x100 + i) for i in range(vocab_size))
        columns = ("tokens", "label") if kwargs.get("num_classes") else ("tokens",)
        return DatasetInfo("tokens", (seq_len,), 64, kwargs.get("num_classes", 0), vocab, columns)
    if "audio" in kwargs:
        length, rate = kwargs["audio"]
        columns = ("waveform", "sample_rate") + (("label",) if kwargs.get("num_classes") else ())
        return DatasetInfo("audio", (length,), 64, kwargs.get("num_classes", 0), None, columns, sample_rate=rate)
    if "points" in kwargs:
        return DatasetInfo("points", (kwargs["points"],), 64, 0, None, ("point",))
    if kwargs.get("paired"):
        c, h, w = kwargs["image_shape"]
        columns = ("image", "image_paired") + (("label",) if kwargs.get("num_classes") else ())
        return DatasetInfo("paired_image", (h, w, c), 64, kwargs.get("num_classes", 0), None, columns)
    if kwargs.get("two_domain"):
        c, h, w = kwargs["image_shape"]
        return DatasetInfo("two_domain_image", (h, w, c), 64, 0, None, ("image", "domain"))
    info = DatasetInfo.for_images(kwargs["image_shape"], kwargs.get("num_classes", 0))
    return replace(info, columns=info.columns + ("caption",)) if kwargs.get("captions") else info


def sample_shape(kwargs: dict, model=None) -> tuple[int, ...]:
    """One example's shape as `sample` returns it: (C, H, W) images, (T,) token ids or samples;
    an embedder's (D,) embedding."""
    if model is not None and "embed" in model.capabilities:
        return (model.embed_dim,)
    if "points" in kwargs:
        return (kwargs["points"],)
    for key in ("tokens", "audio"):
        if key in kwargs:
            return (kwargs[key][0],)
    return tuple(kwargs["image_shape"])


# Each family's first case: data of the kind it trains on.
NATIVE = {name: data_of(CASES[name][0]) for name in CASES}


def build(name: str, kwargs: dict, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(name, {k: v for k, v in kwargs.items() if k not in DATA_KEYS}, data_of(kwargs))


def engine(model) -> Engine:
    return Engine(model, defaults=OptimDefaults(lr=0.1), settings=StepSettings(max_steps=10, grad_clip=None))


def backprop_phases(model):
    """Each backprop phase the recipe runs in its first steps, once."""
    seen = {}
    for step in range(32):
        for phase in model.recipe.phases_at(step):
            seen.setdefault(phase.name, phase)
    return [p for p in seen.values() if p.backprop]


def make_batch(kwargs: dict, n: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if "tokens" in kwargs:
        seq_len, vocab_size = kwargs["tokens"]
        batch = {"x": torch.randint(vocab_size, (n, seq_len), generator=g)}
    elif "audio" in kwargs:
        batch = {"x": torch.rand(n, kwargs["audio"][0], generator=g) * 2 - 1}
    elif "points" in kwargs:  # unbounded, like real 2-D toys
        batch = {"x": torch.randn(n, kwargs["points"], generator=g)}
    else:
        batch = {"x": torch.rand(n, *kwargs["image_shape"], generator=g) * 2 - 1}
    if kwargs.get("paired"):
        batch["x_paired"] = torch.rand(n, *kwargs["image_shape"], generator=g) * 2 - 1
    if kwargs.get("two_domain"):  # a mix of both domains, as a shuffled two_domain_image batch
        batch["domain"] = torch.arange(n) % 2
    if kwargs.get("num_classes", 0) > 0:
        batch["y"] = torch.randint(kwargs["num_classes"], (n,), generator=g)
    if kwargs.get("conditioning") == "text" or kwargs.get("captions"):  # byte tokens, zero-padded like encode_captions
        batch["text"] = torch.randint(1, 257, (n, kwargs["text_len"]), generator=g)
        batch["text"][:, kwargs["text_len"] // 2 :] = 0
    return batch


def draw(model, kwargs: dict, n: int, generator: torch.Generator) -> torch.Tensor:
    """What a model makes from a seed: n samples, or for a translation model, which needs an input,
    the translations of an example batch's n inputs (routed on capabilities, as the pipelines do);
    an embedder's output is the embeddings of an example batch's n images."""
    if "translate" in model.capabilities:
        return model.translate(make_batch(kwargs, n=n)["x"], generator=generator)
    if "embed" in model.capabilities:
        return model.embed_images(make_batch(kwargs, n=n)["x"])
    return model.sample(n, generator=generator)


def config_model(builder) -> type[pydantic.BaseModel]:
    """What the pipeline does with a builder: its user-facing arguments become a strict config."""
    sig = inspect.signature(builder)
    fields = {name: (p.annotation, p.default) for name, p in sig.parameters.items() if name != "data"}
    return pydantic.create_model(f"{builder.__name__}_config", __config__=pydantic.ConfigDict(extra="forbid"),
                                 **fields)


def test_every_family_has_a_case():
    missing = sorted(set(FAMILIES) - set(CASES))
    assert not missing, f"add test kwargs for {missing} to CASES in {__file__}"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_builder_signature_is_a_config(name):
    builder = FAMILIES[name]
    params = inspect.signature(builder).parameters
    # The data arrive described (kind, shape, classes), never as loose image_shape/num_classes.
    assert typing.get_type_hints(builder)["data"] is DatasetInfo
    assert "image_shape" not in params and "num_classes" not in params
    assert "size" in params and params["size"].default == "small"
    for pname, p in params.items():
        assert p.kind is inspect.Parameter.KEYWORD_ONLY, f"{name}: {pname} must be keyword-only"
        assert p.annotation is not inspect.Parameter.empty, f"{name}: {pname} needs a type annotation"
        # pipelines/config.py reads annotations as objects (no eval_str), so a model file must
        # not use `from __future__ import annotations`.
        assert not isinstance(p.annotation, str), f"{name}: {pname}'s annotation is a string"
        if pname != "data":
            assert p.default is not inspect.Parameter.empty, f"{name}: {pname} needs a default"

    Config = config_model(builder)
    defaults = Config()  # every default passes its own annotation
    with pytest.raises(pydantic.ValidationError):
        Config(no_such_option=1)
    with pytest.raises(pydantic.ValidationError):
        Config(size="enormous")
    # The pipeline's path: validated config + data arguments -> a model (with untrained stand-ins
    # for the trained models a family cannot do without).
    model = build_model(name, {**defaults.model_dump(), **example_args(name)}, NATIVE[name])
    assert isinstance(model, GenerativeModel)


IMAGE_FAMILIES = sorted(n for n in FAMILIES if n in CASES and NATIVE[n].kind.is_image)


@pytest.mark.parametrize("name, image_shape", [
    (name, shape) for name in IMAGE_FAMILIES for shape in [(1, 12, 12), (1, 4, 4), (3, 32, 24)]
    if not (name in ANY_SIZE and shape[0] == 1)])  # grey images of any size are fine for those
def test_unsupported_image_shape_is_explained(name, image_shape):
    data = data_of({"image_shape": image_shape, "paired": NATIVE[name].modality == "paired_image",
                    "two_domain": NATIVE[name].modality == "two_domain_image",
                    "captions": "caption" in NATIVE[name].columns})
    with pytest.raises(ValueError, match="image"):
        FAMILIES[name](data=data, size="tiny")


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_data_of_another_kind_are_explained(name):
    """Every family names the kind of data it trains on when handed another kind."""
    if NATIVE[name].modality == "image":
        other = DatasetInfo("tokens", (16,), 10, 0, ("a", "b"), ("tokens",))
    else:  # token, audio and paired-image families: plain images, the likeliest mix-up
        other = DatasetInfo.for_images((1, 8, 8), 10)
    wanted = NATIVE[name].modality
    with pytest.raises(ValueError, match=wanted):
        FAMILIES[name](data=other, size="tiny")


@pytest.mark.parametrize("name, kwargs", PARAMS)
def test_protocol(name, kwargs):
    model = build(name, kwargs)
    assert isinstance(model, GenerativeModel)
    assert model.capabilities <= CAPABILITIES
    assert {"sample", "translate", "embed"} & model.capabilities, "a model draws samples, translates or embeds"
    assert model.conditioning in ("none", "class", "text")
    assert (model.conditioning != "none") == ("condition" in model.capabilities)
    assert (model.conditioning == "class") == (model.num_classes > 0)
    for method in ("configure_optimizers", "phases_at", "loss", "update", "data_init", "after_step", "state_dict",
                   "load_state_dict"):
        assert callable(getattr(model.recipe, method)), f"{name}'s recipe lacks {method}"
    # The sampling settings are a strict pydantic model whose defaults validate.
    settings = model.sampling_settings()
    assert issubclass(model.sampling_settings, pydantic.BaseModel)
    with pytest.raises(pydantic.ValidationError):
        model.sampling_settings(no_such_setting=1)
    assert model.sampling_cost(settings) >= 1
    grids = model.eval_samples(4, generator_seed=0, batch=make_batch(kwargs))
    assert all(g.shape == (4, *sample_shape(kwargs)) for g in grids.values())
    assert grids or not {"sample", "translate"} & model.capabilities, "a generator logs what it makes"

@pytest.mark.parametrize("name, kwargs", PARAMS)
def test_every_phase_gives_every_parameter_a_gradient(name, kwargs):
    model = build(name, kwargs)
    batch = make_batch(kwargs)
    optimizers = model.recipe.configure_optimizers(model, OptimDefaults())
    seen_keys: set[str] = set()
    for phase in backprop_phases(model):
        model.zero_grad(set_to_none=True)
        loss, logs = model.recipe.loss(model, batch, phase, 0)
        # The engine averages logs by key over a step's phases: a key must belong to one phase.
        assert not seen_keys & set(logs), f"{phase}: log keys {seen_keys & set(logs)} repeat another phase's"
        seen_keys |= set(logs)
        assert loss.ndim == 0 and torch.isfinite(loss), f"{phase}: loss {loss}"
        for key, value in logs.items():
            assert isinstance(value, torch.Tensor) and value.ndim == 0, f"{phase}: log {key} must be a 0-dim tensor"
            assert not value.requires_grad, f"{phase}: log {key} must be detached"
            assert torch.isfinite(value), f"{phase}: log {key} = {value}"
        loss.backward()
        stepped = optimizer_parameters(optimizers[phase.optimizer])
        for pname, p in model.named_parameters():
            if any(p is q for q in stepped) and phase.name != "disc_reg":
                assert p.grad is not None, f"{phase.name}: no gradient reaches {pname}"
            if p.grad is not None:
                assert torch.isfinite(p.grad).all(), f"{phase.name}: non-finite gradient in {pname}"

    # Every trainable parameter belongs to exactly one optimizer.
    owners = [{id(p) for p in optimizer_parameters(o)} for o in optimizers.values()]
    assert sum(len(o) for o in owners) == len(set().union(*owners)), "optimizers share parameters"
    assert set().union(*owners) == {id(p) for p in model.parameters() if p.requires_grad}


@pytest.mark.parametrize("name, kwargs", PARAMS)
def test_sample_shape_range_and_seed(name, kwargs):
    model = build(name, kwargs)
    n = 6
    a = draw(model, kwargs, n, torch.Generator().manual_seed(1))
    b = draw(model, kwargs, n, torch.Generator().manual_seed(1))
    c = draw(model, kwargs, n, torch.Generator().manual_seed(2))
    assert a.shape == (n, *sample_shape(kwargs, model))
    if "tokens" in kwargs:  # token ids into the vocabulary
        assert a.dtype == torch.int64 and a.min() >= 0 and a.max() < kwargs["tokens"][1]
    else:
        assert a.dtype == torch.float32 and torch.isfinite(a).all()
        if "points" not in kwargs:  # points live on the real line
            assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b), "same seed must give the same samples"
    if name in DETERMINISTIC:
        assert torch.equal(a, c), "a translation without noise must not depend on the seed"
    else:
        assert not torch.allclose(a, c), "different seeds must give different samples"


@pytest.mark.parametrize("name, kwargs", PARAMS)
def test_state_round_trip_through_safetensors(name, kwargs, tmp_path):
    model = build(name, kwargs, seed=0)
    # A real engine step (data-dependent init, every phase), so weights and buffers (BatchNorm
    # statistics, schedule steps, latent scales) differ from a fresh model's.
    e = engine(model)
    e.initialize(make_batch(kwargs))
    for _ in range(3):
        e.train_step(make_batch(kwargs))
    model.eval()
    save_file(model.state_dict(), tmp_path / "model.safetensors")

    fresh = build(name, kwargs, seed=1)
    fresh.load_state_dict(load_file(tmp_path / "model.safetensors"))
    fresh.eval()
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    assert torch.equal(draw(model, kwargs, 4, gen()), draw(fresh, kwargs, 4, gen()))
    batch = make_batch(kwargs, seed=3)
    assert torch.equal(model.evaluate(batch, generator=gen())["loss"], fresh.evaluate(batch, generator=gen())["loss"])


@pytest.mark.parametrize("name, kwargs", PARAMS)
def test_evaluate(name, kwargs):
    model = build(name, kwargs)
    scores = model.evaluate(make_batch(kwargs), generator=torch.Generator().manual_seed(0))
    assert "loss" in scores
    for key, value in scores.items():
        assert isinstance(value, torch.Tensor) and value.ndim == 0 and torch.isfinite(value), f"{key} = {value}"


@pytest.mark.parametrize("name, kwargs", PARAMS)
def test_declared_capabilities_work(name, kwargs):
    model = build(name, kwargs)
    batch = make_batch(kwargs, n=4)
    x = batch["x"]
    if "encode" in model.capabilities:
        z = model.encode(x)
        assert z.shape[0] == 4
        if "decode" in model.capabilities:
            x_hat = model.decode(z)
            assert x_hat.shape == x.shape
            assert "points" in kwargs or (x_hat.min() >= -1 and x_hat.max() <= 1)  # points are unbounded
    if "log_prob" in model.capabilities:
        lp = model.log_prob(x)
        assert lp.shape == (4,) and torch.isfinite(lp).all()
    if "condition" in model.capabilities:
        # Class labels as y=..., or for a text-conditional model a prompt per sample.
        if model.conditioning == "class":
            cond = {"y": torch.arange(4) % kwargs["num_classes"]}
        else:
            cond = {"prompt": ["a small red heart", "a large blue square", "", "x"]}
        assert model.sample(4, generator=torch.Generator().manual_seed(0), **cond).shape == x.shape
    if "translate" in model.capabilities:
        for way in [{}] + [{"direction": d} for d in model.directions]:  # every direction a model names
            x_hat = model.translate(x, generator=torch.Generator().manual_seed(0), **way)
            assert x_hat.shape == batch.get("x_paired", x).shape and x_hat.min() >= -1 and x_hat.max() <= 1
    if "variations" in model.capabilities:  # unCLIP: images decoded from each input's CLIP embedding
        v = model.variations(x, 2, generator=torch.Generator().manual_seed(0))
        assert v.shape == (8, *x.shape[1:]) and v.min() >= -1 and v.max() <= 1
        assert torch.equal(v, model.variations(x, 2, generator=torch.Generator().manual_seed(0)))
    if "style_mix" in model.capabilities:
        gen = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731
        mixed = model.style_mix(4, generator_a=gen(0), generator_b=gen(1), crossover=1)
        assert mixed.shape == x.shape and mixed.min() >= -1 and mixed.max() <= 1
