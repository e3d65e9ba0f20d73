"""Consistency models against Song et al. 2023's formulas: the boundary condition, c_skip/c_out,
the Karras levels, the CD target as a DDIM step of the teacher, CT's shared noise, the EMA target's
decay rule, Algorithm 1, seeds, and the errors a user can meet. (The protocol every family passes
is in test_families.py.)"""
import math

import numpy as np
import pydantic
import pytest
import torch
from safetensors.torch import save as save_safetensors
from sklearn.datasets import load_digits

from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.models import build
from genray.components.models.consistency import (SIGMA_MIN, build_consistency, interp, karras_sigmas,
                                                  pseudo_huber, sampling_levels, scalings, squared_l2,
                                                  teacher_ddim_step, teacher_timesteps)
from genray.components.samplers.prediction import to_x0_eps
from genray.components.models.layers import StackedGenerators
from genray.components.models.refs import ModelRef
from genray.components.samplers import ddim
from genray.components.training import Engine, OptimDefaults, StepSettings

SHAPE = (1, 8, 8)
DIGITS = DatasetInfo.for_images(SHAPE, 10)
TEACHER_ARGS = {"size": "tiny", "num_timesteps": 50}


def nonzero_output(net: torch.nn.Module, seed: int) -> None:
    """The UNet's output conv starts at zero (F = 0); give it weights so F says something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        net.conv_out.weight.copy_(0.3 * torch.randn(net.conv_out.weight.shape, generator=g))
        net.conv_out.bias.copy_(0.1 * torch.randn(net.conv_out.bias.shape, generator=g))


def student(seed: int = 0, data: DatasetInfo = DIGITS, **kw):
    torch.manual_seed(seed)
    model = build_consistency(data=data, size="tiny", **kw)
    nonzero_output(model.net, seed + 100)
    return model


def teacher_ref(prediction: str = "eps", data: DatasetInfo = DIGITS, **kw) -> tuple[ModelRef, torch.nn.Module]:
    """A (random but non-trivial) diffusion teacher, as the pipeline hands it over: a resolved
    reference with its weights."""
    torch.manual_seed(1)
    args = {**TEACHER_ARGS, "prediction": prediction, **kw}
    teacher = build("diffusion", args, data)
    nonzero_output(teacher.net, 7)
    weights = save_safetensors({k: v.contiguous() for k, v in teacher.state_dict().items()})
    return ModelRef("models:/teacher@champion", "diffusion", args, data.to_json(), weights), teacher


def distilled(prediction: str = "eps", **kw):
    ref, _ = teacher_ref(prediction)
    torch.manual_seed(0)
    model = build("consistency", {"size": "tiny", "num_levels": 10, "teacher": ref, **kw}, DIGITS)
    nonzero_output(model.net, 100)
    return model


def images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ----------------------------------------------------------------------------- the parameterisation


def test_boundary_condition_is_exact():
    """f(x, sigma_min) = x bit for bit (eq. 5), with a network whose output is far from zero."""
    model = student()
    x = images()
    y = torch.arange(6) % 10
    assert model.net(x, torch.zeros(6), y=y).abs().min() > 0  # F itself is not zero
    at_min = model.consistency_fn(x, torch.full((6, 1, 1, 1), SIGMA_MIN), y)
    assert torch.equal(at_min, x)
    level0 = model.sigma_at(torch.zeros(6, dtype=torch.long), 4)  # the lowest training level is sigma_min
    assert torch.equal(model.consistency_fn(x, level0, y), x)
    assert not torch.allclose(model.consistency_fn(x, model.sigma_at(torch.ones(6, dtype=torch.long), 4), y), x)


def test_scalings_are_the_papers():
    sigma = torch.tensor([0.002, 0.1, 0.5, 1.0, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = scalings(sigma)
    for i, s in enumerate(sigma.tolist()):
        # Song et al. 2023, appendix C, with sigma_data = 0.5 and eps = 0.002
        assert c_skip[i].item() == pytest.approx(0.25 / ((s - 0.002) ** 2 + 0.25), rel=1e-12)
        assert c_out[i].item() == pytest.approx((s - 0.002) * 0.5 / math.sqrt(s**2 + 0.25), rel=1e-12, abs=0)
        assert c_in[i].item() == pytest.approx(1 / math.sqrt(s**2 + 0.25), rel=1e-12)
        assert c_noise[i].item() == pytest.approx(250 * math.log(s), rel=1e-12)
    assert c_skip[0] == 1 and c_out[0] == 0  # the boundary condition
    # Values by hand at sigma = 0.5: c_skip = 0.25 / (0.498^2 + 0.25), c_out = 0.498 * 0.5 / sqrt(0.5)
    assert c_skip[2].item() == pytest.approx(0.25 / 0.498004, rel=1e-9)
    assert c_out[2].item() == pytest.approx(0.35213918, rel=1e-7)
    # Far from the data the output is all network: c_skip -> 0, c_out -> sigma_data.
    assert c_skip[-1] < 1e-4 and c_out[-1].item() == pytest.approx(0.5, rel=1e-4)


def test_karras_levels():
    sigmas = karras_sigmas(18, 0.002, 80.0)
    i = torch.arange(18, dtype=torch.float64)
    lo, hi = 0.002 ** (1 / 7), 80 ** (1 / 7)
    expected = (lo + i / 17 * (hi - lo)) ** 7  # Song et al. 2023, sec. 5 (rho = 7)
    assert torch.allclose(sigmas, expected, rtol=1e-12)
    assert sigmas[0].item() == 0.002 and sigmas[-1].item() == 80.0
    assert bool((sigmas[1:] > sigmas[:-1]).all())
    assert sigmas[1].item() == pytest.approx(0.0075, rel=0.01)  # (0.4116 + 1.4584 / 17)^7 by hand
    assert karras_sigmas(2, 0.002, 80.0).tolist() == [0.002, 80.0]
    with pytest.raises(ValueError, match="num_levels"):
        karras_sigmas(1)


def test_distances():
    a = torch.zeros(2, 1, 8, 8)
    b = torch.zeros(2, 1, 8, 8)
    b[0, 0, 0, :2] = torch.tensor([3.0, 4.0])  # |a - b| = 5 for the first row, 0 for the second
    c = 0.00054 * 8  # 0.00054 sqrt(64): Song & Dhariwal 2023, sec. 3.3
    assert torch.allclose(pseudo_huber(a, b), torch.tensor([math.sqrt(25 + c * c) - c, 0.0]))
    assert torch.equal(squared_l2(a, b), torch.tensor([25.0, 0.0]))


def test_sampling_levels_rule():
    assert sampling_levels(18, 1) == [17]
    assert sampling_levels(18, 2) == [17, 9]
    assert sampling_levels(18, 3) == [17, 11, 6]
    assert sampling_levels(18, 17) == list(range(17, 0, -1))
    for bad in (0, 18):
        with pytest.raises(ValueError, match="steps"):
            sampling_levels(18, bad)


# ----------------------------------------------------------------------------- the teacher's step


def test_teacher_timesteps_interpolate_in_log_sigma():
    _, teacher = teacher_ref()
    ab = teacher.schedule.alphas_cumprod
    table = ((1 - ab) / ab).sqrt()
    at_table = teacher_timesteps(table[[0, 7, 30]], ab)
    assert torch.allclose(at_table, torch.tensor([0.0, 7.0, 30.0], dtype=torch.float64), atol=1e-9)
    between = (table[10].log() * 0.75 + table[11].log() * 0.25).exp()
    assert teacher_timesteps(between[None], ab).item() == pytest.approx(10.25, abs=1e-9)
    outside = teacher_timesteps(torch.tensor([1e-5, 1e6], dtype=torch.float64), ab)
    assert outside.tolist() == [0.0, 49.0]  # clamped to the teacher's range


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("t, t_prev", [(30, 20), (49, 0), (5, -1)])
def test_teacher_step_is_the_teachers_ddim_step(prediction, t, t_prev):
    """In VE coordinates x = x_t / sqrt(ab), sigma = sqrt((1 - ab) / ab), one teacher step is the
    teacher's own deterministic DDIM step (samplers/ddim.py), x0 clipped as it clips."""
    _, teacher = teacher_ref(prediction)
    ab = teacher.schedule.alphas_cumprod
    x_t = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(3)) * 1.5
    y = torch.tensor([0, 3, 5, 9])
    out = teacher.net(x_t, torch.full((4,), t), y=y)
    expected = ddim.ddim_step(out, x_t, t, t_prev, teacher.schedule, prediction=prediction, eta=0.0, noise=None)

    sigma = ((1 - ab[t]) / ab[t]).sqrt().float()
    sigma_prev = ((1 - ab[t_prev]) / ab[t_prev]).sqrt().float() if t_prev >= 0 else torch.tensor(0.0)
    ab_prev = float(ab[t_prev]) if t_prev >= 0 else 1.0
    got = teacher_ddim_step(lambda x, tt: teacher.net(x, tt, y=y), x_t / float(ab[t]) ** 0.5, sigma, sigma_prev,
                            torch.full((4,), float(t)), prediction=prediction)
    assert torch.allclose(got * ab_prev**0.5, expected, atol=2e-5, rtol=1e-5)


def test_cd_target_is_a_hand_computed_ddim_step():
    """Algorithm 2: x_hi = x + s_{n+1} z, then one DDIM step of the (eps-prediction, class-
    conditional) teacher from s_{n+1} to s_n, at its fractional timestep; written out by hand."""
    model = distilled("eps")
    teacher = model.teacher
    x, z = images(4), torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([1, 2, 3, 4])
    level = torch.tensor([0, 3, 6, 8])
    x_hi, x_lo = model.training_pair(x, level, z, y)

    sig = karras_sigmas(10)  # the model's levels (sigma_max 80)
    ab_table = teacher.schedule.alphas_cumprod
    log_table = (0.5 * ((1 - ab_table) / ab_table).log()).numpy()
    for b in range(4):
        s_hi, s_lo = float(sig[level[b] + 1]), float(sig[level[b]])
        assert torch.allclose(x_hi[b], x[b] + s_hi * z[b])
        t = float(np.interp(math.log(s_hi), log_table, np.arange(50)))
        ab = 1 / (1 + s_hi**2)
        xt = x_hi[b : b + 1] * math.sqrt(ab)
        eps = teacher.net(xt, torch.tensor([t]), y=y[b : b + 1])
        x0 = ((xt - math.sqrt(1 - ab) * eps) / math.sqrt(ab)).clamp(-1, 1)
        eps = (xt - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        assert torch.allclose(x_lo[b : b + 1], x0 + s_lo * eps, atol=1e-5), b


def test_ct_pair_uses_the_same_noise():
    """Algorithm 3: both points are x + s z with one z."""
    model = student()
    x, z = images(5), torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(9))
    level = torch.tensor([0, 4, 8, 12, 16])
    x_hi, x_lo = model.training_pair(x, level, z)
    sig = karras_sigmas(18).float()
    assert torch.allclose(x_hi, x + sig[level + 1].view(-1, 1, 1, 1) * z)
    assert torch.allclose(x_lo, x + sig[level].view(-1, 1, 1, 1) * z)
    assert torch.equal(x_lo[0], x[0] + SIGMA_MIN * z[0])


def test_loss_is_the_distance_between_online_and_target():
    model = student(distance="l2")
    model.recipe.configure_optimizers(model, OptimDefaults())
    target = model.recipe.target
    nonzero_output(target.net, 55)  # a target that differs from the online model
    batch = {"x": images(6), "y": torch.arange(6)}
    torch.manual_seed(4)
    loss, logs = model(batch, "main", target=target)
    torch.manual_seed(4)
    level = torch.randint(0, 17, (6,))  # n uniform in 1..N-1 (0-indexed pairs), then z
    z = torch.randn(6, *SHAPE)
    x_hi, x_lo = batch["x"] + model.sigma_at(level + 1, 4) * z, batch["x"] + model.sigma_at(level, 4) * z
    online = model.consistency_fn(x_hi, model.sigma_at(level + 1, 4), batch["y"])
    goal = target.consistency_fn(x_lo, model.sigma_at(level, 4), batch["y"])
    assert torch.allclose(loss, (online - goal).pow(2).flatten(1).sum(1).mean(), rtol=1e-5)
    loss.backward()
    assert all(p.grad is None for p in target.parameters())
    with pytest.raises(ValueError, match="target"):
        model(batch, "main")


def test_ict_weighting_is_the_inverse_level_gap_averaging_one_and_weighs_the_loss():
    from genray.components.models.consistency import pair_weights

    sigmas = karras_sigmas(18)
    lam = pair_weights(sigmas, "ict").double()
    gaps = (sigmas[1:] - sigmas[:-1]).double()
    assert torch.allclose(lam * gaps, (lam * gaps)[0].expand(17), rtol=1e-6)  # proportional to 1 / gap
    assert lam.mean().item() == pytest.approx(1.0) and lam[0] > 100 * lam[-1]  # the low levels weigh most
    assert torch.equal(pair_weights(sigmas, "uniform"), torch.ones(17))
    model = student(distance="l2", weighting="ict")
    model.recipe.configure_optimizers(model, OptimDefaults())
    target = model.recipe.target
    nonzero_output(target.net, 55)
    batch = {"x": images(6), "y": torch.arange(6)}
    torch.manual_seed(4)
    loss, _ = model(batch, "main", target=target)
    torch.manual_seed(4)
    level = torch.randint(0, 17, (6,))
    z = torch.randn(6, *SHAPE)
    x_hi, x_lo = batch["x"] + model.sigma_at(level + 1, 4) * z, batch["x"] + model.sigma_at(level, 4) * z
    online = model.consistency_fn(x_hi, model.sigma_at(level + 1, 4), batch["y"])
    goal = target.consistency_fn(x_lo, model.sigma_at(level, 4), batch["y"])
    d = (online - goal).pow(2).flatten(1).sum(1)
    assert torch.allclose(loss, (lam.float()[level] * d).mean(), rtol=1e-5)


def test_ema_target_moves_by_the_decay_rule():
    """theta- <- mu theta- + (1 - mu) theta after each optimizer step (Algorithms 2 and 3, last line)."""
    model = distilled("v", target_decay=0.9)
    engine = Engine(model, defaults=OptimDefaults(lr=0.05), settings=StepSettings(max_steps=10, grad_clip=None))
    target = model.recipe.target
    before = {k: v.clone() for k, v in target.state_dict().items()}
    torch.manual_seed(0)
    engine.train_step({"x": images(8), "y": torch.arange(8)})
    after, online = target.state_dict(), model.state_dict()
    moved = 0
    for k, v in online.items():
        assert torch.allclose(after[k], 0.9 * before[k] + 0.1 * v, atol=1e-6), k
        moved += not torch.equal(after[k], before[k])
    assert moved > 0
    # The teacher is frozen: the engine never steps it, so it is the same in all three copies.
    assert not any(id(p) in {id(q) for q in engine.params["main"]} for p in model.teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in after.items() if k.startswith("teacher."))


# ----------------------------------------------------------------------------- sampling


def test_algorithm_1_by_hand():
    model = student()
    model.eval()
    got = model.sample(4, generator=torch.Generator().manual_seed(3), steps=2)
    g = torch.Generator().manual_seed(3)
    y = torch.arange(4)
    sig = karras_sigmas(18)
    s1, s2 = float(sig[17]), float(sig[9])  # sampling_levels(18, 2)
    x = model.consistency_fn(80.0 * torch.randn(4, *SHAPE, generator=g), torch.full((4, 1, 1, 1), s1), y).clamp(-1, 1)
    x = x + math.sqrt(s2**2 - 0.002**2) * torch.randn(4, *SHAPE, generator=g)
    x = model.consistency_fn(x, torch.full((4, 1, 1, 1), s2), y).clamp(-1, 1)
    assert torch.allclose(got, x, atol=1e-6)


def test_samples_shapes_seeds_and_batches():
    model = student(data=DatasetInfo.for_images((3, 16, 16)))  # unconditional colour images
    gen = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a = model.sample(5, generator=gen(1))
    assert a.shape == (5, 3, 16, 16) and a.dtype == torch.float32 and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, model.sample(5, generator=gen(1)))
    assert not torch.allclose(a, model.sample(5, generator=gen(2)))
    assert not torch.allclose(a, model.sample(5, generator=gen(1), steps=1))
    # A seed names the same images whatever it is batched with (serving batches requests so).
    both = model.sample(5, generator=StackedGenerators([(gen(1), 2), (gen(8), 3)]))
    assert torch.allclose(both[:2], model.sample(2, generator=gen(1)), atol=1e-6)
    assert torch.allclose(both[2:], model.sample(3, generator=gen(8)), atol=1e-6)
    assert model.sampling_cost(model.sampling_settings(steps=5)) == 5
    assert set(model.eval_samples(3, generator_seed=0, batch={})) == {"steps_1", "steps_2"}


def test_class_conditional_samples_follow_y():
    model = student()
    with torch.no_grad():  # the residual branches start at zero; open them so labels reach the output
        for p in model.net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    a = model.sample(3, generator=torch.Generator().manual_seed(0), y=torch.tensor([7, 7, 7]))
    b = model.sample(3, generator=torch.Generator().manual_seed(0))  # classes 0, 1, 2
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match=r"labels in \[0, 10\)"):
        model.sample(2, y=torch.tensor([0, 10]))


# ----------------------------------------------------------------------------- a student started from the teacher


def test_interp_is_numpys():
    xp = torch.tensor([-3.0, -1.0, 0.5, 2.0])
    fp = torch.tensor([0.0, 4.0, 5.0, 9.0])
    x = torch.tensor([-5.0, -3.0, -2.0, 0.0, 0.5, 1.9, 7.0])
    assert torch.allclose(interp(x, xp, fp), torch.from_numpy(np.interp(x.numpy(), xp.numpy(), fp.numpy())).float())


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_teacher_init_starts_as_the_teachers_denoiser(prediction):
    """init "teacher": f(x, s) = c_skip x + (1 - c_skip) x0_hat, x0_hat the teacher's own estimate at
    x_t = x / sqrt(1 + s^2) and its fractional timestep of s, computed here by hand; the boundary
    condition still holds bit for bit; the student's weights are a copy, the teacher's stay frozen."""
    ref, _ = teacher_ref(prediction)
    model = build("consistency", {"num_levels": 10, "teacher": ref, "init": "teacher"}, DIGITS)
    teacher = model.teacher
    x, y = images(), torch.arange(6) % 10
    level = torch.tensor([1, 3, 5, 7, 8, 9])
    sigma = model.sigma_at(level, 4)  # (6, 1, 1, 1)
    ab = 1 / (1 + sigma.double() ** 2)
    x_t = (x.double() * ab.sqrt()).float()
    t = teacher_timesteps(model.sigmas[level], teacher.schedule.alphas_cumprod).float()
    x0, _ = to_x0_eps(prediction, teacher.net(x_t, t, y=y).double(), x_t.double(), ab)
    c_skip = scalings(sigma.double())[0]
    expected = c_skip * x.double() + (1 - c_skip) * x0
    error = (model.consistency_fn(x, sigma, y).double() - expected).abs().flatten(1).max(1).values  # (6,)
    scale = expected.abs().flatten(1).max(1).values  # up to ~300: x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab)
    assert (error <= 1e-5 * scale).all(), (error, scale)  # float32 against float64
    assert torch.equal(model.consistency_fn(x, torch.full((6, 1, 1, 1), SIGMA_MIN), y), x)
    # One training step moves the student's copy only.
    before = [p.clone() for p in teacher.parameters()]
    loss, _ = model({"x": x, "y": y}, "main", target=build("consistency", {"num_levels": 10, "teacher": ref,
                                                                             "init": "teacher"}, DIGITS))
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.net.parameters())
    assert model.net is not teacher.net and all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))


def test_teacher_init_rebuilds_from_its_checkpoint():
    """A checkpoint holds the resolved reference without weights: rebuilding from the arguments and
    loading the state dict gives the trained student back (its network is not the teacher's)."""
    ref, _ = teacher_ref()
    args = {"num_levels": 10, "init": "teacher", "conditioning": "none"}
    model = build("consistency", {**args, "teacher": ref}, DIGITS)
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(0.01)  # "trained": no longer the teacher's weights
    state = model.state_dict()
    bare = ModelRef(ref.ref, ref.family, ref.args, ref.data)  # what a checkpoint stores
    again = build("consistency", {**args, "teacher": bare}, DIGITS)
    again.load_state_dict(state)
    x, sigma = images(), torch.full((6, 1, 1, 1), 2.0)
    assert torch.equal(again.consistency_fn(x, sigma), model.consistency_fn(x, sigma))
    assert not torch.equal(again.net.conv_out.weight, again.teacher.net.conv_out.weight)


# ----------------------------------------------------------------------------- settings and mistakes


def test_modes_and_conditioning_follow_the_teacher():
    assert student().mode == "train" and student().conditioning == "class"
    assert student(conditioning="none").conditioning == "none"
    model = distilled()
    assert model.mode == "distill" and model.conditioning == "class"
    ref, _ = teacher_ref(conditioning="none")
    uncond_teacher = build("consistency", {"size": "tiny", "teacher": ref}, DIGITS)
    assert uncond_teacher.conditioning == "none"  # "auto": the teacher cannot condition, so neither can it
    # An unconditional student of a class-conditional teacher distils its null-label branch.
    model = distilled(conditioning="none")
    seen = {}
    real = model.teacher.net.forward
    model.teacher.net.forward = lambda x, t, **kw: seen.update(kw) or real(x, t, **kw)
    model.training_pair(images(3), torch.tensor([0, 1, 2]), torch.randn(3, *SHAPE))
    assert torch.equal(seen["y"], torch.full((3,), 10))


def test_bad_settings_are_explained():
    model = student(num_levels=6, steps=9)  # the default steps are capped at N - 1
    assert model.sampling_settings().steps == 5
    with pytest.raises(pydantic.ValidationError, match="steps"):
        model.sample(2, steps=6)
    with pytest.raises(pydantic.ValidationError, match="steps"):
        model.sample(2, steps=0)
    with pytest.raises(ValueError, match="unconditional"):
        student(conditioning="none").sample(2, y=torch.tensor([0, 1]))
    with pytest.raises(UserError, match="needs a trained diffusion model as model.teacher"):
        build_consistency(data=DIGITS, size="tiny", mode="distill")
    ref, _ = teacher_ref()
    with pytest.raises(UserError, match="uses no teacher"):
        build("consistency", {"size": "tiny", "mode": "train", "teacher": ref}, DIGITS)
    with pytest.raises(UserError, match="labelled data"):
        build_consistency(data=DatasetInfo.for_images(SHAPE), size="tiny", conditioning="class")
    ref, _ = teacher_ref(conditioning="none")
    with pytest.raises(UserError, match="same 10 classes"):
        build("consistency", {"size": "tiny", "conditioning": "class", "teacher": ref}, DIGITS)
    with pytest.raises(UserError, match="sigma_max=5000 is beyond the teacher's noisiest level"):
        build("consistency", {"size": "tiny", "sigma_max": 5000.0, "teacher": teacher_ref()[0]}, DIGITS)
    vae = ModelRef("models:/vae@champion", "vae", {"size": "tiny"}, DIGITS.to_json())
    with pytest.raises(UserError, match="must be a genray diffusion model"):
        build("consistency", {"size": "tiny", "teacher": vae}, DIGITS)
    big = DatasetInfo.for_images((1, 16, 16), 10)
    with pytest.raises(UserError, match=r"trained on images \(1, 8, 8\)"):
        build("consistency", {"size": "tiny", "teacher": teacher_ref()[0]}, big)
    with pytest.raises(UserError, match="init 'teacher' starts the student from the teacher's weights"):
        build_consistency(data=DIGITS, init="teacher")
    with pytest.raises(UserError, match="model.size, model.channels and model.dropout are the teacher's"):
        build("consistency", {"size": "tiny", "init": "teacher", "teacher": teacher_ref()[0]}, DIGITS)
    with pytest.raises(ValueError, match="one phase"):
        student()({"x": images(2), "y": torch.zeros(2, dtype=torch.long)}, "disc", target=student())


def test_consistency_training_learns_digits():
    """A short real CT run (tiny UNet, 150 AdamW steps on sklearn's digits through the engine and
    its EMATarget recipe) learns to denoise: f(x + s z, s) comes much closer to the clean held-out
    x at the levels s = 1.5 and 4.1 than the untrained f (whose F is 0: f = c_skip (x + s z));
    measured: 0.62 -> 0.23 and 0.72 -> 0.29 (the lowest levels need longer: there f is nearly x + s z)."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8 - 1  # (N, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.long)
    torch.manual_seed(0)
    model = build_consistency(data=DIGITS, size="tiny", num_levels=10)
    engine = Engine(model, defaults=OptimDefaults(lr=2e-3), settings=StepSettings(max_steps=150, grad_clip=1.0))
    xh, yh = x[-200:], y[-200:]
    z = torch.randn(xh.shape, generator=torch.Generator().manual_seed(1))

    @torch.no_grad()
    def errors() -> list[float]:
        model.eval()
        out = []
        for level in (4, 5):  # sigma 1.5 and 4.1 of the 10 levels
            sigma = model.sigma_at(torch.full((200,), level), 4)
            out.append(float((model.consistency_fn(xh + sigma * z, sigma, yh) - xh).pow(2).mean()))
        model.train()
        return out

    before = errors()
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(1500, (64,), generator=g)
        engine.train_step({"x": x[idx], "y": y[idx]})
    after = errors()
    assert all(a < 0.6 * b for a, b in zip(after, before)), (before, after)
