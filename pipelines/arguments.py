"""The arguments of every genray command, defined once.

`genray <verb>` (pipelines/cli.py) and each job's own entry point (`python -m genray.pipelines.train`,
`.tune`, `.evaluate`: what `genray submit` runs on a cluster) parse with these definitions, so
the two forms take the same arguments. Importing this module loads no job.

    add_<verb>(parser)   the verb's arguments, onto a parser or a `genray` subparser
    <job>_parser()       a job's stand-alone parser: train_parser, tune_parser, eval_parser
    train_spec(args)     the experiment `genray train` runs: the config with --set, --workers, --gpu
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from genray.components.data import DATASETS
from genray.pipelines.console import EXIT_USAGE

# The verbs that are whole jobs, and the module whose main(argv) runs each: `genray <verb>` hands
# them over, `genray submit` runs `python -m <module>` on the cluster.
JOBS = {"train": "genray.pipelines.train", "tune": "genray.pipelines.tune", "eval": "genray.pipelines.evaluate"}
# Every verb that is handed to its module's main(argv): the jobs, and compare (a job too, but it
# takes no config, so `genray submit` does not run it).
MODULES = {**JOBS, "compare": "genray.pipelines.compare", "directions": "genray.pipelines.directions"}

# The verbs, with the one line `genray --help` shows for each.
HELP = {
    "train": "train a model with Ray Train, tracked in MLflow",
    "tune": "sweep hyperparameters with Ray Tune; register the best model as champion",
    "eval": "score a trained model (quality, likelihood, speed) into MLflow",
    "compare": "train every family at one budget (a Ray Tune experiment), score each, write the comparison table",
    "serve": "serve registered models over HTTP with Ray Serve (gallery at /, API at /v1)",
    "submit": "run train, tune or eval as a Ray Job on a cluster (Ray Jobs API)",
    "jobs": "the Ray Jobs on a cluster: list, logs, stop",
    "data": "datasets: prepare the built-in ones, import images, tokenize images with a VQ-VAE, index CLIP embeddings",
    "directions": "attribute directions in an encoding model's latent space: fitted, scored, stored for /edit",
    "families": "list model families, their capabilities and configs",
    "configs": "the shipped configs: list, show, copy",
    "sample": "draw samples from a trained model into a file (no server needed)",
}


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # a usage mistake: the usage, then one error line; exit 2
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"genray: error: {message}\n")


def add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML, or a shipped config by name (e.g. vae/vae_digits; see `genray configs list`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set trainer.lr=3e-4 (repeatable)")
    p.add_argument("--workers", type=int, help="Ray Train workers (scaling.workers)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (scaling.gpu)")
    p.add_argument("--name", help="run name; an existing name continues that run")
    p.add_argument("--print-config", action="store_true", help="print the resolved config (with --set) and exit")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's, Tune's and the workers' own output here too (default: in a log file under the project home)")


def add_tune(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="sweep YAML (a tune: section), or a shipped one by name (e.g. gan/sweep_dcgan_digits)")
    p.add_argument("--print-config", action="store_true", help="print the resolved sweep config (with --set) and exit")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's, Tune's and the workers' own output here too (default: in a log file under the project home)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, tune.* included, e.g. --set tune.num_samples=8 (repeatable)")
    p.add_argument("--yes", action="store_true", help="start a sweep of more than tune.max_trials trials")
    names = p.add_mutually_exclusive_group()
    names.add_argument("--name", help="name of a new sweep (default: <config>-<date>-<time>)")
    names.add_argument("--resume", metavar="NAME", help="continue the interrupted sweep NAME; finished trials are kept")


def add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="TARGET",
                   help="runs:/RUN_ID, a run id, models:/NAME@ALIAS, models:/NAME/VERSION or a checkpoint directory")
    p.add_argument("--num-samples", type=int, default=2000, help="samples to generate (default 2000)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="sampling.KEY=VALUE",
                   help="a sampling setting of the model, e.g. --set sampling.temperature=0.8 (repeatable)")
    p.add_argument("--workers", type=int, default=2, help="Ray tasks that generate (0: in this process)")
    p.add_argument("--batch-size", type=int, default=250, help="samples per generation batch")
    p.add_argument("--reference", choices=["test", "train"], default="test",
                   help="the real split to compare with; the floor draws from the other one")
    p.add_argument("--feature-net", default="auto",
                   help="auto (the dataset's domain classifier, trained once and cached), none, or a classifier directory")
    p.add_argument("--inception", metavar="FILE",
                   help="pytorch-fid Inception-v3 weights for FID (default: $GENRAY_INCEPTION_WEIGHTS; never downloaded)")
    p.add_argument("--likelihood-rows", type=int, default=None,
                   help="reference rows scored for the likelihood (default: 500 images; every held-out sequence)")
    p.add_argument("--clip", metavar="REF",
                   help="a trained genray CLIP (models:/..., runs:/... or a directory): a text-conditioned model's "
                        "samples get a CLIP score against their prompts")
    p.add_argument("--index", metavar="NAME|DIR",
                   help="a retrieval model: retrieve from this index (`genray data index`, the same CLIP) instead of "
                        "its own, and score how many samples follow it")
    p.add_argument("--seed", type=int, default=0, help="sampling seed: the same seed draws the same samples")
    p.add_argument("--no-log", action="store_true", help="print only; write nothing to MLflow")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's, Tune's and the workers' own output here too (default: in a log file under the project home)")


def add_compare(p: argparse.ArgumentParser) -> None:
    p.add_argument("--families", nargs="+", metavar="NAME",
                   help="families to compare, e.g. --families vae,dcgan (default: every family with a shipped config for --data)")
    p.add_argument("--data", default="fashion_mnist", help="the built-in dataset every family trains on (default fashion_mnist)")
    p.add_argument("--budget-minutes", type=float, metavar="M", help="minutes of training per trial (trainer.max_minutes)")
    p.add_argument("--steps", type=int, metavar="N", help="training steps per trial (trainer.max_steps)")
    p.add_argument("--seeds", type=int, default=3, help="trials per family, seeds 0..S-1 (default 3)")
    p.add_argument("--workers", type=int, default=1,
                   help="per trial: 1 trains in the trial's own process (default); more start a Ray Train run per trial")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs each trial holds (default 1)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: as many as the cluster fits)")
    p.add_argument("--num-samples", type=int, default=1000, help="samples genray eval scores per trial (default 1000)")
    p.add_argument("--feature-net", default="auto",
                   help="auto (the dataset's domain classifier, trained once and cached), none, or a classifier directory")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value in every family's config, e.g. --set trainer.quality_samples=0 (repeatable)")
    p.add_argument("--out", type=Path, help="also copy COMPARISON.md, comparison.csv and the plots here, e.g. docs/")
    p.add_argument("--dry-run", action="store_true", help="print the families, their configs and the trials; run nothing")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's, Tune's and the workers' own output here too (default: in a log file under the project home)")
    names = p.add_mutually_exclusive_group()
    names.add_argument("--name", help="name of a new comparison (default: compare-<data>-<date>-<time>)")
    names.add_argument("--resume", metavar="NAME", help="continue the interrupted comparison NAME; finished trials are kept")


def add_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", dest="models", action="append", default=[], metavar="NAME",
                   help="a registered model to serve (repeatable; default: every model with the alias)")
    p.add_argument("--alias", help="registry alias to serve (default champion; latest: the newest version)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, help="HTTP port (default 8000)")
    p.add_argument("--config", help="serve settings YAML: replicas, autoscaling, batching, limits "
                                    "(e.g. pipelines/configs/serve/default.yaml)")
    p.add_argument("--address", help="Ray cluster to run on (default: a local Ray; --reload: auto)")
    p.add_argument("--api-key-file", metavar="FILE",
                   help="require Authorization: Bearer <key> on every route but /healthz, the key being this "
                        "file's one line (chmod 600; make one: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's, Tune's and the workers' own output here too (default: in a log file under the project home)")
    p.add_argument("--reload", action="store_true",
                   help="resolve the served aliases again and swap in new versions, with no failed requests")


def add_submit(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="the cluster's Jobs API, e.g. http://127.0.0.1:8265 (default: RAY_ADDRESS)")
    p.add_argument("job", choices=list(JOBS))
    p.add_argument("target", metavar="CONFIG", help="the experiment or sweep YAML (eval: the model, e.g. models:/NAME@champion)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable), as with the local command")
    p.add_argument("--name", help="submission id (default: Ray's raysubmit_...)")
    p.add_argument("--pip", action="append", default=[], metavar="REQ",
                   help="a package the cluster's Python lacks, installed for this job (repeatable)")
    p.add_argument("--follow", action="store_true", help="stream the logs; exit with the job's status")


def add_jobs(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="jobs_command", required=True, parser_class=Parser)
    for name, text in (("list", "every job, oldest first"), ("logs", "a job's logs"), ("stop", "stop a job")):
        j = sub.add_parser(name, help=text)
        if name != "list":
            j.add_argument("job_id", metavar="ID")
        if name == "logs":
            j.add_argument("--follow", action="store_true", help="stream until the job ends; exit with its status")
        j.add_argument("--address", help="the cluster's Jobs API (default: RAY_ADDRESS, then http://127.0.0.1:8265)")


def add_data(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", required=True, parser_class=Parser)
    prep = sub.add_parser("prepare", help="write a built-in dataset as Parquet")
    prep.add_argument("name", choices=sorted(DATASETS))
    prep.add_argument("--out", type=Path, help="output folder (default: <GENRAY_HOME>/data/NAME-SIZE-seedS)")
    prep.add_argument("--seed", type=int, default=0, help="the split and generation seed (default 0)")
    prep.add_argument("--size", choices=["tiny", "full"], default="full", help="full, or tiny (a few hundred rows, for tests)")
    imp = sub.add_parser("import", help="an image folder (one subfolder per class) or Hugging Face Parquet into genray's Parquet")
    imp.add_argument("source", type=Path, metavar="DIR|PARQUET", help="an image folder, or a Hugging Face `datasets` Parquet file or folder")
    imp.add_argument("--out", type=Path, required=True, help="output folder: train.parquet, test.parquet (and skipped.tsv)")
    imp.add_argument("--size", type=int, default=32, help="side of the square images, a power of two (default 32)")
    imp.add_argument("--grayscale", action="store_true", help="one channel instead of RGB")
    imp.add_argument("--test-fraction", type=float, default=0.1, help="share of images held out as test.parquet (default 0.1)")
    imp.add_argument("--seed", type=int, default=0,
                     help="the seed of the train/test split, drawn per image from the seed and its name (default 0)")
    imp.add_argument("--image-column", default="image", help="Hugging Face Parquet: the image column (default image)")
    imp.add_argument("--label-column", default="label", help="Hugging Face Parquet: the label column (default label)")
    imp.add_argument("--workers", type=int, metavar="N",
                     help="0: decode in this process; N > 0: on Ray Data, at most N tasks at once "
                          "(default: in this process below 20,000 images, Ray Data above)")
    imp.add_argument("--verbose", action="store_true",
                     help="show Ray's and Ray Data's own output here too (default: in a log file under the project home)")
    tok = sub.add_parser("tokenize", help="a tokenizer's (VQ-VAE's) code ids for every image of a dataset, on Ray Data: "
                                          "a tokens dataset a prior trains on")
    tok.add_argument("ref", metavar="REF",
                     help="the tokenizer: models:/NAME/VERSION, models:/NAME@ALIAS, models:/NAME/latest, runs:/RUN_ID "
                          "or a checkpoint directory")
    tok.add_argument("--data", metavar="NAME|DIR",
                     help="a built-in dataset (see --size, --seed) or a dataset folder with train.parquet and "
                          "test.parquet (default: the data the tokenizer trained on)")
    tok.add_argument("--size", choices=["tiny", "full"], default="full", help="a built-in --data: full or tiny (default full)")
    tok.add_argument("--seed", type=int, default=0, help="a built-in --data: its split seed (default 0)")
    tok.add_argument("--out", type=Path,
                     help="output folder (default: <GENRAY_HOME>/data/<data>-tokens-<tokenizer>)")
    tok.add_argument("--split", choices=["train", "test", "both"], default="both", help="which splits (default both)")
    tok.add_argument("--actors", type=int, metavar="N",
                     help="Ray Data actors, each holding the tokenizer (one GPU each when the cluster has GPUs; "
                          "default 2, at most the GPUs)")
    tok.add_argument("--batch-size", type=int, default=256, help="images per batch on an actor (default 256)")
    tok.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    tok.add_argument("--verbose", action="store_true",
                     help="show Ray's and Ray Data's own output here too (default: in a log file under the project home)")
    idx = sub.add_parser("index", help="a nearest-neighbour index of a CLIP's image embeddings of a dataset, on Ray "
                                       "Data: what a retrieval-augmented diffusion model retrieves from")
    idx.add_argument("ref", metavar="CLIP",
                     help="the CLIP: models:/NAME/VERSION, models:/NAME@ALIAS, models:/NAME/latest, runs:/RUN_ID or a "
                          "checkpoint directory")
    idx.add_argument("--data", metavar="NAME|DIR",
                     help="a built-in dataset (see --size, --seed) or a dataset folder with train.parquet and "
                          "test.parquet (default: the data the CLIP trained on)")
    idx.add_argument("--split", choices=["train", "test"], default="train", help="which split to index (default train)")
    idx.add_argument("--classes", metavar="C,C",
                     help="keep only these classes: ids or the dataset's names (e.g. sneaker,'ankle boot'); default all")
    idx.add_argument("--name", help="the index's name under <GENRAY_HOME>/indexes (default <data>-<split>[-classes-...])")
    idx.add_argument("--size", choices=["tiny", "full"], default="full", help="a built-in --data: full or tiny (default full)")
    idx.add_argument("--seed", type=int, default=0, help="a built-in --data: its split seed (default 0)")
    idx.add_argument("--actors", type=int, metavar="N",
                     help="Ray Data actors, each holding the CLIP (one GPU each when the cluster has GPUs; default 2)")
    idx.add_argument("--batch-size", type=int, default=512, help="images per batch on an actor (default 512)")
    idx.add_argument("--overwrite", action="store_true", help="replace an index of the same name")
    idx.add_argument("--verbose", action="store_true",
                     help="show Ray's and Ray Data's own output here too (default: in a log file under the project home)")
    prep.add_argument("--from", dest="source", type=Path, metavar="DIR",
                      help="fashion_mnist, fashion_edges, fashion_halves: the folder with the four Fashion-MNIST .gz "
                           "files (default: Debian's dataset-fashion-mnist)")


def add_directions(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="MODEL",
                   help="a model that encodes and decodes: models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID "
                        "or a checkpoint directory (a registered version gets the directions as its tag)")
    p.add_argument("--data", metavar="NAME|DIR",
                   help="a built-in dataset or a dataset folder with train.parquet and test.parquet "
                        "(default: the data the model trained on)")
    p.add_argument("--size", choices=["tiny", "full"], default="full", help="a built-in --data: full or tiny (default full)")
    p.add_argument("--seed", type=int, default=0, help="a built-in --data's split seed; the random control's seed (default 0)")
    p.add_argument("--rows", type=int, default=20_000, help="training images encoded to fit the directions (default 20000)")
    p.add_argument("--test-rows", type=int, default=1_000,
                   help="held-out images edited to score the directions; 0 skips scoring (default 1000)")
    p.add_argument("--amount", type=float, default=1.0, help="how far the scoring edits move, in [-3, 3] (default 1)")
    p.add_argument("--feature-net", default="auto",
                   help="what reads the edited images: auto (the dataset's domain classifier, one head per attribute), "
                        "none (no scoring) or a saved classifier directory")
    p.add_argument("--out", type=Path, help="output folder (default: <GENRAY_HOME>/directions/<model>)")
    p.add_argument("--no-log", action="store_true", help="log nothing to MLflow and tag no model version")
    p.add_argument("--verbose", action="store_true", help="show library output here too (default: in a log file)")


def add_families(p: argparse.ArgumentParser) -> None:
    pass


def add_configs(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="configs_command", required=True, parser_class=Parser)
    sub.add_parser("list", help="every shipped config, by name, with what it trains")
    show = sub.add_parser("show", help="print a shipped config")
    show.add_argument("name", help="a shipped config's name, e.g. vae/vae_digits")
    cp = sub.add_parser("copy", help="copy a shipped config to edit it (never overwrites)")
    cp.add_argument("name", help="a shipped config's name, e.g. vae/vae_digits")
    cp.add_argument("dest", type=Path, help="a file, or a folder to put it in")


def add_sample(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="MODEL",
                   help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID or a checkpoint directory")
    p.add_argument("-n", "--num-samples", type=int, default=64, help="how many samples (default 64)")
    p.add_argument("-o", "--out", type=Path, default=None,
                   help="where to write them: a .png grid for image models (default samples.png), a .txt file "
                        "for text models (default samples.txt; - streams them to the terminal)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same samples")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a sampling setting of the model, e.g. --set guidance_scale=2 (repeatable; see genray families)")
    p.add_argument("--class-label", type=int, action="append", metavar="K",
                   help="class-conditional models: the class (repeat for one per sample; default: cycle through all)")
    p.add_argument("--prompt", help="text-conditional models: the prompt; text models: the text to continue")
    p.add_argument("--stop", action="append", metavar="TEXT",
                   help="text models: end a sample where TEXT first appears (repeatable, at most 4)")
    p.add_argument("--index", metavar="NAME|DIR",
                   help="retrieval models: retrieve from this index (`genray data index`, the same CLIP) instead of "
                        "the model's own")


ADD: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "train": add_train, "tune": add_tune, "eval": add_eval, "compare": add_compare, "serve": add_serve, "submit": add_submit,
    "jobs": add_jobs, "data": add_data, "directions": add_directions, "families": add_families, "configs": add_configs, "sample": add_sample,
}


def _job_parser(verb: str) -> argparse.ArgumentParser:
    p = Parser(prog=f"genray {verb}", description=HELP[verb])
    ADD[verb](p)
    return p


def train_parser() -> argparse.ArgumentParser:
    return _job_parser("train")


def tune_parser() -> argparse.ArgumentParser:
    return _job_parser("tune")


def eval_parser() -> argparse.ArgumentParser:
    return _job_parser("eval")


def compare_parser() -> argparse.ArgumentParser:
    return _job_parser("compare")


def directions_parser() -> argparse.ArgumentParser:
    return _job_parser("directions")


def train_spec(args: argparse.Namespace):
    """The ExperimentSpec `genray train` runs: the config file with its --set overrides, and
    --workers / --gpu as the scaling.* values they stand for."""
    from genray.pipelines import config

    overrides = list(args.overrides)
    if args.workers is not None:
        overrides.append(f"scaling.workers={args.workers}")
    if args.gpu:
        overrides.append("scaling.gpu=true")
    return config.load(args.config, overrides)
