"""`genray data tokenize`: a trained tokenizer's code ids for every image of a dataset, written as
a `tokens` dataset that a prior (the GPT family) trains on unchanged.

    genray data tokenize models:/vqvae-fashion_mnist/latest --data fashion_mnist
    genray data tokenize runs:/RUN_ID --data data/photos --out data/photos-tokens --actors 4
    genray train autoregressive/gpt_text --set data.path=OUT/train.parquet --set data.test_path=OUT/test.parquet

The tokenizer is a model with the `tokenize` capability (a VQ-VAE: `tokens(x) -> (B, h, w)` code
ids), named as `genray eval` names a model: models:/NAME/VERSION, models:/NAME@ALIAS,
models:/NAME/latest, runs:/RUN_ID or a checkpoint directory. Each image becomes one row of
`tokens` list<int32>, its h x w grid flattened row-major, with the vocabulary "0".."K-1"; a
`label` column is kept, so a class-conditional prior can train on it. The files also record the
grid, the tokenizer (resolved to its version and run) and the image data they came from
(components/data/parquet.py lists the keys).

    setup (driver)     resolve the tokenizer and check it tokenizes; resolve the images and check
                       their shape is the tokenizer's; the output folder
    map (Ray Data)     a pool of actors (one GPU each when the cluster has GPUs), each loading the
                       tokenizer once, turns batches of image rows into code ids
    write (driver)     rows in source order, through genray's own writer, into a partial folder
                       that is renamed into place at the end
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from genray.components import checkpoint
from genray.components.data import DATASETS, DatasetWriter, decode_batch, normalize_images, read_info
from genray.components.data.parquet import (
    DEFAULT_ROW_GROUP_SIZE, KEY_SOURCE_DATASET, KEY_TOKEN_GRID, KEY_TOKENIZER, KEY_TOKENIZER_RUN,
)
from genray.components.errors import UserError
from genray.pipelines import tracking
from genray.pipelines.data import prepared
from genray.pipelines.env import absolute, init_ray, verbose

SPLITS = ("train", "test")
CAPABILITY = "tokenize"


# ----------------------------------------------------------------------------- setup (driver)


@dataclass(frozen=True)
class Tokenizer:
    checkpoint: Path
    uri: str  # what the output records: models:/NAME/VERSION (resolved), runs:/ID or the directory
    run_id: str | None  # the MLflow run that trained it, when this store knows it
    family: str
    image_shape: tuple[int, int, int]  # (C, H, W)
    grid: tuple[int, int]  # (h, w)
    codebook_size: int
    label: str  # a short name for the default output folder


@dataclass(frozen=True)
class JobModel:
    """The model a Ray Data job runs (a tokenizer, a CLIP), resolved and built once on the driver."""

    checkpoint: Path
    model: Any
    state: dict[str, Any]
    uri: str  # what outputs record: models:/NAME/VERSION (resolved), runs:/ID or the directory
    label: str  # a short name for default output names
    run_id: str | None  # the MLflow run that trained it, when this store knows it


def resolve_job_model(ref: str, uri: str, home: Path, *, what: str) -> JobModel:
    """The checkpoint REF names (as `genray eval` resolves a target), built once here so the job
    can check what it can do; the actors build their own copies. Errors start with `what`."""
    if not ref.startswith(("models:/", "runs:/")) and tracking.looks_like_run_id(ref):
        ref = f"runs:/{ref}"
    try:
        ckpt_dir = tracking.resolve_checkpoint(ref, uri, home / "cache")
    except UserError as e:
        raise UserError(f"{what} {e}") from None
    model, state = checkpoint.build_model(ckpt_dir)
    run_id = state.get("mlflow_run_id")
    if run_id and not tracking.run_exists(uri, run_id):
        run_id = None  # a checkpoint copied from another store
    if ref.startswith("models:/"):
        name, version = tracking.model_version_of(ref, uri)
        resolved, label = f"models:/{name}/{version}", f"{name}-v{version}"
    elif ref.startswith("runs:/"):
        resolved = f"runs:/{ref.removeprefix('runs:/').strip('/').split('/')[0]}"
        label = f"run-{resolved.removeprefix('runs:/')[:8]}"
    else:
        resolved, label = str(ckpt_dir), ckpt_dir.name
    return JobModel(ckpt_dir, model, state, resolved, label, run_id)


def resolve_tokenizer(ref: str, uri: str, home: Path) -> Tokenizer:
    """The tokenizer REF names, checked to tokenize."""
    m = resolve_job_model(ref, uri, home, what="tokenizer")
    family, model = m.state["model"]["family"], m.model
    if CAPABILITY not in model.capabilities:
        raise UserError(f"tokenizer {ref!r} is a {family} model (capabilities: {', '.join(sorted(model.capabilities))}), "
                        f"which does not tokenize; families that do: {', '.join(tokenizing_families())}")
    return Tokenizer(m.checkpoint, m.uri, m.run_id, family, tuple(model.image_shape), tuple(model.grid),
                     int(model.codebook_size), m.label)


def tokenizing_families() -> list[str]:
    """The families whose models declare `tokenize`, read from a tiny model of each (as `genray
    families` does: a tenth of a second for all of them), so no family is named here."""
    from genray.components.models import FAMILIES, build, example_args, example_data

    return [name for name in FAMILIES if CAPABILITY in build(name, example_args(name), example_data(name)).capabilities]


@dataclass(frozen=True)
class Source:
    files: dict[str, str]  # split -> Parquet path
    data: dict[str, Any]  # the images as a config's data section names them
    name: str  # for the default output folder


def resolve_source(data: str | None, *, size: str, seed: int, checkpoint: Path, home: Path,
                   splits: tuple[str, ...]) -> Source:
    """--data: a built-in dataset's name (prepared on first use, as `genray data prepare` writes
    it), a dataset folder (train.parquet, test.parquet: what prepare and import write), or None:
    the data the model of `checkpoint` trained on (`genray directions` reads its data this way too)."""
    if data is None:
        state = json.loads((checkpoint / "state.json").read_text())
        d = state["config"]["data"]
        if d.get("path") is None:
            return resolve_source(d["dataset"], size=d["size"], seed=d["seed"], checkpoint=checkpoint, home=home,
                                  splits=splits)
        files = {"train": absolute(d["path"]), "test": absolute(d["test_path"])}
        return Source({s: files[s] for s in splits}, {"path": files["train"], "test_path": files["test"]},
                      Path(files["train"]).parent.name)
    if data in DATASETS:
        train, test = prepared(data, size, seed, home)
        files = {"train": train, "test": test}
        return Source({s: files[s] for s in splits}, {"dataset": data, "size": size, "seed": seed},
                      f"{data}-{size}-seed{seed}")
    folder = Path(data).expanduser()
    if not folder.is_dir():
        raise UserError(f"--data {data}: not a built-in dataset ({', '.join(sorted(DATASETS))}) nor a dataset folder "
                        "(one holding train.parquet and test.parquet, as `genray data prepare` and `import` write)")
    files = {s: str((folder / f"{s}.parquet").resolve()) for s in SPLITS}
    for s in splits:
        if not Path(files[s]).is_file():
            raise UserError(f"--data {data}: the folder has no {s}.parquet (a dataset folder holds train.parquet "
                            "and test.parquet)")
    return Source({s: files[s] for s in splits}, {"path": files["train"], "test_path": files["test"]},
                  folder.resolve().name)


def check_images(source: Source, tokenizer: Tokenizer, shown: str) -> tuple[dict[str, int], bool]:
    """Every split is image data of the tokenizer's shape (each file read and checked once);
    returns each split's rows and whether every split has labels."""
    c, h, w = tokenizer.image_shape
    rows, labelled = {}, True
    for split, path in source.files.items():
        info = read_info(path)
        if info.modality != "image":
            raise UserError(f"--data {shown}: {path} is {info.modality} data; genray data tokenize reads image "
                            "datasets (kind image)")
        if tuple(info.shape) != (h, w, c):
            raise UserError(f"--data {shown}: {path} holds {info.kind.shape_text(info.shape)} images, but the tokenizer "
                            f"{tokenizer.uri} takes {h}x{w}x{c}; tokenize data of the shape it trained on")
        rows[split], labelled = info.num_rows, labelled and "label" in info.columns
    return rows, labelled


# ----------------------------------------------------------------------------- map (Ray Data actors)


class TokenizeBatch:
    """A Ray Data actor: builds the tokenizer once from its checkpoint's bytes (safetensors and
    JSON only, as `genray eval`'s workers do: no path need exist on the actor's node), then turns
    each batch of image rows into rows of code ids, (B, h*w) int32 row-major."""

    def __init__(self, files: dict[str, bytes], shape: tuple[int, int, int], threads: int):
        self.model, self.device = model_on_actor(files, threads)
        self.shape = shape  # (H, W, C), as stored

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        x = decode_batch({"image": batch["image"]}, "image", self.shape, normalize=False)["x"]  # (B, C, H, W) uint8
        # uint8 to the device, then [-1, 1] there: the same conversion the training loop makes.
        x = normalize_images(torch.from_numpy(x).to(self.device))
        ids = self.model.tokens(x)  # (B, h, w) long
        out = {"tokens": ids.flatten(1).to(torch.int32).cpu().numpy(), "path": batch["path"]}
        if "label" in batch:
            out["label"] = np.asarray(batch["label"], dtype=np.int64)
        return out


def model_on_actor(files: dict[str, bytes], threads: int):
    """A Ray Data actor's model, built from its checkpoint's bytes (safetensors and JSON only, as
    `genray eval`'s workers do: no path need exist on the actor's node), on the actor's GPU when
    it has one (with num_gpus=1 Ray has set CUDA_VISIBLE_DEVICES to it): (model, device)."""
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as d:
        for name, blob in files.items():
            (Path(d) / name).write_bytes(blob)
        model, _ = checkpoint.build_model(d)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), device


def actor_pool(actors: int | None) -> tuple[int, dict[str, float], int, str]:
    """How many actors a Ray Data job's map runs on and what each holds: one GPU each when the
    cluster has GPUs (at most that many actors), else a share of the CPUs that leaves one for
    Ray Data's read tasks (actors holding every CPU leave them waiting forever, shared/
    RAY_NOTES.md). Returns (actors, resources, threads per actor, "GPU" or "CPU")."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = ray.cluster_resources().get("CPU", 1)
    if gpus and actors is not None and actors > gpus:
        raise UserError(f"--actors {actors}: the cluster has {gpus} GPU(s) and each actor takes one; at most {gpus}")
    actors = actors or (min(2, gpus) if gpus else 2)
    if gpus:
        return actors, {"num_gpus": 1}, 1, "GPU"
    per_actor = min(1.0, max(cpus - 1, 0.5) / actors)
    return actors, {"num_cpus": per_actor}, max(1, int(per_actor)), "CPU"


def checkpoint_files(ckpt_dir: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in ckpt_dir.iterdir() if f.suffix in (".safetensors", ".json")}


# ----------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class TokenizeReport:
    out: Path
    files: dict[str, Path]
    rows: dict[str, int]
    tokenizer: Tokenizer
    actors: int
    device: str
    seconds: float  # the Ray Data pass, actor start-up included

    @property
    def images_per_s(self) -> float:
        return sum(self.rows.values()) / max(self.seconds, 1e-9)


def tokenize(ref: str, *, data: str | None = None, out: Path | None = None, size: str = "full", seed: int = 0,
             splits: tuple[str, ...] = SPLITS, actors: int | None = None, batch_size: int = 256,
             overwrite: bool = False, home: Path, say: Callable[[str], Any] = print) -> TokenizeReport:
    import ray
    import ray.data

    # ----------------------------------------------------------------- setup: checked on the driver
    if actors is not None and actors < 1:
        raise UserError(f"--actors {actors}: at least 1 (each actor holds one copy of the tokenizer)")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: at least 1 image per batch")
    uri = tracking.tracking_uri(home)
    tokenizer = resolve_tokenizer(ref, uri, home)
    shown = data if data is not None else "(the tokenizer's training data)"
    source = resolve_source(data, size=size, seed=seed, checkpoint=tokenizer.checkpoint, home=home, splits=splits)
    expected, labelled = check_images(source, tokenizer, shown)
    out = Path(out).expanduser() if out is not None else home / "data" / f"{source.name}-tokens-{tokenizer.label}"
    out = out.resolve()
    if out.exists() and not overwrite:
        raise UserError(f"--out {out}: already exists; pass --overwrite to replace it, or name another folder")
    h, w = tokenizer.grid
    c, height, width = tokenizer.image_shape
    say(f"tokenizer  {tokenizer.uri}  ({tokenizer.family}: {height}x{width} images -> {h}x{w} codes of "
        f"{tokenizer.codebook_size})")

    init_ray()
    actors, resources, threads, device = actor_pool(actors)

    # ----------------------------------------------------------------- map: tokenize on the actors
    columns = ["image", "label"] if labelled else ["image"]
    ds = ray.data.read_parquet(list(source.files.values()), columns=columns, include_paths=True)
    # Rows reach the driver in file order whatever order the actors finish in, so each split's
    # tokens are written in its images' order (row i of the tokens is row i of the images).
    ds.context.execution_options.preserve_order = True  # this dataset's own context
    ds.context.enable_progress_bars = verbose()  # genray's progress line instead
    ds = ds.map_batches(
        TokenizeBatch, batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        fn_constructor_kwargs={"files": checkpoint_files(tokenizer.checkpoint), "shape": (height, width, c),
                               "threads": threads},
        # No actor restarts: with them Ray's core worker prints an error line on every run (its
        # constructor arguments live in the object store, ray-project/ray#53727). A failed run is
        # rerun whole: the output is renamed into place only when every split is written.
        max_restarts=0,
        **resources,
    )

    # ----------------------------------------------------------------- write: on the driver, in order
    # Through genray's writer rather than Dataset.write_parquet: the files must carry the genray.*
    # schema metadata (kind, shape, vocabulary, the grid and the tokenizer). Ray's writer keeps
    # schema metadata only if given the whole arrow schema, writes one file per write task under
    # generated names, and checks nothing; here each split is one checked file, train.parquet and
    # test.parquet, laid out as `genray data prepare` writes them. Tokens are small (h*w int32 per
    # image, a quarter of a 32x32 grey image's bytes), so the driver is not the bottleneck.
    metadata = {KEY_TOKEN_GRID: json.dumps([h, w]), KEY_TOKENIZER: tokenizer.uri,
                KEY_TOKENIZER_RUN: tokenizer.run_id or "", KEY_SOURCE_DATASET: json.dumps(source.data)}
    vocab = [str(i) for i in range(tokenizer.codebook_size)]
    partial = out.with_name(f".{out.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)  # what an interrupted run left
    writers = {path: DatasetWriter(partial / f"{split}.parquet", "tokens", [h * w], vocab, metadata=metadata)
               for split, path in source.files.items()}
    split_of = {path: split for split, path in source.files.items()}
    pending: dict[str, list[dict[str, np.ndarray]]] = {path: [] for path in source.files.values()}
    rows = {split: 0 for split in source.files}
    total = sum(expected.values())
    progress = Progress(total)
    say(f"tokenizing {total:,} images ({', '.join(source.files)}) on {actors} {device} actor(s), "
        f"batches of {batch_size}")
    started = time.perf_counter()
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            paths = np.asarray(batch["path"]).astype(str)
            for path in dict.fromkeys(paths):  # the block's files, in order
                keep = paths == path
                part = {k: v[keep] for k, v in batch.items() if k != "path"}
                key = _match(path, pending)
                pending[key].append(part)
                rows[split_of[key]] += int(keep.sum())
                if sum(len(p["tokens"]) for p in pending[key]) >= DEFAULT_ROW_GROUP_SIZE:
                    _flush(writers[key], pending[key])
            progress.update(sum(rows.values()), time.perf_counter() - started)
        for key, writer in writers.items():
            _flush(writer, pending[key])
    finally:
        for writer in writers.values():
            writer.close()
    seconds = time.perf_counter() - started
    progress.done(sum(rows.values()), seconds)
    if rows != expected:
        raise RuntimeError(f"tokenized {rows} rows, but the source splits have {expected}")

    if out.exists():  # --overwrite: replaced only now that the new folder is whole
        shutil.rmtree(out)
    partial.rename(out)
    files = {split: out / f"{split}.parquet" for split in source.files}
    return TokenizeReport(out, files, rows, tokenizer, actors, device, seconds)


def _match(path: str, pending: dict[str, Any]) -> str:
    """The source file a row's `path` names: Ray Data may drop a scheme or a leading slash."""
    if path in pending:
        return path
    for key in pending:
        if key.lstrip("/") == path.lstrip("/") or key.endswith(path) or path.endswith(key):
            return key
    raise RuntimeError(f"Ray Data returned rows of {path}, which is none of {list(pending)}")


def _flush(writer: DatasetWriter, parts: list[dict[str, np.ndarray]]) -> None:
    """One row group of the buffered parts."""
    if parts:
        writer.write({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
        parts.clear()


class Progress:
    """The one progress line: rewritten in place on a terminal, printed once at the end elsewhere."""

    def __init__(self, total: int, stream=None, *, verb: str = "tokenized"):
        self.total, self.stream, self.verb = total, stream or sys.stdout, verb
        self.tty = self.stream.isatty()

    def text(self, seen: int, seconds: float) -> str:
        return f"{self.verb} {seen:,}/{self.total:,} images | {seen / max(seconds, 1e-9):,.0f} images/s"

    def update(self, seen: int, seconds: float) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + self.text(seen, seconds))
            self.stream.flush()

    def done(self, seen: int, seconds: float) -> None:
        self.stream.write(("\r\033[K" if self.tty else "") + self.text(seen, seconds) + f" | {seconds:.1f} s\n")
        self.stream.flush()
