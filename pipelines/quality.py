"""Feature networks and reference statistics: what `genray eval` scores samples with, and what
the training loop's quality probe (KID, FD, class consistency of a few hundred samples at each
eval) uses on rank 0.

    domain classifier   a small CNN trained on the dataset's training split the first time it is
                        needed (CLASSIFIER_RECIPE) and cached under <home>/cache/feature-nets/
    Inception-v3        pool3 features from pytorch-fid's weights file, which the user provides
    reference features  real-image features of a split, cached under <home>/cache/reference/
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from genray.components.data import normalize_images, quantize, read_info
from genray.components.errors import UserError
from genray.components.metrics import classifier as clf
from genray.components.metrics import disentanglement
from genray.components.metrics.frechet import frechet_distance_features
from genray.components.metrics.inception import extract_inception_features, find_inception_weights, inception_id, load_inception
from genray.components.metrics.kid import kid
from genray.pipelines.config import ConfigError, ExperimentSpec
from genray.pipelines.data import DataSource, read_decoded

# How genray trains a dataset's domain classifier. Part of the cache key: change it and every
# dataset gets a new classifier, with a new id in the results.
CLASSIFIER_RECIPE = {"steps": 1000, "batch_size": 128, "lr": 2e-3, "seed": 0, "max_rows": 20_000,
                     "factor_bins": 4, "version": 2}

@dataclass
class Split:
    x: torch.Tensor  # (N, C, H, W) float in [-1, 1]
    y: np.ndarray | None  # (N,) labels
    captions: list[str] | None
    factors: dict[str, np.ndarray]  # factor_* columns


def read_split(path: str, rows: int | None, *, factors: bool = False) -> Split:
    """The first `rows` rows of a Parquet image dataset, decoded here with pyarrow. Of a paired
    dataset, the targets (`image_paired`): the images a model of it makes, which its domain
    classifier and reference features must describe (Pix2Pix: the items, not their edges)."""
    import pyarrow.parquet as pq

    info = read_info(path)
    main = [c.name for c in info.kind.main + info.kind.required]  # what decoding the kind needs (CycleGAN's domain)
    columns = main + [c for c in ("label", "caption") if c in info.columns]
    d = read_decoded(path, columns, info.modality, info.shape, rows)
    if "x_paired" in d:
        d["x"] = d.pop("x_paired")
    factor_cols = [c for c in info.columns if c.startswith("factor_")] if factors else []
    f = {}
    if factor_cols:
        table = pq.read_table(path, columns=factor_cols)
        if rows is not None:
            table = table.slice(0, rows)
        f = {c: table.column(c).to_numpy() for c in factor_cols}
    captions = None
    if "caption" in columns:
        captions = [str(c) for c in pq.read_table(path, columns=["caption"]).column("caption").to_pylist()[: len(d["x"])]]
    return Split(normalize_images(torch.as_tensor(d["x"])), d.get("y"), captions, f)


def fingerprint(path: str) -> str:
    """12 hex digits of sha256 over a dataset's Parquet bytes (a file, or a folder's files in order)."""
    p = Path(path)
    files = sorted(p.rglob("*.parquet")) if p.is_dir() else [p]
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:12]


def factor_codes(factors: dict[str, np.ndarray], max_values: int = 32, num_bins: int = 20) -> tuple[list[str], np.ndarray]:
    """Factor columns as (N, K) ints: a column with few distinct values is indexed by them, a
    continuous one cut into num_bins equal-width bins; constant columns are dropped."""
    names, cols = [], []
    for name, v in sorted(factors.items()):
        values = np.unique(v)
        if len(values) < 2:
            continue
        col = np.searchsorted(values, v) if len(values) <= max_values else disentanglement.discretize(v[:, None], num_bins)[:, 0]
        names.append(name)
        cols.append(col)
    return names, np.stack(cols, axis=1)



# ----------------------------------------------------------------------------- feature networks


@dataclass
class FeatureNet:
    """A network whose features the Fréchet distance, KID and precision/recall compare."""

    name: str  # metric suffix: fd_<name>
    id: str  # which weights, exactly (hash of the file)
    model: torch.nn.Module
    kind: str  # "classifier" (also predicts classes) | "inception"

    def features(self, x: torch.Tensor) -> np.ndarray:
        if self.kind == "inception":

            return extract_inception_features(self.model, x)
        return clf.extract_features(self.model, x)

    def predict(self, x: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([self.model(x[i : i + batch_size].float()).argmax(1).numpy()
                                   for i in range(0, len(x), batch_size)])


def classifier_heads(net, attributes: set[str]) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """The domain classifier's logits per attribute: its main head reads the class, each factor
    head (shapes, scenes) the factor of that name; only the heads of `attributes` are read
    (`genray directions` asks for those it has directions for, so `kept` counts only them)."""
    model = net.model.eval()

    def heads(x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = model.features(x)
        out = {"class": model.head(f)} if "class" in attributes else {}
        out.update({k: h(f) for k, h in model.aux_heads.items() if k in attributes})
        return out

    return heads


def domain_classifier(choice: str, *, train_path: str, dataset: str, home: Path, say=print) -> FeatureNet | None:
    """The feature network `choice` names: "auto" is this dataset's domain classifier, trained on
    its training split the first time (CLASSIFIER_RECIPE) and cached by dataset fingerprint;
    "none" is none; anything else a directory written by components.metrics.classifier."""
    if choice == "none":
        return None
    info = read_info(train_path)
    if choice != "auto":
        path = Path(choice).expanduser()
        try:
            net = FeatureNet(dataset, clf.classifier_id(path), clf.load_classifier(path), "classifier")
        except (FileNotFoundError, UserError) as e:
            raise ConfigError(f"feature_net {choice!r}: {e} (allowed: auto, none, or a saved classifier directory)") from None
        if not info.kind.is_image or net.model.config["in_channels"] != info.shape[2]:
            raise ConfigError(f"feature_net {choice!r} takes {net.model.config['in_channels']}-channel images; "
                              f"{train_path} holds {info.modality} of shape {list(info.shape)}")
        return net
    if not info.kind.is_image or info.num_classes < 2:
        return None  # no labels: nothing to train a classifier on
    recipe = hashlib.sha256(json.dumps(CLASSIFIER_RECIPE, sort_keys=True).encode()).hexdigest()[:8]
    path = home / "cache" / "feature-nets" / f"{dataset}-{fingerprint(train_path)}-r{recipe}"
    if not (path / clf.CONFIG_FILE).exists():
        r = CLASSIFIER_RECIPE
        split = read_split(train_path, r["max_rows"], factors=True)
        # Generative factors, when the data has them, become extra heads (coarse bins for the
        # continuous ones), so the features see every factor and not only the label.
        names, codes = factor_codes(split.factors, max_values=16, num_bins=r["factor_bins"]) if split.factors else ([], None)
        aux = {n.removeprefix("factor_"): codes[:, i] for i, n in enumerate(names)}
        say(f"training the {dataset} domain classifier on {len(split.x)} images "
            f"({r['steps']} steps{', factor heads ' + ', '.join(aux) if aux else ''}; once per dataset, cached in {path})")
        started = time.perf_counter()
        model = clf.train_classifier(split.x, split.y, num_classes=info.num_classes, steps=r["steps"],
                                     batch_size=r["batch_size"], lr=r["lr"], seed=r["seed"], aux=aux)
        clf.save_classifier(model, path)
        say(f"  trained in {time.perf_counter() - started:.0f} s")
    return FeatureNet(dataset, clf.classifier_id(path), clf.load_classifier(path), "classifier")


def inception_net(explicit: str | None) -> FeatureNet | None:

    path = find_inception_weights(explicit)
    if path is None:
        return None
    try:
        return FeatureNet("inception", inception_id(path), load_inception(path), "inception")
    except (FileNotFoundError, UserError) as e:
        raise ConfigError(f"inception weights: {e}") from None


def reference_features(net: FeatureNet, split_path: str, rows: int | None, home: Path) -> np.ndarray:
    """Features of the first `rows` real images of a split, cached per dataset file and network."""
    key = f"{fingerprint(split_path)}-{net.id}-{rows or 'all'}"
    cached = home / "cache" / "reference" / f"{key}.npy"
    if cached.exists():
        return np.load(cached, allow_pickle=False)
    feats = net.features(read_split(split_path, rows).x)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.npy")
    np.save(tmp, feats, allow_pickle=False)
    tmp.replace(cached)  # atomic: a concurrent evaluation never reads half a file
    return feats


QUALITY_REFERENCE_ROWS = 2000


def quality_inputs(spec: ExperimentSpec, data: DataSource, home: Path) -> dict[str, Any] | None:
    """What rank 0 needs to score samples at each eval: the dataset's domain classifier (trained
    and cached on first use, see pipelines/evaluate.py) and its features of held-out images."""
    if spec.trainer.quality_samples == 0 or spec.trainer.feature_net == "none" or not data.info.kind.is_image:
        return None
    dataset = spec.data.dataset if spec.data.path is None else Path(spec.data.path).stem
    try:
        net = domain_classifier(spec.trainer.feature_net, train_path=data.train, dataset=dataset, home=home,
                                         say=lambda line: print(line, flush=True))
    except ConfigError as e:
        raise ConfigError(f"trainer.{e}") from None
    if net is None:
        return None
    return {
        "config": net.model.config,
        "weights": save_safetensors({k: v.contiguous() for k, v in net.model.state_dict().items()}),
        "id": net.id,
        "name": net.name,
        "reference": reference_features(net, data.test, QUALITY_REFERENCE_ROWS, home).astype(np.float32),
    }


class QualityProbe:
    """KID, FD and class consistency of a few hundred samples at each eval (rank 0): curves of
    quality over training. Too few samples for a final figure (FD is biased at this size); the
    same seed every eval, so the curve moves only with the model."""

    def __init__(self, q: dict[str, Any], n: int, seed: int):
        self.net = clf.DomainClassifier(**q["config"])
        self.net.load_state_dict(load_safetensors(q["weights"]))
        self.net.eval()
        self.name, self.reference = q["name"], np.asarray(q["reference"], dtype=np.float64)
        self.n, self.seed = n, seed

    @torch.no_grad()
    def score(self, model: torch.nn.Module) -> dict[str, float]:

        kwargs = {}
        if model.conditioning == "class":
            kwargs["y"] = torch.arange(self.n, device=next(model.parameters()).device) % model.num_classes
        x = model.sample(self.n, generator=torch.Generator().manual_seed(self.seed + 1), **kwargs)
        x = normalize_images(torch.as_tensor(quantize(x)))  # scored as saved to PNG, like genray eval
        feats = clf.extract_features(self.net, x)
        out = {
            f"kid_{self.name}": kid(feats, self.reference, num_subsets=20, subset_size=self.n, seed=self.seed)[0],
            f"fd_{self.name}_n{self.n}": frechet_distance_features(feats, self.reference),
        }
        if "y" in kwargs:
            pred = self.net(x).argmax(1)
            out["class_consistency"] = float((pred == kwargs["y"].cpu()).double().mean())
        return out


