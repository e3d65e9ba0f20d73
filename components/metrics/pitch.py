"""The pitch of a clip, read off its spectrum: what a conditioned audio model is checked by.

    peak_hz(clips, rate)                      the frequency of each clip's largest FFT magnitude
    semitones(f, target)                      12 log2(f / target): 1 is one step of the piano
    pitch_accuracy(clips, rate, target_hz)    the share of clips whose peak lies within half a
                                              semitone of the pitch asked for

The FFT peak is the fundamental for the built-in tones (components/data/tones.py puts the
harmonics at half and a quarter of its amplitude). A Hann window keeps a strong note's leakage
from lifting a far bin; the bin width is rate / T (4 Hz for the tones' 0.25 s at 8 kHz), finer
than the 15.6 Hz half-semitone at their lowest note, C4.
"""
from __future__ import annotations

import numpy as np


def peak_hz(clips: np.ndarray, sample_rate: int) -> np.ndarray:
    """(N, T) or (T,) waveforms -> (N,) the frequency in Hz of each one's spectral peak (DC and
    the clip's mean excluded)."""
    x = np.asarray(clips, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] < 4:
        raise ValueError(f"peak_hz expects (N, T) clips with T >= 4, got shape {x.shape}")
    x = (x - x.mean(axis=1, keepdims=True)) * np.hanning(x.shape[1])
    spectrum = np.abs(np.fft.rfft(x, axis=1))
    spectrum[:, 0] = 0.0
    return np.argmax(spectrum, axis=1) * sample_rate / x.shape[1]


def semitones(hz: np.ndarray, target_hz: np.ndarray) -> np.ndarray:
    """Signed distance in equal-tempered semitones: 12 log2(hz / target) (inf below 0 Hz peaks)."""
    with np.errstate(divide="ignore"):
        return 12.0 * np.log2(np.asarray(hz, dtype=np.float64) / np.asarray(target_hz, dtype=np.float64))


def pitch_accuracy(clips: np.ndarray, sample_rate: int, target_hz: np.ndarray) -> float:
    """The share of clips whose spectral peak is the note asked for: within half a semitone."""
    return float(np.mean(np.abs(semitones(peak_hz(clips, sample_rate), target_hz)) < 0.5))
