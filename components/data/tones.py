"""Musical tones: short synthetic clips at known pitches, the audio counterpart of digits.

Each clip is a note of the equal-tempered scale with two quieter harmonics, random phases, an
attack/decay envelope and a little noise. The pitch is stored exactly (`pitch_hz`), so a
generative audio model can be checked by the FFT peak of what it samples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .parquet import DatasetWriter

SAMPLE_RATE = 8000
DURATION_S = 0.25  # 2,000 samples: FFT bins of 4 Hz, finer than the 20 Hz between the closest notes (E4, F4)
# C major, C4 to C6: 15 notes. The third harmonic of C6 (3.1 kHz) stays under Nyquist (4 kHz).
NOTE_NAMES = ("C4", "D4", "E4", "F4", "G4", "A4", "B4", "C5", "D5", "E5", "F5", "G5", "A5", "B5", "C6")
_MIDI = (60, 62, 64, 65, 67, 69, 71, 72, 74, 76, 77, 79, 81, 83, 84)
NOTE_HZ = tuple(440.0 * 2.0 ** ((m - 69) / 12) for m in _MIDI)  # A4 = 440 Hz equal temperament
HARMONICS = (1.0, 0.5, 0.25)  # amplitudes of f, 2f, 3f: the fundamental stays the spectral peak
NOISE = 0.01
SIZES = {"tiny": (256, 64), "full": (8_000, 1_000)}
CHUNK = 1_000


def synthesize(label: np.ndarray, rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """(N,) note indices -> (N, T) float32 waveforms in [-1, 1]."""
    n = len(label)
    t = np.arange(num_samples) / SAMPLE_RATE  # (T,)
    f0 = np.asarray(NOTE_HZ)[label]  # (N,)
    wave = np.zeros((n, num_samples))
    for k, amp in enumerate(HARMONICS, start=1):
        phase = rng.uniform(0.0, 2 * np.pi, size=(n, 1))
        wave += amp * np.sin(2 * np.pi * k * f0[:, None] * t + phase)  # (N, T)
    wave /= sum(HARMONICS)
    # A 10 ms linear attack avoids a click (broadband energy at t=0); the decay rate varies so
    # clips differ in more than phase.
    attack = np.minimum(t / 0.01, 1.0)  # (T,)
    decay = np.exp(-rng.uniform(2.0, 8.0, size=(n, 1)) * t)  # (N, T)
    loudness = rng.uniform(0.5, 0.9, size=(n, 1))
    wave = loudness * attack * decay * wave + rng.normal(0.0, NOISE, size=(n, num_samples))
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def prepare(out_dir: Path, *, seed: int = 0, size: str = "full", duration_s: float = DURATION_S) -> dict[str, Path]:
    """Write out_dir/train.parquet and out_dir/test.parquet of labelled note clips."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    num_samples = int(round(duration_s * SAMPLE_RATE))
    if num_samples < 64:
        raise ValueError(f"duration_s must give at least 64 samples at {SAMPLE_RATE} Hz, got {duration_s}")
    seeds = np.random.SeedSequence(seed).spawn(2)
    out_dir = Path(out_dir)
    paths = {}
    for split, n, ss in zip(("train", "test"), SIZES[size], seeds):
        rng = np.random.default_rng(ss)
        label = rng.integers(0, len(NOTE_HZ), size=n)
        path = out_dir / f"{split}.parquet"
        with DatasetWriter(path, "audio", [num_samples]) as writer:
            for start in range(0, n, CHUNK):
                lab = label[start : start + CHUNK]
                writer.write(
                    {
                        "waveform": synthesize(lab, rng, num_samples),
                        "sample_rate": SAMPLE_RATE,
                        "pitch_hz": np.asarray(NOTE_HZ, dtype=np.float32)[lab],
                        "label": lab.astype(np.int64),
                    }
                )
        paths[split] = path
    return paths
