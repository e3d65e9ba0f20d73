"""The test every family passes: a config-shaped builder, a loss and gradients for every phase,
samples in range and reproducible by seed, a state round trip through safetensors.

A new family adds its entry to CASES (builder kwargs for a couple of data shapes; `size` is
"tiny" unless a case says otherwise) and, if its batches aren't images, to make_batch.
"""
import inspect

import pydantic
import pytest
import torch
from safetensors.torch import load_file, save_file

from components.models import FAMILIES
from components.models.protocol import CAPABILITIES, GenerativeModel

DIGITS = {"image_shape": (1, 8, 8), "num_classes": 10}  # sklearn's 8x8 digits
COLOUR = {"image_shape": (3, 32, 32)}  # CIFAR-shaped, unlabelled
FAST_DIFFUSION = {"num_timesteps": 50, "num_inference_steps": 4, "vlb_timesteps": 3}

CASES = {
    "vae": [DIGITS, COLOUR, {**DIGITS, "decoder_sigma": 0.1}],
    "beta_vae": [DIGITS, COLOUR, {**DIGITS, "capacity_max": 5.0, "capacity_steps": 10},
                 {**COLOUR, "latent_channels": 4, "latent_downsample": 2}],
    "dcgan": [DIGITS, COLOUR, {**DIGITS, "conditional": True}],
    "diffusion": [
        {**DIGITS, **FAST_DIFFUSION},  # class-conditional with guidance
        {**COLOUR, **FAST_DIFFUSION, "prediction": "v", "schedule": "sigmoid", "min_snr_gamma": 5.0},
        {**DIGITS, "conditioning": "none", "num_timesteps": 8, "sampler": "ddpm", "prediction": "v",
         "schedule": "linear", "zero_terminal_snr": True},
        {**COLOUR, **FAST_DIFFUSION, "conditioning": "text", "text_len": 12, "guidance_scale": 2.0},
        {**COLOUR, **FAST_DIFFUSION, "latent_scale": 0.5, "autoencoder_model": {
            "family": "beta_vae", "args": {"size": "tiny", "latent_channels": 4, "latent_downsample": 2},
            "data_args": {"image_shape": [3, 32, 32], "num_classes": 0}}},
    ],
}
DATA_ARGS = ("image_shape", "num_classes", "autoencoder_model", "latent_scale")  # derived by the pipeline


PARAMS = [
    pytest.param(name, {"size": "tiny", **kw}, id=f"{name}-{i}")
    for name in FAMILIES
    for i, kw in enumerate(CASES.get(name, []))
]


def build(name: str, kwargs: dict, seed: int = 0):
    torch.manual_seed(seed)
    return FAMILIES[name](**kwargs)


def make_batch(kwargs: dict, n: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {"x": torch.rand(n, *kwargs["image_shape"], generator=g) * 2 - 1}
    if kwargs.get("num_classes", 0) > 0:
        batch["y"] = torch.randint(kwargs["num_classes"], (n,), generator=g)
    if kwargs.get("conditioning") == "text":  # byte tokens, zero-padded like encode_captions
        batch["text"] = torch.randint(1, 257, (n, kwargs["text_len"]), generator=g)
        batch["text"][:, kwargs["text_len"] // 2 :] = 0
    return batch


def config_model(builder) -> type[pydantic.BaseModel]:
    """What the pipeline does with a builder: its user-facing arguments become a strict config."""
    sig = inspect.signature(builder)
    fields = {name: (p.annotation, p.default) for name, p in sig.parameters.items() if name not in DATA_ARGS}
    return pydantic.create_model(f"{builder.__name__}_config", __config__=pydantic.ConfigDict(extra="forbid"),
                                 **fields)


def grad_params(model, phase):
    return [p for p in model.parameters_for(phase) if p.requires_grad]


def test_every_family_has_a_case():
    missing = sorted(set(FAMILIES) - set(CASES))
    assert not missing, f"add test kwargs for {missing} to CASES in {__file__}"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_builder_signature_is_a_config(name):
    builder = FAMILIES[name]
    params = inspect.signature(builder).parameters
    assert "image_shape" in params and "num_classes" in params
    assert params["num_classes"].default == 0
    assert "size" in params and params["size"].default == "small"
    for pname, p in params.items():
        assert p.kind is inspect.Parameter.KEYWORD_ONLY, f"{name}: {pname} must be keyword-only"
        assert p.annotation is not inspect.Parameter.empty, f"{name}: {pname} needs a type annotation"
        # pipelines/config.py reads annotations as objects (no eval_str), so a model file must
        # not use `from __future__ import annotations`.
        assert not isinstance(p.annotation, str), f"{name}: {pname}'s annotation is a string"
        if pname != "image_shape":
            assert p.default is not inspect.Parameter.empty, f"{name}: {pname} needs a default"

    Config = config_model(builder)
    defaults = Config()  # every default passes its own annotation
    with pytest.raises(pydantic.ValidationError):
        Config(no_such_option=1)
    with pytest.raises(pydantic.ValidationError):
        Config(size="enormous")
    # The pipeline's path: validated config + data arguments -> a model.
    model = builder(image_shape=(1, 8, 8), num_classes=10, **{**defaults.model_dump(), "size": "tiny"})
    assert isinstance(model, GenerativeModel)


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("image_shape", [(1, 12, 12), (1, 4, 4), (3, 32, 24), (32, 32)])
def test_unsupported_image_shape_is_explained(name, image_shape):
    with pytest.raises(ValueError, match="image"):
        FAMILIES[name](image_shape=image_shape, size="tiny")


@pytest.mark.parametrize("name, kwargs", PARAMS)
def test_protocol(name, kwargs):
    model = build(name, kwargs)
    assert isinstance(model, GenerativeModel)
    assert isinstance(model.phases, tuple) and model.phases
    assert model.capabilities <= CAPABILITIES
    assert "sample" in model.capabilities


@pytest.mark.parametrize("name, kwargs", PARAMS)
def test_every_phase_gives_every_parameter_a_gradient(name, kwargs):
    model = build(name, kwargs)
    batch = make_batch(kwargs)
    seen_keys: set[str] = set()
    for phase in model.phases:
        model.zero_grad(set_to_none=True)
        loss, logs = model(batch, phase)
        # pipelines/train.py sums logs by key over a step's phases: a key must belong to one phase.
        assert not seen_keys & set(logs), f"{phase}: log keys {seen_keys & set(logs)} repeat another phase's"
        seen_keys |= set(logs)
        assert loss.ndim == 0 and torch.isfinite(loss), f"{phase}: loss {loss}"
        for key, value in logs.items():
            assert isinstance(value, torch.Tensor) and value.ndim == 0, f"{phase}: log {key} must be a 0-dim tensor"
            assert not value.requires_grad, f"{phase}: log {key} must be detached"
            assert torch.isfinite(value), f"{phase}: log {key} = {value}"
        loss.backward()
        for pname, p in model.named_parameters():
            if any(p is q for q in grad_params(model, phase)):
                assert p.grad is not None, f"{phase}: no gradient reaches {pname}"
                assert torch.isfinite(p.grad).all(), f"{phase}: non-finite gradient in {pname}"

    # Every trainable parameter belongs to exactly one phase's optimizer.
    owners = [{id(p) for p in grad_params(model, phase)} for phase in model.phases]
    assert sum(len(o) for o in owners) == len(set().union(*owners)), "phases share parameters"
    assert set().union(*owners) == {id(p) for p in model.parameters() if p.requires_grad}


@pytest.mark.parametrize("name, kwargs", PARAMS)
def test_sample_shape_range_and_seed(name, kwargs):
    model = build(name, kwargs)
    n = 6
    a = model.sample(n, generator=torch.Generator().manual_seed(1))
    b = model.sample(n, generator=torch.Generator().manual_seed(1))
    c = model.sample(n, generator=torch.Generator().manual_seed(2))
    assert a.shape == (n, *kwargs["image_shape"])
    assert a.dtype == torch.float32 and torch.isfinite(a).all()
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b), "same seed must give the same samples"
    assert not torch.allclose(a, c), "different seeds must give different samples"


@pytest.mark.parametrize("name, kwargs", PARAMS)
def test_state_round_trip_through_safetensors(name, kwargs, tmp_path):
    model = build(name, kwargs, seed=0)
    # One step of every phase, so weights and buffers (BatchNorm statistics, schedule steps)
    # differ from a fresh model's.
    if hasattr(model, "set_step"):
        model.set_step(3)
    for phase in model.phases:
        opt = torch.optim.SGD(model.parameters_for(phase), lr=0.1)
        opt.zero_grad()
        model(make_batch(kwargs), phase)[0].backward()
        opt.step()
    model.eval()
    save_file(model.state_dict(), tmp_path / "model.safetensors")

    fresh = build(name, kwargs, seed=1)
    fresh.load_state_dict(load_file(tmp_path / "model.safetensors"))
    fresh.eval()
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    assert torch.equal(model.sample(4, generator=gen()), fresh.sample(4, generator=gen()))
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
            assert x_hat.shape == x.shape and x_hat.min() >= -1 and x_hat.max() <= 1
    if "log_prob" in model.capabilities:
        lp = model.log_prob(x)
        assert lp.shape == (4,) and torch.isfinite(lp).all()
    if "condition" in model.capabilities:
        # Class labels as y=..., or for a text-conditional model a prompt per sample.
        if kwargs.get("num_classes", 0) > 0:
            cond = {"y": torch.arange(4) % kwargs["num_classes"]}
        else:
            cond = {"prompt": ["a small red heart", "a large blue square", "", "x"]}
        assert model.sample(4, generator=torch.Generator().manual_seed(0), **cond).shape == x.shape
