"""Evaluate a trained model: sample quality, likelihood, reconstruction, disentanglement, speed.

    genray eval runs:/<RUN_ID> --num-samples 2000 --workers 2
    genray eval models:/diffusion-digits@champion --set sampling.guidance_scale=2
    python -m genray.pipelines.evaluate TARGET [...]          # the same job, for `ray job submit`

`--set sampling.KEY=VALUE` takes the settings the model declares (its `sampling_settings`), checked
before anything is generated.

TARGET is an MLflow run id (`runs:/ID` or the bare id), a registered model (`models:/NAME@ALIAS`,
`models:/NAME/VERSION`) or a checkpoint directory. Which metrics run depends on what the model
declares and what the data holds:

    every model        samples generated on Ray workers; samples/s and latency per batch
    labelled images    a domain classifier, trained once per dataset and cached ("FD-digits"):
                       Fréchet distance, KID, precision/recall against the reference split,
                       each beside its floor, the same statistic for a real split of the same size
    + Inception file   the same on Inception-v3 pool features (FID) when the user provides the
                       weights (--inception or GENRAY_INCEPTION_WEIGHTS); nothing is downloaded
    "condition"        class consistency: the share of samples the classifier puts in the class
                       they were asked for (a text model: the class of the caption's row)
    text + --clip REF  CLIP score (Hessel et al. 2021): 100 x mean max(cos, 0) of each sample's
                       and its prompt's embeddings under a trained genray CLIP, beside the same
                       score of the real images the prompts came from
    "variations"       (unCLIP and its decoder) one variation of each of the first
                       VARIATION_IMAGES reference images: the cosine of its CLIP image embedding
                       (--clip's, else the model's own image encoder) to its own source image's
                       and to an unrelated image's (the next row's), and the share the
                       classifier puts in its source image's class
    "embed" (CLIP)     zero-shot accuracy on the reference split from each class's training
                       captions (and Fashion-MNIST's held-out templates), the contrastive loss
                       and in-batch retrieval top-1 both ways, images embedded per second
    "translate"        translations of the reference split's inputs against their targets: L1,
                       PSNR, FD/KID/precision/recall on the target domain, class consistency;
                       two-way (CycleGAN, unpaired domains): per direction the share of
                       translations in the target domain's class, cycle PSNR, FD to the target
    "log_prob"         bits/dim on the reference split, labelled exact / bound / estimate
    "encode"+"decode"  reconstruction MSE and PSNR; with the classifier, interpolation smoothness:
                       evenness and detour of the classifier's features along decoded lerps
                       between encoded pairs of reference images (components/metrics/interpolation.py)
    "encode" + factors MIG (Chen et al. 2018) on the factor_* columns; on the built-in `shapes`,
                       the β-VAE metric (Higgins et al. 2017) too, rendering factor pairs itself
    token sequences    exact bits per token (per character on the built-in text) over every
                       held-out row, beside a unigram and a bigram fitted on the training split
                       (components/metrics/ngram.py); samples/s and tokens/s of generation
    audio clips        exact nats per sample (8-bit mu-law) over every held-out clip, beside the
                       uniform ln 256 and a unigram and a bigram of the mu-law values (again on
                       the clips' active span when they are padded with silence); clips/s,
                       audio samples/s; pitch accuracy (FFT peak) of class-conditioned samples
                       where the data store each label's pitch (the built-in tones)
    points             exact held-out nats per point (a density on R^D, not 8-bit bins) beside one
                       Gaussian fitted on the other split; samples/s; the samples as a scatter

Results go to a new MLflow evaluation run nested under the model's training run (params: the
evaluation settings; metrics; a sample grid), and the metrics are copied onto the training run
as `eval_full/<metric>` at the checkpoint's step, so re-evaluating with other settings never
collides with an earlier evaluation's params. Caches live under <GENRAY_HOME>/cache/.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genray.components import checkpoint
from genray.components.data import normalize_images, quantize, scenes, shapes
from genray.components.data.show import Rendered, render
from genray.components.errors import UserError
from genray.components.metrics import composition, disentanglement, interpolation, likelihood, ngram
from genray.components.metrics.codebook import perplexity
from genray.components.metrics.frechet import frechet_distance_features
from genray.components.metrics.kid import kid
from genray.components.metrics.precision_recall import precision_recall
from genray.pipelines import arguments, console, tracking
from genray.pipelines.config import ConfigError, ExperimentSpec
from genray.pipelines.data import read_decoded, resolve_data
from genray.pipelines.env import init_ray, log_path, project_home
from genray.pipelines.quality import (Split, classifier_heads, domain_classifier, factor_codes, inception_net, read_split,
                                      reference_features)
from genray.pipelines.sampling import parse_overrides, resolve

DEFAULT_NUM_SAMPLES = 2000  # at a few hundred samples FD is mostly noise (see the floor)
LIKELIHOOD_IMAGES = 500  # reference images scored for bits/dim unless --likelihood-rows says
KID_SUBSETS, KID_SUBSET_SIZE = 50, 1000
PR_K = 3  # Kynkäänniemi et al. 2019 use k = 3
# The β-VAE metric's points: L = 32 pairs each (Higgins et al. use 64), 300 to fit the linear
# classifier and 150 to score it: 29k renders + encodes, about a minute for a small VAE here.
BETA_VAE_POINTS = {"pairs_per_point": 32, "num_train": 300, "num_eval": 150}


@dataclass
class EvalRequest:
    target: str
    num_samples: int = DEFAULT_NUM_SAMPLES
    batch_size: int = 250
    workers: int = 2  # Ray tasks that generate; 0 generates in this process
    reference: str = "test"  # the real split samples are compared with; the floor uses the other
    feature_net: str = "auto"  # auto | none | a saved domain-classifier directory
    inception: str | None = None  # Inception-v3 weights file (pytorch-fid's); env GENRAY_INCEPTION_WEIGHTS
    sampling: dict[str, Any] = field(default_factory=dict)  # fields of the model's sampling_settings
    likelihood_rows: int | None = None  # None: LIKELIHOOD_IMAGES images, or every held-out sequence
    clip: str | None = None  # a trained CLIP: text-conditioned samples get a CLIP score
    index: str | None = None  # a retrieval model: retrieve from this index (name or folder) instead of its own
    seed: int = 0
    log: bool = True
    parent_run_id: str | None = None  # nest the evaluation run here (a sweep) instead of under the training run
    tags: dict[str, str] = field(default_factory=dict)  # extra tags on the evaluation run


@dataclass
class EvalOutcome:
    metrics: dict[str, float]
    params: dict[str, str]
    eval_run_id: str | None
    training_run_id: str | None
    tracking_uri: str


# ----------------------------------------------------------------------------- setup (driver)


@dataclass(frozen=True)
class Target:
    checkpoint: Path
    label: str  # what the user named
    training_run_id: str | None  # the MLflow run that trained it, when the store knows it
    model_name: str | None = None
    model_version: str | None = None


def resolve_target(target: str, uri: str, home: Path) -> Target:
    """The checkpoint a TARGET names, and the training run it came from."""
    ref = target
    if not target.startswith(("models:/", "runs:/")) and tracking.looks_like_run_id(target):
        ref = f"runs:/{target}"
    try:
        ckpt_dir = tracking.resolve_checkpoint(ref, uri, home / "cache")
    except UserError as e:
        raise ConfigError(
            f"TARGET {e}. Name a model as runs:/RUN_ID, a bare run id, models:/NAME@ALIAS, "
            "models:/NAME/VERSION or a checkpoint directory"
        ) from None
    state = json.loads((ckpt_dir / "state.json").read_text())
    run_id = state.get("mlflow_run_id")
    if run_id and not tracking.run_exists(uri, run_id):
        run_id = None  # a checkpoint copied from another store
    name = version = None
    if target.startswith("models:/"):
        name, version = tracking.model_version_of(target, uri)
    return Target(ckpt_dir, target, run_id, name, version)


# ----------------------------------------------------------------------------- metrics (pure)


def sample_quality(fake: np.ndarray, real: np.ndarray, floor_pool: np.ndarray, name: str, *, seed: int = 0) -> dict[str, float]:
    """FD, KID and precision/recall of fake vs real features, and each one's floor: the same
    statistic for as many real features, drawn from another split (floor_pool).

    Both sides use n = min(len(fake), len(floor_pool)) rows, the first n samples and a random n
    of the pool: FD's bias shrinks with n, so a model scored on more rows than its floor could
    come out "better than real". (digits has 1,500 training images: 2,000 samples are scored as
    1,500.)"""
    rng = np.random.default_rng(seed)
    n = min(len(fake), len(floor_pool))
    fake = fake[:n]
    floor = floor_pool[rng.choice(len(floor_pool), n, replace=False)]
    out: dict[str, float] = {}
    out[f"fd_{name}"] = frechet_distance_features(fake, real)
    out[f"fd_{name}_floor"] = frechet_distance_features(floor, real)
    out[f"kid_{name}"], out[f"kid_{name}_std"] = kid(fake, real, num_subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE, seed=seed)
    out[f"kid_{name}_floor"], _ = kid(floor, real, num_subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE, seed=seed)
    out[f"precision_{name}"], out[f"recall_{name}"] = precision_recall(real, fake, k=PR_K)
    out[f"precision_{name}_floor"], out[f"recall_{name}_floor"] = precision_recall(real, floor, k=PR_K)
    return out


def reconstruction(model, x: torch.Tensor, batch_size: int = 250) -> dict[str, float]:
    """MSE and PSNR of decode(encode(x)) on the [0, 1] pixel scale (peak 1), PSNR averaged per image."""
    errs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size]
            x_hat = model.decode(model.encode(xb)).float().clamp(-1, 1)
            errs.append(((x_hat - xb) / 2).pow(2).flatten(1).mean(1).double())
    mse = torch.cat(errs)
    psnr = 10 * torch.log10(1.0 / mse.clamp_min(1e-10))
    return {"recon_mse": float(mse.mean()), "recon_psnr": float(psnr.mean())}


def codebook_use(model, x: torch.Tensor, batch_size: int = 250) -> dict[str, float]:
    """How a tokenizer's codebook is used on x: the share of its K codes that at least one grid
    position of x chose, and the perplexity of the code frequencies (K when all are equally used)."""
    counts = torch.zeros(model.codebook_size, dtype=torch.float64)
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            ids = model.tokens(x[i : i + batch_size]).flatten().cpu()
            counts += torch.bincount(ids, minlength=model.codebook_size).double()
    return {"codebook_usage": float((counts > 0).double().mean()), "codebook_perplexity": float(perplexity(counts))}


def bits_per_dim(model, x: torch.Tensor, *, seed: int, batch_size: int = 100) -> tuple[float, str]:
    """Mean bits/dim over x, and the kind of figure it is (exact / bound / estimate)."""
    _, kind = likelihood.likelihood_of(model)
    gen = torch.Generator().manual_seed(seed)
    bpd = torch.cat([likelihood.model_bits_per_dim(model, x[i : i + batch_size], generator=gen)
                     for i in range(0, len(x), batch_size)])
    return float(bpd.mean()), kind


def encode_flat(model, x: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model.encode(x[i : i + batch_size]).float().flatten(1)
                          for i in range(0, len(x), batch_size)]).double().numpy()


def shapes_beta_vae_score(model, image_size: int, *, seed: int) -> float:
    """The β-VAE metric on the built-in shapes, rendering factor pairs that share one factor."""

    def sample_factors(n: int, rng: np.random.Generator) -> np.ndarray:
        f = shapes.sample_factors(n, rng)
        return np.stack([f["shape"], f["scale_index"], f["rotation"], f["x"], f["y"], f["color"]], 1).astype(np.float64)

    def encode(factors: np.ndarray) -> np.ndarray:
        s = factors[:, 0].astype(int), factors[:, 1].astype(int), factors[:, 5].astype(int)
        img = shapes.render(s[0], np.asarray(shapes.SCALES)[s[1]], factors[:, 2], factors[:, 3], factors[:, 4], s[2],
                            image_size=image_size)  # (n, S, S, 3) uint8
        x = normalize_images(torch.as_tensor(img).permute(0, 3, 1, 2).contiguous())
        return encode_flat(model, x)

    result = disentanglement.beta_vae_score(encode, sample_factors, num_factors=6, seed=seed, **BETA_VAE_POINTS)
    return float(result.eval_accuracy)


# ----------------------------------------------------------------------------- generation (Ray)


def sampling_settings(model, given: dict[str, Any], defaults: dict[str, Any] | None = None):
    """The model's sampling settings with a champion's `defaults` and the request's `given`
    applied, checked against the type the model declares; a mistake names --set sampling.KEY."""
    return resolve(model, given, defaults, label="--set sampling.")


def conditions_for(model, n: int, reference: Split) -> dict[str, Any]:
    """What each sample is asked to show, by the model's conditioning: classes cycling 0..K-1
    ("class"), the reference split's captions cycled ("text", when the split has them), nothing
    otherwise."""
    if model.conditioning == "class":
        return {"y": np.arange(n) % model.num_classes}
    if model.conditioning == "text" and reference.captions:
        idx = np.arange(n) % len(reference.captions)
        return {"prompt": [reference.captions[i] for i in idx], "rows": idx}
    return {}


def retrieval_index(stored: dict[str, Any]):
    """An index as it travels to the generating workers (numpy arrays and its meta) -> an Index."""
    from genray.components.models.retrieval import Index

    return Index(torch.as_tensor(np.array(stored["embeddings"])), torch.as_tensor(np.array(stored["labels"])),
                 dict(stored["meta"]))


def retrieval_conditions(model, n: int, index, *, seed: int, swapped: bool) -> dict[str, Any]:
    """A retrieval model's conditions: n pseudo-query rows of the index drawn from the seed, their
    labels (what class consistency compares with), and a swapped index itself."""
    rows = np.random.default_rng(seed).integers(index.rows, size=n)
    out: dict[str, Any] = {"query_rows": rows, "query_labels": index.labels.numpy()[rows]}
    if swapped:
        out["index"] = {"embeddings": index.embeddings.numpy(), "labels": index.labels.numpy(), "meta": index.meta}
    return out


def retrieval_scores(classifier, fake: torch.Tensor, plain: torch.Tensor, conditions: dict[str, Any],
                     classes: list[int]) -> dict[str, float]:
    """With retrieval (`fake`) and without it (`plain`: the same model at guidance 0): class
    consistency against each pseudo-query's label, and the share of samples in the index's
    classes (a swapped index of a class subset: how many samples follow it)."""
    labels = np.asarray(conditions["query_labels"])
    out = {}
    for suffix, images in (("", fake), ("_no_retrieval", plain)):
        pred = classifier.predict(images)
        if (labels >= 0).all():
            out[f"class_consistency{suffix}"] = float((pred == labels).mean())
        if classes:
            out[f"index_share{suffix}"] = float(np.isin(pred, classes).mean())
    return out


def generate_chunks(files: dict[str, bytes], chunks: list[tuple[int, int, int]], sampling: dict[str, Any],
                    conditions: dict[str, Any], seed: int, threads: int) -> dict[str, Any]:
    """Rebuild the model from checkpoint bytes and sample each (index, start, stop) chunk with
    its own generator, so the samples do not depend on how chunks are spread over workers."""
    import tempfile

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as d:
        for name, blob in files.items():
            (Path(d) / name).write_bytes(blob)
        model, _ = checkpoint.build_model(d)
    model.eval()
    images, latencies, swapped = {}, [], None
    for index, start, stop in chunks:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
        kwargs = dict(sampling)
        if "y" in conditions:
            kwargs["y"] = torch.tensor(conditions["y"][start:stop], dtype=torch.long)  # a copy: Ray hands out read-only arrays
        if "prompt" in conditions:
            kwargs["prompt"] = list(conditions["prompt"][start:stop])
        if "query_rows" in conditions:  # a retrieval model: the pseudo-queries, and a swapped index
            kwargs["query_rows"] = torch.tensor(conditions["query_rows"][start:stop], dtype=torch.long)
            if "index" in conditions:
                swapped = swapped if swapped is not None else retrieval_index(conditions["index"])  # once per worker
                kwargs["index"] = swapped
        t0 = time.perf_counter()
        with torch.no_grad():
            x = model.sample(stop - start, generator=gen, **kwargs)
        latencies.append(time.perf_counter() - t0)
        # Images travel as uint8 (a quarter of the bytes); token ids and waveforms as they are.
        images[index] = quantize(x) if x.is_floating_point() and x.ndim == 4 else x.cpu().numpy()
    return {"images": images, "latencies": latencies}


def generate(ckpt_dir: Path, n: int, *, sampling: dict[str, Any], conditions: dict[str, Any], batch_size: int,
             workers: int, seed: int) -> tuple[np.ndarray, dict[str, float]]:
    """n samples spread over `workers` Ray tasks (1 CPU each): images uint8 (n, C, H, W), token
    ids (n, T); and speed: samples/s over the whole generation and the median latency of one batch."""
    files = {f.name: f.read_bytes() for f in ckpt_dir.iterdir() if f.suffix in (".safetensors", ".json")}
    chunks = [(i, start, min(start + batch_size, n)) for i, start in enumerate(range(0, n, batch_size))]
    started = time.perf_counter()
    if workers == 0:
        parts = [generate_chunks(files, chunks, sampling, conditions, seed, torch.get_num_threads())]
    else:
        import ray


        init_ray()
        task = ray.remote(num_cpus=1)(generate_chunks)
        files_ref, cond_ref = ray.put(files), ray.put(conditions)
        parts = ray.get([task.remote(files_ref, chunks[w::workers], sampling, cond_ref, seed, 1)
                         for w in range(min(workers, len(chunks)))])
    wall = time.perf_counter() - started
    images = {k: v for p in parts for k, v in p["images"].items()}
    x = np.concatenate([images[i] for i, _, _ in chunks])
    # Throughput of sampling itself, all workers together: each worker's samples over the time
    # its sample() calls took, summed. The wall time adds starting workers and loading weights.
    rates = [sum(stop - start for i, start, stop in chunks if i in p["images"]) / sum(p["latencies"]) for p in parts]
    latencies = [t for p in parts for t in p["latencies"]]
    return x, {"samples_per_s": float(sum(rates)), "batch_latency_s": float(np.median(latencies)), "generation_s": wall}


# ----------------------------------------------------------------------------- the job


def evaluate(request: EvalRequest, *, home: Path | None = None, say=print) -> EvalOutcome:

    home = home or project_home()
    uri = tracking.tracking_uri(home)
    _check_request(request)
    target = resolve_target(request.target, uri, home)
    model, state = checkpoint.build_model(target.checkpoint)
    model.eval()
    spec = ExperimentSpec.model_validate(state["config"])
    try:
        data = resolve_data(spec, home)
    except (UserError, FileNotFoundError) as e:
        raise ConfigError(f"{request.target}: its training data is not readable here ({e})") from None
    if data.info.kind.show == "text":
        return evaluate_sequences(request, target, model, state, data, home=home, uri=uri, say=say)
    if data.info.kind.show == "player":
        return evaluate_audio(request, target, model, state, data, home=home, uri=uri, say=say)
    if "embed" in model.capabilities:
        return evaluate_embedding(request, target, model, state, data, spec, home=home, uri=uri, say=say)
    if "translate" in model.capabilities and data.info.modality == "two_domain_image":
        return evaluate_unpaired(request, target, model, state, data, spec, home=home, uri=uri, say=say)
    if "translate" in model.capabilities:
        return evaluate_translation(request, target, model, state, data, spec, home=home, uri=uri, say=say)
    if data.info.modality == "points":
        return evaluate_points(request, target, model, state, data, home=home, uri=uri, say=say)
    if not data.info.kind.is_image:
        raise ConfigError(f"{request.target}: genray eval scores image, token-sequence, audio and points models; this one "
                          f"trained on {data.info.modality} data ({data.train})")
    dataset = spec.data.dataset if spec.data.path is None else Path(spec.data.path).stem
    ref_path, floor_path = (data.test, data.train) if request.reference == "test" else (data.train, data.test)
    # A champion registered by a sampling-time sweep carries its winning settings as defaults.
    settings = sampling_settings(model, request.sampling, state.get("sampling_defaults"))
    sampling = settings.model_dump(exclude_unset=True)  # what was chosen; the model fills the rest

    reference = read_split(ref_path, None, factors=True)
    conditions = conditions_for(model, request.num_samples, reference)
    index = None
    if "retrieval" in model.capabilities:
        from genray.pipelines.retrieval import resolve_index

        index = (model.checked_index(resolve_index(request.index, home), "--index") if request.index
                 else model.index())
        conditions = retrieval_conditions(model, request.num_samples, index, seed=request.seed,
                                          swapped=request.index is not None)
    elif request.index is not None:
        raise UserError(f"--index: {request.target} does not retrieve (its capabilities: "
                        f"{', '.join(sorted(model.capabilities))}); --index is for a model trained with "
                        "conditioning: retrieval")
    if request.clip is not None and "prompt" not in conditions:
        raise UserError(f"--clip: the CLIP score rates samples against their prompts; this model's conditioning is "
                        f"{model.conditioning!r}" + ("" if model.conditioning != "text" else
                                                     f" but {ref_path} has no captions to prompt it with"))
    clip = load_clip(request.clip, data.info.image_shape, uri=uri, home=home) if request.clip is not None else None

    nets = [n for n in (domain_classifier(request.feature_net, train_path=data.train, dataset=dataset, home=home, say=say),
                        inception_net(request.inception)) if n is not None]
    params = {
        **run_params(request, state, len(reference.x), settings),
        "eval.feature_nets": ",".join(n.id for n in nets) or "none",
    }

    say(f"generating {request.num_samples} samples on {request.workers or 'no'} Ray worker(s) ...")
    fake_u8, speed = generate(target.checkpoint, request.num_samples, sampling=sampling, conditions=conditions,
                              batch_size=request.batch_size, workers=request.workers, seed=request.seed)
    fake = normalize_images(torch.as_tensor(fake_u8))
    metrics: dict[str, float] = dict(speed)

    references: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # per net: the reference split's, the floor's
    for net in nets:
        say(f"scoring against {net.id} features ...")
        real = reference_features(net, ref_path, None, home)
        pool = reference_features(net, floor_path, request.num_samples, home)
        references[net.id] = (real, pool)
        params["eval.compared_rows"] = str(min(request.num_samples, len(pool)))  # samples and floor alike
        metrics.update(sample_quality(net.features(fake), real, pool, net.name, seed=request.seed))
        if net.kind == "classifier":
            metrics["classifier_accuracy_real"] = float((net.predict(reference.x) == reference.y).mean())
            if "y" in conditions:
                metrics["class_consistency"] = float((net.predict(fake) == conditions["y"]).mean())
            elif "rows" in conditions and reference.y is not None:  # captions name the class
                metrics["class_consistency"] = float((net.predict(fake) == reference.y[conditions["rows"]]).mean())

    classifier = next((n for n in nets if n.kind == "classifier"), None)
    if classifier is not None and "rows" in conditions and composition.is_scene(reference.factors):
        say("scene composition: the classifier's factor heads on the samples, on the real scenes, and on samples "
            "of the composed prompts ...")

        def again(prompts: list[str]) -> torch.Tensor:
            images, _ = generate(target.checkpoint, request.num_samples, sampling=sampling,
                                 conditions={"prompt": prompts, "rows": conditions["rows"]},
                                 batch_size=request.batch_size, workers=request.workers, seed=request.seed)
            return normalize_images(torch.as_tensor(images))

        metrics.update(scene_composition(classifier, fake, reference, conditions["rows"], held_out_flags(ref_path),
                                         again))

    if clip is not None:
        say(f"CLIP score against the prompts with {request.clip} ...")
        clip, params["eval.clip"] = clip
        metrics["clip_score"] = clip_score(clip, fake, conditions["prompt"])
        metrics["clip_score_real"] = clip_score(clip, reference.x[conditions["rows"]], conditions["prompt"])

    if index is not None and classifier is not None:
        say(f"the same {request.num_samples} pseudo-queries without retrieval (guidance 0) ...")
        plain_u8, _ = generate(target.checkpoint, request.num_samples, sampling={**sampling, "guidance_scale": 0.0},
                               conditions=conditions, batch_size=request.batch_size, workers=request.workers,
                               seed=request.seed)
        plain = normalize_images(torch.as_tensor(plain_u8))
        metrics.update(retrieval_scores(classifier, fake, plain, conditions, index.classes()))
        metrics.update({f"{k}_no_retrieval": v for k, v in sample_quality(
            classifier.features(plain), *references[classifier.id], classifier.name,
            seed=request.seed).items() if not k.endswith(("_floor", "_std"))})
        params["eval.index"] = request.index or f"the model's own ({index.meta.get('ref', '?')})"
        params["eval.index_rows"] = str(index.rows)
        params["eval.index_classes"] = ",".join(map(str, index.classes()))
    if "variations" in model.capabilities:
        rows = min(VARIATION_IMAGES, len(reference.x))
        say(f"variations of {rows} {request.reference} images ...")
        classifier = next((n for n in nets if n.kind == "classifier"), None)
        embed = clip.embed_images if clip is not None else variation_encoder(model)
        metrics.update(variation_identity(model, reference.x[:rows], None if reference.y is None else reference.y[:rows],
                                          embed, classifier, seed=request.seed, batch_size=request.batch_size,
                                          **sampling))
    if "style_mix" in model.capabilities:
        classifier = next((n for n in nets if n.kind == "classifier"), None)
        if classifier is not None:
            say(f"style mixing of {STYLE_MIX_IMAGES} pairs of seeds at crossover {model.num_ws // 2} ...")
            y = (torch.arange(STYLE_MIX_IMAGES) % model.num_classes) if model.conditioning == "class" else None
            metrics.update(style_mix_identity(model, STYLE_MIX_IMAGES, classifier, seed=request.seed,
                                              batch_size=request.batch_size, y=y, **sampling))
    if "log_prob" in model.capabilities:
        rows = request.likelihood_rows or LIKELIHOOD_IMAGES
        say(f"bits/dim on {min(rows, len(reference.x))} {request.reference} images ...")
        metrics["bits_per_dim"], params["eval.bits_per_dim_kind"] = bits_per_dim(
            model, reference.x[:rows], seed=request.seed)
        params["eval.bits_per_dim_unit"] = likelihood.UNITS[likelihood.likelihood_of(model)[0]]
        if params["eval.bits_per_dim_kind"] == "estimate":  # the protocol's log_partition: log Z and its error
            log_z, stderr = model.log_partition()
            metrics["log_partition"], metrics["log_partition_stderr"] = float(log_z), float(stderr)
            params["eval.log_partition_method"] = (f"AIS, {model.ais_temperatures} temperatures x {model.ais_runs} "
                                                   "runs (Salakhutdinov & Murray 2008)")
    if {"encode", "decode"} <= model.capabilities:
        metrics.update(reconstruction(model, reference.x))
        classifier = next((n for n in nets if n.kind == "classifier"), None)
        if classifier is not None:
            pairs = min(interpolation.INTERP_PAIRS, len(reference.x) // 2)
            say(f"interpolation smoothness: {pairs} pairs of {request.reference} images, "
                f"{interpolation.INTERP_STEPS} steps each, on {classifier.id} features ...")
            metrics.update(interpolation.interpolation_smoothness(model, classifier.features, reference.x))
    if "tokenize" in model.capabilities:
        metrics.update(codebook_use(model, reference.x))
    if "encode" in model.capabilities and reference.factors:
        names, factors = factor_codes(reference.factors)
        mig = disentanglement.mutual_info_gap(encode_flat(model, reference.x), factors)
        metrics["mig"] = float(mig.score)
        metrics.update({f"mig_{n.removeprefix('factor_')}": float(v) for n, v in zip(names, mig.per_factor)})
        if spec.data.path is None and spec.data.dataset == "shapes":
            metrics["beta_vae_score"] = shapes_beta_vae_score(model, data.info.shape[0], seed=request.seed)
            params.update({f"eval.beta_vae.{k}": str(v) for k, v in BETA_VAE_POINTS.items()})

    return _log(request, target, state, params, metrics, render(fake[:64], data.info), uri=uri, home=home)


def evaluate_translation(request: EvalRequest, target: Target, model, state: dict[str, Any], data, spec, *,
                         home: Path, uri: str, say) -> EvalOutcome:
    """A translation model (Pix2Pix) on the first num_samples pairs of the reference split: its
    translations of the inputs against their true targets, pixel by pixel (L1 on [-1, 1], the
    training loss; PSNR in dB on [0, 1], per image, averaged), as a distribution (FD, KID,
    precision/recall on the target domain's classifier, beside the floor of as many real
    targets of the other split), and by class: the share of translations the classifier puts in
    the class of the item the input came from. Translated in this process, in batches, with
    the model's settings (dropout masks from --seed)."""
    dataset = spec.data.dataset if spec.data.path is None else Path(spec.data.path).stem
    ref_path, floor_path = (data.test, data.train) if request.reference == "test" else (data.train, data.test)
    settings = sampling_settings(model, request.sampling, state.get("sampling_defaults"))
    info = data.info
    columns = [c.name for c in info.kind.main] + (["label"] if "label" in info.columns else [])
    pairs = read_decoded(ref_path, columns, info.modality, info.shape, request.num_samples)
    x, truth = normalize_images(torch.as_tensor(pairs["x"])), normalize_images(torch.as_tensor(pairs["x_paired"]))
    labels = pairs.get("y")
    params = run_params(request, state, len(x), settings)

    say(f"translating {len(x)} {request.reference} inputs ...")
    started = time.perf_counter()
    fake = translate_all(model, x, batch_size=request.batch_size, seed=request.seed, **settings.model_dump())
    elapsed = time.perf_counter() - started
    err = (fake - truth).abs().flatten(1).mean(1).double()
    mse = ((fake - truth) / 2).pow(2).flatten(1).mean(1).double()
    metrics: dict[str, float] = {
        "l1": float(err.mean()), "psnr": float((10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean()),
        "translations_per_s": len(x) / elapsed,
    }
    net = domain_classifier(request.feature_net, train_path=data.train, dataset=dataset, home=home, say=say)
    if net is not None:
        say(f"scoring against {net.id} features ...")
        params["eval.feature_nets"] = net.id
        real = reference_features(net, ref_path, None, home)
        pool = reference_features(net, floor_path, len(x), home)
        params["eval.compared_rows"] = str(min(len(x), len(pool)))
        metrics.update(sample_quality(net.features(fake), real, pool, net.name, seed=request.seed))
        if labels is not None:
            metrics["classifier_accuracy_real"] = float((net.predict(truth) == labels).mean())
            metrics["class_consistency"] = float((net.predict(fake) == labels).mean())
    k = min(16, len(x))  # inputs, translations and targets, a row of each per example block
    shown = render(torch.cat([x[:k], fake[:k], truth[:k]]), info)
    return _log(request, target, state, params, metrics, shown, uri=uri, home=home)


def load_clip(ref: str, image_shape: tuple[int, int, int], *, uri: str, home: Path):
    """A trained CLIP named like an eval target, checked to embed images of this shape; and how
    the evaluation run records it (the resolved registry version or run when known)."""
    target = resolve_target(ref, uri, home)
    clip, state = checkpoint.build_model(target.checkpoint)
    if "embed" not in clip.capabilities:
        raise UserError(f"--clip {ref}: a {state['model']['family']} model; the CLIP score needs a genray clip")
    if tuple(clip.image_shape) != tuple(image_shape):
        raise UserError(f"--clip {ref}: it embeds images of shape {list(clip.image_shape)}; these samples are "
                        f"{list(image_shape)}")
    label = (f"models:/{target.model_name}/{target.model_version}" if target.model_name
             else f"runs:/{target.training_run_id}" if target.training_run_id else ref)
    return clip.eval(), label


def clip_score(clip, images: torch.Tensor, prompts: list[str], batch_size: int = 250) -> float:
    """Hessel et al. 2021 (CLIPScore, with w = 100 as torchmetrics reports it): 100 x the mean
    over images of max(cos(image embedding, its prompt's embedding), 0). Prompts longer than the
    CLIP reads are cut to its text_len, as captions are in training."""
    from genray.components.data import encode_captions

    tokens = torch.as_tensor(encode_captions(prompts, clip.text_len))
    cos = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            a, b = clip.embed_images(images[i : i + batch_size]), clip.embed_text(tokens[i : i + batch_size])
            cos.append((a * b).sum(-1).clamp(min=0))
    return float(100 * torch.cat(cos).mean())


# Prompts per class for zero-shot classification, at most this many distinct captions of each.
MAX_PROMPTS_PER_CLASS = 32


def class_prompts(captions: list[str], labels: np.ndarray, num_classes: int) -> list[list[str]]:
    """Each class's prompts, read from a labelled split's own captions: the distinct captions of
    its rows (sorted, at most MAX_PROMPTS_PER_CLASS). On captioned Fashion-MNIST these are the
    six training templates filled with the class's name: CLIP's prompt ensembling (Radford et
    al. 2021, §3.1.4), with no class names typed into genray."""
    prompts: list[list[str]] = []
    for k in range(num_classes):
        seen = sorted({c for c, y in zip(captions, labels) if y == k and c})
        if not seen:
            raise ConfigError(f"zero-shot: no caption of class {k} in the training split, so it has no prompt")
        prompts.append(seen[:MAX_PROMPTS_PER_CLASS])
    return prompts


def zero_shot_accuracy(model, x: torch.Tensor, y: np.ndarray, prompts: list[list[str]], *,
                       batch_size: int) -> tuple[float, np.ndarray]:
    """The share of images whose nearest class embedding (model.classify) is their label, and
    the predictions."""
    with torch.no_grad():
        pred = torch.cat([model.classify(x[i : i + batch_size], prompts).argmax(1).cpu()
                          for i in range(0, len(x), batch_size)]).numpy()
    return float((pred == y).mean()), pred


def evaluate_embedding(request: EvalRequest, target: Target, model, state: dict[str, Any], data, spec, *,
                       home: Path, uri: str, say) -> EvalOutcome:
    """A contrastive image-text model (CLIP) on the reference split: zero-shot accuracy from
    class prompts read from the training split's captions (and, on captioned Fashion-MNIST,
    from the held-out templates no caption uses: phrasings it never saw), the contrastive loss
    and in-batch top-1 retrieval both ways, and images embedded per second. With a domain
    classifier, its accuracy on the same images: the supervised reference. Shown: the first 64
    reference images ordered by their zero-shot class."""
    from genray.components.data import encode_captions, fashion_mnist

    dataset = spec.data.dataset if spec.data.path is None else Path(spec.data.path).stem
    ref_path = data.test if request.reference == "test" else data.train
    import pyarrow.parquet as pq

    reference = read_split(ref_path, None)
    # The training split's labels and captions only: its images are not needed for the prompts.
    columns = [c for c in ("label", "caption") if c in data.info.columns]
    train = pq.read_table(data.train, columns=columns).to_pydict()
    if reference.y is None or not reference.captions or len(columns) < 2:
        raise ConfigError(f"{request.target}: zero-shot classification needs labels and captions in {data.train} "
                          f"and {ref_path}")
    train_y = np.asarray(train["label"], dtype=np.int64)
    settings = sampling_settings(model, request.sampling, state.get("sampling_defaults"))
    params = run_params(request, state, len(reference.x), settings)
    num_classes = int(max(reference.y.max(), train_y.max()) + 1)
    prompts = class_prompts([str(c) for c in train["caption"]], train_y, num_classes)
    params["eval.zero_shot.prompts_per_class"] = str(max(len(p) for p in prompts))

    say(f"zero-shot classification of {len(reference.x)} {request.reference} images ...")
    started = time.perf_counter()
    metrics: dict[str, float] = {}
    metrics["zero_shot_accuracy"], pred = zero_shot_accuracy(model, reference.x, reference.y, prompts,
                                                             batch_size=request.batch_size)
    metrics["images_per_s"] = len(reference.x) / (time.perf_counter() - started)
    if spec.data.path is None and spec.data.dataset == "fashion_mnist":
        held_out = [[fashion_mnist.phrase(t, k) for t in fashion_mnist.HELD_OUT_TEMPLATES] for k in range(num_classes)]
        metrics["zero_shot_accuracy_held_out"], _ = zero_shot_accuracy(model, reference.x, reference.y, held_out,
                                                                       batch_size=request.batch_size)
        params["eval.zero_shot.held_out_templates"] = " | ".join(fashion_mnist.HELD_OUT_TEMPLATES)

    # The training objective on held-out pairs, in batches as in training (its value depends on
    # the batch: log(batch) at chance).
    tokens = torch.as_tensor(encode_captions(reference.captions, model.text_len))
    scores: dict[str, list[float]] = {}
    with torch.no_grad():
        for i in range(0, len(reference.x) - request.batch_size + 1, request.batch_size):
            out = model.evaluate({"x": reference.x[i : i + request.batch_size], "text": tokens[i : i + request.batch_size]})
            for k in ("loss", "i2t_top1", "t2i_top1"):
                scores.setdefault(k, []).append(float(out[k]))
    metrics.update({f"contrastive_{k}" if k == "loss" else k: float(np.mean(v)) for k, v in scores.items()})
    metrics["logit_scale"] = float(model.logit_scale())
    params["eval.contrastive_batch"] = str(request.batch_size)

    net = domain_classifier(request.feature_net, train_path=data.train, dataset=dataset, home=home, say=say)
    if net is not None:
        params["eval.feature_nets"] = net.id
        metrics["classifier_accuracy_real"] = float((net.predict(reference.x) == reference.y).mean())
    shown = np.argsort(pred[:64], kind="stable")
    return _log(request, target, state, params, metrics, render(reference.x[:64][shown], data.info), uri=uri, home=home)


# Reference images that `genray eval` makes one variation of each (capability variations).
VARIATION_IMAGES = 500


def variation_encoder(model):
    """The frozen CLIP image encoder a variations model conditions on: its own (unCLIP's decoder)
    or its decoder's (unCLIP), as a function images -> unit-norm embeddings."""
    encoder = getattr(model, "image_encoder", None)
    if encoder is None:
        encoder = model.decoder.image_encoder
    return lambda x: torch.nn.functional.normalize(encoder(x).float(), dim=-1)


def variation_identity(model, x: torch.Tensor, y: np.ndarray | None, embed, classifier, *, seed: int,
                       batch_size: int, **settings) -> dict[str, float]:
    """One variation of each image of x (B, C, H, W), from its own CLIP embedding, scored as saved
    (8 bits): variation_similarity, the mean cosine of each variation's embedding to its source's;
    variation_similarity_unrelated, the same to the next row's source (image i + 1, cyclic: an
    unrelated image, the chance level); variation_class_agreement, the share the classifier puts
    in the source's class (labelled data)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out = torch.cat([model.variations(x[i : i + batch_size], 1, generator=gen, **settings).cpu()
                         for i in range(0, len(x), batch_size)])
        v = normalize_images(torch.as_tensor(quantize(out)))
        ev = torch.cat([embed(v[i : i + batch_size]) for i in range(0, len(v), batch_size)])  # (B, D)
        ex = torch.cat([embed(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    out = {"variation_similarity": float((ev * ex).sum(-1).mean()),
           "variation_similarity_unrelated": float((ev * ex.roll(-1, dims=0)).sum(-1).mean())}
    if classifier is not None and y is not None:
        out["variation_class_agreement"] = float((classifier.predict(v) == y).mean())
    return out


# Pairs of seeds `genray eval` mixes (capability style_mix).
STYLE_MIX_IMAGES = 500


def style_mix_identity(model, n: int, classifier, *, seed: int, batch_size: int, y: torch.Tensor | None = None,
                       crossover: int | None = None, **settings) -> dict[str, float]:
    """Whether a reference keeps its identity when another seed's styles replace its fine layers
    (StyleGAN2's style mixing, Karras et al. 2019 sec. 3.1): row i's reference is seed A's image,
    its mix takes A's styles below `crossover` (default half the layers: the coarse ones) and the
    donor B's above, and the donor is B's own image. Scored as saved (8 bits) on the classifier's
    features, centred on the references' mean so the cosine reads differences, not the shared mean:
    style_mix_similarity, the cosine of each mix to its reference; style_mix_similarity_donor, to
    its donor; style_mix_similarity_unrelated, to the next row's reference (chance);
    style_mix_class_agreement, the share the classifier puts in its reference's class."""
    c = model.num_ws // 2 if crossover is None else crossover
    refs, mixes, donors = [], [], []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            a, b = seed * 1_000_003 + start, seed * 1_000_003 + start + 500_009
            gen = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
            kw = {**settings, **({"y": y[start : start + m]} if y is not None else {})}
            refs.append(model.style_mix(m, generator_a=gen(a), generator_b=gen(b), crossover=model.num_ws, **kw).cpu())
            mixes.append(model.style_mix(m, generator_a=gen(a), generator_b=gen(b), crossover=c, **kw).cpu())
            donors.append(model.style_mix(m, generator_a=gen(b), generator_b=gen(a), crossover=model.num_ws, **kw).cpu())
    ref, mix, donor = (normalize_images(torch.as_tensor(quantize(torch.cat(t)))) for t in (refs, mixes, donors))
    f_ref, f_mix, f_donor = (torch.as_tensor(classifier.features(t)).double() for t in (ref, mix, donor))
    mean = f_ref.mean(0)
    f_ref, f_mix, f_donor = (torch.nn.functional.normalize(f - mean, dim=-1) for f in (f_ref, f_mix, f_donor))
    return {"style_mix_similarity": float((f_mix * f_ref).sum(-1).mean()),
            "style_mix_similarity_donor": float((f_mix * f_donor).sum(-1).mean()),
            "style_mix_similarity_unrelated": float((f_mix * f_ref.roll(-1, dims=0)).sum(-1).mean()),
            "style_mix_class_agreement": float((classifier.predict(mix) == classifier.predict(ref)).mean()),
            "style_mix_crossover": float(c)}


def held_out_flags(path: str) -> np.ndarray:
    """A split's `held_out` column as bools (all False when it has none)."""
    import pyarrow.parquet as pq

    from genray.components.data import read_info

    info = read_info(path)
    if "held_out" not in info.columns:
        return np.zeros(info.num_rows, dtype=bool)
    return np.asarray(pq.read_table(path, columns=["held_out"]).column("held_out").to_numpy(), dtype=bool)


def scene_factors(classifier, x: torch.Tensor, batch_size: int = 1024) -> dict[str, np.ndarray]:
    """The scenes domain classifier's reading of images: factor -> (N,) ints, one factor head each
    (its heads index a categorical factor's sorted values, 0..K-1 for scenes)."""
    heads = classifier_heads(classifier, set(composition.SCENE_FACTORS))
    out: dict[str, list[np.ndarray]] = {f: [] for f in composition.SCENE_FACTORS}
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            for f, logits in heads(x[i:i + batch_size].float()).items():
                out[f].append(logits.argmax(1).numpy())
    return {f: np.concatenate(v) for f, v in out.items()}


def scene_composition(classifier, fake: torch.Tensor, reference: Split, rows: np.ndarray, held_out: np.ndarray,
                      generate_for) -> dict[str, float]:
    """Issue 24, part 2: samples of scene captions read back by the classifier's factor heads
    (composition_*), the same heads on the real scenes of those captions (composition_real_*, the
    detector's ceiling), and samples of the same scenes written as composed prompts, "A on the
    left AND B on the right" (composition_composed_*; generate_for(prompts) draws them with the
    same seeds). Seen and held-out pairs apart (components/metrics/composition.py)."""
    missing = [f for f in composition.SCENE_FACTORS if f not in classifier.model.aux_heads]
    if missing:
        raise UserError(f"the domain classifier {classifier.id} has no head for {', '.join(missing)}; "
                        "retrain it on the scenes data (--feature-net auto)")
    wanted = {f: np.asarray(reference.factors[f"factor_{f}"])[rows].astype(np.int64) for f in composition.SCENE_FACTORS}
    held = held_out[rows]
    prompts = [scenes.composed_prompt(*(int(wanted[f][i]) for f in composition.SCENE_FACTORS)) for i in range(len(rows))]
    out = {}
    for prefix, images in (("composition", fake), ("composition_real", reference.x[rows])):
        out.update({f"{prefix}_{k}": v for k, v in composition.scene_scores(scene_factors(classifier, images), wanted,
                                                                             held).items()})
    composed = generate_for(prompts)
    out.update({f"composition_composed_{k}": v for k, v in composition.scene_scores(scene_factors(classifier, composed),
                                                                                     wanted, held).items()})
    return out


def translate_all(model, x: torch.Tensor, *, batch_size: int, seed: int, **kwargs) -> torch.Tensor:
    """model.translate over x in batches, scored as saved to PNG (quantized to 8 bits)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out = torch.cat([model.translate(x[i : i + batch_size], generator=gen, **kwargs).cpu()
                         for i in range(0, len(x), batch_size)])
    return normalize_images(torch.as_tensor(quantize(out)))


def evaluate_unpaired(request: EvalRequest, target: Target, model, state: dict[str, Any], data, spec, *,
                      home: Path, uri: str, say) -> EvalOutcome:
    """A two-way translation model (CycleGAN) on unpaired domains: directions[0] takes domain 0 to
    domain 1, directions[1] the reverse. Per direction, on up to num_samples reference images of
    its source domain: the share of translations the dataset's classifier puts in the target
    domain's class (when the data are labelled), the cycle's PSNR (translated there and back,
    against the input), and FD/KID/precision/recall of the translations against the reference
    split's target-domain images, beside the floor of as many real target-domain images of the
    other split."""
    dataset = spec.data.dataset if spec.data.path is None else Path(spec.data.path).stem
    ref_path, floor_path = (data.test, data.train) if request.reference == "test" else (data.train, data.test)
    info = data.info
    settings = sampling_settings(model, request.sampling, state.get("sampling_defaults"))
    columns = ["image", "domain"] + (["label"] if "label" in info.columns else [])
    ref = read_decoded(ref_path, columns, info.modality, info.shape)
    pool = read_decoded(floor_path, columns, info.modality, info.shape)
    x_ref, x_pool = normalize_images(torch.as_tensor(ref["x"])), normalize_images(torch.as_tensor(pool["x"]))
    params = run_params(request, state, len(x_ref), settings)
    net = domain_classifier(request.feature_net, train_path=data.train, dataset=dataset, home=home, say=say)
    if net is not None:
        params["eval.feature_nets"] = net.id
    metrics: dict[str, float] = {}
    shown = []
    forward, backward = model.directions
    for source, way, back in ((0, forward, backward), (1, backward, forward)):
        rows = np.flatnonzero(ref["domain"] == source)[: request.num_samples]
        x = x_ref[rows]
        say(f"translating {len(x)} domain-{source} {request.reference} images {way} ...")
        started = time.perf_counter()
        fake = translate_all(model, x, batch_size=request.batch_size, seed=request.seed, direction=way,
                             **settings.model_dump())
        metrics[f"translations_per_s_{way}"] = len(x) / (time.perf_counter() - started)
        again = translate_all(model, fake, batch_size=request.batch_size, seed=request.seed, direction=back,
                              **settings.model_dump())
        mse = ((again - x) / 2).pow(2).flatten(1).mean(1).double()
        metrics[f"cycle_psnr_{way}"] = float((10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean())
        shown += [x[:8], fake[:8]]
        if net is None:
            continue
        real = net.features(x_ref[ref["domain"] == 1 - source])
        floor = net.features(x_pool[pool["domain"] == 1 - source])
        scores = sample_quality(net.features(fake), real, floor, f"{net.name}_{way}", seed=request.seed)
        metrics.update(scores)
        if "y" in ref:  # the target domain's class: its images' most common label
            target_class = np.bincount(ref["y"][ref["domain"] == 1 - source]).argmax()
            metrics[f"target_share_{way}"] = float((net.predict(fake) == target_class).mean())
            # The classifier's own accuracy on the real source images, for scale.
            metrics[f"classifier_accuracy_real_domain{source}"] = float((net.predict(x) == ref["y"][rows]).mean())
    return _log(request, target, state, params, metrics, render(torch.cat(shown), info), uri=uri, home=home)


def run_params(request: EvalRequest, state: dict[str, Any], reference_rows: int, settings) -> dict[str, str]:
    """The evaluation run's params every kind of data shares: what was scored, against which
    split, how the samples were drawn (workers, batch, seed) and with which sampling settings."""
    return {
        "eval.target": request.target,
        "eval.checkpoint_step": str(state.get("step")),
        "eval.num_samples": str(request.num_samples),
        "eval.reference_split": request.reference,
        "eval.reference_rows": str(reference_rows),
        "eval.workers": str(request.workers),
        "eval.batch_size": str(request.batch_size),
        "eval.seed": str(request.seed),
        **{f"eval.sampling.{k}": str(v) for k, v in settings.model_dump().items()},
    }


def _log(request: EvalRequest, target: Target, state: dict[str, Any], params: dict[str, str],
         metrics: dict[str, float], shown: Rendered, *, uri: str, home: Path) -> EvalOutcome:
    eval_run_id = None
    if request.log:
        eval_run_id = tracking.log_evaluation(uri, home, target.training_run_id, label=target.label, params=params,
                                              metrics=metrics, step=int(state.get("step") or 0), shown=shown,
                                              tags={"genray.eval.model_name": target.model_name or "",
                                                    "genray.eval.model_version": target.model_version or "",
                                                    **request.tags},
                                              parent_run_id=request.parent_run_id)
    return EvalOutcome(metrics, params, eval_run_id, target.training_run_id, uri)


def evaluate_sequences(request: EvalRequest, target: Target, model, state: dict[str, Any], data, *, home: Path,
                       uri: str, say) -> EvalOutcome:
    """Token sequences (GPT, MaskGIT): the exact held-out bits per token beside a unigram and a
    bigram fitted on the other split (components/metrics/ngram.py), and generation speed in
    samples/s and tokens/s. Characters are tokens for the built-in text, so bits/token is
    bits/char there. A model without a likelihood (MaskGIT) reports its own held-out loss
    (`evaluate`'s "loss", e.g. nats per masked token) instead of bits per token."""
    info = data.info
    ref_path, reference, fit, settings, sampling, conditions = sequence_setup(request, model, state, data)
    unit = "char" if info.vocab and all(len(t) == 1 for t in info.vocab) else "token"
    params = {
        **run_params(request, state, len(reference["x"]), settings),
        "eval.reference_tokens": str(reference["x"].size),
        "eval.token_unit": unit,
        "eval.ngram_alpha": str(ngram.ALPHA),
    }
    base = ngram.ngram_baselines(fit, reference["x"], len(info.vocab))
    metrics = {"unigram_bits_per_token": base.unigram_bits, "bigram_bits_per_token": base.bigram_bits}
    if "log_prob" in model.capabilities:
        params["eval.bits_per_token_kind"] = likelihood.likelihood_of(model)[1]
        say(f"bits/{unit} on {len(reference['x'])} {request.reference} sequences ({reference['x'].size} {unit}s) ...")
        metrics["bits_per_token"] = sequence_bits(model, reference, batch_size=request.batch_size)
    else:
        say(f"held-out loss on {len(reference['x'])} {request.reference} sequences (no likelihood) ...")
        metrics["heldout_loss"] = heldout_loss(model, reference, batch_size=request.batch_size, seed=request.seed)

    say(f"generating {request.num_samples} samples on {request.workers or 'no'} Ray worker(s) ...")
    fake, speed = generate(target.checkpoint, request.num_samples, sampling=sampling, conditions=conditions,
                           batch_size=request.batch_size, workers=request.workers, seed=request.seed)
    metrics.update(speed, tokens_per_s=speed["samples_per_s"] * fake.shape[1])
    return _log(request, target, state, params, metrics, render(fake[:64], info), uri=uri, home=home)


def sequence_setup(request: EvalRequest, model, state: dict[str, Any], data):
    """What scoring a sequence model (tokens, audio) starts from: the reference split's path and
    rows (its main column and labels, up to --likelihood-rows), the other split's rows to fit
    the n-gram baselines on, the sampling settings (all, and those chosen), and the conditions
    samples are drawn with (classes cycling 0..K-1 for a class-conditional model)."""
    info = data.info
    main = info.kind.main[0].name
    ref_path, fit_path = (data.test, data.train) if request.reference == "test" else (data.train, data.test)
    columns = [c for c in (main, "label") if c in info.columns]
    reference = read_decoded(ref_path, columns, info.modality, info.shape, request.likelihood_rows)
    fit = read_decoded(fit_path, [main], info.modality, info.shape)["x"]
    settings = sampling_settings(model, request.sampling, state.get("sampling_defaults"))
    conditions = {"y": np.arange(request.num_samples) % model.num_classes} if model.conditioning == "class" else {}
    return ref_path, reference, fit, settings, settings.model_dump(exclude_unset=True), conditions


def heldout_loss(model, split: dict[str, np.ndarray], *, batch_size: int, seed: int) -> float:
    """The model's own held-out "loss" (`evaluate`) averaged over the split's rows, its random
    parts (MaskGIT's masks) drawn from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    total, rows = 0.0, 0
    for i in range(0, len(split["x"]), batch_size):
        batch = {k: torch.as_tensor(v[i : i + batch_size]) for k, v in split.items()}
        total += float(model.evaluate(batch, generator=gen)["loss"]) * len(batch["x"])
        rows += len(batch["x"])
    return total / rows


def sequence_bits(model, split: dict[str, np.ndarray], *, batch_size: int) -> float:
    """The model's exact bits per token over every token of the split's rows."""
    return nats_per_element(model, split, batch_size=batch_size) / math.log(2)


def nats_per_element(model, split: dict[str, np.ndarray], *, batch_size: int) -> float:
    """-log P of every row of the split (tokens, audio samples), summed and divided by the
    number of elements: nats per token or per sample. Labels condition a class-conditional model."""
    return float(-by_batch(model.log_prob, model, split, batch_size=batch_size).sum() / split["x"].size)


def by_batch(fn, model, split: dict[str, np.ndarray], *, batch_size: int) -> np.ndarray:
    """fn(x) over the split's rows, batch_size at a time, concatenated as float64: (N,) from
    log_prob, (N, T) from log_prob_steps. Labels are passed as y to a class-conditional model."""
    x = torch.as_tensor(split["x"])
    y = torch.as_tensor(split["y"]) if "y" in split and model.conditioning == "class" else None
    parts = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            kw = {"y": y[i : i + batch_size]} if y is not None else {}
            parts.append(fn(x[i : i + batch_size], **kw).double().cpu().numpy())
    return np.concatenate(parts)


def active_span(clips: np.ndarray) -> np.ndarray:
    """(N, T) bool: from each clip's first non-zero sample to its last, both included."""
    loud = np.asarray(clips) != 0
    first = loud.argmax(axis=1)
    last = loud.shape[1] - 1 - loud[:, ::-1].argmax(axis=1)
    t = np.arange(loud.shape[1])
    return loud.any(axis=1)[:, None] & (t >= first[:, None]) & (t <= last[:, None])


def label_pitches(path: Path) -> dict[int, float] | None:
    """label -> pitch in Hz, when the audio dataset stores both (the built-in tones); None else."""
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    if not {"label", "pitch_hz"} <= set(names):
        return None
    table = pq.read_table(path, columns=["label", "pitch_hz"])
    return dict(zip(table.column("label").to_pylist(), table.column("pitch_hz").to_pylist()))


def evaluate_audio(request: EvalRequest, target: Target, model, state: dict[str, Any], data, *, home: Path,
                   uri: str, say) -> EvalOutcome:
    """Audio clips (WaveNet): the exact held-out nats per sample on 8-bit mu-law, beside the
    uniform floor ln 256 and a unigram and a bigram over the mu-law values fitted on the other
    split (components/metrics/ngram.py); generation speed in clips/s and audio samples/s; and,
    for a class-conditional model on data that stores each label's pitch (the built-in tones),
    the share of samples whose FFT peak is the note asked for (components/metrics/pitch.py),
    beside the same share for the real clips."""
    from genray.components.data.mulaw import LEVELS, mu_law_encode
    from genray.components.metrics.pitch import pitch_accuracy

    info = data.info
    ref_path, reference, fit, settings, sampling, conditions = sequence_setup(request, model, state, data)
    params = {
        **run_params(request, state, len(reference["x"]), settings),
        "eval.reference_samples": str(reference["x"].size),
        "eval.sample_rate": str(info.sample_rate),
        "eval.nats_per_sample_kind": likelihood.likelihood_of(model)[1],
        "eval.ngram_alpha": str(ngram.ALPHA),
    }
    say(f"nats/sample on {len(reference['x'])} {request.reference} clips ({reference['x'].size} samples) ...")
    batch = min(request.batch_size, 64)
    # Per-step terms, when the model gives them, serve both figures below from one pass.
    steps = by_batch(model.log_prob_steps, model, reference, batch_size=batch) \
        if "log_prob_steps" in model.capabilities else None
    nats = -steps.mean() if steps is not None else nats_per_element(model, reference, batch_size=batch)
    metrics = {"nats_per_sample": float(nats), "uniform_nats_per_sample": math.log(LEVELS)}
    fit_codes = mu_law_encode(torch.as_tensor(fit)).numpy()
    ref_codes = mu_law_encode(torch.as_tensor(reference["x"])).numpy()
    base = ngram.ngram_baselines(fit_codes, ref_codes, LEVELS)
    metrics.update(unigram_nats_per_sample=base.unigram_bits * math.log(2),
                   bigram_nats_per_sample=base.bigram_bits * math.log(2))
    # Clips padded with digital silence (spoken_digits: the word, then zeros) are scored again
    # on their active span alone, where the padding's near-free predictions do not dilute it.
    active = active_span(reference["x"])
    if steps is not None and not active.all():
        base = ngram.ngram_baselines(fit_codes, ref_codes, LEVELS, mask=active)
        metrics.update(active_share=float(active.mean()), nats_per_active_sample=float(-steps[active].mean()),
                       unigram_nats_per_active_sample=base.unigram_bits * math.log(2),
                       bigram_nats_per_active_sample=base.bigram_bits * math.log(2))

    say(f"generating {request.num_samples} clips on {request.workers or 'no'} Ray worker(s) ...")
    fake, speed = generate(target.checkpoint, request.num_samples, sampling=sampling, conditions=conditions,
                           batch_size=request.batch_size, workers=request.workers, seed=request.seed)
    metrics.update(speed, audio_samples_per_s=speed["samples_per_s"] * fake.shape[1])
    metrics["real_time_factor"] = metrics["audio_samples_per_s"] / info.sample_rate
    pitches = label_pitches(ref_path) if "y" in conditions else None
    if pitches is not None and set(range(model.num_classes)) <= set(pitches):
        wanted = np.array([pitches[int(k)] for k in conditions["y"]])
        metrics["pitch_accuracy"] = pitch_accuracy(fake, info.sample_rate, wanted)
        real_wanted = np.array([pitches[int(k)] for k in reference["y"]])
        metrics["pitch_accuracy_real"] = pitch_accuracy(reference["x"], info.sample_rate, real_wanted)
    return _log(request, target, state, params, metrics, render(fake[:16], info), uri=uri, home=home)


def evaluate_points(request: EvalRequest, target: Target, model, state: dict[str, Any], data, *, home: Path,
                    uri: str, say) -> EvalOutcome:
    """Points (a flow on the 2-D moons): the held-out nats per point of a model with log_prob,
    labelled exact / bound / estimate, beside a full-covariance Gaussian fitted on the other
    split; generation speed; the samples shown as a scatter. Points are not quantised, so
    bits/dim over 8-bit bins would mean nothing: the figure is -log p(x) of the density itself."""
    info = data.info
    ref_path, fit_path = (data.test, data.train) if request.reference == "test" else (data.train, data.test)
    main = info.kind.main[0].name
    reference = read_decoded(ref_path, [main], info.modality, info.shape, request.likelihood_rows)
    fit = read_decoded(fit_path, [main], info.modality, info.shape)["x"].astype(np.float64)
    settings = sampling_settings(model, request.sampling, state.get("sampling_defaults"))
    params = run_params(request, state, len(reference["x"]), settings)
    metrics: dict[str, float] = {}
    if "log_prob" in model.capabilities:
        say(f"nats/point on {len(reference['x'])} {request.reference} points ...")
        metrics["nats_per_point"] = float(-by_batch(model.log_prob, model, reference, batch_size=request.batch_size).mean())
        params["eval.nats_per_point_kind"] = likelihood.likelihood_of(model)[1]
    # The baseline: one Gaussian, mean and covariance of the other split.
    x, mean, cov = reference["x"].astype(np.float64), fit.mean(axis=0), np.atleast_2d(np.cov(fit, rowvar=False))
    d, maha = x.shape[1], np.einsum("nd,de,ne->n", x - mean, np.linalg.inv(cov), x - mean)
    metrics["gaussian_nats_per_point"] = float(0.5 * (d * math.log(2 * math.pi) + np.linalg.slogdet(cov)[1] + maha).mean())

    say(f"generating {request.num_samples} points on {request.workers or 'no'} Ray worker(s) ...")
    conditions = {"y": np.arange(request.num_samples) % model.num_classes} if model.conditioning == "class" else {}
    fake, speed = generate(target.checkpoint, request.num_samples, sampling=settings.model_dump(exclude_unset=True),
                           conditions=conditions, batch_size=request.batch_size, workers=request.workers,
                           seed=request.seed)
    metrics.update(speed)
    return _log(request, target, state, params, metrics, render(fake, info), uri=uri, home=home)


def _check_request(r: EvalRequest) -> None:
    for name, value, low in (("--num-samples", r.num_samples, 2), ("--batch-size", r.batch_size, 1),
                             ("--workers", r.workers, 0), ("--likelihood-rows", r.likelihood_rows or 1, 1)):
        if value < low:
            raise ConfigError(f"{name} must be >= {low}, got {value}")
    if r.reference not in ("test", "train"):
        raise ConfigError(f"--reference must be test or train, got {r.reference!r}")


def print_report(out: EvalOutcome) -> None:
    m = out.metrics
    shown = set()
    skipped = ("_floor", "_std", "_stderr")  # shown beside the metric they qualify
    width = max((len(k) for k in m if not k.endswith(skipped)), default=0)  # one column, however long a name
    print()
    for key in sorted(m):
        if key in shown or key.endswith(skipped):
            continue
        line = f"{key:{width}s} {m[key]:.4g}"
        if f"{key}_floor" in m:
            line += f"   (floor {m[key + '_floor']:.4g}: two real splits, same size)"
            shown.add(f"{key}_floor")
        if key == "bits_per_dim":
            unit = out.params.get("eval.bits_per_dim_unit")
            line += f"   ({out.params.get('eval.bits_per_dim_kind')}{'; ' + unit if unit else ''})"
        if key == "log_partition":
            line += (f" ± {m['log_partition_stderr']:.2g}   (log Z, nats; {out.params.get('eval.log_partition_method')}; "
                     "± its standard error over the runs)")
        if key == "bits_per_token":
            line += (f"   ({out.params.get('eval.bits_per_token_kind')}; bits/{out.params.get('eval.token_unit')}; "
                     f"unigram {m['unigram_bits_per_token']:.4g}, bigram {m['bigram_bits_per_token']:.4g})")
        if key == "nats_per_sample":
            line += (f"   ({out.params.get('eval.nats_per_sample_kind')}; 8-bit mu-law; uniform "
                     f"{m['uniform_nats_per_sample']:.4g}, unigram {m['unigram_nats_per_sample']:.4g}, "
                     f"bigram {m['bigram_nats_per_sample']:.4g})")
        if key == "nats_per_point":
            line += (f"   ({out.params.get('eval.nats_per_point_kind')}; nats per point of the density; one Gaussian "
                     f"{m['gaussian_nats_per_point']:.4g})")
        if key == "interp_evenness":
            line += f"   (1: every step of a latent lerp moves the features equally; {interpolation.INTERP_STEPS}: one jump)"
        if key == "interp_detour":
            line += "   (1: the features move straight from one end to the other)"
        if key == "nats_per_active_sample":
            line += (f"   ({m['active_share']:.0%} of the samples, the padding left out; unigram "
                     f"{m['unigram_nats_per_active_sample']:.4g}, bigram {m['bigram_nats_per_active_sample']:.4g})")
        print(line)
    if out.eval_run_id:
        print(f"\nevaluation run {out.eval_run_id} in {out.tracking_uri}"
              + (f" (nested under training run {out.training_run_id})" if out.training_run_id else ""))


# ----------------------------------------------------------------------------- command line


def command(args) -> int:
    """`genray eval` with parsed arguments (pipelines/arguments.py)."""
    console.set_verbose(args.verbose)
    logs = console.route_logs(log_path(project_home(), "eval", time.strftime("%Y%m%d-%H%M%S")))
    if logs is not None:
        print(f"Ray and library output: {logs} (--verbose shows it here)")
    request = EvalRequest(
        target=args.target, num_samples=args.num_samples, batch_size=args.batch_size, workers=args.workers,
        reference=args.reference, feature_net=args.feature_net, inception=args.inception,
        sampling=parse_overrides(args.overrides), likelihood_rows=args.likelihood_rows, clip=args.clip,
        index=args.index, seed=args.seed, log=not args.no_log,
    )
    print_report(evaluate(request))
    return 0


def main(argv: list[str] | None = None) -> int:
    return console.run(command, arguments.eval_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
