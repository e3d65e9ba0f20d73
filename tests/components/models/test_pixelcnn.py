"""Gated PixelCNN: the masking (no pixel sees itself or a later one; no blind spot), the exact
likelihood against a hand-computed cross-entropy, sampling by seed, and that it learns."""
import math

import pytest
import torch

from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.models.pixelcnn import GatedPixelCNN, build_pixelcnn, pixel_values
from genray.components.training import Engine, OptimDefaults, StepSettings


def net(h: int = 6, w: int = 6, layers: int = 6, seed: int = 0, **kw) -> GatedPixelCNN:
    torch.manual_seed(seed)
    model = GatedPixelCNN(image_shape=(1, h, w), channels=8, layers=layers, **kw).double()
    with torch.no_grad():  # every weight non-zero and large enough that no path cancels by accident
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def dependence(model: GatedPixelCNN, h: int, w: int) -> torch.Tensor:
    """(H*W, H*W): [p, q] = True when the logits of output pixel p depend on input pixel q."""
    x = torch.randn(1, 1, h, w, dtype=torch.float64, requires_grad=True)
    logits = model.logits(x)  # (1, 256, H, W)
    rows = []
    for i in range(h):
        for j in range(w):
            (g,) = torch.autograd.grad(logits[0, :, i, j].sum(), x, retain_graph=True)
            rows.append(g.flatten() != 0)
    return torch.stack(rows)


def test_each_pixel_depends_on_every_earlier_pixel_and_on_nothing_else():
    """Output pixel p: gradient exactly zero for input pixels at or after p in raster order,
    non-zero for every earlier one (6 layers of 3x3 cover the whole 6x6 past). The original
    PixelCNN's masked 3x3 stack would miss pixels up and to the right: its blind spot."""
    h = w = 6
    dep = dependence(net(h, w, layers=6), h, w)
    earlier = torch.ones(h * w, h * w, dtype=torch.bool).tril(diagonal=-1)  # q < p
    assert not (dep & ~earlier).any(), "an output pixel sees itself or a later pixel"
    missing = (earlier & ~dep).nonzero().tolist()
    assert not missing, f"blind spot: (output, input) pairs with no dependence: {missing[:5]}"


def test_the_receptive_field_grows_with_depth_and_stays_causal():
    h = w = 6
    p = 3 * w + 3  # pixel (3, 3)
    two, four = (dependence(net(h, w, layers=n), h, w)[p] for n in (2, 4))
    seen2 = {divmod(q, w) for q in two.nonzero().flatten().tolist()}
    assert {(3, 2), (3, 1), (2, 3), (2, 4), (2, 5)} <= seen2  # left, above, above-right: no blind spot
    assert (3, 0) not in seen2  # two 1x2 horizontal convolutions reach two pixels left
    assert bool((two <= four).all()) and int(four.sum()) > int(two.sum())  # deeper sees more
    assert int(four.sum()) == p  # four layers: all 21 earlier pixels
    assert all(divmod(q, w) < (3, 3) for q in four.nonzero().flatten().tolist())


def test_class_condition_reaches_the_first_pixel():
    model = net(4, 4, num_classes=3)
    x = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    a, b = model.logits(x, torch.tensor([0, 0])), model.logits(x, torch.tensor([2, 2]))
    assert (a[:, :, 0, 0] - b[:, :, 0, 0]).abs().max() > 1e-6


def test_log_prob_is_the_summed_softmax_cross_entropy_of_the_8_bit_values():
    model = net(4, 4).float()
    x = torch.randint(0, 256, (3, 1, 4, 4)).float() / 127.5 - 1.0
    logp = model.logits(x).log_softmax(dim=1)  # (B, 256, H, W)
    v = pixel_values(x)
    by_hand = torch.stack([sum(logp[b, v[b, 0, i, j], i, j] for i in range(4) for j in range(4)) for b in range(3)])
    assert torch.allclose(model.log_prob(x), by_hand, atol=1e-4)
    assert torch.equal(pixel_values(torch.tensor([-1.0, 1.0, 1 / 127.5 - 1])), torch.tensor([0, 255, 1]))
    scores = model.evaluate({"x": x})
    assert torch.isclose(scores["bits_per_dim"], -by_hand.mean() / 16 / math.log(2), atol=1e-5)


def test_samples_are_8_bit_images_the_same_for_a_seed_and_batch_invariant():
    from genray.components.models.layers import StackedGenerators

    model = net(4, 4).float()
    a = model.sample(3, generator=torch.Generator().manual_seed(1))
    assert a.shape == (3, 1, 4, 4) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(pixel_values(a).float() / 127.5 - 1, a)  # on the 8-bit grid
    assert torch.equal(a, model.sample(3, generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(a, model.sample(3, generator=torch.Generator().manual_seed(2)))
    both = model.sample(5, generator=StackedGenerators([(torch.Generator().manual_seed(1), 3),
                                                        (torch.Generator().manual_seed(9), 2)]))
    assert torch.equal(both[:3], a)


def test_it_learns_a_pattern_far_below_8_bits_per_pixel():
    """Half the images are a checkerboard, half its inverse: after the first pixel, each pixel is
    determined by its left or upper neighbour, so about 1 bit per image in total."""
    torch.manual_seed(0)
    board = (torch.arange(6)[:, None] + torch.arange(6)[None, :]) % 2
    imgs = torch.stack([board, 1 - board]).float()[:, None] * 2 - 1  # (2, 1, 6, 6) in {-1, 1}
    model = GatedPixelCNN(image_shape=(1, 6, 6), channels=16, layers=4)
    engine = Engine(model, defaults=OptimDefaults(lr=3e-3), settings=StepSettings(max_steps=150, grad_clip=1.0))
    for _ in range(150):
        engine.train_step({"x": imgs[torch.randint(0, 2, (16,))]})
    bpd = float(model.evaluate({"x": imgs})["bits_per_dim"])
    assert bpd < 0.2, bpd  # from 8 bits/pixel untrained


def test_builder_takes_grey_images_and_explains_the_rest():
    grey = DatasetInfo.for_images((1, 8, 8), 10)
    model = build_pixelcnn(data=grey, size="tiny", conditioning="class")
    assert model.conditioning == "class" and model.capabilities == {"sample", "log_prob", "condition"}
    assert model.sampling_cost(model.sampling_settings()) == 64
    with pytest.raises(UserError, match="grey images"):
        build_pixelcnn(data=DatasetInfo.for_images((3, 8, 8)), size="tiny")
    with pytest.raises(UserError, match="class labels"):
        build_pixelcnn(data=DatasetInfo.for_images((1, 8, 8)), size="tiny", conditioning="class")


def test_windowed_sampling_draws_what_the_whole_image_pass_draws():
    """Sampling runs each pixel on the `reach` rows above it: the same logits, so the same
    images as running the whole image for every pixel."""
    model = net(12, 5, layers=2).float()  # reach 3 rows: most pixels run on a window
    assert model.reach == 3
    x = torch.rand(2, 1, 12, 5) * 2 - 1
    window = model.logits(x[:, :, 4:9])[:, :, -1]  # rows 5..8 see rows >= 5 only: window from 4 is enough
    assert torch.allclose(window, model.logits(x)[:, :, 8], atol=1e-5)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    naive = model.sample_naive(3, generator=gen())
    assert torch.equal(model.sample_windowed(3, generator=gen()), naive)


@pytest.mark.parametrize("layers, kernel, classes", [(2, 3, 0), (4, 5, 3)])
def test_the_row_cache_draws_what_the_whole_image_pass_draws(layers, kernel, classes):
    """`sample` runs the vertical stack once per row and the horizontal stack on one row per
    pixel: the same images as the whole image per pixel, past the rows the first window covers."""
    model = net(11, 6, layers=layers, kernel=kernel, num_classes=classes).float()
    assert model.reach < 11
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    y = torch.tensor([2, 0, 1]) if classes else None
    cached = model.sample(3, generator=gen(), y=y)
    assert torch.equal(cached, model.sample_naive(3, generator=gen(), y=y))
    assert len(torch.unique(cached)) > 20  # varied images: the check could fail
