"""`genray data index`: a nearest-neighbour index over a trained CLIP's image embeddings of a
dataset, built with Ray Data, for retrieval-augmented diffusion (components/models/retrieval.py).

    genray data index models:/clip-fashion_mnist/latest --data fashion_mnist
    genray data index models:/clip-fashion_mnist/latest --data fashion_mnist --classes sneaker,"ankle boot" --name shoes
    genray train diffusion/rdm_fashion                     # model.retrieval_index: fashion_mnist-train
    genray sample models:/diffusion-fashion_mnist-rdm/latest --index shoes      # the swapped index

    setup (driver)     resolve the CLIP (a model that embeds images) and the data (a built-in
                       dataset, prepared on first use, or a dataset folder); check the images'
                       shape is the CLIP's and the classes exist; the output folder
    map (Ray Data)     a pool of actors (one GPU each when the cluster has GPUs), each building
                       the CLIP once from its checkpoint's bytes, turns batches of image rows into
                       unit-norm embeddings, (B, D) float32, with their labels
    write (driver)     the rows kept (--classes) in source order: index.safetensors (embeddings,
                       labels) and index.json (rows, dim, the CLIP's weight digest and reference,
                       the data, the split, the classes), under <GENRAY_HOME>/indexes/<name>/

The digest is of the CLIP's weights as `checkpoint.build_model` loads them (the EMA weights when
it has them), the same weights a diffusion model whose `model.image_encoder` names that CLIP
holds frozen, so a model refuses an index that another CLIP made.
"""
from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from genray.components.data import decode_batch, normalize_images, read_info, value_names
from genray.components.errors import UserError
from genray.components.models.retrieval import Index, encoder_digest, load_index, save_index
from genray.pipelines import tracking
from genray.pipelines.env import init_ray, verbose
from genray.pipelines.tokenizing import (Progress, actor_pool, checkpoint_files, model_on_actor, resolve_job_model,
                                         resolve_source)

CAPABILITY = "embed"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def indexes_dir(home: Path) -> Path:
    return home / "indexes"


def index_folder(ref: str, home: Path, *, field_name: str) -> Path:
    """Where the index `ref` names lives: a folder holding one, or a name under
    <home>/indexes/. Anything else is a UserError naming `field_name` and the indexes there."""
    folder = Path(ref).expanduser()
    if folder.is_dir():
        return folder.resolve()
    if NAME.match(ref) and (indexes_dir(home) / ref).is_dir():
        return indexes_dir(home) / ref
    there = sorted(p.name for p in indexes_dir(home).iterdir() if p.is_dir()) if indexes_dir(home).is_dir() else []
    raise UserError(f"{field_name} {ref}: no such folder, and no index of that name in {indexes_dir(home)} "
                    f"({'there: ' + ', '.join(there) if there else 'none built yet'}); build one with "
                    "`genray data index CLIP --data NAME`")


def resolve_index(ref: str, home: Path, *, field_name: str = "--index") -> Index:
    return load_index(index_folder(ref, home, field_name=field_name), field_name=f"{field_name} {ref}")


# ----------------------------------------------------------------------------- setup (driver)


@dataclass(frozen=True)
class Embedder:
    checkpoint: Path
    uri: str  # models:/NAME/VERSION (resolved), runs:/ID or the directory
    image_shape: tuple[int, int, int]
    embed_dim: int
    digest: str
    label: str


def resolve_embedder(ref: str, uri: str, home: Path) -> Embedder:
    """The CLIP REF names, checked to embed images."""
    m = resolve_job_model(ref, uri, home, what="CLIP")
    if CAPABILITY not in m.model.capabilities:
        raise UserError(f"CLIP {ref!r} is a {m.state['model']['family']} model, which does not embed images; an index "
                        "needs a trained genray clip (`genray train clip/clip_fashion`)")
    return Embedder(m.checkpoint, m.uri, tuple(m.model.image_shape), int(m.model.embed_dim), encoder_digest(m.model),
                    m.label)


def parse_classes(text: str | None, names: tuple[str, ...], num_classes: int) -> list[int] | None:
    """--classes: comma-separated class ids or names (the dataset's own: "sneaker", "ankle boot")."""
    if text is None:
        return None
    out = []
    for item in (t.strip() for t in text.split(",")):
        if item.isdigit() and int(item) < num_classes:
            out.append(int(item))
        elif item in names:
            out.append(names.index(item))
        else:
            allowed = ", ".join(names) if names else f"ids 0..{num_classes - 1}"
            raise UserError(f"--classes {text}: {item!r} is not a class of this data; classes: {allowed}")
    if not out:
        raise UserError("--classes: name at least one class")
    return sorted(set(out))


# ----------------------------------------------------------------------------- map (Ray Data actors)


class EmbedBatch:
    """A Ray Data actor: builds the CLIP once from its checkpoint's bytes, then embeds each batch
    of image rows: (B, D) float32 unit-norm embeddings and the labels (-1 without a label column)."""

    def __init__(self, files: dict[str, bytes], shape: tuple[int, int, int], threads: int):
        self.model, self.device = model_on_actor(files, threads)
        self.shape = shape  # (H, W, C), as stored

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        x = decode_batch({"image": batch["image"]}, "image", self.shape, normalize=False)["x"]
        with torch.no_grad():
            e = self.model.embed_images(normalize_images(torch.from_numpy(x).to(self.device)))
        labels = np.asarray(batch["label"], dtype=np.int64) if "label" in batch else np.full(len(x), -1, np.int64)
        return {"embedding": e.float().cpu().numpy(), "label": labels}


# ----------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class IndexReport:
    folder: Path
    rows: int  # kept in the index (--classes)
    embedded: int  # images the actors embedded: the whole split
    dim: int
    classes: list[int]
    embedder: Embedder
    actors: int
    device: str
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.embedded / max(self.seconds, 1e-9)


def build_index(ref: str, *, data: str | None = None, split: str = "train", classes: str | None = None,
                name: str | None = None, size: str = "full", seed: int = 0, actors: int | None = None,
                batch_size: int = 512, overwrite: bool = False, home: Path,
                say: Callable[[str], Any] = print) -> IndexReport:
    import ray.data
    import torch

    if actors is not None and actors < 1:
        raise UserError(f"--actors {actors}: at least 1 (each actor holds one copy of the CLIP)")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: at least 1 image per batch")
    if name is not None and not NAME.match(name):
        raise UserError(f"--name {name!r}: letters, digits, '.', '_' and '-', starting with a letter or digit")
    uri = tracking.tracking_uri(home)
    embedder = resolve_embedder(ref, uri, home)
    source = resolve_source(data, size=size, seed=seed, checkpoint=embedder.checkpoint, home=home, splits=(split,))
    path = source.files[split]
    info = read_info(path)
    c, h, w = embedder.image_shape
    if info.modality != "image" or tuple(info.shape) != (h, w, c):
        raise UserError(f"--data {data}: {path} holds {info.kind.shape_text(info.shape)} {info.modality} data; the CLIP "
                        f"{embedder.uri} embeds {h}x{w}x{c} images")
    labelled = "label" in info.columns
    dataset = source.data.get("dataset")
    names = tuple(value_names(dataset).get("label", ())) if dataset else ()
    kept = parse_classes(classes, names, info.num_classes) if classes is not None else None
    if kept is not None and not labelled:
        raise UserError(f"--classes: {path} has no label column to choose rows by")
    name = name or f"{source.name}-{split}" + (f"-classes-{'-'.join(map(str, kept))}" if kept else "")
    folder = indexes_dir(home) / name
    if folder.exists() and not overwrite:
        raise UserError(f"--name {name}: {folder} already exists; pass --overwrite to replace it, or another --name")
    say(f"CLIP       {embedder.uri}  ({h}x{w} images -> {embedder.embed_dim} numbers; encoder {embedder.digest})")

    init_ray()
    actors, resources, threads, device = actor_pool(actors)

    ds = ray.data.read_parquet(path, columns=["image", "label"] if labelled else ["image"])
    ds.context.execution_options.preserve_order = True  # row i of the index is row i of the split
    ds.context.enable_progress_bars = verbose()
    ds = ds.map_batches(EmbedBatch, batch_size=batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=actors),
                        fn_constructor_kwargs={"files": checkpoint_files(embedder.checkpoint), "shape": (h, w, c),
                                               "threads": threads},
                        max_restarts=0, **resources)
    progress = Progress(info.num_rows, verb="embedded")
    say(f"embedding {info.num_rows:,} {split} images on {actors} {device} actor(s), batches of {batch_size}")
    started = time.perf_counter()
    parts, seen = [], 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        parts.append(batch)
        seen += len(batch["embedding"])
        progress.update(seen, time.perf_counter() - started)
    seconds = time.perf_counter() - started
    progress.done(seen, seconds)
    if seen != info.num_rows:
        raise RuntimeError(f"embedded {seen} rows, but {path} has {info.num_rows}")
    emb = np.concatenate([p["embedding"] for p in parts])
    labels = np.concatenate([p["label"] for p in parts])
    if kept is not None:
        keep = np.isin(labels, kept)
        emb, labels = emb[keep], labels[keep]
    index = Index(torch.from_numpy(emb), torch.from_numpy(labels),
                  {"encoder": embedder.digest, "clip": embedder.uri, "data": source.data, "split": split,
                   "classes": kept, "class_names": [names[k] for k in kept] if kept and names else None,
                   "source": path, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    partial = folder.with_name(f".{folder.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    save_index(partial, index)
    if folder.exists():
        shutil.rmtree(folder)
    partial.rename(folder)
    return IndexReport(folder, index.rows, seen, index.dim, index.classes(), embedder, actors, device, seconds)
