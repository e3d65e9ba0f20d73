"""Train every shipped config, evaluate it with `genray eval`'s metrics, write docs/RESULTS.md.

    .venv/bin/python benchmarks/results.py                 # this CPU: shapes configs shortened
    .venv/bin/python benchmarks/results.py --full          # every config exactly as shipped (GPU)
    .venv/bin/python benchmarks/results.py --only vae_digits,dcgan_digits
    .venv/bin/python benchmarks/results.py --eval-only      # re-evaluate the runs in docs/results.json

Runs one after another on the local Ray instance and MLflow store (GENRAY_HOME), so every
figure is also in MLflow: a training run per config, an evaluation run nested under it.
The latent diffusion entry uses the autoencoder the autoencoder_shapes entry just trained.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from genray.pipelines import config, evaluate, train  # noqa: E402
from genray.pipelines.console import CONFIGS  # noqa: E402
from genray.pipelines.env import project_home  # noqa: E402

# (name, config, overrides on a 2-core CPU). The digits configs run as shipped; the shapes
# recipes are GPU-sized (the small UNet/VAE at 32x32 runs ~100 examples/s here), so they run
# for fewer steps, and the table says how many.
ENTRIES = [
    ("vae_digits", "vae/vae_digits.yaml", []),
    ("dcgan_digits", "gan/dcgan_digits.yaml", []),
    ("ddpm_digits", "diffusion/ddpm_digits.yaml", []),
    ("beta_vae_shapes", "vae/beta_vae_shapes.yaml", ["trainer.max_steps=800", "model.capacity_steps=600"]),
    ("autoencoder_shapes", "vae/autoencoder_shapes.yaml", ["trainer.max_steps=600"]),
    ("ldm_shapes", "diffusion/ldm_shapes.yaml", ["trainer.max_steps=500", "trainer.batch_size=32"]),
    ("ddpm_shapes", "diffusion/ddpm_shapes.yaml", ["trainer.max_steps=400"]),
    # Fashion-MNIST: real photos, recipes sized for this CPU, run as shipped.
    ("vae_fashion", "vae/vae_fashion.yaml", []),
    ("dcgan_fashion", "gan/dcgan_fashion.yaml", []),
    # StyleGAN2 at DCGAN's wall-clock budget here: a StyleGAN2 step costs ~2x DCGAN's on this CPU,
    # so half the steps in about the same minutes.
    ("stylegan2_fashion", "gan/stylegan2_fashion.yaml", ["trainer.max_steps=1500"]),
    # Image-to-image translation: Fashion-MNIST edges -> items.
    ("pix2pix_fashion_edges", "gan/pix2pix_fashion_edges.yaml", ["trainer.max_steps=2000"]),
    ("ddpm_fashion", "diffusion/ddpm_fashion.yaml", []),
    # Autoregressive: exact likelihoods. GPT on Python's standard library, character by character
    # (shortened here: ~1 step/s on this CPU).
    ("pixelcnn_digits", "autoregressive/pixelcnn_digits.yaml", []),
    ("pixelcnn_fashion", "autoregressive/pixelcnn_fashion.yaml", ["trainer.max_steps=1200"]),
    ("gpt_text", "autoregressive/gpt_text.yaml", ["trainer.max_steps=1000"]),
    # Audio: exact nats per sample on 8-bit mu-law (spoken_digits needs Debian's espeak-ng).
    ("wavenet_tones", "autoregressive/wavenet_tones.yaml", []),
    ("wavenet_spoken_digits", "autoregressive/wavenet_spoken_digits.yaml", []),
]

# Entries scored on fewer samples than --num-samples, in batches that keep both workers busy: a
# PixelCNN draws a 32x32 image in 1,024 network passes (a batch of 64 takes about 5 minutes per
# worker here), so its quality figures use 128 samples, and its floor as many real images.
EVAL_SAMPLES = {"pixelcnn_fashion": 128}

COLUMNS = [  # (header, metric key pattern; {d} = the dataset)
    ("FD-{d} (floor)", "fd_{d}"),
    ("KID-{d} ×10³ (floor)", "kid_{d}"),
    ("precision / recall", None),
    ("class consistency", "class_consistency"),
    ("bits/dim", "bits_per_dim"),
    ("recon PSNR dB", "recon_psnr"),
    ("MIG / β-VAE", None),
    ("samples/s", "samples_per_s"),
]


def fmt(v: float | None, scale: float = 1.0, digits: int = 3) -> str:
    return "–" if v is None else f"{v * scale:.{digits}g}"


def row(entry: dict) -> str:
    m, d = entry["metrics"], entry["dataset"]
    def get(k): return m.get(k)
    cells = [
        f"`{entry['name']}`", entry["family"], f"{entry['steps']:,} / {entry['config_steps']:,}",
        f"{entry['train_s'] / 60:.1f}",
        f"{fmt(get(f'fd_{d}'))} ({fmt(get(f'fd_{d}_floor'))})",
        f"{fmt(get(f'kid_{d}'), 1e3)} ({fmt(get(f'kid_{d}_floor'), 1e3)})",
        f"{fmt(get(f'precision_{d}'), digits=2)} / {fmt(get(f'recall_{d}'), digits=2)}"
        f" ({fmt(get(f'precision_{d}_floor'), digits=2)} / {fmt(get(f'recall_{d}_floor'), digits=2)})",
        fmt(get("class_consistency"), digits=3),
        "–" if get("bits_per_dim") is None else f"{get('bits_per_dim'):.3f} ({entry['params'].get('eval.bits_per_dim_kind')})",
        fmt(get("recon_psnr"), digits=3),
        "–" if get("mig") is None else f"{get('mig'):.3f} / {fmt(get('beta_vae_score'), digits=3)}",
        f"{get('samples_per_s'):,.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


def is_sequence(entry: dict) -> bool:
    return "bits_per_token" in entry["metrics"]


def is_translation(entry: dict) -> bool:
    return "psnr" in entry["metrics"]


def translation_row(entry: dict) -> str:
    m, d = entry["metrics"], entry["dataset"]
    cells = [
        f"`{entry['name']}`", entry["family"], f"{entry['steps']:,} / {entry['config_steps']:,}",
        f"{entry['train_s'] / 60:.1f}", f"{m['l1']:.4f}", f"{m['psnr']:.2f}",
        f"{fmt(m.get(f'fd_{d}'))} ({fmt(m.get(f'fd_{d}_floor'))})",
        f"{fmt(m.get(f'kid_{d}'), 1e3)} ({fmt(m.get(f'kid_{d}_floor'), 1e3)})",
        f"{fmt(m.get(f'precision_{d}'), digits=2)} / {fmt(m.get(f'recall_{d}'), digits=2)}"
        f" ({fmt(m.get(f'precision_{d}_floor'), digits=2)} / {fmt(m.get(f'recall_{d}_floor'), digits=2)})",
        f"{fmt(m.get('class_consistency'), digits=3)} ({fmt(m.get('classifier_accuracy_real'), digits=3)})",
        f"{m['translations_per_s']:,.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


def is_audio(entry: dict) -> bool:
    return "nats_per_sample" in entry["metrics"]


def audio_row(entry: dict) -> str:
    m = entry["metrics"]
    pitch = ("–" if "pitch_accuracy" not in m
             else f"{m['pitch_accuracy']:.1%} ({m['pitch_accuracy_real']:.1%})")
    cells = [
        f"`{entry['name']}`", entry["family"], f"{entry['steps']:,} / {entry['config_steps']:,}",
        f"{entry['train_s'] / 60:.1f}",
        f"{m['nats_per_sample']:.3f} ({entry['params'].get('eval.nats_per_sample_kind')})",
        f"{m['uniform_nats_per_sample']:.3f}", f"{m['unigram_nats_per_sample']:.3f}",
        f"{m['bigram_nats_per_sample']:.3f}", f"{int(entry['params'].get('eval.reference_samples', 0)):,}",
        "–" if "nats_per_active_sample" not in m else
        (f"{m['nats_per_active_sample']:.3f} ({m['unigram_nats_per_active_sample']:.3f} / "
         f"{m['bigram_nats_per_active_sample']:.3f}; {m['active_share']:.0%} of samples)"),
        pitch, f"{m['audio_samples_per_s']:,.0f} ({m['real_time_factor']:.2f}x)",
    ]
    return "| " + " | ".join(cells) + " |"


def sequence_row(entry: dict) -> str:
    m = entry["metrics"]
    unit = entry["params"].get("eval.token_unit", "token")
    cells = [
        f"`{entry['name']}`", entry["family"], f"{entry['steps']:,} / {entry['config_steps']:,}",
        f"{entry['train_s'] / 60:.1f}",
        f"{m['bits_per_token']:.3f} ({entry['params'].get('eval.bits_per_token_kind')}, bits/{unit})",
        f"{m['unigram_bits_per_token']:.3f}", f"{m['bigram_bits_per_token']:.3f}",
        f"{int(entry['params'].get('eval.reference_tokens', 0)):,}",
        "–" if entry.get("train_tokens_per_s") is None else f"{entry['train_tokens_per_s']:,.0f}",
        f"{m['tokens_per_s']:,.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


def train_tokens_per_s(run_id: str, home: Path) -> float | None:
    """The median of the run's logged training throughput in tokens/s (all workers together)."""
    import statistics

    from mlflow.tracking import MlflowClient

    from genray.pipelines import tracking

    client = MlflowClient(tracking_uri=tracking.tracking_uri(home))
    values = [m.value for m in client.get_metric_history(run_id, "train/tokens_per_s")]
    return statistics.median(values) if values else None


def write_markdown(entries: list[dict], path: Path, command: str, num_samples: int) -> None:
    lines = [
        "# Results: every shipped config, trained and evaluated the same way",
        "",
        "Produced by one command, which anyone can rerun (it trains each config, then runs",
        "`genray eval` on it; one to two hours on a 2-core CPU):",
        "",
        f"    {command}",
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"no GPU. Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "How to read it:",
        f"- Quality metrics compare {num_samples:,} samples (digits: 1,500, the size of its training split,",
        "  so that samples and floor are scored on equal rows; "
        + ", ".join(f"`{k}`: {v:,}" for k, v in EVAL_SAMPLES.items())
        + ", floor alike) with the dataset's test split, on the features",
        "  of genray's domain classifier for that dataset (trained once per dataset and cached; its id",
        "  is in the evaluation run's params). **(floor)** is the same statistic for a real training-",
        "  split sample of the same size: no model can be expected to beat it, and a model at its floor",
        "  is indistinguishable from real data by that measure. Lower FD and KID are better; higher",
        "  precision (samples look real) and recall (the data's variety is covered) are better.",
        "- Class consistency: the share of class-conditional samples (text-conditional: prompts from",
        "  the test captions) that the classifier puts in the requested class.",
        "- bits/dim are on 8-bit pixels (`components/metrics/likelihood.py`); \"bound\" means an upper",
        "  bound on the model's true bits/dim (ELBO/IWAE, diffusion's variational bound), \"exact\" is",
        "  log P itself (PixelCNN's softmax). Digits' pixels take only 17 of the 256 levels (scikit-learn's",
        "  0..16 counts, stretched), so a model that learns which can go far below 8 bits/dim there.",
        "- MIG and the β-VAE metric are computed for models that encode, on shapes' ground-truth factors.",
        "- samples/s: sampling throughput of 2 Ray workers at 1 CPU each, at the model's default",
        "  sampling settings (diffusion: DDIM with the config's steps and guidance).",
        "- Steps: run / in the config. The shapes recipes are sized for a GPU; on this CPU they ran",
        "  shortened, so their figures are those of early checkpoints, not of the recipes.",
        "- train min: wall time of `genray train`, including, for the first config of each dataset, the",
        "  one-time training of its domain classifier (digits 42 s, shapes 352 s, fashion_mnist 564 s on this",
        "  machine; the fashion_mnist rows ran beside other jobs, load average 4-26 on 2 cores, and the",
        "  wavenet rows beside test runs, load 3-6, so their times are upper bounds).",
        "",
        "| config | family | steps | train min | " + " | ".join(h.format(d="D") for h, _ in COLUMNS) + " |",
        "|" + "---|" * (4 + len(COLUMNS)),
    ]
    for e in entries:
        if not is_sequence(e) and not is_audio(e) and not is_translation(e):
            lines.append(row(e))
    translations = [e for e in entries if is_translation(e)]
    if translations:
        lines += ["", "Image-to-image translation: the translations of the test split's inputs (its first "
                  f"{num_samples:,} pairs)",
                  "against their true targets: mean absolute error on [-1, 1] (the training loss) and PSNR in dB on",
                  "[0, 1] per image; FD, KID and precision/recall of the translations on the target domain's",
                  "classifier (the items', trained on the dataset's `image_paired`), beside the floor of as many real",
                  "training targets; class consistency: the share of translations classified as the class of the",
                  "item their input came from (the classifier's accuracy on the real targets in brackets).",
                  "translations/s: one process, batches of 250.", "",
                  "| config | family | steps | train min | L1 | PSNR dB | FD-D (floor) | KID-D ×10³ (floor) "
                  "| precision / recall (floor) | class consistency (real) | translations/s |", "|" + "---|" * 11]
        lines += [translation_row(e) for e in translations]
    sequences = [e for e in entries if is_sequence(e)]
    if sequences:
        lines += ["", "Token sequences: exact held-out bits per token (per character for the built-in `text`: the",
                  "standard library's held-out files) beside a unigram and a bigram fitted on the training split",
                  "(add-½ smoothing, `components/metrics/ngram.py`), scored on the same tokens. Lower is better.",
                  "Training tokens/s: the median logged rate of all workers; generation tokens/s: 2 Ray workers at",
                  "1 CPU each, KV cache, the model's default sampling settings.", "",
                  "| config | family | steps | train min | held-out bits | unigram | bigram | tokens scored | "
                  "train tokens/s | generation tokens/s |", "|" + "---|" * 10]
        lines += [sequence_row(e) for e in sequences]
    clips = [e for e in entries if is_audio(e)]
    if clips:
        lines += ["", "Audio: exact held-out nats per sample on 8-bit μ-law, beside the uniform ln 256 and a unigram and a",
                  "bigram of the μ-law values fitted on the training split, scored on the same samples. Lower is better.",
                  "Pitch accuracy: the share of class-conditioned samples whose FFT peak lies within half a semitone of",
                  "the note asked for (the real test clips' share in brackets); tones only. Generation: audio samples/s",
                  "of 2 Ray workers at 1 CPU each, batches of 250 clips, fast generation (per-layer queues), and that",
                  "rate over the sample rate (x real time). Active span: the same figures on the samples from each",
                  "clip's first sound to its last, for clips padded with digital silence (spoken digits), which model",
                  "and bigram predict almost for free.", "",
                  "| config | family | steps | train min | held-out nats/sample | uniform | unigram | bigram | samples scored "
                  "| active span: nats/sample (unigram / bigram) | pitch accuracy (real) | generation samples/s |",
                  "|" + "---|" * 12]
        lines += [audio_row(e) for e in clips]
    missing = [n for n, _, _ in ENTRIES if n not in {e["name"] for e in entries}]
    if missing:
        lines += ["", "Not run yet: " + ", ".join(f"`{n}`" for n in missing)
                  + f" (`.venv/bin/python benchmarks/results.py --only {','.join(missing)}` adds them)."]
    lines += ["", "D is the dataset named in the config (digits, shapes or fashion_mnist). Per-run details, sample grids",
              "and every other metric are in MLflow: the training run of each config, and its nested",
              "`eval-...` run.", ""]
    # Sections written by other benchmarks (the sweeps of genray tune) are kept as they are.
    kept = path.read_text().partition("\n## ")[2] if path.exists() else ""
    path.write_text("\n".join(lines) + ("\n## " + kept if kept else ""))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--full", action="store_true", help="run every config as shipped (no CPU shortening)")
    p.add_argument("--only", help="comma-separated entry names")
    p.add_argument("--eval-only", action="store_true", help="re-evaluate the runs recorded in --json, no training")
    p.add_argument("--num-samples", type=int, default=evaluate.DEFAULT_NUM_SAMPLES)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "RESULTS.md")
    p.add_argument("--json", type=Path, default=ROOT / "docs" / "results.json")
    args = p.parse_args()

    only = set(args.only.split(",")) if args.only else None
    done = json.loads(args.json.read_text()) if args.json.exists() else {}
    home = project_home()
    autoencoder_run = None
    for name, rel, overrides in ENTRIES:
        if only and name not in only:
            if name in done and name == "autoencoder_shapes":
                autoencoder_run = done[name]["run_id"]
            continue
        if args.eval_only:
            if name not in done:
                continue
            entry = done[name]
        else:
            overrides = [] if args.full else list(overrides)
            if name == "ldm_shapes" and autoencoder_run:
                overrides.append(f"model.autoencoder=runs:/{autoencoder_run}")
            shipped = config.load(CONFIGS / rel)
            spec = config.load(CONFIGS / rel, overrides)
            run_name = f"results-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
            print(f"=== {name}: training {spec.trainer.max_steps} steps ({' '.join(overrides) or 'as shipped'})", flush=True)
            started = time.perf_counter()
            out = train.run(spec, name=run_name, home=home)
            if name == "autoencoder_shapes":
                autoencoder_run = out.run_id
            entry = {"name": name, "family": spec.model.family, "dataset": spec.data.dataset, "run_id": out.run_id,
                     "steps": spec.trainer.max_steps, "config_steps": shipped.trainer.max_steps,
                     "train_s": time.perf_counter() - started,
                     "train_tokens_per_s": train_tokens_per_s(out.run_id, home)}
        print(f"=== {name}: evaluating run {entry['run_id']}", flush=True)
        started = time.perf_counter()
        num_samples = min(args.num_samples, EVAL_SAMPLES.get(name, args.num_samples))
        batch_size = min(250, -(-num_samples // max(args.workers, 1)))  # every worker gets a chunk
        ev = evaluate.evaluate(evaluate.EvalRequest(target=f"runs:/{entry['run_id']}", num_samples=num_samples,
                                                    batch_size=batch_size, workers=args.workers), home=home)
        evaluate.print_report(ev)
        done[name] = {**entry, "eval_run_id": ev.eval_run_id, "eval_s": time.perf_counter() - started,
                      "metrics": ev.metrics, "params": ev.params}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(done, indent=2, sort_keys=True))
        entries = [done[n] for n, _, _ in ENTRIES if n in done and "metrics" in done[n]]  # trained, then scored
        write_markdown(entries, args.out, "make results", args.num_samples)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
