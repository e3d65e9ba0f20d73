"""A small CNN trained per labelled image dataset: its penultimate features feed the Fréchet
distance (frechet.py), and its accuracy on a class-conditional model's samples says whether
they show the class they were asked for.

Inception features (FID) are tuned to 299x299 photos; an 8x8 digit means little to them. A
classifier trained on the dataset itself gives features that separate what matters there.

    clf = train_classifier(x_train, y_train, num_classes=10)       # x (N, C, H, W) in [-1, 1]
    print(accuracy(clf, x_test, y_test))
    save_classifier(clf, "runs/classifiers/digits")                 # model.safetensors + config.json
    clf = load_classifier("runs/classifiers/digits")
    feats = extract_features(clf, samples)                          # (N, 128) float64

A saved classifier is a directory with no pickled code; `classifier_id` names it by the hash of
its weights, so a score can record exactly which classifier produced it.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from genray.components.errors import UserError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MIN_SIDE = 8  # two stride-2 stages leave a 2x2 map at 8x8; smaller inputs leave nothing to pool


# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------


def _conv_block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """conv3x3 - BatchNorm - SiLU.

    BatchNorm, not GroupNorm: on `shapes` (one small sprite on a black background) the GroupNorm
    version sat near chance for hundreds of steps and reached 70% test accuracy after 1500,
    where BatchNorm reached 100%. Per-sample normalisation over mostly empty images, followed
    by average pooling, leaves little of a sample's content in the pooled features. Features
    are only ever read in eval mode, where BatchNorm is a fixed per-channel affine map, so a
    sample's features still never depend on the rest of its batch.
    """
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.SiLU(),
    )


class DomainClassifier(nn.Module):
    """x (B, C, H, W) in [-1, 1], any H, W >= 8 -> logits (B, num_classes).

    One conv at full resolution, then two stride-2 stages; global average pooling makes the
    feature vector independent of the image size.
    """

    def __init__(self, *, in_channels: int, num_classes: int, width: int = 32, feature_dim: int = 128,
                 aux_classes: dict[str, int] | None = None):
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("width", width), ("feature_dim", feature_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DomainClassifier: {name} must be a positive int, got {value!r}")
        if num_classes < 2:
            raise ValueError(f"DomainClassifier: num_classes must be at least 2, got {num_classes}")
        aux_classes = dict(aux_classes or {})
        for name, k in aux_classes.items():
            if not isinstance(k, int) or k < 2:
                raise ValueError(f"DomainClassifier: aux_classes[{name!r}] must be an int >= 2, got {k!r}")
        super().__init__()
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "width": width,
                       "feature_dim": feature_dim, "aux_classes": aux_classes}
        self.body = nn.Sequential(
            _conv_block(in_channels, width),  # (B, w, H, W)
            _conv_block(width, 2 * width, stride=2),  # (B, 2w, H/2, W/2)
            _conv_block(2 * width, 2 * width),
            _conv_block(2 * width, 4 * width, stride=2),  # (B, 4w, H/4, W/4)
            _conv_block(4 * width, feature_dim),  # (B, feature_dim, H/4, W/4)
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),  # (B, feature_dim)
        )
        self.head = nn.Linear(feature_dim, num_classes)
        # Extra targets (a dataset's generative factors) only shape the features during training:
        # a shapes classifier asked for the shape alone may ignore colour and position, and then
        # its Fréchet distance could not see a model that gets them wrong.
        self.aux_heads = nn.ModuleDict({name: nn.Linear(feature_dim, k) for name, k in aux_classes.items()})

    def _check(self, x: Tensor) -> None:
        c = self.config["in_channels"]
        if x.ndim != 4 or x.shape[1] != c or x.shape[2] < MIN_SIDE or x.shape[3] < MIN_SIDE:
            raise ValueError(
                f"DomainClassifier expects images (B, {c}, H, W) with H, W >= {MIN_SIDE}, "
                f"in [-1, 1]; got shape {tuple(x.shape)}"
            )

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations (B, feature_dim), float32: what the Fréchet distance compares.
        Call in eval mode (as extract_features does); in train mode BatchNorm uses batch statistics."""
        self._check(x)
        return self.body(x.float())

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))  # (B, num_classes)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def _as_images(x: np.ndarray | Tensor) -> Tensor:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).float()
    if x.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W) floats in [-1, 1], got shape {tuple(x.shape)}")
    return x


def _as_labels(y: np.ndarray | Tensor, n: int, num_classes: int) -> Tensor:
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, Tensor) else y)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"labels must be (N,) with N = {n} (one per image), got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    y = y.long()
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}) for num_classes={num_classes}, got range [{int(y.min())}, {int(y.max())}]")
    return y


def _random_translate(x: Tensor, pad: int, generator: torch.Generator) -> Tensor:
    """Shift each image by up to `pad` pixels each way: replicate-pad, then crop at a random
    offset. No flips: a mirrored 2 or 7 is not a digit."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")  # (B, C, H + 2p, W + 2p)
    oy, ox = torch.randint(0, 2 * pad + 1, (2, b, 1), generator=generator).to(x.device)
    rows = (oy + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (ox + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # (B, C, H, W)


def train_classifier(
    x: np.ndarray | Tensor,
    y: np.ndarray | Tensor,
    *,
    num_classes: int,
    steps: int = 2000,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    augment: bool = True,
    device: str | torch.device = "cpu",
    aux: dict[str, np.ndarray | Tensor] | None = None,
) -> DomainClassifier:
    """Train a DomainClassifier on images x (N, C, H, W) in [-1, 1] and labels y (N,).

    aux: optional extra integer targets per image (name -> (N,) labels in [0, K)), each with
    its own linear head; the loss is the label's cross-entropy plus the mean of theirs.

    AdamW with a cosine decay to 0 over `steps`; batches drawn with replacement. Deterministic
    given the seed (on the CPU), and the caller's global RNG state is left as it was. Returns
    the model in eval mode.
    """
    x = _as_images(x)
    y = _as_labels(y, len(x), num_classes)
    if len(x) == 0:
        raise ValueError("train_classifier needs at least one image")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got steps={steps}, batch_size={batch_size}")
    # Each aux target's class count is read off its labels (at least 2, as a head needs).
    aux_classes = {n: max(2, int(np.asarray(v).max()) + 1) for n, v in (aux or {}).items()}
    aux_y = {n: _as_labels(v, len(x), aux_classes[n]) for n, v in (aux or {}).items()}
    device = torch.device(device)
    x, y = x.to(device), y.to(device)
    # Shifts of 1 px are already an eighth of an 8x8 digit; larger images take 2.
    pad = 1 if min(x.shape[2], x.shape[3]) < 16 else 2

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DomainClassifier(in_channels=x.shape[1], num_classes=num_classes, aux_classes=aux_classes).to(device)
    aux_y = {n: v.to(device) for n, v in aux_y.items()}
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    g = torch.Generator().manual_seed(seed)

    model.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (batch_size,), generator=g).to(device)
        xb, yb = x[idx], y[idx]
        if augment:
            xb = _random_translate(xb, pad, g)
        if aux_y:
            h = model.features(xb)
            loss = F.cross_entropy(model.head(h), yb) + sum(
                F.cross_entropy(model.aux_heads[n](h), v[idx]) for n, v in aux_y.items()) / len(aux_y)
        else:
            loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def _batched(fn, model: DomainClassifier, x: np.ndarray | Tensor, batch_size: int) -> Tensor:
    """fn(model, batch) over x in eval mode, results concatenated on the CPU."""
    x = _as_images(x)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = [fn(model, x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    if not out:
        raise ValueError("need at least one image, got none")
    return torch.cat(out)


def accuracy(model: DomainClassifier, x: np.ndarray | Tensor, y: np.ndarray | Tensor, batch_size: int = 1024) -> float:
    """Fraction of images whose argmax logit is their label."""
    pred = _batched(lambda m, xb: m(xb).argmax(dim=1), model, x, batch_size)
    y = _as_labels(y, len(pred), model.config["num_classes"])
    return float((pred == y).double().mean())


def extract_features(model: DomainClassifier, x: np.ndarray | Tensor, batch_size: int = 1024) -> np.ndarray:
    """Penultimate features (N, feature_dim) as float64, ready for gaussian_stats."""
    return _batched(lambda m, xb: m.features(xb), model, x, batch_size).double().numpy()


# ---------------------------------------------------------------------------------------------
# Saving and loading
# ---------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_classifier(model: DomainClassifier, path: str | os.PathLike) -> Path:
    """Write path/model.safetensors and path/config.json (constructor args + the weights' sha256)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    save_file(weights, str(path / WEIGHTS_FILE))
    config = {**model.config, "sha256": _sha256(path / WEIGHTS_FILE)}
    # config.json last: its presence marks a complete classifier directory.
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return path


def _read_config(path: Path) -> dict:
    config_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_file.is_file() or not weights_file.is_file():
        raise FileNotFoundError(
            f"{path} is not a saved domain classifier: it needs {CONFIG_FILE} and {WEIGHTS_FILE} "
            "(write one with save_classifier)"
        )
    config = json.loads(config_file.read_text())
    digest = _sha256(weights_file)
    if config.get("sha256") != digest:
        raise UserError(
            f"{path}: {WEIGHTS_FILE} has sha256 {digest[:12]}..., but {CONFIG_FILE} records "
            f"{str(config.get('sha256'))[:12]}...; the weights were changed after saving"
        )
    return config


def load_classifier(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> DomainClassifier:
    """Rebuild a classifier written by save_classifier, in eval mode. Raises ValueError if
    config.json and the weights disagree (a hand-edited config, or a file from another model): a UserError."""
    path = Path(path)
    config = _read_config(path)
    args = {k: config.get(k) for k in ("in_channels", "num_classes", "width", "feature_dim", "aux_classes")}
    model = DomainClassifier(**args)
    weights = load_file(str(path / WEIGHTS_FILE), device="cpu")
    expected = model.state_dict()
    for name in sorted(expected.keys() | weights.keys()):
        want = tuple(expected[name].shape) if name in expected else "absent"
        got = tuple(weights[name].shape) if name in weights else "absent"
        if want != got:
            raise UserError(
                f"{path}: {CONFIG_FILE} ({args}) does not match {WEIGHTS_FILE}: tensor '{name}' "
                f"should be {want} for that config, the file has {got}"
            )
    model.load_state_dict(weights)
    return model.to(map_location).eval()


def classifier_id(path: str | os.PathLike) -> str:
    """A version id for a saved classifier, from the hash of its weights:
    'domain-classifier-<first 12 hex of sha256>'. Record it next to every FD score."""
    return f"domain-classifier-{_read_config(Path(path))['sha256'][:12]}"
