"""MaskGIT: the cosine schedule and the masking against the paper's formulas, the loss against a
hand computation over the masked positions only, iterative decoding against its schedule (masked
counts per step, known tokens fixed), seeds and batch independence, classifier-free guidance, the
typed settings, the VQ-VAE prior, a short training run that memorises its data, and Muse-style text
conditioning (cross-attention, the empty caption as null text, prompts)."""
import math

import pydantic
import pytest
import torch
import torch.nn.functional as F

from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.models import build as build_model
from genray.components.models.layers import StackedGenerators
from genray.components.models.maskgit import (build_maskgit, cosine_schedule, guided_logits, mask_count,
                                               masked_counts, random_mask)
from genray.components.models.protocol import CAPABILITIES, GenerativeModel
from genray.components.models.refs import ModelRef
from genray.components.models.text_encoder import encode_text
from genray.components.training import OptimDefaults

VOCAB = tuple("abcdefghijklmnop")  # 16 tokens


def tokens_data(seq_len: int = 16, num_classes: int = 0) -> DatasetInfo:
    columns = ("tokens", "label") if num_classes else ("tokens",)
    return DatasetInfo("tokens", (seq_len,), 100, num_classes, VOCAB, columns)


def tiny_maskgit(seed: int = 0, seq_len: int = 16, num_classes: int = 0, **kw):
    torch.manual_seed(seed)
    data = tokens_data(seq_len, num_classes)
    kw.setdefault("conditioning", "class" if num_classes else "none")
    return build_maskgit(data=data, size="tiny", **kw).eval()


def seed(s: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(s)


# ----------------------------------------------------------------------------- the model


def test_builder_describes_the_model_and_refuses_other_data():
    model = tiny_maskgit()
    assert isinstance(model, GenerativeModel)
    assert model.capabilities <= CAPABILITIES and model.capabilities == {"sample"}
    assert (model.conditioning, model.num_classes, model.vocab_size, model.seq_len) == ("none", 0, 16, 16)
    assert set(model.sampling_settings.model_fields) == {"steps", "temperature", "choice_temperature"}
    conditional = tiny_maskgit(num_classes=3)
    assert (conditional.conditioning, conditional.num_classes) == ("class", 3)
    assert conditional.capabilities == {"sample", "condition"}
    assert "guidance_scale" in conditional.sampling_settings.model_fields
    assert conditional.class_emb.num_embeddings == 4  # three classes and the null class
    assert conditional.wte.num_embeddings == 17  # sixteen tokens and [MASK]
    with pytest.raises(UserError, match="tokens"):
        build_maskgit(data=DatasetInfo.for_images((1, 8, 8)), size="tiny")
    with pytest.raises(UserError, match="class labels"):
        build_maskgit(data=tokens_data(), size="tiny", conditioning="class")


def test_attention_is_bidirectional():
    """Every position's logits depend on tokens both before and after it."""
    model = tiny_maskgit()
    ids = torch.randint(16, (1, 16), generator=seed())
    for j in (0, 15):
        changed = ids.clone()
        changed[0, j] = 16  # [MASK]
        moved = (model.logits(ids) - model.logits(changed)).abs().amax(dim=-1)[0]  # (N,)
        assert (moved > 1e-5).all(), j


# ----------------------------------------------------------------------------- schedule, masking, loss


def test_cosine_schedule_runs_from_all_masked_to_none():
    r = torch.linspace(0, 1, 101, dtype=torch.float64)
    gamma = cosine_schedule(r)
    assert float(gamma[0]) == 1.0 and abs(float(gamma[-1])) < 1e-12
    assert float(cosine_schedule(torch.tensor(0.5, dtype=torch.float64))) == pytest.approx(math.sqrt(0.5))
    assert (gamma.diff() < 0).all()  # strictly decreasing


def test_random_mask_masks_ceil_gamma_n_positions_at_least_one():
    n = 16
    r = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0], dtype=torch.float64)
    expected = [max(1, math.ceil(math.cos(math.pi / 2 * v) * n)) for v in r.tolist()]
    assert expected[0] == 16 and expected[-1] == 1
    assert mask_count(r, n).tolist() == expected
    mask = random_mask(r, torch.randn(len(r), n, generator=seed()))
    assert mask.dtype == torch.bool and mask.sum(dim=1).tolist() == expected
    # The masked positions are the lowest scores: with scores 0..N-1 in order, the first k.
    ordered = random_mask(torch.full((1,), 0.5), torch.arange(n, dtype=torch.float32)[None])
    assert ordered[0].tolist() == [True] * 12 + [False] * 4  # ceil(0.7071 * 16) = 12
    # Uniform positions: over many rows each position is masked about as often as any other.
    many = random_mask(torch.full((4000,), 0.7), torch.randn(4000, n, generator=seed(1)))
    share = many.float().mean(dim=0)
    assert (share - share.mean()).abs().max() < 0.05


def test_loss_is_the_cross_entropy_of_the_masked_tokens_only():
    """evaluate draws r (B,) then the scores (B, N) from its generator; redo that draw here and
    score the masked positions by hand from the logits."""
    model = tiny_maskgit(num_classes=3)
    x = torch.randint(16, (4, 16), generator=seed(2))
    y = torch.tensor([0, 1, 2, 0])
    g = seed(5)
    r = torch.special.ndtr(torch.randn(4, generator=g))
    mask = random_mask(r, torch.randn(4, 16, generator=g))
    assert 0 < int(mask.sum()) < mask.numel()
    logits = model.logits(x.masked_fill(mask, 16), y).detach().double()  # (4, 16, 16)
    terms = [math.log(sum(math.exp(v) for v in logits[b, i].tolist())) - float(logits[b, i, x[b, i]])
             for b in range(4) for i in range(16) if mask[b, i]]
    nats = sum(terms) / len(terms)
    scores = model.evaluate({"x": x, "y": y}, generator=seed(5))
    assert float(scores["loss"]) == pytest.approx(nats, rel=1e-5)
    assert float(scores["bits_per_masked_token"]) == pytest.approx(nats / math.log(2), rel=1e-5)
    # Scoring every position instead would give another number.
    every = float(F.cross_entropy(logits.reshape(-1, 16), x.reshape(-1)))
    assert abs(every - nats) > 1e-4
    # The training loss in eval mode (no dropout, no class dropout) draws the same way from the
    # global generator: the same seed gives the same loss.
    torch.manual_seed(5)
    loss, logs = model({"x": x, "y": y})
    assert float(loss.detach()) == pytest.approx(nats, rel=1e-5)
    assert float(logs["bits_per_masked_token"]) == pytest.approx(nats / math.log(2), rel=1e-5)


def test_evaluate_is_deterministic_and_restores_the_mode():
    model = tiny_maskgit().train()
    batch = {"x": torch.randint(16, (8, 16), generator=seed())}
    assert torch.equal(model.evaluate(batch)["loss"], model.evaluate(batch)["loss"])
    assert torch.equal(model.evaluate(batch, generator=seed(3))["loss"], model.evaluate(batch, generator=seed(3))["loss"])
    assert not torch.equal(model.evaluate(batch, generator=seed(3))["loss"],
                           model.evaluate(batch, generator=seed(4))["loss"])
    assert model.training


def test_class_dropout_uses_the_null_class_in_training_only():
    model = tiny_maskgit(num_classes=3, cond_dropout=0.5).train()
    seen = []
    model.class_emb.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    torch.manual_seed(0)
    model({"x": torch.randint(16, (64, 16)), "y": torch.zeros(64, dtype=torch.long)})
    dropped = float((seen[-1] == 3).float().mean())
    assert 0.3 < dropped < 0.7 and set(seen[-1].tolist()) == {0, 3}
    model.evaluate({"x": torch.randint(16, (64, 16)), "y": torch.zeros(64, dtype=torch.long)})
    assert set(seen[-1].tolist()) == {0}


# ----------------------------------------------------------------------------- decoding


def test_masked_counts_follow_the_cosine_schedule():
    # floor(16 cos(pi/2 (t+1)/8)) for t = 0..6: 15.69, 14.78, 13.30, 11.31, 8.89, 6.12, 3.12; then 0.
    assert masked_counts(16, 8) == [15, 14, 13, 11, 8, 6, 3, 0]
    assert masked_counts(16, 1) == [0]
    assert masked_counts(5, 5) == [4, 3, 2, 1, 0]  # T = N: one token per step, never stalled
    for n in range(1, 40):
        for t in range(1, n + 1):
            counts = masked_counts(n, t)
            steps = [n] + counts
            assert counts[-1] == 0 and all(a > b for a, b in zip(steps, steps[1:])), (n, t)


@pytest.mark.parametrize("steps", [1, 3, 8, 16])
def test_decoding_unmasks_on_schedule_and_never_changes_a_known_token(steps):
    model = tiny_maskgit(num_classes=3)
    trace = list(model.decode_steps(5, generator=seed(1), steps=steps, guidance_scale=1.0))
    assert len(trace) == steps
    expected = masked_counts(16, steps)
    before = torch.full((5, 16), 16)
    for t, ids in enumerate(trace):
        assert ids.shape == (5, 16) and ids.dtype == torch.int64
        assert (ids == 16).sum(dim=1).tolist() == [expected[t]] * 5, t
        known = before != 16
        assert torch.equal(ids[known], before[known]), f"step {t} changed a known token"
        before = ids
    assert (trace[-1] < 16).all()  # every position filled, with real tokens
    assert torch.equal(trace[-1], model.sample(5, generator=seed(1), steps=steps, guidance_scale=1.0))


def test_one_step_is_parallel_decoding_of_every_position():
    """T = 1: one pass, every token drawn independently from its marginal given all [MASK]: with a
    tiny temperature, the argmax of the all-masked logits."""
    model = tiny_maskgit()
    argmax = model.logits(torch.full((1, 16), 16)).argmax(dim=-1)  # (1, N)
    sample = model.sample(3, generator=seed(2), steps=1, temperature=1e-6)
    assert torch.equal(sample, argmax.expand(3, 16))


def test_seeds_and_batch_independence():
    model = tiny_maskgit(num_classes=3)
    a = model.sample(4, generator=seed(1))
    assert torch.equal(a, model.sample(4, generator=seed(1)))
    assert not torch.equal(a, model.sample(4, generator=seed(2)))
    assert a.shape == (4, 16) and a.dtype == torch.int64 and 0 <= a.min() and a.max() < 16
    # One generator per row, as Serve batches requests: a row samples what it samples alone.
    y = torch.tensor([2, 0, 1])
    for settings in ({}, {"guidance_scale": 2.0, "temperature": 0.8}):
        together = model.sample(3, generator=StackedGenerators([(seed(10), 2), (seed(11), 1)]), y=y, **settings)
        assert torch.equal(together[:2], model.sample(2, generator=seed(10), y=y[:2], **settings))
        assert torch.equal(together[2:], model.sample(1, generator=seed(11), y=y[2:], **settings))


def test_sample_restores_the_mode_and_checks_labels():
    model = tiny_maskgit(num_classes=3).train()
    model.sample(2, generator=seed())
    assert model.training
    steps = model.decode_steps(2, generator=seed())
    next(steps)
    assert not model.training
    steps.close()
    assert model.training
    # y None cycles the classes.
    assert torch.equal(model.sample(4, generator=seed(3)), model.sample(4, generator=seed(3), y=torch.tensor([0, 1, 2, 0])))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        model.sample(2, y=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        model.sample(2, y=torch.tensor([0]))
    with pytest.raises(ValueError, match="not class-conditional"):
        tiny_maskgit().sample(2, y=torch.tensor([0, 1]))


def test_guidance():
    c, u = torch.randn(2, 3, 5, generator=seed()), torch.randn(2, 3, 5, generator=seed(1))
    assert torch.equal(guided_logits(c, u, 0.0), c)
    torch.testing.assert_close(guided_logits(c, u, 1.5), 2.5 * c - 1.5 * u)

    model = tiny_maskgit(num_classes=3)
    y = torch.tensor([0, 1, 2, 1])
    sharp = {"temperature": 0.01}  # an untrained model's logits are nearly flat: let small changes show
    plain = model.sample(4, generator=seed(4), y=y, **sharp)
    guided = model.sample(4, generator=seed(4), y=y, guidance_scale=3.0, **sharp)
    assert torch.equal(plain, model.sample(4, generator=seed(4), y=y, guidance_scale=0.0, **sharp))
    assert not torch.equal(plain, guided)
    # The null class's row is the unconditional branch: at scale 0 it has no say, above 0 it does.
    with torch.no_grad():
        model.class_emb.weight[3] += torch.randn(64, generator=seed(9))
    assert torch.equal(plain, model.sample(4, generator=seed(4), y=y, guidance_scale=0.0, **sharp))
    assert not torch.equal(guided, model.sample(4, generator=seed(4), y=y, guidance_scale=3.0, **sharp))


def test_sampling_settings_are_typed():
    model = tiny_maskgit()
    settings = model.sampling_settings()
    assert (settings.steps, settings.temperature, settings.choice_temperature) == (8, 1.0, 4.5)
    assert model.sampling_cost(settings) == 8 and model.sampling_cost(model.sampling_settings(steps=3)) == 3
    assert tiny_maskgit(seq_len=5).sampling_settings().steps == 5  # min(8, N)
    for bad in ({"steps": 0}, {"steps": 17}, {"temperature": 0}, {"choice_temperature": -1},
                {"guidance_scale": 1.0}):  # guidance needs a class-conditional model
        with pytest.raises(pydantic.ValidationError):
            model.sampling_settings(**bad)
        with pytest.raises(pydantic.ValidationError):  # sample checks its settings the same way
            model.sample(1, **bad)
    with pytest.raises(pydantic.ValidationError, match="16"):  # the limit is named: N = 16
        model.sampling_settings(steps=17)
    with pytest.raises(pydantic.ValidationError):
        tiny_maskgit(num_classes=3).sampling_settings(guidance_scale=-1)
    guided = tiny_maskgit(num_classes=3).sampling_settings(guidance_scale=2.0)
    assert tiny_maskgit(num_classes=3).sampling_cost(guided) == 8  # both branches in one pass


# ----------------------------------------------------------------------------- as a VQ-VAE prior


def test_over_a_tokenizer_it_is_an_image_model():
    tokenizer = ModelRef("models:/vq@champion", "vqvae", {"size": "tiny", "codebook_size": 16, "code_dim": 8},
                         DatasetInfo.for_images((1, 16, 16)).to_json())
    torch.manual_seed(0)
    prior = build_model("maskgit", {"size": "tiny", "conditioning": "class", "tokenizer": tokenizer},
                        DatasetInfo.for_images((1, 16, 16), 10))
    assert (prior.net.seq_len, prior.net.vocab_size, prior.grid) == (16, 16, (4, 4))
    assert prior.capabilities == {"sample", "condition"}  # no likelihood to bound
    assert set(prior.sampling_settings.model_fields) == {"steps", "temperature", "choice_temperature",
                                                         "guidance_scale"}
    assert prior.sampling_cost(prior.sampling_settings(steps=5)) == 5
    with pytest.raises(pydantic.ValidationError):
        prior.sampling_settings(steps=17)  # 4x4 codes
    images = prior.sample(3, generator=seed(1), y=torch.tensor([1, 2, 3]), steps=4, guidance_scale=1.0)
    assert images.shape == (3, 1, 16, 16) and images.min() >= -1 and images.max() <= 1
    codes = prior.sample_tokens(3, generator=seed(1), y=torch.tensor([1, 2, 3]), steps=4, guidance_scale=1.0)
    assert torch.equal(prior.images(codes), images)
    with pytest.raises(UserError, match="tokens data"):
        build_maskgit(data=DatasetInfo.for_images((1, 16, 16)), size="tiny")


# ----------------------------------------------------------------------------- training


def test_it_memorises_a_fixed_batch():
    """120 Adam steps on four fixed rows: the masked-token loss falls far below its start (log 16),
    and decoding one token per step with no noise gives back training rows."""
    torch.manual_seed(0)
    model = build_maskgit(data=tokens_data(12), size="tiny").train()
    rows = torch.randint(16, (4, 12), generator=seed(7))
    batch = {"x": rows.repeat(8, 1)}  # (32, 12)
    recipe = model.recipe
    opt = recipe.configure_optimizers(model, OptimDefaults(lr=3e-3, weight_decay=0.0))["main"]
    [phase] = recipe.phases_at(0)
    start = float(model.evaluate(batch, generator=seed(1))["loss"])
    for step in range(120):
        opt.zero_grad(set_to_none=True)
        loss, _ = recipe.loss(model, batch, phase, step)
        loss.backward()
        opt.step()
    end = float(model.evaluate(batch, generator=seed(1))["loss"])
    # Not to 0: with most of a row masked, which of the four rows it is stays uncertain (all
    # masked, log 4 nats per token is the floor). Three seeds give end / start ~ 0.34.
    assert start > 2.0 and end < 0.45 * start, (start, end)
    samples = model.sample(8, generator=seed(2), steps=12, temperature=0.1, choice_temperature=0.0)
    training_rows = {tuple(r) for r in rows.tolist()}
    hits = sum(tuple(s) in training_rows for s in samples.tolist())
    assert hits >= 6, samples


# ----------------------------------------------------------------------------- guidance, by hand


def one_step_argmax(model, cond: dict, null: dict, scale: float) -> torch.Tensor:
    """T = 1 with a tiny temperature draws the argmax of the guided all-[MASK] logits: written out
    here from `logits` and `condition` alone, two separate passes."""
    ids = torch.full((len(next(iter(cond.values()))), 16), 16)
    c, u = model.logits(ids, **cond), model.logits(ids, **null)
    return ((1 + scale) * c - scale * u).argmax(dim=-1)


@pytest.mark.parametrize("conditioning", ["class", "text"])
def test_guided_decoding_is_the_guided_logits(conditioning):
    """Scale 0 is the conditional model alone; scale s is (1 + s) cond - s uncond, the unconditional
    branch being the null class or the empty caption."""
    if conditioning == "class":
        model, request = tiny_maskgit(num_classes=3), {"y": torch.tensor([0, 2, 1])}
        cond = model.condition(3, "cpu", y=request["y"])
    else:
        model, request = tiny_maskgit(conditioning="text", text_len=24), {"prompt": ["a red heart", "a blue square", "x"]}
        cond = model.condition(3, "cpu", text=encode_text(request["prompt"], 24))
    null = model.condition(3, "cpu")
    for scale in (0.0, 2.0):
        sample = model.sample(3, generator=seed(1), steps=1, temperature=1e-6, guidance_scale=scale, **request)
        assert torch.equal(sample, one_step_argmax(model, cond, null, scale)), scale
    assert not torch.equal(one_step_argmax(model, cond, null, 0.0), one_step_argmax(model, cond, null, 2.0))


# ----------------------------------------------------------------------------- text conditioning (Muse)


def test_text_conditioning_cross_attends_to_the_caption():
    model = tiny_maskgit(conditioning="text", text_len=24)
    assert isinstance(model, GenerativeModel)
    assert (model.conditioning, model.num_classes, model.capabilities) == ("text", 0, {"sample", "condition"})
    assert "guidance_scale" in model.sampling_settings.model_fields
    assert all(block.xattn is not None for block in model.blocks) and model.text_encoder.max_len == 24
    assert tiny_maskgit().blocks[0].xattn is None
    ids = torch.randint(17, (2, 16), generator=seed())
    heart = model.condition(2, "cpu", text=encode_text(["a red heart"] * 2, 24))
    square = model.condition(2, "cpu", text=encode_text(["a blue square"] * 2, 24))
    null = model.condition(2, "cpu")
    assert not null["context_mask"].any()  # the empty caption: nothing but the null key/value to attend to
    logits = [model.logits(ids, **c) for c in (heart, square, null)]
    assert all(torch.isfinite(x).all() for x in logits)
    assert (logits[0] - logits[1]).abs().amax() > 1e-4 and (logits[0] - logits[2]).abs().amax() > 1e-4


def test_prompts_change_samples_and_an_empty_prompt_is_refused():
    model = tiny_maskgit(conditioning="text", text_len=24)
    sharp = {"temperature": 0.01}  # an untrained model's logits are nearly flat: let small changes show
    heart = model.sample(4, generator=seed(3), prompt="a red heart", **sharp)
    assert torch.equal(heart, model.sample(4, generator=seed(3), prompt=["a red heart"] * 4, **sharp))
    assert not torch.equal(heart, model.sample(4, generator=seed(3), prompt="a blue square", **sharp))
    # Without a prompt: the empty caption, unconditional samples; an empty entry of a list is that row's.
    free = model.sample(2, generator=seed(3), **sharp)
    assert torch.equal(free, model.sample(2, generator=seed(3), prompt=["", ""], **sharp))
    for empty in ("", "   "):
        with pytest.raises(UserError, match="prompt"):
            model.sample(2, prompt=empty)
    with pytest.raises(UserError, match="prompt"):
        model.sample(3, prompt=["a", "b"])
    with pytest.raises(UserError, match="prompt"):
        tiny_maskgit().sample(2, prompt="a red heart")
    with pytest.raises(ValueError, match="not class-conditional"):
        model.sample(2, y=torch.tensor([0, 1]))


def test_caption_dropout_trains_the_empty_caption():
    model = tiny_maskgit(conditioning="text", text_len=8, cond_dropout=0.5).train()
    seen = []
    model.text_encoder.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    text = encode_text(["abc"] * 64, 8)
    torch.manual_seed(0)
    model({"x": torch.randint(16, (64, 16)), "text": text})
    empty = (seen[-1] == 0).all(dim=1)
    assert 0.3 < float(empty.float().mean()) < 0.7 and torch.equal(seen[-1][~empty], text[~empty])
    model.evaluate({"x": torch.randint(16, (64, 16)), "text": text})
    assert torch.equal(seen[-1], text)
    with pytest.raises(ValueError, match="text"):
        model({"x": torch.randint(16, (4, 16))})


def test_it_learns_to_follow_its_captions():
    """Two captions, each always with the same row: after training, each prompt decodes its row."""
    torch.manual_seed(0)
    model = build_maskgit(data=tokens_data(12), size="tiny", conditioning="text", text_len=16).train()
    rows = torch.randint(16, (2, 12), generator=seed(7))
    captions = ["a red heart", "a blue square"]
    batch = {"x": rows.repeat(8, 1), "text": encode_text(captions * 8, 16)}  # (16, 12), (16, 16)
    opt = model.recipe.configure_optimizers(model, OptimDefaults(lr=3e-3, weight_decay=0.0))["main"]
    [phase] = model.recipe.phases_at(0)
    for step in range(100):  # two seeds: every sample right from step 50 on
        opt.zero_grad(set_to_none=True)
        loss, _ = model.recipe.loss(model, batch, phase, step)
        loss.backward()
        opt.step()
    for caption, row in zip(captions, rows):
        samples = model.sample(4, generator=seed(2), prompt=caption, steps=4, temperature=0.1)
        # A model that ignored the caption would decode the same rows for both prompts (same seed).
        assert (samples == row).all(dim=1).sum() >= 3, (caption, samples, row)
