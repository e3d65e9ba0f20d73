"""The Bernoulli RBM against brute force: free energy, Gibbs conditionals, log Z and samples by
enumerating every state of tiny models; AIS against the exact log Z; PCD chains through a
checkpoint; CD-1 raising the exact likelihood; bad input named."""
import copy
import math

import pydantic
import pytest
import torch
from safetensors.torch import load_file, save_file

from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.metrics.likelihood import model_bits_per_dim
from genray.components.models.layers import StackedGenerators
from genray.components.models.rbm import (
    RBM, ais_log_partition, all_binary, binarize, build_rbm, exact_log_partition,
)
from genray.components.training import Engine, OptimDefaults, StepSettings, step_seed


def tiny(image_shape=(1, 2, 3), hidden=3, scale=1.0, seed=0, **kw) -> RBM:
    """An RBM with weights large enough that every term matters."""
    torch.manual_seed(seed)
    model = RBM(image_shape=image_shape, hidden=hidden, **kw)
    with torch.no_grad():
        model.W.normal_(0, scale)
        model.b.normal_(0, scale)
        model.c.normal_(0, scale)
    return model.double()


def energy(v, h, model):
    """E(v, h) = -b.v - c.h - v.W.h for every pair of rows, (Nv, Nh)."""
    return -(v @ model.b)[:, None] - (h @ model.c)[None, :] - v @ model.W @ h.T


def images(v: torch.Tensor, shape) -> torch.Tensor:
    """Visible units in {0, 1} -> images in {-1, 1} that binarise back to them."""
    return (2 * v - 1).view(-1, *shape)


def test_binarisation_is_a_threshold_at_the_midpoint():
    values = torch.tensor([0, 127, 128, 255], dtype=torch.float64)  # 8-bit pixels
    x = (values / 127.5 - 1).view(1, 1, 1, 4)
    assert binarize(x).tolist() == [[0.0, 0.0, 1.0, 1.0]]


def test_free_energy_sums_out_the_hidden_units():
    model = tiny()
    v, h = all_binary(6), all_binary(3)
    brute = -torch.logsumexp(-energy(v, h, model), dim=1)  # F(v) = -log sum_h exp(-E(v, h))
    assert torch.allclose(model.free_energy(v), brute, atol=1e-10)


@pytest.mark.parametrize("hidden", [3, 8])  # enumerated over h, then over v (the smaller side)
def test_exact_log_partition_is_the_sum_over_every_state(hidden):
    model = tiny(hidden=hidden)
    v, h = all_binary(6), all_binary(hidden)
    brute = torch.logsumexp(-energy(v, h, model).flatten(), 0)
    with torch.no_grad():
        assert float(exact_log_partition(model.W, model.b, model.c)) == pytest.approx(float(brute), abs=1e-9)


def test_gibbs_conditionals_match_the_joint():
    model = tiny(image_shape=(1, 2, 2), hidden=3)
    v, h = all_binary(4), all_binary(3)
    joint = torch.exp(-energy(v, h, model))  # (16, 8), unnormalised p(v, h)
    p_h_given_v = joint / joint.sum(1, keepdim=True)
    p_v_given_h = joint / joint.sum(0, keepdim=True)
    # p(h_j = 1 | v) and p(v_i = 1 | h): the mass of the states with that unit on.
    assert torch.allclose(model.hidden_probs(v), p_h_given_v @ h, atol=1e-10)
    assert torch.allclose(model.visible_probs(h), p_v_given_h.T @ v, atol=1e-10)


def test_gibbs_samples_follow_the_model():
    model = tiny(image_shape=(1, 1, 3), hidden=2, scale=1.5).float()
    exact = torch.exp(-model.free_energy(all_binary(3).float()).double() - exact_log_partition(model.W, model.b, model.c))
    x = model.sample(8000, generator=torch.Generator().manual_seed(0), gibbs_steps=30, mean_field=False)
    assert set(x.unique().tolist()) <= {-1.0, 1.0}
    codes = (binarize(x).long() * torch.tensor([1, 2, 4])).sum(1)  # the state's index in all_binary's order
    empirical = torch.bincount(codes, minlength=8).double() / len(codes)
    assert 0.5 * (empirical - exact).abs().sum() < 0.03  # total variation; sampling noise ~0.01


def test_ais_agrees_with_the_exact_log_partition():
    # 64 visible units (8x8 images), 16 hidden: 2^16 terms exactly. Weights the size of a
    # trained model's, biases that favour some pixels, and a base rate from "data" marginals.
    torch.manual_seed(0)
    W = 0.3 * torch.randn(64, 16)
    b, c = torch.randn(64) - 1.0, 0.5 * torch.randn(16)
    base = torch.logit(torch.sigmoid(b).clamp(0.05, 0.95))
    exact = float(exact_log_partition(W, b, c))
    log_z, stderr = ais_log_partition(W, b, c, base, num_temperatures=1000, runs=100,
                                      generator=torch.Generator().manual_seed(0))
    assert abs(float(log_z) - exact) < 0.1
    assert 0 < float(stderr) < 0.1


def test_log_prob_sums_to_one_and_is_cached_per_weights():
    model = tiny(image_shape=(1, 2, 4), hidden=5, scale=0.7, ais_temperatures=1000, ais_runs=100).float()
    x = images(all_binary(8).float(), (1, 2, 4))
    total = float(torch.logsumexp(model.log_prob(x), 0))
    assert abs(total) < 0.1  # log of the probability of all 256 binary images, with log Z from AIS
    exact = exact_log_partition(model.W, model.b, model.c)
    assert torch.allclose(model.log_prob(x), -model.free_energy(binarize(x)).double() - exact, atol=0.1)
    # Cached: the same weights give the same estimate; new weights, a new one.
    first = model.log_partition()[0]
    assert model.log_partition()[0] is first
    with torch.no_grad():
        model.W.mul_(1.5)
    assert float(model.log_partition()[0]) == pytest.approx(float(exact_log_partition(model.W, model.b, model.c)), abs=0.1)
    # Bits/dim of a binary space: -log P / (D ln 2), no dequantization noise.
    bpd = model_bits_per_dim(model, x[:4], generator=torch.Generator().manual_seed(0))
    assert torch.allclose(bpd, -model.log_prob(x[:4]) / (8 * math.log(2)))


def steps(model: RBM, data: torch.Tensor, n: int, engine: Engine, seed: int = 0) -> None:
    for _ in range(n):
        torch.manual_seed(step_seed(seed, 0, engine.step))
        engine.train_step({"x": data})


def engine(model: RBM, lr=0.1, momentum=0.5, max_steps=1000) -> Engine:
    return Engine(model, defaults=OptimDefaults(lr=lr, betas=(momentum, 0.999)),
                  settings=StepSettings(max_steps=max_steps, grad_clip=None, lr_schedule="linear", lr_decay_start=0.99))


def bars(n: int = 64, seed: int = 0) -> torch.Tensor:
    """3x3 images of one horizontal or vertical bar, 5% of pixels flipped, in {-1, 1}."""
    g = torch.Generator().manual_seed(seed)
    shapes = torch.zeros(6, 3, 3)
    for i in range(3):
        shapes[i, i, :] = 1
        shapes[3 + i, :, i] = 1
    v = shapes[torch.randint(6, (n,), generator=g)]
    v = torch.where(torch.rand(v.shape, generator=g) < 0.05, 1 - v, v)
    return (2 * v - 1).unsqueeze(1)


@torch.no_grad()
def exact_mean_log_likelihood(model: RBM, x: torch.Tensor) -> float:
    v = binarize(x).double()
    W, b, c = model.W.double(), model.b.double(), model.c.double()
    return float((-(model.free_energy(v.to(model.W.dtype)).double()) - exact_log_partition(W, b, c)).mean())


def test_cd1_raises_the_exact_likelihood():
    torch.manual_seed(0)
    model = RBM(image_shape=(1, 3, 3), hidden=8, k=1, persistent=False)
    data = bars()
    e = engine(model, lr=0.3, momentum=0.9, max_steps=300)
    e.initialize({"x": data})  # visible biases from the data's log-odds: independent pixels
    after_init = exact_mean_log_likelihood(model, data)
    steps(model, data, 300, e)
    trained = exact_mean_log_likelihood(model, data)
    # Independent pixels fitted to the bars score ~-5.8 nats per image; the 6 bars with 5% of
    # pixels flipped are worth about -(log 6 + 9 H(0.05)) = -3.6.
    assert trained > after_init + 1.5, (after_init, trained)
    assert trained < 0


def test_pcd_chains_survive_a_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    model = RBM(image_shape=(1, 3, 3), hidden=4, persistent=True, num_chains=16)
    data, start = bars(), model.chains.clone()
    e = engine(model)
    steps(model, data, 5, e)
    assert not torch.equal(model.chains, start)  # the chains moved and are part of the state
    save_file(model.state_dict(), tmp_path / "model.safetensors")

    torch.manual_seed(1)
    fresh = RBM(image_shape=(1, 3, 3), hidden=4, persistent=True, num_chains=16)
    fresh.load_state_dict(load_file(tmp_path / "model.safetensors"))
    assert torch.equal(fresh.chains, model.chains)
    fresh_engine = engine(fresh)
    # A deep copy, as a checkpoint on disk would be: the optimizer's state_dict holds the live
    # momentum buffers, which the first engine's next steps would change under the second.
    fresh_engine.load_state_dict(copy.deepcopy(e.state_dict()), step=e.step, ema=None)
    steps(model, data, 3, e)
    steps(fresh, data, 3, fresh_engine)
    for name, value in model.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[name]), name


def test_stacked_generators_give_each_request_its_own_rows():
    model = tiny(image_shape=(1, 2, 3), hidden=3).float()
    settings = dict(gibbs_steps=7, thinning=3, samples_per_chain=2)
    together = model.sample(5, generator=StackedGenerators([(torch.Generator().manual_seed(1), 2),
                                                            (torch.Generator().manual_seed(2), 3)]), **settings)
    alone = [model.sample(2, generator=torch.Generator().manual_seed(1), **settings),
             model.sample(3, generator=torch.Generator().manual_seed(2), **settings)]
    assert torch.equal(together, torch.cat(alone))
    assert model.sampling_cost(model.sampling_settings(**settings)) == 7 + 3


def test_bad_input_names_the_field():
    model = tiny().float()
    with pytest.raises(pydantic.ValidationError, match="gibbs_steps"):
        model.sampling_settings(gibbs_steps=100_001)  # past the limit: serve answers 422 from this
    with pytest.raises(pydantic.ValidationError, match="thinning"):
        model.sample(2, thinning=0)
    x = torch.zeros(2, 1, 2, 3)
    x[0, 0, 0, 0] = 1.5
    with pytest.raises(UserError, match=r"x must be images in \[-1, 1\]"):
        model.log_prob(x)
    with pytest.raises(UserError, match=r"x must be images \(B, 1, 2, 3\)"):
        model.log_prob(torch.zeros(2, 1, 3, 2))
    with pytest.raises(ValueError, match="grey images"):
        build_rbm(data=DatasetInfo.for_images((3, 8, 8)))
