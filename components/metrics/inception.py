"""Inception-v3 pool features for standard FID (Heusel et al. 2017), with the weights pytorch-fid uses.

FID is the Fréchet distance (frechet.py) between Gaussians fitted to the 2048-d "pool3" features
of one particular Inception-v3: the TensorFlow graph inception-2015-12-05 that the original FID
code (TTUR) loads. pytorch-fid ported those weights to `pt_inception-2015-12-05-6726825d.pth`;
this file rebuilds that network in plain torch (no torchvision) with the same state-dict keys,
so that file loads with strict=True. genray never downloads it: the user provides it, by path or
through the environment variable GENRAY_INCEPTION_WEIGHTS.

    path = find_inception_weights(None)           # $GENRAY_INCEPTION_WEIGHTS, or None
    net = load_inception(path)                    # .pth / .pt (weights only) or .safetensors
    feats = extract_inception_features(net, images, device="cuda")   # (N, 2048) float64
    stats = gaussian_stats(feats)
    record = {"fid": frechet_distance(stats, ref_stats), "inception": inception_id(path)}

The network is torchvision's Inception3 layout (1008 logits, no auxiliary classifier) with the
blocks pytorch-fid's `fid_inception_v3` patches to reproduce the TensorFlow graph:
  - Mixed_5b-d, Mixed_6b-e, Mixed_7b: the pool branch averages without counting the zero
    padding (TensorFlow's average pool; torch's default counts it).
  - Mixed_7c: the pool branch takes the max, not the average (a quirk of that graph).
The state dict has no AuxLogits keys: pytorch-fid builds Inception3 with aux_logits=False and
loads the file strictly. `fc` (2048 -> 1008) is kept only so the keys match; features do not
use it.

Preprocessing follows pytorch-fid's InceptionV3 (resize_input=True, normalize_input=True):
  - images (B, C, H, W) float in [-1, 1], genray's convention; C = 1 is repeated to 3 channels;
  - resized to 299x299 with bilinear interpolation, F.interpolate(align_corners=False), which
    is pytorch-fid's `resize_input`;
  - pytorch-fid's `normalize_input` maps [0, 1] to [-1, 1]; genray's images are already there.
Scores are therefore comparable with pytorch-fid's, not with clean-fid's: clean-fid quantises to
uint8 and resizes with PIL bicubic (Parmar et al. 2022 show the resize alone shifts FID).
Nor are they bit-identical to the TensorFlow graph's, whose bilinear resize differs from
torch's (torch-fidelity reimplements it); pytorch-fid accepts that difference, and so do we.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from genray.components.errors import UserError

INCEPTION_ENV = "GENRAY_INCEPTION_WEIGHTS"
FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
# torch.hub names a file <name>-<first 8 hex of its sha256>.<ext>; pytorch-fid's file follows it.
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_LOGITS = 1008  # the 2015 graph's softmax has 1008 outputs, not torchvision's 1000
SUFFIXES = (".pth", ".pt", ".safetensors")


# ---------------------------------------------------------------------------------------------
# Network (Szegedy et al. 2016, "Rethinking the Inception Architecture", fig. 5-7)
# ---------------------------------------------------------------------------------------------


class BasicConv2d(nn.Module):
    """conv (no bias) - BatchNorm(eps=0.001) - ReLU: TensorFlow's conv unit, keys `conv.*`, `bn.*`."""

    def __init__(self, c_in: int, c_out: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_tf(x: Tensor) -> Tensor:
    # TensorFlow's 3x3 "SAME" average pool divides by the in-image pixels only.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block (Mixed_5b-d): 1x1 | 5x5 | double 3x3 | pool; 224 + pool_features channels out."""

    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, 1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_tf(x))
        return torch.cat([b1, b5, b3, bp], dim=1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction (Mixed_6a): stride-2 3x3 | double 3x3 | max pool."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3(x)
        b3d = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b3d, bp], dim=1)


class InceptionC(nn.Module):
    """17x17 block (Mixed_6b-e): 7x7 convolutions factorised into 1x7 and 7x1; 768 channels out."""

    def __init__(self, c_in: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7d = self.branch7x7dbl_1(x)
        b7d = self.branch7x7dbl_3(self.branch7x7dbl_2(b7d))
        b7d = self.branch7x7dbl_5(self.branch7x7dbl_4(b7d))
        bp = self.branch_pool(_avg_pool_tf(x))
        return torch.cat([b1, b7, b7d, bp], dim=1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction (Mixed_7a): 3x3 | 7x7 then 3x3, both stride 2 | max pool."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_2(self.branch7x7x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(b7))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], dim=1)


class InceptionE(nn.Module):
    """8x8 block (Mixed_7b, 7c): 3x3 convolutions split into parallel 1x3 and 3x1; 2048 out.

    pool="avg" for Mixed_7b, "max" for Mixed_7c: the FID graph max-pools there (pytorch-fid's
    FIDInceptionE_2), although the paper and torchvision average.
    """

    def __init__(self, c_in: int, pool: str):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"InceptionE: pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(c_in, 320, 1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)  # (B, 320, 8, 8)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], dim=1)  # (B, 768, 8, 8)
        b3d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3d = torch.cat([self.branch3x3dbl_3a(b3d), self.branch3x3dbl_3b(b3d)], dim=1)  # (B, 768, 8, 8)
        if self.pool == "max":
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _avg_pool_tf(x)
        bp = self.branch_pool(pooled)  # (B, 192, 8, 8)
        return torch.cat([b1, b3, b3d, bp], dim=1)


def preprocess(images: Tensor) -> Tensor:
    """images (B, 1 or 3, H, W) in [-1, 1] -> (B, 3, 299, 299) float32 in [-1, 1], as pytorch-fid
    feeds its network: grey repeated to RGB, then bilinear resize (align_corners=False)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"Inception features need images (B, C, H, W) with C = 1 or 3, in [-1, 1]; "
            f"got shape {tuple(images.shape)}"
        )
    x = images.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)  # (B, 3, H, W)
    return F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)


class InceptionFeatures(nn.Module):
    """images (B, 1 or 3, H, W) in [-1, 1] -> pool3 features (B, 2048), float32.

    Module names match pytorch-fid's `fid_inception_v3()` (torchvision's Inception3 with
    num_classes=1008, aux_logits=False), so its weights file loads with strict=True. Use
    load_inception to get the pretrained network; a bare InceptionFeatures() is random.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(FEATURE_DIM, NUM_LOGITS)  # in the weights file; unused for features

    def forward(self, images: Tensor) -> Tensor:
        x = preprocess(images)  # (B, 3, 299, 299)
        x = self.Conv2d_1a_3x3(x)  # (B, 32, 149, 149)
        x = self.Conv2d_2a_3x3(x)  # (B, 32, 147, 147)
        x = self.Conv2d_2b_3x3(x)  # (B, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 64, 73, 73)
        x = self.Conv2d_3b_1x1(x)  # (B, 80, 73, 73)
        x = self.Conv2d_4a_3x3(x)  # (B, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 192, 35, 35)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # (B, 288, 35, 35)
        x = self.Mixed_6a(x)  # (B, 768, 17, 17)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # (B, 768, 17, 17)
        x = self.Mixed_7a(x)  # (B, 1280, 8, 8)
        x = self.Mixed_7c(self.Mixed_7b(x))  # (B, 2048, 8, 8)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)  # (B, 2048): pool3


# ---------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def extract_inception_features(
    net: InceptionFeatures,
    images: np.ndarray | Tensor,
    batch_size: int = 50,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Pool3 features (N, 2048) as float64, ready for gaussian_stats.

    images (N, 1 or 3, H, W) in [-1, 1] stay where they are; each batch goes to `device`.
    device=None uses the device `net` is on; otherwise `net` is moved there (in place, as
    nn.Module.to does). The network runs in eval mode, and its train/eval mode is restored.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    x = images if isinstance(images, Tensor) else torch.as_tensor(np.asarray(images))
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(
            f"images must be (N, C, H, W) with C = 1 or 3, in [-1, 1]; got shape {tuple(x.shape)}"
        )
    if len(x) == 0:
        raise ValueError("extract_inception_features needs at least one image, got none")
    if device is None:
        device = next(net.parameters()).device
    net.to(device)
    was_training = net.training
    net.eval()
    try:
        out = [net(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    finally:
        net.train(was_training)
    return torch.cat(out).double().numpy()  # (N, 2048)


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------


def find_inception_weights(explicit: str | os.PathLike | None) -> Path | None:
    """The weights path to use: `explicit` if given, else $GENRAY_INCEPTION_WEIGHTS, else None.
    Existence is checked by load_inception, which says what is missing."""
    if explicit is not None and str(explicit) != "":
        return Path(explicit).expanduser()
    env = os.environ.get(INCEPTION_ENV, "")
    return Path(env).expanduser() if env else None


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception weights not found at {path}. FID needs pytorch-fid's {FID_WEIGHTS_FILE} "
            f"(its GitHub release 'fid_weights'); pass its path or set {INCEPTION_ENV}. "
            "genray never downloads it."
        )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """A flat {name: tensor} dict from a .safetensors file, or from a .pth/.pt file unpickled
    with weights_only=True: a file whose pickle would run code is refused, never executed."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(f"{path}: Inception weights must be one of {', '.join(SUFFIXES)}, got '{path.suffix}'")
    if suffix == ".safetensors":
        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as e:
            raise UserError(f"{path}: not a readable safetensors file ({e})") from e
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise UserError(
                f"{path}: refused by torch.load(weights_only=True): the file is corrupt, or it "
                "pickles objects that need code to rebuild. genray only reads plain state dicts; "
                f"re-save it as torch.save(model.state_dict(), ...) or as .safetensors. "
                f"({str(e).splitlines()[0][:200]})"
            ) from e
        except (RuntimeError, EOFError, OSError) as e:
            raise UserError(f"{path}: not a readable torch file ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        kind = type(state).__name__
        raise UserError(
            f"{path}: expected a flat state dict {{name: tensor}} of the FID Inception-v3, got a {kind}"
            + (" with non-tensor values (a training checkpoint? save model.state_dict() alone)" if isinstance(state, dict) else "")
        )
    return dict(state)


def _few(names: list[str], n: int = 5) -> str:
    shown = ", ".join(names[:n])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > n else shown


def _check_keys(path: Path, state: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    # BatchNorm's batch counter is unused in eval mode, and files saved before torch 0.4.1 lack it.
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = sorted(k for k in expected if k not in state and k not in optional)
    unexpected = sorted(k for k in state if k not in expected)
    wrong = [
        f"{k} {tuple(state[k].shape)} (want {tuple(expected[k].shape)})"
        for k in sorted(state.keys() & expected.keys())
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        problems = []
        if missing:
            problems.append(f"missing keys: {_few(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {_few(unexpected)}")
        if wrong:
            problems.append(f"wrong shapes: {_few(wrong)}")
        raise UserError(
            f"{path} is not the FID Inception-v3 state dict (pytorch-fid's {FID_WEIGHTS_FILE}): "
            + "; ".join(problems)
        )


def load_inception(path: str | os.PathLike) -> InceptionFeatures:
    """The FID Inception-v3 with the weights at `path`, on the CPU, in eval mode.

    Accepts pytorch-fid's .pth (or any .pth/.pt/.safetensors holding the same state dict).
    Raises FileNotFoundError if there is no file, ValueError if it cannot be read without
    running code or holds other tensors. Warns if the file is not byte-identical to pytorch-fid's
    (a conversion to .safetensors is expected to warn; the keys and shapes are still checked).
    """
    path = Path(path).expanduser()
    _check_file(path)
    state = _read_state_dict(path)
    net = InceptionFeatures()
    expected = net.state_dict()
    _check_keys(path, state, expected)
    for k, v in expected.items():
        if k not in state:  # only the optional BatchNorm counters reach here
            state[k] = torch.zeros_like(v)
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    net.load_state_dict(state, strict=True)
    digest = _sha256(path)
    if not digest.startswith(FID_WEIGHTS_SHA256_PREFIX):
        warnings.warn(
            f"{path} has sha256 {digest[:12]}..., pytorch-fid's {FID_WEIGHTS_FILE} has "
            f"{FID_WEIGHTS_SHA256_PREFIX}...; the keys match, but scores are comparable with "
            "published FIDs only if these are the same weights",
            stacklevel=2,
        )
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def inception_id(path: str | os.PathLike) -> str:
    """'inception-v3-fid-<first 12 hex of the file's sha256>': record it next to every FID, so a
    score says which weights produced it."""
    path = Path(path).expanduser()
    _check_file(path)
    return f"inception-v3-fid-{_sha256(path)[:12]}"
