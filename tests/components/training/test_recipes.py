"""Every training method the engine must hold (issue 8, point 1 a-g), each on a small model,
in-process; the claims about ranks on two real processes joined by gloo."""
from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import save as save_safetensors

from genray.components.data import DatasetInfo
from genray.components.models import FAMILIES, build
from genray.components.models.refs import ModelRef
from genray.components.training import Engine, OptimDefaults, StepSettings, step_seed
from genray.components.training.engine import sync_gradients
from toys import (ActNorm, BernoulliRBM, Regressor, SelfTarget, ToyCycleGAN, ToyGAN, codebook_batches, run_two_ranks,
                  two_rank_scenarios, vq_codebook_model)

DEFAULTS = OptimDefaults(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.0)


def engine_for(model, max_steps=100, **settings):
    return Engine(model, defaults=DEFAULTS, settings=StepSettings(max_steps=max_steps, grad_clip=None, **settings))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Points c, f and g on two real processes (gloo), each rank with its own data."""
    r0, r1 = run_two_ranks(two_rank_scenarios, str(tmp_path_factory.mktemp("ranks")))

    def part(prefix):
        return [{k.split("/", 1)[1]: v for k, v in r.items() if k.startswith(prefix + "/")} for r in (r0, r1)]

    return part


def adam_steps(opt) -> int:
    return max(int(s["step"]) for s in opt.state.values()) if opt.state else 0


# ----------------------------------------------------------------------------- a. one backprop loss


def test_a_backprop_fits_a_line():
    torch.manual_seed(0)
    model = Regressor()
    x = torch.randn(64, 4)
    batch = {"x": x, "y": x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 1.0}
    engine = Engine(model, defaults=OptimDefaults(lr=0.1), settings=StepSettings(max_steps=200, grad_clip=None))
    first = engine.train_step(batch)["loss"]
    for _ in range(199):
        last = engine.train_step(batch)["loss"]
    assert last < 0.05 * first
    assert list(engine.optimizers) == ["main"] and engine.step == 200


def test_a_weight_decay_only_on_matrices():
    opt = engine_for(Regressor()).optimizers["main"]
    decayed = {tuple(p.shape): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    # nanoGPT's grouping: the (1, 4) weight is decayed at the trainer's rate, the bias is not.
    assert decayed == {(1, 4): DEFAULTS.weight_decay, (1,): 0.0}


# ----------------------------------------------------------------------------- b. adversarial


def test_b_two_learning_rates_n_critic_and_lazy_r1():
    model = ToyGAN(g_lr=1e-4, d_lr=4e-4, n_critic=3, r1_every=4)
    engine = engine_for(model)
    g_opt, d_opt = engine.optimizers["gen"], engine.optimizers["disc"]
    c = 4 / 5  # Karras et al. 2020, appendix B: lazy regularisation rescales Adam
    assert g_opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert d_opt.param_groups[0]["lr"] == pytest.approx(4e-4 * c)
    assert d_opt.param_groups[0]["betas"] == pytest.approx((0.9**c, 0.99**c))
    assert [p.name for p in model.recipe.phases_at(0)] == ["disc", "disc", "disc", "disc_reg", "gen"]
    assert [p.name for p in model.recipe.phases_at(1)] == ["disc", "disc", "disc", "gen"]

    batch = {"x": torch.randn(32, 2)}
    for _ in range(8):
        logs = engine.train_step(batch)
    # 8 generator steps; 3 critic steps a step plus the R1 step at steps 0 and 4.
    assert adam_steps(g_opt) == 8
    assert adam_steps(d_opt) == 8 * 3 + 2
    assert {"disc/loss", "gen/loss"} <= set(logs)


def test_b_a_phase_moves_only_its_network():
    torch.manual_seed(0)
    model = ToyGAN()
    engine = engine_for(model)
    g0 = [p.clone() for p in model.generator.parameters()]
    d0 = [p.clone() for p in model.discriminator.parameters()]
    seen = []

    class OnlyDisc:  # the recipe's disc phase alone, through the engine
        def __getattr__(self, name):
            return getattr(model.recipe.__class__, name).__get__(model.recipe)

        def phases_at(self, step):
            return model.recipe.phases_at(step)[:1]

    engine.recipe = OnlyDisc()
    engine.train_step({"x": torch.randn(16, 2)})
    seen.append(all(torch.equal(a, b) for a, b in zip(g0, model.generator.parameters())))
    seen.append(not all(torch.equal(a, b) for a, b in zip(d0, model.discriminator.parameters())))
    assert seen == [True, True]


def test_b_dcgan_r1_phase_matches_the_penalty():
    torch.manual_seed(0)
    model = build("dcgan", {"size": "tiny", "r1_gamma": 2.0, "r1_every": 4}, DatasetInfo.for_images((1, 8, 8)))
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    loss, logs = model({"x": x}, "disc_reg")
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model.discriminator(xr).sum(), xr)
    # Mescheder et al. 2018, eq. 9: gamma / 2 * E|grad D|^2, times the lazy interval.
    assert float(loss) == pytest.approx(0.5 * 2.0 * float(g.pow(2).flatten(1).sum(1).mean()) * 4, rel=1e-5)
    assert [p.name for p in model.recipe.phases_at(8)] == ["disc", "disc_reg", "gen"]


# ----------------------------------------------------------------------------- c. four networks, two pairs


def test_c_cycle_gan_reduces_only_the_stepped_pair(ranks):
    r0, r1 = ranks("cycle")
    n_gen = sum(p.numel() for m in ("g_ab", "g_ba") for p in getattr(ToyCycleGAN(), m).parameters())
    n_disc = sum(p.numel() for m in ("d_a", "d_b") for p in getattr(ToyCycleGAN(), m).parameters())
    # One all-reduce per phase, each exactly the stepped pair's parameters.
    assert r0["reduced"].tolist() == [n_disc, n_gen]
    # d_a, d_b, g_ab, g_ba (sorted): one gradient per parameter (weight and bias) per network,
    # each in its own phase only. A network that did not require grad in the other phase
    # would have fired its hooks there too (D is differentiated through in the gen phase).
    assert r0["grads"].tolist() == [2, 2, 2, 2]
    for k in r0:
        if k not in ("reduced", "grads"):
            assert torch.equal(r0[k], r1[k]), k  # different data, same averaged update


# ----------------------------------------------------------------------------- d. contrastive divergence


def test_d_cd_gradient_is_the_difference_of_statistics():
    torch.manual_seed(0)
    rbm = BernoulliRBM(persistent=False)
    v = torch.bernoulli(torch.full((16, 6), 0.3))
    torch.manual_seed(1)
    rbm.recipe.update(rbm, {"x": v}, rbm.recipe.phases_at(0)[0], 0, 1.0)
    torch.manual_seed(1)
    v1 = rbm.gibbs(v, 1)  # the same draws the update made
    ph0, ph1 = torch.sigmoid(v @ rbm.W + rbm.c), torch.sigmoid(v1 @ rbm.W + rbm.c)
    # Hinton 2002: dlogp/dW ~ <v h>_data - <v h>_model; the optimizer descends its negative.
    assert torch.allclose(rbm.W.grad, -(v.T @ ph0 - v1.T @ ph1) / 16, atol=1e-6)
    assert torch.allclose(rbm.b.grad, -(v.mean(0) - v1.mean(0)), atol=1e-6)


def test_d_pcd_learns_and_resumes_exactly():
    data = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.float).repeat(16, 1)

    def run(model, engine, steps):
        for _ in range(steps):
            torch.manual_seed(step_seed(0, 0, engine.step))
            engine.train_step({"x": data})

    torch.manual_seed(0)
    straight = BernoulliRBM(num_chains=32)
    e1 = Engine(straight, defaults=OptimDefaults(lr=0.5, betas=(0.5, 0.999)), settings=StepSettings(max_steps=60, grad_clip=None))
    run(straight, e1, 60)

    torch.manual_seed(0)
    first = BernoulliRBM(num_chains=32)
    e2 = Engine(first, defaults=OptimDefaults(lr=0.5, betas=(0.5, 0.999)), settings=StepSettings(max_steps=60, grad_clip=None))
    run(first, e2, 25)
    saved_model, saved_engine = first.state_dict(), e2.state_dict()
    assert "chains" in saved_model  # the persistent chains travel with the weights

    torch.manual_seed(123)  # a different fresh model: everything must come from the checkpoint
    resumed = BernoulliRBM(num_chains=32)
    e3 = Engine(resumed, defaults=OptimDefaults(lr=0.5, betas=(0.5, 0.999)), settings=StepSettings(max_steps=60, grad_clip=None))
    resumed.load_state_dict(saved_model)
    e3.load_state_dict(saved_engine, step=25, ema=None)
    run(resumed, e3, 35)
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    # And it learned the two patterns: reconstructions after one sweep are mostly right.
    torch.manual_seed(0)
    assert float((straight.gibbs(data, 1) - data).abs().mean()) < 0.15


def test_d_cd_hooks_binarise_initialise_and_log_the_surrogate():
    """The model's hooks: images binarised into visible units, visible biases from the first
    batch, and cd_loss = mean F(data) - mean F(negatives), whose gradient the update is."""
    from genray.components.models.rbm import RBM

    torch.manual_seed(0)
    rbm = RBM(image_shape=(1, 2, 3), hidden=4, persistent=False)
    x = torch.rand(16, 1, 2, 3) * 2 - 1  # grey images in [-1, 1]
    v = (x.flatten(1) > 0).float()
    Engine(rbm, defaults=DEFAULTS, settings=StepSettings(max_steps=1, grad_clip=None)).initialize({"x": x})
    p = (v.sum(0) + 1) / 18  # Hinton 2010 §8, with a pseudo-image on and one off
    assert torch.allclose(rbm.b, torch.logit(p)) and torch.equal(rbm.base_bias, rbm.b.detach())
    torch.manual_seed(1)
    logs = rbm.recipe.update(rbm, {"x": x}, rbm.recipe.phases_at(0)[0], 0, 1.0)
    torch.manual_seed(1)
    v1 = rbm.gibbs(v, 1)  # the same draws the update made
    ph0, ph1 = torch.sigmoid(v @ rbm.W + rbm.c), torch.sigmoid(v1 @ rbm.W + rbm.c)
    assert torch.allclose(rbm.W.grad, -(v.T @ ph0 - v1.T @ ph1) / 16, atol=1e-6)
    assert float(logs["cd_loss"]) == pytest.approx(float(rbm.free_energy(v).mean() - rbm.free_energy(v1).mean()),
                                                   abs=1e-5)


def test_d_cd_weight_decay_only_on_the_weights():
    """Hinton 2010 §10: L2 weight decay on W; the biases are not pulled towards 0."""
    torch.manual_seed(0)
    rbm = BernoulliRBM()
    with torch.no_grad():
        rbm.b.fill_(1.0), rbm.c.fill_(1.0)
    before = {k: p.detach().clone() for k, p in rbm.named_parameters()}
    opt = rbm.recipe.configure_optimizers(rbm, OptimDefaults(lr=0.1, betas=(0.0, 0.999), weight_decay=0.5))["main"]
    for p in rbm.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.allclose(rbm.W, before["W"] * (1 - 0.1 * 0.5))
    assert torch.equal(rbm.b, before["b"]) and torch.equal(rbm.c, before["c"])


# ----------------------------------------------------------------------------- e. a frozen model by reference


def test_e_a_referenced_model_is_frozen_and_loaded():
    torch.manual_seed(0)
    data = DatasetInfo.for_images((1, 8, 8), 10)
    ae = build("vae", {"size": "tiny", "latent_channels": 2, "latent_downsample": 1}, data)
    weights = save_safetensors({k: v.contiguous() for k, v in ae.state_dict().items()})
    ref = ModelRef("models:/ae@champion", "vae", {"size": "tiny", "latent_channels": 2, "latent_downsample": 1},
                   data.to_json(), weights)
    ldm = build("diffusion", {"size": "tiny", "num_timesteps": 10, "autoencoder": ref}, data)
    assert all(torch.equal(a, b) for a, b in zip(ae.state_dict().values(), ldm.autoencoder.state_dict().values()))
    assert not any(p.requires_grad for p in ldm.autoencoder.parameters())
    engine = engine_for(ldm)
    stepped = {id(p) for p in engine.params["main"]}
    assert not any(id(p) in stepped for p in ldm.autoencoder.parameters())
    # The checkpoint form drops the weights; rebuilding from it gives the same architecture.
    again = build("diffusion", {"size": "tiny", "num_timesteps": 10, "autoencoder": ModelRef.parse(ref.to_json())}, data)
    again.load_state_dict(ldm.state_dict())


def test_e_every_model_reference_is_typed():
    from genray.components.models.refs import ref_arguments

    refs = {f: ref_arguments(b) for f, b in FAMILIES.items() if ref_arguments(b)}
    assert refs == {"diffusion": ["autoencoder", "text_encoder", "image_encoder"], "gpt": ["tokenizer"],
                    "maskgit": ["tokenizer"], "consistency": ["teacher"], "unclip": ["clip", "decoder"]}


# ----------------------------------------------------------------------------- f. an EMA target in the loss


def test_f_ema_target_is_identical_on_every_rank(ranks):
    r0, r1 = ranks("target")
    for k in r0:
        if k.startswith(("target.", "model.")):
            assert torch.equal(r0[k], r1[k]), k


def test_f_ema_target_follows_the_formula_and_is_checkpointed():
    torch.manual_seed(0)
    model = SelfTarget(decay=0.9)
    engine = engine_for(model)
    before = {k: v.clone() for k, v in model.recipe.target.state_dict().items()}
    engine.train_step({"x": torch.randn(8, 3)})
    for k, v in model.state_dict().items():
        assert torch.allclose(model.recipe.target.state_dict()[k], 0.9 * before[k] + 0.1 * v, atol=1e-6)
    state = engine.state_dict()
    assert set(state["recipe"]["target"]) == set(model.state_dict())


# ----------------------------------------------------------------------------- g. data-dependent init


def test_g_actnorm_initialises_from_the_first_batch():
    torch.manual_seed(0)
    model = ActNorm()
    engine = engine_for(model, ema_decay=0.999)
    x = torch.randn(256, 3) * torch.tensor([2.0, 0.5, 4.0]) + torch.tensor([1.0, -3.0, 0.0])
    engine.initialize({"x": x})
    z = (x + model.bias) * model.log_scale.exp()
    assert torch.allclose(z.mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z.std(0), torch.ones(3), atol=1e-4)
    # The EMA starts from the initialised weights, not the pre-init ones.
    assert torch.equal(engine.ema.model.bias, model.bias)


def test_g_data_init_is_rank_zeros_everywhere(ranks):
    r0, r1 = ranks("actnorm")
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    assert not torch.allclose(r0["bias"], torch.zeros(3))


# ----------------------------------------------------------------------------- buffers updated in forward


def test_vq_codebook_is_identical_on_every_rank(ranks):
    """The VQ-VAE's EMA codebook: statistics all-reduced, restarts drawn on rank 0 and broadcast,
    so weights and codebook agree bit for bit though each rank saw its own data and generator."""
    r0, r1 = ranks("codebook")
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    assert r0["True/dead"] > 0  # codes were restarted


def test_vq_codebook_step_is_the_step_on_both_ranks_batches(ranks):
    r0, _ = ranks("codebook")
    model = vq_codebook_model(restart=False)
    b0, b1 = codebook_batches(0), codebook_batches(1)
    torch.manual_seed(100)
    model.initialize({"x": b0[0]})  # rank 0's init, which the engine broadcast
    model.quantizer.cluster_size.mul_(2)  # ... counted over both ranks' batches
    model.quantizer.code_sum.mul_(2)
    for x0, x1 in zip(b0, b1):
        model({"x": torch.cat([x0, x1])}, "main")
    for k in ("codebook", "cluster_size", "code_sum"):
        torch.testing.assert_close(r0[f"False/quantizer.{k}"], getattr(model.quantizer, k))


def test_sync_gradients_is_a_no_op_alone():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    sync_gradients([p])
    assert torch.equal(p.grad, torch.full((3,), 2.0)) and math.isfinite(float(p.grad.sum()))
