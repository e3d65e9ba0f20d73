"""Classifier-free guidance (Ho & Salimans 2022, eq. 6) against separate conditional and unconditional calls."""
import pytest
import torch

from genray.components.samplers.ddim import ddim_sample
from genray.components.samplers.guidance import composed_denoiser, guided_denoiser, split_prompt
from genray.components.samplers.schedules import make_schedule

B, L, DIM = 3, 5, 4


class CountingNet:
    """A conditional 'network' with an obvious dependence on every input, counting its calls."""

    def __init__(self):
        self.calls, self.batch_sizes = 0, []

    def __call__(self, x_t, t, y=None, context=None, context_mask=None):
        self.calls += 1
        self.batch_sizes.append(x_t.shape[0])
        out = torch.sin(x_t) + 0.01 * t.float().view(-1, 1, 1, 1)  # (B, C, H, W)
        if y is not None:
            out = out + y.float().view(-1, 1, 1, 1)
        if context is not None:
            pooled = (context * context_mask.unsqueeze(-1)).sum(dim=(1, 2))  # (B,)
            out = out * (1 + pooled.view(-1, 1, 1, 1))
        return out


def inputs():
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(B, 2, 4, 4, generator=g)
    t = torch.tensor([3, 7, 11])
    cond = {
        "y": torch.tensor([1, 0, 2]),
        "context": torch.randn(B, L, DIM, generator=g),
        "context_mask": (torch.rand(B, L, generator=g) > 0.3).float(),
    }
    null = {"y": torch.full((B,), 3), "context": torch.zeros(B, L, DIM), "context_mask": torch.ones(B, L)}
    return x_t, t, cond, null


@pytest.mark.parametrize("scale", [0.0, 1.0, 2.5, 7.5, -0.5])
def test_guided_output_is_uncond_plus_scale_times_difference(scale):
    x_t, t, cond, null = inputs()
    net = CountingNet()
    expected_cond, expected_uncond = net(x_t, t, **cond), net(x_t, t, **null)
    assert not torch.allclose(expected_cond, expected_uncond)
    net.calls, net.batch_sizes = 0, []
    out = guided_denoiser(net, cond, null, scale)(x_t, t)
    torch.testing.assert_close(out, expected_uncond + scale * (expected_cond - expected_uncond))
    # Scales 1 and 0 run one branch on B rows; any other scale one pass on 2B rows.
    assert net.calls == 1
    assert net.batch_sizes == ([B] if scale in (0.0, 1.0) else [2 * B])
    if scale == 1.0:
        assert torch.equal(out, expected_cond)
    if scale == 0.0:
        assert torch.equal(out, expected_uncond)


def test_one_forward_per_sampler_step():
    x_t, _, cond, null = inputs()
    net = CountingNet()
    denoise = guided_denoiser(net, cond, null, guidance_scale=3.0)
    s = make_schedule("cosine", 50)
    x = ddim_sample(denoise, tuple(x_t.shape), s, num_steps=7, generator=torch.Generator().manual_seed(0))
    assert x.shape == x_t.shape and net.calls == 7 and set(net.batch_sizes) == {2 * B}


def test_none_values_batch1_nulls_and_unconditional_models():
    x_t, t, cond, null = inputs()
    net = CountingNet()
    # A None condition is passed through as None to both halves.
    only_y = guided_denoiser(net, {"y": cond["y"], "context": None}, {"y": null["y"], "context": None}, 2.0)
    expected = net(x_t, t, y=null["y"]) + 2.0 * (net(x_t, t, y=cond["y"]) - net(x_t, t, y=null["y"]))
    torch.testing.assert_close(only_y(x_t, t), expected)
    # A null condition of batch 1 stands for every row.
    one = guided_denoiser(net, {"y": cond["y"]}, {"y": torch.tensor([3])}, 2.0)
    torch.testing.assert_close(one(x_t, t), expected)
    # An unconditional model: no keys, guidance is a no-op.
    net.calls = 0
    out = guided_denoiser(net, {}, {}, 4.0)(x_t, t)
    assert torch.equal(out, net(x_t, t)) and net.calls == 2


def test_mismatched_conditions_raise():
    x_t, t, cond, null = inputs()
    net = CountingNet()
    with pytest.raises(ValueError, match="same keys"):
        guided_denoiser(net, cond, {"y": null["y"]}, 2.0)
    with pytest.raises(ValueError, match="both be None"):
        guided_denoiser(net, {"y": cond["y"]}, {"y": None}, 2.0)(x_t, t)
    with pytest.raises(ValueError, match="batch size"):
        guided_denoiser(net, {"y": cond["y"][:2]}, {"y": null["y"][:2]}, 2.0)(x_t, t)
    with pytest.raises(ValueError, match="finite"):
        guided_denoiser(net, cond, null, float("nan"))


# ----------------------------------------------------------------------------- composed guidance


def test_composed_guidance_sums_each_concepts_term():
    """Liu et al. 2022, eq. 10: uncond + sum_i w_i (cond_i - uncond), per sample, in one pass."""
    x_t, t, cond, null = inputs()
    g = torch.Generator().manual_seed(1)
    other = {"y": torch.tensor([2, 2, 0]), "context": torch.randn(B, L, DIM, generator=g),
             "context_mask": torch.ones(B, L)}
    net = CountingNet()
    a, b, u = net(x_t, t, **cond), net(x_t, t, **other), net(x_t, t, **null)
    weights = torch.tensor([[3.0, 3.0, 1.5], [3.0, 0.0, 2.0]])  # sample 1 has no second concept
    net.calls, net.batch_sizes = 0, []
    out = composed_denoiser(net, [cond, other], null, weights)(x_t, t)
    w = weights.view(2, B, 1, 1, 1)
    torch.testing.assert_close(out, u + w[0] * (a - u) + w[1] * (b - u))
    assert net.batch_sizes == [3 * B]
    # One concept is classifier-free guidance at that scale.
    one = composed_denoiser(net, [cond], null, torch.full((1, B), 2.5))(x_t, t)
    torch.testing.assert_close(one, guided_denoiser(net, cond, null, 2.5)(x_t, t))


def test_split_prompt_and_bad_compositions():
    assert split_prompt("a red square on the left AND a blue heart on the right ") == [
        "a red square on the left", "a blue heart on the right"]
    assert split_prompt("a red square and a blue heart") == ["a red square and a blue heart"]  # only " AND "
    with pytest.raises(ValueError, match="every part"):
        split_prompt("a red square AND ")
    x_t, t, cond, null = inputs()
    with pytest.raises(ValueError, match=r"\(K=2, B\)"):
        composed_denoiser(CountingNet(), [cond, cond], null, torch.ones(1, B))
    with pytest.raises(ValueError, match="finite"):
        composed_denoiser(CountingNet(), [cond], null, torch.full((1, B), float("nan")))
