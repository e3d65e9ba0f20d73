"""8-bit mu-law companding (ITU-T G.711's continuous form): how genray's audio models quantize a
waveform into 256 classes, fine steps near silence and coarse ones near full scale, so quiet
speech keeps its detail in 8 bits (WaveNet paper, eq. 1).

    mu_law_encode(x)   waveform in [-1, 1] -> values 0..255 (0 -> 128)
    mu_law_decode(q)   values 0..255 -> each bin's centre in [-1, 1]

The encoding is torchaudio's `mu_law_encoding` (the formula, not the package: genray does not
depend on torchaudio).
"""
import math

import torch
from torch import Tensor

MU = 255  # 8-bit mu-law: 256 levels
LEVELS = MU + 1


def mu_law_encode(x: Tensor) -> Tensor:
    """Waveform in [-1, 1] -> mu-law values 0..255 (int64): f(x) = sign(x) ln(1 + mu|x|) / ln(1 + mu),
    then the [-1, 1] range cut into 256 equal bins. 0 -> 128."""
    x = torch.as_tensor(x).float().clamp(-1.0, 1.0)
    f = torch.sign(x) * torch.log1p(MU * x.abs()) / math.log1p(MU)
    return ((f + 1.0) / 2.0 * MU + 0.5).floor().long().clamp(0, MU)


def mu_law_decode(q: Tensor) -> Tensor:
    """mu-law values 0..255 -> waveform in [-1, 1] (float32), the inverse of the companding
    at each bin's centre: x = sign(f) ((1 + mu)^|f| - 1) / mu, f = 2q/mu - 1."""
    f = torch.as_tensor(q).double() * (2.0 / MU) - 1.0
    return (torch.sign(f) * torch.expm1(f.abs() * math.log1p(MU)) / MU).float()
