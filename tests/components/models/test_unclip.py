"""unCLIP (Ramesh et al. 2022) from genray's parts: the decoder (a diffusion model conditioned on a
frozen CLIP's image embedding) and the unclip family (the diffusion prior in front of it).
Fixed seeds; the prior's loss against its formula; the decoder's null condition; guidance;
variations; nested model references; what a user gets wrong."""
import math
from dataclasses import replace

import pydantic
import pytest
import torch
from safetensors.torch import save

from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.models import build, materialize
from genray.components.models.refs import ModelRef
from genray.components.samplers import guidance

CAPTIONED = DatasetInfo("image", (8, 8, 1), 64, 10, None, ("image", "label", "caption"))
CLIP_REF = ModelRef("models:/clip@champion", "clip", {"size": "tiny", "text_len": 20}, CAPTIONED.to_json())
DECODER_ARGS = {"size": "tiny", "conditioning": "image_embedding", "num_timesteps": 40, "num_inference_steps": 3,
                "vlb_timesteps": 2}
DECODER_REF = ModelRef("models:/decoder@champion", "diffusion", {**DECODER_ARGS, "image_encoder": CLIP_REF.to_json()},
                       DatasetInfo.for_images((1, 8, 8)).to_json())
UNCLIP_ARGS = {"size": "tiny", "clip": CLIP_REF, "decoder": DECODER_REF, "text_len": 20, "num_timesteps": 30,
               "prior_steps": 3}


def unclip(seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build("unclip", {**UNCLIP_ARGS, **kw}, CAPTIONED).eval()


def decoder(seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build("diffusion", {**DECODER_ARGS, "image_encoder": CLIP_REF, **kw}, DatasetInfo.for_images((1, 8, 8)))


def jolt(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every weight: a fresh UNet's zero-initialised output layers ignore its condition."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.data.add_(0.05 * torch.randn(p.shape, generator=g))
    return module


def batch(n: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, 257, (n, 20), generator=g)
    text[:, 12:] = 0
    return {"x": torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, "text": text}


# ----------------------------------------------------------------------------- the prior


def test_prior_targets_are_clip_image_embeddings_scaled_to_unit_variance():
    model = unclip()
    x = batch()["x"]
    e = model.image_embeddings(x)
    assert torch.equal(e, model.decoder.image_encoder.clip.embed_images(x))  # the decoder's own CLIP
    assert torch.allclose(e.norm(dim=1), torch.ones(len(x)), atol=1e-5)
    # Ramesh et al. 2022, §2.2: scaled by sqrt(D), each dimension has mean square 1.
    assert float((e * math.sqrt(model.embed_dim)).pow(2).mean()) == pytest.approx(1.0, abs=1e-5)


def test_prior_loss_is_the_x0_mse_of_its_formula():
    """|| f(z_t, t, y) - z ||^2 averaged over the D dimensions, z_t = sqrt(ab_t) z + sqrt(1 - ab_t) eps,
    on the cosine schedule; forward draws t then eps from the global RNG."""
    model = unclip(p_uncond=0.0).train()
    b = batch()
    torch.manual_seed(5)
    loss, logs = model(b, "main")
    assert logs == {}

    torch.manual_seed(5)
    n, T = len(b["x"]), model.schedule.num_timesteps
    t = torch.randint(0, T, (n,))
    eps = torch.randn(n, model.embed_dim)
    z = model.image_embeddings(b["x"]) * math.sqrt(model.embed_dim)
    ab = model.schedule.alphas_cumprod[t].float()[:, None]  # (B, 1)
    z_t = ab.sqrt() * z + (1 - ab).sqrt() * eps
    cond = model.text_condition(b["text"])
    expected = (model.prior(z_t, t, **cond) - z).pow(2).mean(dim=1)  # (B,)
    assert torch.allclose(loss, expected.mean(), atol=1e-6)

    per_example, x0_hat = model.prior_loss(z, cond, t=t, noise=eps)
    assert torch.allclose(per_example, expected, atol=1e-6)
    assert x0_hat.shape == (n, model.embed_dim)
    # The cosine schedule (Nichol & Dhariwal 2021, eq. 17) with T = 30.
    s = 0.008
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    assert float(model.schedule.alphas_cumprod[9]) == pytest.approx(f(10 / 30) / f(0), rel=1e-6)


def test_the_empty_caption_is_the_null_condition_and_captions_are_dropped_with_p_uncond():
    model = unclip()
    b = batch(4)
    null = model.text_condition(torch.zeros_like(b["text"]))
    assert not null["text_mask"].any() and not null["text_emb"].any() and not null["text_tokens"].any()
    cond = model.text_condition(b["text"])
    assert cond["text_mask"].sum(1).tolist() == [12] * 4
    # The CLIP's embedding of the caption, scaled by sqrt(D_text).
    d = model.clip.embed_dim
    assert torch.allclose(cond["text_emb"], model.clip.embed_text(b["text"]) * math.sqrt(d), atol=1e-5)

    # p_uncond = 1: every caption dropped, so the loss is the null condition's at the same draws.
    dropped, blank = unclip(p_uncond=1.0).train(), unclip(p_uncond=0.0).train()  # the same weights
    torch.manual_seed(3)
    loss, _ = dropped(b, "main")
    torch.manual_seed(3)
    torch.rand(4)  # the dropout draw
    loss_null, _ = blank({**b, "text": torch.zeros_like(b["text"])}, "main")
    assert torch.allclose(loss, loss_null, atol=1e-6)


def test_prior_guidance_is_uncond_plus_s_times_cond_minus_uncond():
    model = unclip()
    b = batch(3)
    g = torch.Generator().manual_seed(0)
    x_t, t = torch.randn(3, model.embed_dim, generator=g), torch.tensor([3, 17, 29])
    cond, null = model.text_condition(b["text"]), model.text_condition(torch.zeros_like(b["text"]))
    out_c, out_u = model.prior(x_t, t, **cond), model.prior(x_t, t, **null)
    guided = guidance.guided_denoiser(model.prior, cond, null, 2.5)(x_t, t)
    assert torch.allclose(guided, out_u + 2.5 * (out_c - out_u), atol=1e-5)  # Ho & Salimans 2022, eq. 6


def test_only_the_prior_trains_and_the_parts_stay_frozen():
    model = unclip().train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("prior.") for n in trainable)
    assert not model.clip.training and not model.decoder.training
    # The decoder's CLIP is a reference inside the decoder reference's arguments: materialised too.
    assert type(model.decoder.image_encoder.clip).__name__ == "CLIP"
    assert any(k.startswith("decoder.image_encoder.clip.") for k in model.state_dict())


def test_nested_references_materialise_with_the_outer_weights():
    """A checkpoint stores a reference without weights; the decoder's weights (its CLIP's included,
    as a submodule) come with the decoder's reference, so the nested CLIP needs none of its own."""
    trained = decoder(seed=3)
    for p in trained.parameters():
        p.data.add_(0.01)  # not what a fresh build would draw
    weights = save({k: v.contiguous() for k, v in trained.state_dict().items()})
    ref = materialize(replace(DECODER_REF, weights=weights))
    for k, v in trained.state_dict().items():
        assert torch.equal(ref.module.state_dict()[k], v), k
    assert not any(p.requires_grad for p in ref.module.parameters())


# ----------------------------------------------------------------------------- the decoder


def test_decoder_null_condition_is_the_empty_context():
    dec = decoder().eval()
    e = dec.image_encoder(batch(3)["x"])
    null = dec.condition(3, "cpu")
    assert not null["context_mask"].any() and not null["cond_emb"].any()
    # A dropped row (keep False) is exactly the null condition.
    dropped = dec.condition(3, "cpu", image_embedding=e, keep=torch.tensor([True, False, True]))
    for k in null:
        assert torch.equal(dropped[k][1], null[k][1]), k
    assert dropped["context_mask"].tolist() == [[True] * 4, [False] * 4, [True] * 4]  # four tokens (unCLIP §2.1)
    # The null condition attends to the UNet's null token alone: the same as no context at all.
    jolt(dec.net)
    g = torch.Generator().manual_seed(0)
    x_t, t = torch.randn(3, 1, 8, 8, generator=g), torch.tensor([1, 20, 39])
    assert torch.allclose(dec.net(x_t, t, **null), dec.net(x_t, t), atol=1e-5)
    assert not torch.allclose(dec.net(x_t, t, **dec.condition(3, "cpu", image_embedding=e)), dec.net(x_t, t), atol=1e-3)
    # Sampling without an embedding samples the null condition, as guidance 0 with one does.
    a = dec.sample(3, generator=torch.Generator().manual_seed(1))
    b = dec.sample(3, generator=torch.Generator().manual_seed(1), image_embedding=e, guidance_scale=0.0)
    assert torch.equal(a, b)


def test_decoder_guidance_combines_its_conditional_and_null_outputs():
    dec = decoder().eval()
    jolt(dec.net)
    jolt(dec.image_condition, 1)
    g = torch.Generator().manual_seed(0)
    e = dec.image_encoder(batch(2)["x"])
    cond, null = dec.condition(2, "cpu", image_embedding=e), dec.condition(2, "cpu")
    x_t, t = torch.randn(2, 1, 8, 8, generator=g), torch.tensor([5, 30])
    guided = guidance.guided_denoiser(dec.net, cond, null, 3.0)(x_t, t)
    out_c, out_u = dec.net(x_t, t, **cond), dec.net(x_t, t, **null)
    assert torch.allclose(guided, out_u + 3.0 * (out_c - out_u), atol=1e-5)


def test_decoder_declares_no_protocol_condition_but_variations():
    dec = decoder()
    assert dec.conditioning == "none" and "condition" not in dec.capabilities
    assert {"sample", "variations", "log_prob"} <= dec.capabilities
    assert "guidance_scale" in dec.sampling_settings.model_fields
    grids = dec.eval_samples(4, generator_seed=0, batch=batch(3))
    assert set(grids) == {"guidance_0", "guidance_1", "guidance_3"}


# ----------------------------------------------------------------------------- sampling and variations


def test_variations_shape_order_and_seed():
    model = unclip()
    jolt(model.decoder.net)
    x = batch(2)["x"]
    gen = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    v = model.variations(x, 3, generator=gen(0))
    assert v.shape == (6, 1, 8, 8) and v.min() >= -1 and v.max() <= 1
    assert torch.equal(v, model.variations(x, 3, generator=gen(0)))
    assert not torch.equal(v, model.variations(x, 3, generator=gen(1)))
    # Image i's variations are rows 3i..3i+2: the decoder on x_i's own embedding, repeated.
    e = model.image_embeddings(x).repeat_interleave(3, dim=0)
    s = model.sampling_settings()
    same = model.decoder.sample(6, generator=gen(0), image_embedding=e, num_inference_steps=s.decoder_steps,
                                guidance_scale=s.guidance_scale, sampler="ddim")
    assert torch.equal(v, same)
    # Settings reach the decoder; the decoder's variations are the same call.
    assert torch.equal(model.variations(x, 1, generator=gen(0), decoder_steps=2),
                       model.decoder.variations(x, 1, generator=gen(0), num_inference_steps=2,
                                                guidance_scale=s.guidance_scale))


def test_sample_from_a_prompt_is_seeded_and_follows_the_prompt():
    model = unclip()
    jolt(model.decoder.net)
    gen = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a = model.sample(3, generator=gen(0), prompt="a handwritten 3")
    assert a.shape == (3, 1, 8, 8) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, model.sample(3, generator=gen(0), prompt="a handwritten 3"))
    assert not torch.equal(a, model.sample(3, generator=gen(0), prompt="a handwritten 5"))
    # The empty prompt is the unconditional model, as no prompt is.
    assert torch.equal(model.sample(2, generator=gen(0), prompt=""), model.sample(2, generator=gen(0)))
    # The text -> embedding -> decoder chain, drawn in that order from one generator.
    g = gen(4)
    e = model.sample_embeddings(model.prompt_tokens("a handwritten 3", 2), generator=g, prior_steps=3,
                                prior_guidance_scale=1.0)
    assert torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-5)
    x = model.decoder.sample(2, generator=g, image_embedding=e, num_inference_steps=3, guidance_scale=1.0,
                             sampler="ddim")
    assert torch.equal(x, model.sample(2, generator=gen(4), prompt="a handwritten 3", prior_steps=3,
                                       prior_guidance_scale=1.0, decoder_steps=3, guidance_scale=1.0))


def test_settings_cost_and_defaults():
    model = unclip(decoder_steps=2, guidance_scale=4.0, prior_guidance_scale=1.5)
    s = model.sampling_settings()
    assert (s.prior_steps, s.prior_guidance_scale, s.decoder_steps, s.guidance_scale) == (3, 1.5, 2, 4.0)
    assert model.sampling_cost(s) == 5
    # Left unset, the decoder's own defaults (its num_inference_steps, guidance_scale).
    plain = unclip().sampling_settings()
    assert (plain.decoder_steps, plain.guidance_scale) == (3, 1.0)
    with pytest.raises(pydantic.ValidationError, match="prior_steps"):
        model.sampling_settings(prior_steps=31)  # more than the prior's T = 30
    with pytest.raises(pydantic.ValidationError, match="decoder_steps"):
        model.sampling_settings(decoder_steps=41)


def test_evaluate_reports_the_prior_loss_and_cosines():
    model = unclip()
    scores = model.evaluate(batch(), generator=torch.Generator().manual_seed(0))
    assert set(scores) == {"loss", "cosine", "sample_cosine"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in scores.values())
    assert -1 <= float(scores["cosine"]) <= 1 and -1 <= float(scores["sample_cosine"]) <= 1
    again = model.evaluate(batch(), generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(scores[k], again[k]) for k in scores)
    grids = model.eval_samples(4, generator_seed=0, batch=batch(3))
    assert list(grids) == [""] and grids[""].shape == (4, 1, 8, 8)


# ----------------------------------------------------------------------------- what a user gets wrong


def test_bad_inputs_are_user_errors():
    model = unclip()
    with pytest.raises(UserError, match=r"prompt\[0\]: 21 bytes.*at most 20"):
        model.sample(1, prompt="a" * 21)
    with pytest.raises(UserError, match="prompt: give one prompt, or one per sample"):
        model.sample(3, prompt=["a", "b"])
    with pytest.raises(UserError, match=r"prompt\[1\]: a prompt must be a string"):
        model.sample(2, prompt=["a", 3])
    with pytest.raises(UserError, match=r"x: images of shape \(B, 1, 8, 8\)"):
        model.variations(torch.zeros(2, 3, 8, 8))
    with pytest.raises(UserError, match=r"x: images of shape"):
        model.variations(torch.zeros(1, 8, 8))
    with pytest.raises(UserError, match="in \\[-1, 1\\]"):
        model.variations(torch.full((1, 1, 8, 8), 2.0))
    with pytest.raises(UserError, match="n_per_image"):
        model.variations(torch.zeros(1, 1, 8, 8), 0)
    with pytest.raises(pydantic.ValidationError):
        model.variations(torch.zeros(1, 1, 8, 8), no_such_setting=1)
    with pytest.raises(UserError, match=r"image_embedding: .*\(2, 64\)"):
        model.decoder.sample(2, image_embedding=torch.ones(2, 63))
    with pytest.raises(UserError, match="image_embedding: this diffusion model was not built"):
        build("diffusion", {"size": "tiny", "num_timesteps": 10}, DatasetInfo.for_images((1, 8, 8))).sample(
            1, image_embedding=torch.ones(1, 64))


def test_builder_names_what_is_missing_or_wrong():
    data = DatasetInfo.for_images((1, 8, 8))
    with pytest.raises(UserError, match="model.clip is required"):
        build("unclip", {"size": "tiny", "decoder": DECODER_REF}, CAPTIONED)
    with pytest.raises(UserError, match="model.decoder is required"):
        build("unclip", {"size": "tiny", "clip": CLIP_REF}, CAPTIONED)
    with pytest.raises(UserError, match="no caption column"):
        build("unclip", UNCLIP_ARGS, data)
    with pytest.raises(UserError, match="model.clip .* is a diffusion"):
        build("unclip", {**UNCLIP_ARGS, "clip": DECODER_REF}, CAPTIONED)
    plain = ModelRef("models:/ddpm@champion", "diffusion", {"size": "tiny", "num_timesteps": 10}, data.to_json())
    with pytest.raises(UserError, match="without an image encoder"):
        build("unclip", {**UNCLIP_ARGS, "decoder": plain}, CAPTIONED)
    with pytest.raises(UserError, match="decoder_steps 41 exceeds"):
        build("unclip", {**UNCLIP_ARGS, "decoder_steps": 41}, CAPTIONED)
    # The decoder's own checks.
    with pytest.raises(UserError, match="needs model.image_encoder"):
        build("diffusion", {"size": "tiny", "conditioning": "image_embedding"}, data)
    with pytest.raises(UserError, match="needs model.conditioning: image_embedding"):
        build("diffusion", {"size": "tiny", "image_encoder": CLIP_REF}, data)
    with pytest.raises(UserError, match="embeds images"):
        build("diffusion", {**DECODER_ARGS, "image_encoder": CLIP_REF}, DatasetInfo.for_images((1, 16, 16)))
