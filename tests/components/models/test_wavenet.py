"""WaveNet: mu-law against the formula, causality and the receptive field, the exact likelihood
against a hand-computed cross-entropy, fast generation drawing exactly what the naive pass draws,
and that it learns a tone's waveform and its pitch."""
import math

import numpy as np
import pytest
import torch

from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.metrics.pitch import peak_hz
from genray.components.models.layers import StackedGenerators
from genray.components.data.mulaw import mu_law_decode, mu_law_encode
from genray.components.models.wavenet import SILENCE, UNIFORM_NATS, WaveNet, build_wavenet
from genray.components.training import Engine, OptimDefaults, StepSettings


def net(*, layers: int = 4, stacks: int = 1, num_classes: int = 0, seed: int = 0, num_samples: int = 64) -> WaveNet:
    torch.manual_seed(seed)
    model = WaveNet(num_samples=num_samples, sample_rate=8000, residual=8, skip=16, layers=layers, stacks=stacks,
                    num_classes=num_classes).double()
    with torch.no_grad():  # weights large enough that no path cancels by accident
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def test_mu_law_follows_the_companding_formula():
    x = torch.tensor([-1.0, -0.5, -1e-3, 0.0, 1e-3, 0.5, 1.0])
    # f(x) = sign(x) ln(1 + 255|x|) / ln 256, then floor((f + 1) / 2 * 255 + 0.5), by hand:
    f = [-1.0, -math.log(128.5) / math.log(256), -math.log(1.255) / math.log(256), 0.0,
         math.log(1.255) / math.log(256), math.log(128.5) / math.log(256), 1.0]
    expected = [math.floor((v + 1) / 2 * 255 + 0.5) for v in f]
    assert mu_law_encode(x).tolist() == expected == [0, 16, 122, 128, 133, 239, 255]
    assert SILENCE == 128
    # Decoding gives each code's centre; re-encoding it gives the code back, for all 256 codes.
    codes = torch.arange(256)
    assert torch.equal(mu_law_encode(mu_law_decode(codes)), codes)
    assert mu_law_decode(torch.tensor([0, 255])).tolist() == [-1.0, 1.0]
    # Fine steps near silence, coarse ones near full scale: the point of companding.
    centres = mu_law_decode(codes)
    steps = centres.diff()
    assert (steps > 0).all() and steps[127] < steps[0] / 100
    # The round trip lands within half a code (1/255 in the companded scale) of every input.
    wave = torch.linspace(-1, 1, 10_001, dtype=torch.float64)
    compand = lambda v: torch.sign(v) * torch.log1p(255 * v.abs()) / math.log(256)  # noqa: E731
    assert (compand(mu_law_decode(mu_law_encode(wave)).double()) - compand(wave)).abs().max() <= 1 / 255 + 1e-6


def test_each_sample_depends_on_the_receptive_field_before_it_and_nothing_else():
    model = net(layers=3, stacks=2)  # dilations 1, 2, 4, 1, 2, 4
    rf = model.receptive_field
    assert rf == 1 + 2 * 7
    x = torch.rand(1, 64, dtype=torch.float64) * 2 - 1
    s = 20
    changed = x.clone()
    changed[0, s] = -x[0, s] if x[0, s].abs() > 0.1 else 0.9  # another mu-law value
    diff = (model.logits(x) - model.logits(changed)).abs().amax(dim=1)[0]  # (T,)
    moved = (diff > 0).nonzero().flatten().tolist()
    assert moved == list(range(s + 1, s + rf + 1)), f"sample {s} reaches {moved}"


def test_class_condition_reaches_the_first_sample():
    model = net(num_classes=3)
    x = torch.zeros(2, 16, dtype=torch.float64)
    logits = model.logits(x, torch.tensor([0, 2]))
    assert not torch.allclose(logits[0, :, 0], logits[1, :, 0])


def test_log_prob_is_the_summed_softmax_cross_entropy_of_the_mu_law_values():
    model = net(num_classes=2)
    x = torch.rand(3, 40, dtype=torch.float64) * 2 - 1
    y = torch.tensor([0, 1, 1])
    logits = model.logits(x, y)  # (B, 256, T)
    q = mu_law_encode(x)
    by_hand = logits.log_softmax(dim=1).gather(1, q[:, None]).squeeze(1).sum(1)
    assert torch.allclose(model.log_prob(x, y=y), by_hand)
    # Without y: the mixture over the classes, under a uniform prior.
    per_class = torch.stack([model.log_prob(x, y=torch.full((3,), k)) for k in range(2)])
    assert torch.allclose(model.log_prob(x), per_class.logsumexp(0) - math.log(2))
    assert torch.allclose(model.evaluate({"x": x, "y": y})["nats_per_sample"], -by_hand.mean() / 40)
    # Step by step: each sample's own term, summing to the clip's.
    steps = model.log_prob_steps(x, y=y)
    assert steps.shape == (3, 40) and (steps <= 0).all()
    assert torch.allclose(steps.sum(1), by_hand)
    with pytest.raises(ValueError, match="needs y"):
        model.log_prob_steps(x)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fast_generation_draws_exactly_what_the_naive_pass_draws(dtype):
    """Paine et al.'s queues give the logits of the whole-receptive-field pass, so one seed gives
    the same clip sample for sample; 150 samples run well past the receptive field (32)."""
    model = net(layers=5, num_classes=4).to(dtype)
    y = torch.tensor([3, 0, 1])
    gen = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    fast = model.sample(3, generator=gen(), y=y, seconds=150 / 8000)
    naive = model.sample_naive(3, generator=gen(), y=y, seconds=150 / 8000)
    assert fast.shape == (3, 150) and fast.dtype == torch.float32
    assert torch.equal(fast, naive)
    assert len(torch.unique(fast)) > 20  # not a constant: the test would pass trivially
    # A clip is the same alone as in a batch with others, by its own generator.
    alone = model.sample(1, generator=torch.Generator().manual_seed(5), y=y[1:2], seconds=150 / 8000)
    stacked = StackedGenerators([(torch.Generator().manual_seed(4), 1), (torch.Generator().manual_seed(5), 1)])
    both = model.sample(2, generator=stacked, y=y[:2], seconds=150 / 8000)
    assert torch.equal(both[1:], alone)


def test_settings_length_and_temperature():
    model = net(num_samples=64)
    settings = model.sampling_settings()
    assert settings.seconds == 64 / 8000 and model.sampling_cost(settings) == 64
    assert model.sample(2, generator=torch.Generator().manual_seed(0)).shape == (2, 64)
    assert model.sampling_cost(model.sampling_settings(seconds=0.5)) == 4000
    cold = model.sample(2, generator=torch.Generator().manual_seed(0), temperature=0.05)
    hot = model.sample(2, generator=torch.Generator().manual_seed(0), temperature=5.0)
    # Cold sampling follows the mode: it moves far less from sample to sample than hot sampling.
    assert cold.diff().abs().mean() < hot.diff().abs().mean()
    with pytest.raises(Exception, match="seconds"):
        model.sampling_settings(seconds=0)


def test_it_learns_two_tones_and_samples_each_at_its_pitch():
    """Two classes, 500 Hz and 1 kHz sines with random phase: the class-conditional model gets
    far below ln 256 nats per sample, and its samples peak at the pitch asked for."""
    torch.manual_seed(0)
    rate, length = 8000, 256
    t = torch.arange(length) / rate
    hz = torch.tensor([500.0, 1000.0])

    def batch(n: int) -> dict[str, torch.Tensor]:
        y = torch.randint(0, 2, (n,))
        phase = torch.rand(n, 1) * 2 * math.pi
        return {"x": 0.8 * torch.sin(2 * math.pi * hz[y, None] * t + phase), "y": y}

    model = WaveNet(num_samples=length, sample_rate=rate, residual=16, skip=32, layers=5, num_classes=2)
    engine = Engine(model, defaults=OptimDefaults(lr=1e-2), settings=StepSettings(max_steps=200, grad_clip=1.0))
    for _ in range(200):
        engine.train_step(batch(16))
    nats = float(model.evaluate(batch(64))["nats_per_sample"])
    assert nats < 0.4 * UNIFORM_NATS, nats  # from ln 256 = 5.55 untrained
    y = torch.tensor([0, 1, 0, 1])
    clips = model.sample(4, generator=torch.Generator().manual_seed(0), y=y, temperature=0.5)
    peaks = peak_hz(clips.numpy(), rate)
    assert np.allclose(peaks, hz[y].numpy(), atol=2 * rate / length), peaks


def test_builder_takes_audio_and_explains_the_rest():
    tones = DatasetInfo("audio", (2000,), 10, 15, None, ("waveform", "sample_rate", "label"), sample_rate=8000)
    model = build_wavenet(data=tones, size="small", conditioning="class")
    assert model.receptive_field == 1024 and model.num_classes == 15
    assert model.capabilities == {"sample", "log_prob", "log_prob_steps", "audio", "condition"}
    assert build_wavenet(data=tones, size="tiny", stacks=3).receptive_field == 1 + 3 * 63
    with pytest.raises(UserError, match="audio"):
        build_wavenet(data=DatasetInfo.for_images((1, 8, 8)), size="tiny")
    with pytest.raises(UserError, match="class labels"):
        build_wavenet(data=DatasetInfo("audio", (64,), 1, 0, None, ("waveform", "sample_rate"), sample_rate=8000),
                      size="tiny", conditioning="class")
