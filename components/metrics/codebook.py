"""How a codebook is used: the perplexity of its code frequencies (van den Oord et al. 2017 and
every VQ paper since report it beside the share of codes used). One definition for the VQ-VAE's
training logs and `genray eval`."""
import torch
from torch import Tensor


def perplexity(counts: Tensor) -> Tensor:
    """exp of the entropy of the code usage counts (K,): K when every code is used equally, 1 when
    one code takes everything."""
    p = counts / counts.sum().clamp_min(1)
    return torch.exp(-torch.special.xlogy(p, p).sum())
