"""Pitch from the FFT peak: exact on pure tones, the fundamental of the built-in tones, and the
half-semitone rule of pitch_accuracy."""
import numpy as np
import pytest

from genray.components.data import tones
from genray.components.metrics.pitch import peak_hz, pitch_accuracy, semitones


def test_peak_of_a_pure_tone_is_its_frequency_to_the_bin():
    rate, n = 8000, 2000  # 4 Hz bins
    t = np.arange(n) / rate
    hz = np.array([100.0, 440.0, 1000.0, 3000.0])
    clips = np.sin(2 * np.pi * hz[:, None] * t + 0.3) + 0.5  # an offset is not a pitch
    assert np.array_equal(peak_hz(clips, rate), hz)
    assert peak_hz(clips[1], rate).tolist() == [440.0]


def test_the_built_in_tones_peak_at_their_stored_pitch():
    rng = np.random.default_rng(0)
    label = np.arange(len(tones.NOTE_HZ))
    clips = tones.synthesize(label, rng, 2000)
    target = np.asarray(tones.NOTE_HZ)[label]
    assert np.abs(semitones(peak_hz(clips, tones.SAMPLE_RATE), target)).max() < 0.2
    assert pitch_accuracy(clips, tones.SAMPLE_RATE, target) == 1.0
    # The neighbouring note is a semitone or more away: every clip fails against it.
    assert pitch_accuracy(clips, tones.SAMPLE_RATE, np.roll(target, 1)) == 0.0


def test_semitones_and_bad_shapes():
    assert semitones(880.0, 440.0) == pytest.approx(12.0)
    assert semitones(440.0 * 2 ** (1 / 12), 440.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="T >= 4"):
        peak_hz(np.zeros((2, 2)), 8000)
