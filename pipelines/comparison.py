"""The comparison's report, from its trials' rows: the table (one row per family, every column
defined), the source's claims each beside the measurement that decides it, the CSV of every
trial and the two plots. Pure: no Ray, no MLflow; pipelines/compare.py runs the trials and calls
`write_report`.

    summarize(rows, plan)      one row per family: means over its finished seeds, FD's spread over
                               seeds, diverged runs, what it is (encode, latent size, likelihood kind)
    judge_claims(summary)      CLAIMS, each split into parts decided by a small rule
    write_report(...)          COMPARISON.md, comparison.csv, comparison_quality_speed.png,
                               comparison_likelihood.png

`plan` is the comparison's plan (pipelines/compare.py: Plan): the data, budget, seeds, families
and the settings the columns' definitions quote.
"""
from __future__ import annotations

import csv
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

# How the trials measure (pipelines/compare.py uses these; the definitions below quote them).
SPEED_BATCH = 64  # samples/s are measured at this batch
LATENCY_REPEATS = 3  # sample(1) calls timed after a warm-up; the median is reported
SHARPNESS_IMAGES = 64
LIKELIHOOD_ROWS = 500  # test images scored for bits/dim (genray eval's default)
FILES = {"markdown": "COMPARISON.md", "csv": "comparison.csv", "scatter": "comparison_quality_speed.png",
         "likelihood": "comparison_likelihood.png"}


# ----------------------------------------------------------------------------- the table


@dataclass
class TrialRow:
    family: str
    seed: int
    status: str  # finished | diverged | failed
    metrics: dict[str, Any]
    error: str = ""


# comparison.csv: one row per trial, these columns (and status, error), in this order.
TRIAL_COLUMNS = ("family", "seed", "steps", "batch_size", "train_s", "examples_per_s", "train_wall_s",
                 "fd", "fd_floor", "kid", "kid_floor", "precision", "precision_floor", "recall", "recall_floor",
                 "class_consistency", "sharpness", "samples_per_s", "batch_latency_s", "latency_s", "nfe", "nfe_unit",
                 "conditioning", "encode", "latent_size", "interp_evenness", "interp_detour", "mig", "likelihood",
                 "bits_per_dim", "bits_per_dim_unit")


@dataclass(frozen=True)
class Column:
    key: str  # in a summary row
    header: str  # in COMPARISON.md
    group: str
    definition: str
    fmt: Callable[[Any], str]


def _num(digits: int = 3):
    return lambda v: f"{v:.{digits}g}" if finite(v) else "-"


def _int(v: Any) -> str:
    return f"{int(v):,}" if finite(v) else "-"


def _ms(v: Any) -> str:
    return f"{1000 * v:.3g}" if finite(v) else "-"


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}%" if finite(v) else "-"


def _text(v: Any) -> str:
    return "-" if v is None or v == "" else str(v)


def columns(plan) -> list[Column]:
    """The table's columns, each with how COMPARISON.md defines it (formula and settings)."""
    n = plan.num_samples
    feats = {"auto": f"the {plan.data} domain classifier's features (genray eval's, trained once and cached)",
             "none": "no features (--feature-net none: the quality columns stay empty)"}.get(
        plan.feature_net, f"the features of the classifier in {plan.feature_net}")
    return [
        Column("family", "family", "", "the family and the shipped config it trained (`genray configs show NAME`).", _text),
        Column("fd", "FD", "quality",
               f"Fréchet distance between Gaussians fitted to {feats} of {n} samples and of the test split: "
               "‖μ_s − μ_r‖² + Tr(Σ_s + Σ_r − 2(Σ_s Σ_r)^½) (genray eval; mean over seeds).", _num()),
        Column("fd_floor", "floor", "quality",
               f"the same FD for {n} real training images against the test split (fewer when the split is smaller): "
               "what a perfect model scores at this sample size.", _num()),
        Column("fd_ratio", "FD/floor", "quality", "FD ÷ floor, per seed, then the mean; 1 is as close as real images.",
               _num()),
        Column("kid", "KID", "quality",
               "kernel inception distance on the same features: the unbiased MMD² with k(x, y) = (xᵀy/d + 1)³, "
               "averaged over 50 subsets of up to 1,000 (Bińkowski et al. 2018).", _num()),
        Column("precision", "precision", "quality",
               "share of samples inside the real features' k-NN balls, k = 3 (Kynkäänniemi et al. 2019).", _num(2)),
        Column("recall", "recall", "quality", "share of real features inside the samples' k-NN balls, k = 3.", _num(2)),
        Column("class_consistency", "class cons.", "quality",
               "class-conditional models: the share of samples the classifier puts in the class they were asked "
               "for (classes cycled 0..K−1); - for unconditional ones.", _pct),
        Column("sharpness", "sharpness", "quality",
               f"mean variance of the 4-neighbour Laplacian of {SHARPNESS_IMAGES} samples ÷ the same for "
               f"{SHARPNESS_IMAGES} test images, pixels on [0, 1] (Pech-Pacheco et al. 2000); below 1 is blurrier "
               "than the real images.", _num()),
        Column("samples_per_s", "samples/s @64", "speed",
               f"samples ÷ the seconds their `sample` calls took, at batch {SPEED_BATCH}, {n} samples in the trial's "
               f"process ({max(1, int(plan.cpus_per_trial))} CPU thread(s)), default sampling settings.", _num()),
        Column("latency_s", "latency (ms)", "speed",
               f"milliseconds of one `sample(1)` call, the median of {LATENCY_REPEATS} after a warm-up.", _ms),
        Column("nfe", "NFE", "speed",
               "network evaluations per `sample` call of the default settings: the model's `sampling_cost` "
               "(the RBM's unit is a Gibbs sweep, two matrix products).", _int),
        Column("train_s", "train s", "training",
               "seconds of training to the budget, the loop's evals excluded (`train_seconds` in the checkpoint); "
               "mean over seeds.", _num()),
        Column("steps", "steps", "training", "optimizer steps to the budget; mean over seeds.", _int),
        Column("examples_per_s", "examples/s", "training", "steps × batch size ÷ train s; mean over seeds.", _num()),
        Column("fd_spread", "FD spread", "training",
               "the sample standard deviation of FD over the seeds that finished; - with fewer than two.", _num()),
        Column("diverged", "diverged", "training",
               "runs whose training loss became non-finite (the loop stops them) or whose FD is non-finite, "
               "of the seeds run.", _text),
        Column("encode", "encode", "latent space", "whether the family declares `encode` (a latent space to map "
               "images into).", _text),
        Column("latent_size", "latent size", "latent space", "numbers in `encode(x)` of one image.", _int),
        Column("interp_evenness", "interp. evenness", "latent space",
               "families that encode and decode: along x_k = decode((1 − k/K) encode(a) + (k/K) encode(b)), k = 0..K "
               "(K = 16), for 200 pairs (a, b) of test images, the classifier's features f_k take steps d_k = "
               "|f_k − f_(k−1)|; evenness = K Σ d_k² ÷ (Σ d_k)², the median over pairs: 1 when each step moves the "
               "features equally, K when all the change is one jump (a perceptual-path-length-style score, Karras et "
               "al. 2019, made scale-free: PPL's sum of squared steps over its least value for the same length).",
               _num()),
        Column("interp_detour", "interp. detour", "latent space",
               "the same paths: Σ d_k ÷ |f_K − f_0|, the median over pairs; 1 when the features move straight from "
               "one end to the other, more when the path passes images unlike either end.", _num()),
        Column("mig", "MIG", "latent space",
               "families that encode, on data with ground-truth factors (`--data shapes`): the mutual information "
               "gap of the encoded test split (Chen et al. 2018; genray eval's `mig`), mean over seeds.", _num()),
        Column("likelihood", "likelihood", "likelihood",
               "the model's `log_prob_kind`: exact, bound (a variational bound on −log p), estimate (AIS for the "
               "RBM's partition function); none without `log_prob`.", _text),
        Column("bits_per_dim", "bits/dim", "likelihood",
               f"−log₂ p(x) ÷ dimensions over the first {LIKELIHOOD_ROWS} test images (genray eval), a continuous "
               "density dequantized uniformly within each 8-bit bin; † per binarised pixel (the RBM), not per 8-bit "
               "pixel.", _num(4)),
    ]


def summarize(rows: list[TrialRow], plan) -> list[dict[str, Any]]:
    """One row per family: means over its finished seeds, FD's spread, diverged runs, what it is."""
    out = []
    config = {e.family: e.config for e in plan.entries}
    for family in plan.families:
        mine = [r for r in rows if r.family == family]
        ok = [r.metrics for r in mine if r.status == "finished"]
        any_m = next((r.metrics for r in mine if r.metrics.get("likelihood")), {})

        def mean(key: str) -> float:
            vals = [m[key] for m in ok if finite(m.get(key))]
            return statistics.fmean(vals) if vals else float("nan")

        fds = [m["fd"] for m in ok if finite(m.get("fd"))]
        ratios = [m["fd"] / m["fd_floor"] for m in ok if finite(m.get("fd")) and finite(m.get("fd_floor"))
                  and m["fd_floor"] > 0]
        unit = any_m.get("bits_per_dim_unit") or ""
        row = {
            "family": family, "config": config[family], "seeds": len(mine), "finished": len(ok),
            "diverged_runs": sum(r.status == "diverged" for r in mine),
            "failed_runs": sum(r.status == "failed" for r in mine),
            **{k: mean(k) for k in ("fd", "fd_floor", "kid", "precision", "recall", "sharpness", "samples_per_s",
                                    "latency_s", "nfe", "train_s", "steps", "examples_per_s", "bits_per_dim",
                                    "interp_evenness", "interp_detour", "mig")},
            "class_consistency": mean("class_consistency") if any_m.get("conditioning") == "class" else float("nan"),
            "fd_ratio": statistics.fmean(ratios) if ratios else float("nan"),
            "fd_spread": statistics.stdev(fds) if len(fds) >= 2 else float("nan"),
            "nfe_unit": any_m.get("nfe_unit", "steps"),
            "encode": ("yes" if any_m.get("encode") else "no") if any_m else None,
            "latent_size": any_m.get("latent_size", float("nan")),
            "likelihood": any_m.get("likelihood"),
            "bits_unit": unit,
        }
        row["diverged"] = f"{row['diverged_runs']}/{len(mine)}"
        out.append(row)
    return out


def cell(col: Column, row: dict[str, Any]) -> str:
    if col.key == "family":
        return f"{row['family']} ({row['config']})"
    text = col.fmt(row.get(col.key))
    if col.key == "bits_per_dim" and text != "-" and "binarised" in (row.get("bits_unit") or ""):
        text += " †"
    if col.key == "nfe" and text != "-" and row.get("nfe_unit") not in (None, "steps"):
        text += f" ({row['nfe_unit'].replace('_', ' ')})"
    return text


# ----------------------------------------------------------------------------- the source's claims
#
# The source names approaches, not families; GROUPS is the report's reading of its words (which
# families each word covers). Nothing routes on it: it only says which rows a claim is about.

GROUPS = {
    "GAN": ("dcgan", "stylegan2"),
    "diffusion": ("diffusion",),
    "VAE": ("vae", "beta_vae"),
    "flow": ("realnvp", "glow"),
    "autoregressive": ("pixelcnn", "gpt", "wavenet"),
}


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _median(rows: list[dict[str, Any]], key: str) -> float:
    vals = [r[key] for r in rows if finite(r.get(key))]
    return statistics.median(vals) if vals else float("nan")


def _listing(rows: list[dict[str, Any]], key: str, fmt: Callable[[Any], str]) -> str:
    return ", ".join(f"{r['family']} {fmt(r.get(key))}" for r in rows)


def _compare_median(key: str, what: str, higher: bool, fmt=_num()):
    """A part that holds when the group's median of `key` is above (higher) or below the median
    of the other families'."""
    def test(group: list[dict[str, Any]], others: list[dict[str, Any]]):
        mine, theirs = _median(group, key), _median(others, key)
        if not (finite(mine) and finite(theirs)):
            return None, f"{what}: not measured for both this group and the others"
        holds = mine > theirs if higher else mine < theirs
        return holds, f"{what}: {_listing(group, key, fmt)} against the other families' median {fmt(theirs)}"
    return test


def _unstable(group, others):
    diverged = sum(r["diverged_runs"] for r in group)
    runs = sum(r["seeds"] for r in group)
    if diverged:
        return True, f"diverged runs: {diverged} of {runs}"

    def rel(r):  # FD's spread over seeds relative to its mean
        return r["fd_spread"] / r["fd"] if finite(r.get("fd_spread")) and finite(r.get("fd")) and r["fd"] > 0 else math.nan

    mine = [rel(r) for r in group if finite(rel(r))]
    theirs = [rel(r) for r in others if finite(rel(r))]
    if not mine or not theirs:
        return None, (f"no diverged run of {runs}; FD's spread over seeds needs 2+ seeds per family "
                      "(--seeds) to be measured")
    holds = statistics.median(mine) > statistics.median(theirs)
    shown = ", ".join(f"{r['family']} {rel(r):.3g}" for r in group if finite(rel(r)))
    return holds, (f"no diverged run of {runs}; FD spread ÷ FD: {shown} against the other families' median "
                   f"{statistics.median(theirs):.3g}")


def _best_quality(group, others):
    ranked = sorted((r for r in group + others if finite(r.get("fd_ratio"))), key=lambda r: r["fd_ratio"])
    if not ranked or not any(finite(r.get("fd_ratio")) for r in group):
        return None, "FD/floor: not measured"
    best = ranked[0]
    mine = min((r for r in group if finite(r.get("fd_ratio"))), key=lambda r: r["fd_ratio"])
    runner = next((r for r in ranked if r["family"] not in {g["family"] for g in group}), None)
    holds = best["family"] in {g["family"] for g in group}
    versus = f"; best other: {runner['family']} {runner['fd_ratio']:.3g}" if runner else ""
    return holds, f"FD/floor: {mine['family']} {mine['fd_ratio']:.3g} (rank {ranked.index(mine) + 1} of {len(ranked)}){versus}"


def _has_latent(group, others):
    sizes = [f"{r['family']} {_int(r.get('latent_size'))} numbers" if r.get("encode") == "yes" else f"{r['family']} none"
             for r in group]
    if any(r.get("encode") is None for r in group):
        return None, "encode: not measured"
    return all(r.get("encode") == "yes" for r in group), f"encode: {', '.join(sizes)}"


def _smoother_latent(group, others):
    """Holds when the group's median interpolation evenness is below that of the other families
    that encode (1 is a perfectly even path; see the interp. evenness column)."""
    rivals = [r for r in others if r.get("encode") == "yes"]
    mine, theirs = _median(group, "interp_evenness"), _median(rivals, "interp_evenness")
    if not (finite(mine) and finite(theirs)):
        return None, ("interp. evenness: needs the group and another family that encodes, both with the domain "
                      "classifier's features")
    return mine < theirs, (f"interp. evenness: {_listing(group, 'interp_evenness', _num())} against the other "
                           f"encoding families' median {_num()(theirs)} ({_listing(rivals, 'interp_evenness', _num())})")


def _exact(group, others):
    if any(r.get("likelihood") is None for r in group):
        return None, "likelihood: not measured"
    shown = ", ".join(f"{r['family']} {r['likelihood']} ({_num(4)(r.get('bits_per_dim'))} bits/dim)" for r in group)
    return all(r["likelihood"] == "exact" and finite(r.get("bits_per_dim")) for r in group), f"likelihood: {shown}"


@dataclass(frozen=True)
class Claim:
    text: str  # as the source puts it
    group: str  # a GROUPS key: the families it is about
    parts: tuple[tuple[str, Callable], ...]  # (what, test(group rows, other rows) -> (holds or None, evidence))


CLAIMS = (
    Claim("GANs sample fast but train unstably", "GAN", (
        ("sample fast", _compare_median("samples_per_s", "samples/s @64", True)),
        ("train unstably", _unstable))),
    Claim("diffusion has the best quality but samples slowly", "diffusion", (
        ("the best quality", _best_quality),
        ("samples slowly", _compare_median("samples_per_s", "samples/s @64", False)))),
    Claim("VAEs have a smooth latent space but blurry samples", "VAE", (
        ("a latent space", _has_latent),
        ("smoother than the other latent spaces", _smoother_latent),
        ("blurry samples", _compare_median("sharpness", "sharpness", False)))),
    Claim("flows give exact likelihood", "flow", (("exact likelihood", _exact),)),
    Claim("autoregressive models give exact likelihood but sample slowly", "autoregressive", (
        ("exact likelihood", _exact),
        ("samples slowly", _compare_median("samples_per_s", "samples/s @64", False)))),
)


def judge_claims(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each claim's verdict from its parts: supported (every part holds), contradicted (none
    does), mixed (some do, some do not), partly measured (the measured parts hold or fail
    alike and others could not be measured), not measured (none of its families ran)."""
    measured = [r for r in summary if r["finished"]]
    out = []
    for claim in CLAIMS:
        members = set(GROUPS[claim.group])
        group = [r for r in measured if r["family"] in members]
        others = [r for r in measured if r["family"] not in members]
        if not group:
            out.append({"claim": claim.text, "families": "", "verdict": "not measured",
                        "evidence": f"no {claim.group} family finished in this comparison"})
            continue
        results = [(what, *test(group, others)) for what, test in claim.parts]
        held = [h for _, h, _ in results if h is not None]
        if not held:
            verdict = "not measured"
        elif len(held) < len(results):
            verdict = ("partly measured: supported" if all(held) else
                       "partly measured: contradicted" if not any(held) else "mixed")
        else:
            verdict = "supported" if all(held) else "contradicted" if not any(held) else "mixed"
        evidence = "; ".join(f"{what} {'✓' if h else '✗' if h is not None else '?'} ({why})" for what, h, why in results)
        out.append({"claim": claim.text, "families": ", ".join(r["family"] for r in group), "verdict": verdict,
                    "evidence": evidence})
    return out


# ----------------------------------------------------------------------------- the report


def write_report(rows: list[TrialRow], summary: list[dict[str, Any]], claims: list[dict[str, Any]], plan,
                 directory: Path, *, name: str) -> dict[str, Path]:
    """COMPARISON.md, comparison.csv and the two plots, in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {k: directory / v for k, v in FILES.items()}
    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*TRIAL_COLUMNS, "status", "error"])
        for r in rows:
            w.writerow([_csv(r.metrics.get(c, {"family": r.family, "seed": r.seed}.get(c))) for c in TRIAL_COLUMNS]
                       + [r.status, r.error])
    plot_quality_speed(rows, summary, paths["scatter"])
    plot_likelihood(summary, paths["likelihood"])
    paths["markdown"].write_text(markdown(rows, summary, claims, plan, name=name))
    return paths


def _csv(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def markdown(rows: list[TrialRow], summary: list[dict[str, Any]], claims: list[dict[str, Any]], plan, *,
             name: str) -> str:
    import os
    import platform

    cols = columns(plan)
    lines = [
        f"# The families compared on {plan.data}, {plan.budget} each",
        "",
        f"Written by `genray compare` (comparison `{name}`, {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}) from {len(rows)} trials: "
        f"{len(plan.entries)} families × {plan.seeds} seed{'s' if plan.seeds != 1 else ''}, each family's shipped "
        "config trained at the same budget, then scored by genray eval. The command:",
        "",
        "```",
        plan.command(),
        "```",
        "",
        "Each trial trained with " + (
            f"one worker in its own process ({plan.cpus_per_trial:g} CPU)" if plan.workers == 1 else
            f"{plan.workers} Ray Train workers ({plan.cpus_per_trial / plan.workers:g} CPU each)")
        + (". Under a time budget a family trains until the first step past the budget (trainer.max_minutes); "
           "its learning-rate schedule is computed for an unbounded run, so it is constant after warmup"
           if plan.minutes is not None else "") + ". Trials that ran at the same time shared the machine: "
        "times are for this machine as it was.",
        "",
        "## The table",
        "",
        "| " + " | ".join(c.header for c in cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for row in summary:
        lines.append("| " + " | ".join(cell(c, row).replace("|", "\\|") for c in cols) + " |")
    lines += ["", "The quality columns compare samples with the test split; the training ones measure getting to the "
              "budget; every figure is a mean over the seeds that finished (comparison.csv has each trial).", ""]
    lines += ["## The source's claims", "",
              "Each claim is split into parts, each part decided by a rule in `pipelines/comparison.py` (CLAIMS): "
              "\"fast\" and \"slowly\" compare the group's median samples/s @64 with the other families' median; "
              "\"unstably\" holds when a run diverged, else when the group's FD spread ÷ FD is above the others' "
              "median (it needs 2+ seeds); \"the best quality\" is the lowest FD/floor of all; \"blurry\" is a median "
              "sharpness below the others'; \"exact likelihood\" needs every family of the group to declare exact "
              "and report bits/dim. ✓ holds, ✗ does not, ? not measured.", "",
              "| claim | families | verdict | measurement |", "|---|---|---|---|"]
    for c in claims:
        lines.append(f"| {c['claim']} | {c['families'] or '-'} | {c['verdict']} | {c['evidence'].replace('|', '/')} |")
    lines += ["", "## Plots", "",
              f"![quality against speed]({FILES['scatter']})", "",
              "FD/floor (lower is better) against samples/s at batch 64 (log scale): each family's mean, its seeds "
              "as small points.", "",
              f"![likelihood]({FILES['likelihood']})", "",
              "Bits/dim on the test split by family, hatched by kind; families without a likelihood are marked "
              "none.", "",
              "## The columns", ""]
    group = None
    for c in cols:
        if c.group != group and c.group:
            lines += ["", f"**{c.group}**", ""]
            group = c.group
        lines.append(f"- **{c.header}**: {c.definition}")
    lines += ["", "Token priors (a GPT or MaskGIT over a VQ-VAE's codes) train on a tokenizer that was trained "
              "before the comparison; its training is not in their budget."]
    if plan.skipped:
        lines += ["", "## Families not compared", ""]
        lines += [f"- **{f}**: {why}" for f, why in plan.skipped.items()]
    bad = [r for r in rows if r.status != "finished"]
    if bad:
        lines += ["", "## Runs that did not finish", ""]
        lines += [f"- {r.family} seed {r.seed}: {r.status}: {r.error}" for r in bad]
    return "\n".join(lines) + "\n"


def plot_quality_speed(rows: list[TrialRow], summary: list[dict[str, Any]], path: Path) -> None:
    """log samples/s against FD/floor: each family's mean, labelled, and its seeds as small points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in rows:
        m = r.metrics
        if r.status == "finished" and finite(m.get("samples_per_s")) and finite(m.get("fd")) and finite(m.get("fd_floor")) \
                and m["fd_floor"] > 0:
            ax.scatter(m["samples_per_s"], m["fd"] / m["fd_floor"], s=10, color="0.6", zorder=2)
    shown = [s for s in summary if finite(s.get("samples_per_s")) and finite(s.get("fd_ratio"))]
    for s in shown:
        ax.scatter(s["samples_per_s"], s["fd_ratio"], s=45, zorder=3)
        ax.annotate(s["family"], (s["samples_per_s"], s["fd_ratio"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=9)
    if shown:
        ax.set_xscale("log")
        ratios = [s["fd_ratio"] for s in shown]
        if min(ratios) > 0 and max(ratios) / min(ratios) >= 20:
            ax.set_yscale("log")
    ax.axhline(1.0, color="0.8", lw=1, zorder=1)
    ax.set_xlabel("samples/s at batch 64 (log)")
    ax.set_ylabel("FD / real-vs-real floor (lower is better)")
    ax.set_title("quality against sampling speed", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


HATCHES = {"exact": "", "bound": "//", "estimate": ".."}


def plot_likelihood(summary: list[dict[str, Any]], path: Path) -> None:
    """bits/dim by family, hatched by kind; a family without a likelihood is a labelled gap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(summary) + 1.5), 4.0))
    names = [s["family"] for s in summary]
    for i, s in enumerate(summary):
        kind, value = s.get("likelihood") or "none", s.get("bits_per_dim")
        if kind != "none" and finite(value):
            ax.bar(i, value, color="tab:blue", alpha=0.75, hatch=HATCHES.get(kind, "xx"), edgecolor="black")
            ax.annotate(f"{value:.3g}" + (" †" if "binarised" in (s.get("bits_unit") or "") else ""), (i, value),
                        ha="center", va="bottom", fontsize=8)
        else:
            ax.text(i, 0.02, "none", ha="center", va="bottom", fontsize=8, rotation=90,
                    transform=ax.get_xaxis_transform())
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("bits/dim on the test split (lower is better)")
    ax.legend(handles=[Patch(facecolor="tab:blue", alpha=0.75, hatch=h, edgecolor="black", label=k)
                       for k, h in HATCHES.items()], fontsize=8)
    ax.set_title("likelihood by family († per binarised pixel)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
