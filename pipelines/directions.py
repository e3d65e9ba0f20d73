"""`genray directions`: attribute directions in an encoding model's latent space, fitted on the
data it trained on, scored on held-out data, and stored beside the registered model, where
`POST /v1/models/{name}/edit` finds them.

    genray directions models:/beta-vae-shapes/1
    genray directions models:/glow-fashion_mnist/3 --rows 20000 --amount 1.5
    genray directions runs:/RUN_ID --data shapes --out directions/

    fit      encode the first --rows training images (the posterior mean, Glow's latent, a VQ-VAE's
             quantised grid) and find one direction per labelled attribute value
             (components/models/directions.py: the formulas)
    score    edit the first --test-rows held-out images by --amount along each direction and read
             the result with the dataset's domain classifier, one head per attribute, against a
             random direction of the same length (components/metrics/editing.py)
    store    the directions (safetensors + JSON), the scores (scores.json) and a picture of edits at
             amounts -2..2 (edits.png) in --out, and as the artifact `directions/` of an
             MLflow run in the experiment genray-directions (nested under the model's training run
             when the store has it), with the scores as its metrics; a registered model version
             gets the tag genray.directions = runs:/<that run>/directions, which serving reads

The model runs in this process: a pass over 20,000 images is a few seconds to a minute on a CPU.
"""
from __future__ import annotations

import json
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from genray.components import checkpoint
from genray.components.data import image_grid, save_png, value_names
from genray.components.errors import UserError
from genray.components.metrics import editing
from genray.components.models import directions as dirs
from genray.pipelines import arguments, console, tracking
from genray.pipelines.config import ConfigError
from genray.pipelines.env import log_path, project_home
from genray.pipelines.evaluate import resolve_target
from genray.pipelines.quality import classifier_heads, domain_classifier, read_split
from genray.pipelines.tokenizing import resolve_source

EXPERIMENT = "genray-directions"
TAG = tracking.DIRECTIONS_TAG  # on a registered model version: where its directions are (runs:/ID/directions)
ARTIFACT = "directions"
DEFAULT_ROWS, DEFAULT_TEST_ROWS = 20_000, 1_000


@dataclass(frozen=True)
class DirectionsReport:
    directions: dirs.Directions
    scores: list[editing.EditScore]
    summary: dict[str, float]
    out: Path
    run_id: str | None
    model_version: tuple[str, str] | None  # (name, version) tagged with the directions
    seconds: float


def metric_key(name: str) -> str:
    """A direction's name as MLflow accepts it in a metric key (letters, digits, _ - . / and space)."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)


def find_directions(target: str, *, data: str | None = None, size: str = "full", seed: int = 0,
                    rows: int = DEFAULT_ROWS, test_rows: int = DEFAULT_TEST_ROWS, amount: float = 1.0,
                    out: Path | None = None, log: bool = True, feature_net: str = "auto", batch_size: int = 250, home: Path,
                    say: Callable[[str], Any] = print) -> DirectionsReport:
    if rows < 2 * dirs.MIN_ROWS_PER_SIDE:
        raise UserError(f"--rows {rows}: at least {2 * dirs.MIN_ROWS_PER_SIDE} training images to fit directions on")
    if test_rows < 0:
        raise UserError(f"--test-rows {test_rows}: 0 (no scoring) or more held-out images")
    dirs.check_amount(amount)
    started = time.perf_counter()
    uri = tracking.tracking_uri(home)
    t = resolve_target(target, uri, home)
    model, state = checkpoint.build_model(t.checkpoint, with_optimizer=False)
    model.eval()
    family = state["model"]["family"]
    if not {"encode", "decode"} <= set(model.capabilities):
        raise UserError(f"{target} is a {family} model (capabilities: {', '.join(sorted(model.capabilities))}); "
                        "directions need a model that encodes and decodes (vae, beta_vae, glow, realnvp, vqvae)")
    source = resolve_source(data, size=size, seed=seed, checkpoint=t.checkpoint, home=home, splits=("train", "test"))
    dataset = source.data.get("dataset")
    shown = data if data is not None else "(the model's training data)"

    train = read_split(source.files["train"], rows, factors=True)
    if tuple(train.x.shape[1:]) != tuple(model.image_shape):
        raise UserError(f"--data {shown}: its images are {list(train.x.shape[1:])} (C, H, W), but {target} takes "
                        f"{list(model.image_shape)}; fit directions on data of the shape the model trained on")
    columns = {**train.factors, **({"label": train.y} if train.y is not None else {})}
    attributes = dirs.attributes_of(columns, value_names(dataset))
    if not attributes:
        raise UserError(f"--data {shown}: no attribute to find a direction for; the data needs a label column or "
                        "factor_* columns that vary")
    say(f"model      {target}  ({family}, latents {list(model.latent_shape)})")
    say(f"fitting    {len(train.x):,} training images; attributes: "
        + ", ".join(f"{a.name} ({len(a.values)} values)" if a.values else f"{a.name} (continuous)" for a in attributes))
    with torch.no_grad():
        z = torch.cat([model.encode(train.x[i : i + batch_size]).float() for i in range(0, len(train.x), batch_size)])
    found = dirs.fit(z, columns, attributes, source={
        "model": t.label if t.model_name is None else f"models:/{t.model_name}/{t.model_version}",
        "family": family, "data": source.data, "rows": len(train.x)})

    scores: list[editing.EditScore] = []
    if test_rows:
        try:
            net = domain_classifier(feature_net, train_path=source.files["train"],
                                    dataset=dataset or Path(source.files["train"]).parent.name, home=home, say=say)
        except ConfigError as e:
            raise UserError(f"--{e}".replace("feature_net", "feature-net", 1)) from None
        if net is None:
            say("scoring    skipped: " + ("--feature-net none" if feature_net == "none" else
                                        "the data has no labels to train a domain classifier on"))
        else:
            test = read_split(source.files["test"], test_rows)
            say(f"scoring    {len(test.x):,} held-out images, amount {amount:g}, with the {dataset or 'data'} domain "
                "classifier's heads")
            heads = classifier_heads(net, {a.name for a in attributes})
            scores = editing.edit_scores(model, found, test.x, heads, amount=amount, seed=seed, batch_size=batch_size)
    summary = editing.summary(scores)
    test = read_split(source.files["test"], EDIT_GRID_IMAGES)

    label = (f"{t.model_name}-v{t.model_version}" if t.model_name else
             (t.training_run_id or t.checkpoint.name)[:16])
    out = Path(out).expanduser().resolve() if out is not None else home / "directions" / label
    found.save(out)
    save_png(edit_grid(model, found, test.x), out / "edits.png")
    (out / "scores.json").write_text(json.dumps({"amount": amount, "summary": summary,
                                                 "directions": [s.__dict__ for s in scores]}, indent=1) + "\n")
    run_id = version = None
    if log:
        tags = {"genray.directions.target": t.label}
        if t.training_run_id:
            tags["genray.training_run"] = t.training_run_id
        run_id = log_directions(uri, home, out, scores, summary, tags=tags, params={
            "target": t.label, "family": family, "rows": str(len(train.x)), "test_rows": str(test_rows),
            "amount": str(amount), "data": json.dumps(source.data)})
        if t.model_name:
            tracking.set_model_version_tags(uri, t.model_name, t.model_version, {TAG: f"runs:/{run_id}/{ARTIFACT}"})
            version = (t.model_name, t.model_version)
    return DirectionsReport(found, scores, summary, out, run_id, version, time.perf_counter() - started)


EDIT_GRID_IMAGES = 4  # held-out images in the picture of edits
EDIT_GRID_AMOUNTS = (-2.0, -1.0, 0.0, 1.0, 2.0)
EDIT_GRID_DIRECTIONS = 12


@torch.no_grad()
def edit_grid(model, found: dirs.Directions, x: torch.Tensor) -> np.ndarray:
    """The picture of what the directions do (edits.png, logged with them): for each of the first
    EDIT_GRID_DIRECTIONS directions a row per image of x, the image then its edits at
    EDIT_GRID_AMOUNTS."""
    rows = []
    for name in found.names[:EDIT_GRID_DIRECTIONS]:
        for img in x:
            edits = [dirs.edit(model, img[None], found, name, a) for a in EDIT_GRID_AMOUNTS]
            rows.append(torch.cat([img[None].float(), *edits]))
    return image_grid(torch.cat(rows), nrow=1 + len(EDIT_GRID_AMOUNTS))


def log_directions(uri: str, home: Path, out: Path, scores: list[editing.EditScore], summary: dict[str, float], *,
                   params: dict[str, str], tags: dict[str, str]) -> str:
    """One MLflow run holding the directions folder `out` as its artifact `directions/`, and
    their scores as its metrics. Returns its id."""
    from mlflow.entities import Metric, Param

    client = tracking._client(uri)
    experiment_id = tracking.ensure_experiment(uri, EXPERIMENT, home)
    run = client.create_run(experiment_id, run_name=f"directions-{time.strftime('%Y%m%d-%H%M%S')}", tags=tags)
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    metrics = dict(summary)
    for s in scores:
        metrics[f"{'moved' if s.kind == dirs.CATEGORICAL else 'shift'}/{metric_key(s.direction)}"] = s.effect
        if s.kept is not None:
            metrics[f"kept/{metric_key(s.direction)}"] = s.kept
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()],
                     metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if np.isfinite(v)])
    with tempfile.TemporaryDirectory() as d:  # the folder's files, whatever --out was called
        staged = Path(d) / ARTIFACT
        staged.mkdir()
        for f in out.iterdir():
            if f.is_file():
                (staged / f.name).write_bytes(f.read_bytes())
        client.log_artifacts(run_id, str(staged), ARTIFACT)
    client.set_terminated(run_id, status="FINISHED")
    return run_id


# ----------------------------------------------------------------------------- command line


def print_report(r: DirectionsReport, stream=None) -> None:
    stream = stream or sys.stdout
    if r.scores:
        width = max(len(s.direction) for s in r.scores)
        print(f"{'direction':<{width}}  {'moved/shift':>11}  {'(random)':>9}  {'kept':>6}  {'(random)':>9}", file=stream)
        for s in r.scores:
            kept = f"{s.kept:6.3f}  {s.kept_control:9.3f}" if s.kept is not None else f"{'-':>6}  {'-':>9}"
            effect = f"{s.effect:11.3f}" if s.kind == dirs.CATEGORICAL else f"{s.effect:+11.3f}"
            print(f"{s.direction:<{width}}  {effect}  {s.effect_control:9.3f}  {kept}", file=stream)
        print("moved: share of edited images now classified as the value; shift: change of the attribute's "
              "predicted bin; kept: other attributes unchanged", file=stream)
    for k, v in r.summary.items():
        print(f"{k:<20} {v:.4f}", file=stream)
    print(f"{len(r.directions.names)} directions in {r.out}", file=stream)
    if r.model_version:
        print(f"tagged models:/{r.model_version[0]}/{r.model_version[1]} with them: `genray serve` offers "
              f"POST /v1/models/{r.model_version[0]}/edit", file=stream)
    print(f"done in {r.seconds:.0f} s", file=stream)


def command(args) -> int:
    console.set_verbose(args.verbose)
    home = project_home()
    logs = console.route_logs(log_path(home, "directions", time.strftime("%Y%m%d-%H%M%S")))
    if logs is not None:
        print(f"library output: {logs} (--verbose shows it here)")
    r = find_directions(args.target, data=args.data, size=args.size, seed=args.seed, rows=args.rows,
                        test_rows=args.test_rows, amount=args.amount, out=args.out, log=not args.no_log,
                        feature_net=args.feature_net, home=home)
    print_report(r)
    return 0


def main(argv: list[str] | None = None) -> int:
    return console.run(command, arguments.directions_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
