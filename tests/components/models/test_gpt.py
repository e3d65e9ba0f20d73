"""GPT: causality, the objective against a hand computation, the sampling rule against hand-worked
examples, the KV cache against recomputation (one seed, one set of tokens), left-padded prompts
against the same prompts alone, weight tying and decay groups, and a short real training run."""
import math
from collections import Counter

import pydantic
import pytest
import torch
from safetensors.torch import load_file, save_file

from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.models.gpt import build_gpt, inverse_cdf, next_token, top_k_filter, top_p_filter
from genray.components.models.layers import StackedGenerators
from genray.components.models.protocol import CAPABILITIES, GenerativeModel
from genray.components.training import OptimDefaults

VOCAB = tuple("abcdefghijklmnop")  # 16 tokens
PROMPTS = [[1, 2, 3], [4], [], [5, 6, 7, 8, 9]]  # different lengths, one empty


def tokens_data(seq_len: int = 16, vocab=VOCAB, num_classes: int = 0) -> DatasetInfo:
    columns = ("tokens", "label") if num_classes else ("tokens",)
    return DatasetInfo("tokens", (seq_len,), 100, num_classes, tuple(vocab), columns)


def tiny_gpt(seed: int = 0, **kw):
    torch.manual_seed(seed)
    data = kw.pop("data", None) or tokens_data(kw.pop("seq_len", 16), num_classes=kw.pop("num_classes", 0))
    return build_gpt(data=data, size="tiny", **kw).eval()


def seed(s: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(s)


# ----------------------------------------------------------------------------- the network


def test_builder_describes_the_model_and_refuses_images():
    model = tiny_gpt()
    assert isinstance(model, GenerativeModel)
    assert model.capabilities <= CAPABILITIES and model.capabilities == {"sample", "log_prob", "generate_text"}
    assert (model.conditioning, model.num_classes) == ("none", 0)
    assert (model.vocab_size, model.seq_len, model.block_size) == (16, 16, 16)
    assert (model.log_prob_space, model.log_prob_kind) == ("discrete", "exact")
    assert tiny_gpt(block_size=40).block_size == 40
    conditional = tiny_gpt(conditioning="class", num_classes=3)
    assert (conditional.conditioning, conditional.num_classes) == ("class", 3)
    assert "condition" in conditional.capabilities
    with pytest.raises(UserError, match="tokens data"):
        build_gpt(data=DatasetInfo.for_images((1, 8, 8)), size="tiny")
    with pytest.raises(UserError, match="class labels"):
        build_gpt(data=tokens_data(), size="tiny", conditioning="class")
    with pytest.raises(UserError, match="block_size"):
        build_gpt(data=tokens_data(16), size="tiny", block_size=8)


def test_size_presets():
    """With the text corpus's shape (96 characters, 128 positions): ~0.2M, ~1.2M, ~10M parameters."""
    data = tokens_data(128, vocab=tuple(chr(32 + i) for i in range(96)))
    counts = {size: sum(p.numel() for p in build_gpt(data=data, size=size).parameters())
              for size in ("tiny", "small", "base")}
    assert 0.15e6 < counts["tiny"] < 0.3e6
    assert 1e6 < counts["small"] < 2e6
    assert 8e6 < counts["base"] < 12e6


def test_causality_later_tokens_change_no_earlier_logits():
    """logits[:, i] scores x_i from x_<i: changing x_j leaves positions <= j alone, and moves later ones."""
    model = tiny_gpt(seq_len=12)
    x = torch.randint(16, (2, 12), generator=seed())
    for j in (0, 5, 10):
        x2 = x.clone()
        x2[:, j] = (x2[:, j] + 7) % 16
        a, b = model.logits(x), model.logits(x2)
        torch.testing.assert_close(a[:, : j + 1], b[:, : j + 1], atol=1e-6, rtol=0)
        assert (a[:, j + 1:] - b[:, j + 1:]).abs().amax() > 1e-4

    # The same by gradients: d logits[:, 6] / d (input slot k) is zero for every slot k > 6.
    slots = {}

    def leaf(module, inputs, out):
        slots["h"] = out.detach().requires_grad_(True)
        return slots["h"]

    model.drop.register_forward_hook(leaf)  # the embedded slots (start, x_0 .. x_{T-2}), (B, T, D)
    model.logits(x[:1])[0, 6].sum().backward()
    grad = slots["h"].grad[0].abs().sum(dim=1)  # (T,)
    assert (grad[7:] == 0).all() and (grad[:7] > 0).all()


def test_class_condition_reaches_the_first_position():
    model = tiny_gpt(conditioning="class", num_classes=3)
    x = torch.randint(16, (2, 16), generator=seed())
    a, b = model.logits(x, torch.tensor([0, 0])), model.logits(x, torch.tensor([1, 1]))
    assert (a[:, 0] - b[:, 0]).abs().amax() > 1e-4
    with pytest.raises(ValueError, match="labels 'y'"):
        model({"x": x})
    with pytest.raises(ValueError, match="labels in"):
        model.sample(2, y=torch.tensor([0, 3]))


def test_log_prob_without_a_class_is_the_uniform_mixture_over_classes():
    model = tiny_gpt(conditioning="class", num_classes=3)
    x = torch.randint(16, (2, 16), generator=seed())
    per_class = torch.stack([model.log_prob(x, y=torch.full((2,), k)) for k in range(3)])  # (K, B)
    mixture = torch.log(per_class.double().exp().mean(dim=0))  # log (1/K) sum_k P(x | k), directly
    assert torch.allclose(model.log_prob(x).double(), mixture, atol=1e-4)


def test_weight_tying_the_output_layer_is_the_token_embedding():
    model = tiny_gpt(block_size=24)  # so the position table is not (V, D) too
    # One (V, D) matrix in the whole model: the head has no weight of its own, so the state dict
    # has one copy (safetensors would refuse two views of one tensor).
    matrices = [n for n, p in model.named_parameters() if p.shape == model.wte.weight.shape]
    assert matrices == ["wte.weight"]
    # The logits are the final hidden states against that matrix.
    seen = {}
    model.ln_f.register_forward_hook(lambda m, i, out: seen.__setitem__("h", out))
    x = torch.randint(16, (2, 16), generator=seed())
    torch.testing.assert_close(model.logits(x), seen["h"] @ model.wte.weight.T)
    # Behaviourally: a token that never appears in the input still gets an embedding gradient,
    # which only the output layer can give it.
    x = torch.randint(8, (2, 16), generator=seed())  # tokens 0..7 only
    model.zero_grad()
    model({"x": x})[0].backward()
    assert model.wte.weight.grad[8:].abs().sum() > 0


def test_decay_groups_follow_adamw():
    """Backprop's adamw (components/training/recipe.py) decays every parameter with >= 2 dims:
    linear weights and, as in nanoGPT, the embeddings (tokens, positions, start slot); biases and
    LayerNorm parameters are never decayed. The tied matrix is in one group, once."""
    model = tiny_gpt()
    opt = model.recipe.configure_optimizers(model, OptimDefaults(lr=1e-3, weight_decay=0.1))["main"]
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert len(decay_of) == sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    for name, p in model.named_parameters():
        if name.endswith(".bias") or ".ln_" in name or name.startswith("ln_f"):
            assert decay_of[id(p)] == 0.0, name
        else:
            assert p.dim() == 2 and decay_of[id(p)] == 0.1, name
    for name in ("wte.weight", "wpe.weight", "start.weight", "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc.weight"):
        assert decay_of[id(model.get_parameter(name))] == 0.1, name


def test_state_round_trip_through_safetensors(tmp_path):
    model = tiny_gpt(seed=0)
    save_file(model.state_dict(), tmp_path / "gpt.safetensors")
    fresh = tiny_gpt(seed=1)
    fresh.load_state_dict(load_file(tmp_path / "gpt.safetensors"))
    assert torch.equal(model.sample(3, generator=seed(4)), fresh.sample(3, generator=seed(4)))


# ----------------------------------------------------------------------------- the objective


def test_loss_is_the_hand_computed_cross_entropy_in_nats():
    model = tiny_gpt(seq_len=5)
    x = torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])
    logits = model.logits(x).detach().double()  # (2, 5, 16)
    hand = []
    for b in range(2):
        for i in range(5):
            row = logits[b, i]
            hand.append(math.log(sum(math.exp(v) for v in row.tolist())) - float(row[x[b, i]]))
    nats = sum(hand) / len(hand)
    loss, logs = model({"x": x})
    assert float(loss.detach()) == pytest.approx(nats, rel=1e-5)
    assert float(logs["bits_per_token"]) == pytest.approx(nats / math.log(2), rel=1e-5)
    scores = model.evaluate({"x": x})
    assert float(scores["loss"]) == pytest.approx(nats, rel=1e-5)
    # log_prob is the exact log P of each whole sequence: minus the sum of its tokens' terms.
    per_sequence = -torch.tensor(hand, dtype=torch.float64).view(2, 5).sum(1)
    torch.testing.assert_close(model.log_prob(x).double(), per_sequence, rtol=1e-5, atol=1e-5)


def test_it_learns_a_pattern_far_below_its_unigram_entropy():
    """A few hundred steps of the Backprop recipe on windows of a repeating text."""
    text = "the cat sat on the mat. " * 40
    vocab = tuple(sorted(set(text)))
    counts = Counter(text)
    unigram = -sum(c / len(text) * math.log(c / len(text)) for c in counts.values())  # nats per token
    ids = torch.tensor([vocab.index(c) for c in text])
    seq_len = 24
    model = tiny_gpt(data=tokens_data(seq_len, vocab=vocab)).train()
    recipe = model.recipe
    opt = recipe.configure_optimizers(model, OptimDefaults(lr=3e-3, weight_decay=0.0))["main"]
    [phase] = recipe.phases_at(0)
    g = seed(0)
    for step in range(250):
        start = torch.randint(len(ids) - seq_len, (16,), generator=g)
        batch = {"x": torch.stack([ids[s:s + seq_len] for s in start.tolist()])}
        opt.zero_grad(set_to_none=True)
        loss, _ = recipe.loss(model, batch, phase, step)
        loss.backward()
        opt.step()
    held = {"x": torch.stack([ids[s:s + seq_len] for s in range(0, 400, 7)])}
    nats = float(model.evaluate(held)["loss"])
    # The period is 24, so after the first few tokens of a window everything is determined.
    assert nats < 0.25 * unigram, (nats, unigram)


# ----------------------------------------------------------------------------- the sampling rule


def test_top_k_and_top_p_against_a_hand_worked_example():
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.2, 0.1]])
    logits = probs.log()
    kept = lambda z: torch.isfinite(z)[0].tolist()  # noqa: E731
    assert kept(top_k_filter(logits, 2)) == [False, True, False, True, False]
    assert kept(top_k_filter(logits, 0)) == [True] * 5  # 0 = off
    # Sorted: 0.5, 0.2, 0.15, 0.1, 0.05; cumulative 0.5, 0.7, 0.85, 0.95, 1.0.
    assert kept(top_p_filter(logits, 0.4)) == [False, True, False, False, False]
    assert kept(top_p_filter(logits, 0.6)) == [False, True, False, True, False]
    assert kept(top_p_filter(logits, 0.75)) == [True, True, False, True, False]
    assert kept(top_p_filter(logits, 1.0)) == [True] * 5
    # Renormalised after filtering: top_p = 0.6 leaves 0.5 / 0.7 and 0.2 / 0.7.
    torch.testing.assert_close(top_p_filter(logits, 0.6).softmax(-1), torch.tensor([[0, 5 / 7, 0, 2 / 7, 0]]))
    # top-p acts on what top-k kept: top-3 renormalised is 0.588, 0.235, 0.176, so p = 0.8 keeps
    # two tokens (0.588 + 0.235 = 0.824), where on the full distribution it would keep three.
    both = top_p_filter(top_k_filter(logits, 3), 0.8)
    assert kept(both) == [False, True, False, True, False]
    assert kept(top_p_filter(logits, 0.8)) == [True, True, False, True, False]


def test_inverse_cdf_and_temperature():
    probs = torch.tensor([[0.0, 0.5, 0.2, 0.0, 0.3]]).expand(5, 5)
    # CDF 0, 0.5, 0.7, 0.7, 1.0: u falls in token 1's, 2's or 4's interval, never in a 0-probability one.
    u = torch.tensor([0.0, 0.49, 0.5, 0.69, 0.999999])
    assert inverse_cdf(probs, u).tolist() == [1, 1, 2, 2, 4]
    logits = torch.tensor([[0.3, 2.0, 1.9, -1.0]]).expand(4, 4)
    u = torch.tensor([0.01, 0.4, 0.7, 0.99])
    assert next_token(logits, u, temperature=1e-6, top_k=0, top_p=1.0).tolist() == [1, 1, 1, 1]  # argmax
    assert next_token(logits, u, temperature=1.0, top_k=1, top_p=1.0).tolist() == [1, 1, 1, 1]  # greedy
    assert next_token(logits, u, temperature=1.0, top_k=0, top_p=1.0).tolist() != [1, 1, 1, 1]


def test_sampling_settings_are_typed():
    model = tiny_gpt(block_size=24)
    settings = model.sampling_settings()
    assert (settings.max_new_tokens, settings.temperature, settings.top_k, settings.top_p) == (16, 1.0, 0, 1.0)
    assert model.sampling_cost(settings) == 16
    for bad in ({"temperature": 0}, {"top_k": -1}, {"top_p": 0}, {"top_p": 1.5}, {"max_new_tokens": 0},
                {"max_new_tokens": 25}):
        with pytest.raises(pydantic.ValidationError):
            model.sampling_settings(**bad)
        with pytest.raises(pydantic.ValidationError):  # sample checks its settings the same way
            model.sample(1, **bad)
    with pytest.raises(pydantic.ValidationError):
        model.sampling_settings(beam_width=4)
    with pytest.raises(UserError, match="block size 24"):
        model.sample(1, prompt_tokens=[[1] * 10], max_new_tokens=15)
    with pytest.raises(UserError, match="outside the vocabulary"):
        model.sample(1, prompt_tokens=[[1, 16]])
    with pytest.raises(UserError, match="2 prompts for n=3"):
        model.sample(3, prompt_tokens=[[1], [2]])


def test_low_temperature_is_argmax_decoding():
    """Against greedy decoding written out here from `logits` alone (no cache, no sampling code)."""
    model = tiny_gpt()
    seq: list[int] = []
    for _ in range(12):
        seq.append(int(model.logits(torch.tensor([seq + [0]]))[0, len(seq)].argmax()))
    assert model.sample(1, generator=seed(), max_new_tokens=12, temperature=1e-6)[0].tolist() == seq
    assert model.sample(1, generator=seed(5), max_new_tokens=12, top_k=1)[0].tolist() == seq


# ----------------------------------------------------------------------------- the KV cache


@pytest.mark.parametrize("settings", [{"top_k": 1}, {"temperature": 1.3}, {"temperature": 0.8, "top_k": 5},
                                      {"top_p": 0.8}, {"temperature": 1.5, "top_k": 8, "top_p": 0.9}],
                         ids=["greedy", "temperature", "top_k", "top_p", "all"])
def test_kv_cache_gives_the_tokens_of_recomputation(settings):
    model = tiny_gpt(block_size=32, conditioning="class", num_classes=2)
    for kwargs in ({"n": 3}, {"n": 4, "prompt_tokens": PROMPTS}):
        cached = model.sample(generator=seed(3), max_new_tokens=20, **kwargs, **settings)
        naive = model.generate_naive(generator=seed(3), max_new_tokens=20, **kwargs, **settings)
        assert cached.shape == (kwargs["n"], 20) and cached.dtype == torch.int64
        assert torch.equal(cached, naive)
    # A different seed gives other tokens (unless greedy).
    other = model.sample(4, generator=seed(4), prompt_tokens=PROMPTS, max_new_tokens=20, **settings)
    assert torch.equal(other, cached) == (settings == {"top_k": 1})


def test_stream_yields_the_tokens_of_sample_one_step_at_a_time():
    model = tiny_gpt()
    steps = list(model.stream(4, generator=seed(2), prompt_tokens=PROMPTS, max_new_tokens=6, top_p=0.9))
    assert len(steps) == 6 and all(t.shape == (4,) for t in steps)
    assert torch.equal(torch.stack(steps, 1), model.sample(4, generator=seed(2), prompt_tokens=PROMPTS,
                                                           max_new_tokens=6, top_p=0.9))
    # A caller may stop early (a stop string); the model's mode is restored once the stream closes.
    model.train()
    stream = model.stream(2, generator=seed(2))
    next(stream)
    assert not model.training
    stream.close()
    assert model.training


def test_left_padded_prompts_sample_what_each_prompt_samples_alone():
    """Greedy tokens don't depend on the draws, so a row of a padded batch must match the same
    prompt run alone; with one generator per row (StackedGenerators, as Serve batches requests)
    so must sampled tokens."""
    model = tiny_gpt(block_size=32)
    batch = model.sample(4, prompt_tokens=PROMPTS, max_new_tokens=10, top_k=1)
    for b, prompt in enumerate(PROMPTS):
        assert torch.equal(batch[b], model.sample(1, prompt_tokens=[prompt], max_new_tokens=10, top_k=1)[0])

    stacked = StackedGenerators([(seed(10 + b), 1) for b in range(4)])
    batch = model.sample(4, generator=stacked, prompt_tokens=PROMPTS, max_new_tokens=10, temperature=1.2)
    for b, prompt in enumerate(PROMPTS):
        alone = model.sample(1, generator=seed(10 + b), prompt_tokens=[prompt], max_new_tokens=10, temperature=1.2)
        assert torch.equal(batch[b], alone[0])


def test_eval_samples_look_like_the_data():
    model = tiny_gpt(conditioning="class", num_classes=3)
    [grid] = model.eval_samples(5, generator_seed=0, batch={}).values()
    assert grid.shape == (5, 16) and grid.dtype == torch.int64 and 0 <= grid.min() and grid.max() < 16
    assert torch.equal(grid, model.eval_samples(5, generator_seed=0, batch={})[""])
