"""Spoken digits: the words "zero" to "nine" said by Debian's espeak-ng speech synthesiser in
many voices, speeds and pitches, at 8 kHz, labelled by digit.

Real speech sounds (formants, voicing, fricatives, a different accent and speaker per clip),
labelled and reproducible from a seed, with nothing to download: the audio counterpart of the
built-in digits. espeak-ng is a system package (`apt-get install espeak-ng`; `make install` does
it when run as root).

Each clip: espeak-ng's 22,050 Hz output, trimmed of its leading and trailing silence, resampled
to 8 kHz (scipy's polyphase filter, 160/441), scaled to a random peak in [0.5, 0.9] and placed at a
random offset in a 0.75 s clip of silence. The voice (one of 7 English accents with one of 15
speaker variants), the speed (150-230 words per minute) and espeak's pitch (20-80 of 0-99) of
each clip are drawn from the seed; train and test draw theirs independently, so most held-out
clips are a voice, speed and pitch never heard in training.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from genray.components.errors import UserError

from .parquet import DatasetWriter

SAMPLE_RATE = 8000
CLIP_SAMPLES = 6000  # 0.75 s
ESPEAK_RATE = 22050
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# espeak-ng's own English voices (no MBROLA databases needed) and speaker variants.
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt3")
SPEED_WPM = (150, 230)  # fast enough that every word fits the clip
PITCH = (20, 80)
SIZES = {"tiny": (128, 64), "full": (3_000, 500)}
SILENCE_FRACTION = 0.02  # trimmed: leading and trailing samples under 2% of the peak


def espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise UserError("spoken_digits needs Debian's espeak-ng speech synthesiser, which is not installed: "
                        "run `apt-get install espeak-ng` (or `make install` as root)")
    return path


def say(word: str, accent: str, variant: str, speed: int, pitch: int, *, exe: str) -> np.ndarray:
    """One word from espeak-ng as float32 at its own 22,050 Hz."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "word.wav"
        subprocess.run([exe, "-v", f"{accent}+{variant}", "-s", str(speed), "-p", str(pitch), "-w", str(path), word],
                       check=True, capture_output=True, timeout=60)
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2 or w.getnchannels() != 1:
                raise RuntimeError(f"espeak-ng wrote {w.getnchannels()} channel(s) of {8 * w.getsampwidth()}-bit "
                                   "audio; expected mono 16-bit")
            rate, pcm = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    if rate != ESPEAK_RATE:
        raise RuntimeError(f"espeak-ng wrote {rate} Hz audio; expected {ESPEAK_RATE}")
    return pcm.astype(np.float32) / 32768.0


def to_clip(speech: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """espeak-ng output -> a CLIP_SAMPLES clip at 8 kHz: trimmed, resampled, scaled, offset."""
    from scipy.signal import resample_poly  # scikit-learn's own dependency

    loud = np.flatnonzero(np.abs(speech) > SILENCE_FRACTION * np.abs(speech).max())
    speech = speech[loud[0] : loud[-1] + 1]
    x = resample_poly(speech, SAMPLE_RATE // 50, ESPEAK_RATE // 50)  # 160 / 441
    if len(x) > CLIP_SAMPLES:  # never at these speeds; a fade keeps a cut from clicking
        x = x[:CLIP_SAMPLES] * np.minimum(1.0, np.arange(CLIP_SAMPLES, 0, -1) / 80.0)
    x = x * (rng.uniform(0.5, 0.9) / np.abs(x).max())
    clip = np.zeros(CLIP_SAMPLES, dtype=np.float32)
    start = int(rng.integers(0, CLIP_SAMPLES - len(x) + 1))
    clip[start : start + len(x)] = x
    return np.clip(clip, -1.0, 1.0)


def prepare(out_dir: Path, *, seed: int = 0, size: str = "full", workers: int = 4) -> dict[str, Path]:
    """Write out_dir/train.parquet and out_dir/test.parquet: label = the digit said."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    exe = espeak()
    out_dir = Path(out_dir)
    paths = {}
    for split, n, ss in zip(("train", "test"), SIZES[size], np.random.SeedSequence(seed).spawn(2)):
        rng = np.random.default_rng(ss)
        label = rng.integers(0, 10, size=n)
        accent = rng.integers(0, len(ACCENTS), size=n)
        variant = rng.integers(0, len(VARIANTS), size=n)
        speed = rng.integers(SPEED_WPM[0], SPEED_WPM[1] + 1, size=n)
        pitch = rng.integers(PITCH[0], PITCH[1] + 1, size=n)
        with ThreadPoolExecutor(workers) as pool:  # espeak-ng runs as a process: threads overlap them
            speech = list(pool.map(lambda i: say(WORDS[label[i]], ACCENTS[accent[i]], VARIANTS[variant[i]],
                                                 int(speed[i]), int(pitch[i]), exe=exe), range(n)))
        clips = np.stack([to_clip(s, rng) for s in speech])
        path = out_dir / f"{split}.parquet"
        with DatasetWriter(path, "audio", [CLIP_SAMPLES]) as writer:
            writer.write({
                "waveform": clips,
                "sample_rate": SAMPLE_RATE,
                "label": label.astype(np.int64),
            })
        paths[split] = path
    return paths
