"""`genray`: the command line.

    genray train CONFIG [--set key=value ...] [--workers N] [--gpu] [--name RUN]
    genray tune CONFIG [--set key=value ...] [--name SWEEP | --resume SWEEP]
    genray eval TARGET [--num-samples N] [--set sampling.key=value ...] [--workers W]
    genray serve [--model NAME ...] [--alias champion] [--host 127.0.0.1] [--port 8000] [--config FILE]
    genray serve --reload
    genray submit [--address URL] {train|tune|eval} CONFIG [--set key=value ...] [--follow]
    genray jobs list | logs ID [--follow] | stop ID   [--address URL]
    genray data prepare NAME [--out PATH] [--seed S] [--size tiny|full]
    genray families

User mistakes (a missing file, an unknown key, a value out of range, bad Parquet) print one
line naming what is wrong and what is allowed, and exit with code 2. No traceback.
"""
from __future__ import annotations

import argparse
import inspect
import shlex
import sys
from pathlib import Path

from components.data import DATASETS, DataFormatError

EXIT_USAGE = 2
CONFIGS = Path(__file__).with_name("configs")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors also exit 2, in one line
        self.exit(EXIT_USAGE, f"genray: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="genray", description="Train, sweep, track and serve generative models on Ray.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a model with Ray Train, tracked in MLflow")
    t.add_argument("config", help="experiment YAML, e.g. pipelines/configs/vae/vae_digits.yaml")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set trainer.lr=3e-4 (repeatable)")
    t.add_argument("--workers", type=int, help="Ray Train workers (scaling.workers)")
    t.add_argument("--gpu", action="store_true", help="one GPU per worker (scaling.gpu)")
    t.add_argument("--name", help="run name; an existing name continues that run")

    tu = sub.add_parser("tune", help="sweep hyperparameters with Ray Tune; register the best model as champion")
    tu.add_argument("config", help="sweep YAML (a tune: section), e.g. pipelines/configs/gan/sweep_dcgan_digits.yaml")
    tu.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, tune.* included, e.g. --set tune.num_samples=8 (repeatable)")
    names = tu.add_mutually_exclusive_group()
    names.add_argument("--name", help="name of a new sweep (default: <config>-<date>-<time>)")
    names.add_argument("--resume", metavar="NAME", help="continue the interrupted sweep NAME; finished trials are kept")

    e = sub.add_parser("eval", help="score a trained model (quality, likelihood, speed) into MLflow")
    e.add_argument("target", metavar="TARGET",
                   help="runs:/RUN_ID, a run id, models:/NAME@ALIAS, models:/NAME/VERSION or a checkpoint directory")
    e.add_argument("--num-samples", type=int, default=2000, help="samples to generate (default 2000)")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="sampling.KEY=VALUE",
                   help="a sampling setting, e.g. --set sampling.guidance_scale=2 (repeatable)")
    e.add_argument("--workers", type=int, default=2, help="Ray tasks that generate (0: in this process)")
    e.add_argument("--batch-size", type=int, default=250, help="samples per generation batch")
    e.add_argument("--reference", choices=["test", "train"], default="test",
                   help="the real split to compare with; the floor draws from the other one")
    e.add_argument("--feature-net", default="auto",
                   help="auto (the dataset's domain classifier, trained once and cached), none, or a classifier directory")
    e.add_argument("--inception", metavar="FILE",
                   help="pytorch-fid Inception-v3 weights for FID (default: $GENRAY_INCEPTION_WEIGHTS; never downloaded)")
    e.add_argument("--likelihood-rows", type=int, default=500, help="reference images scored for bits/dim")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--no-log", action="store_true", help="print only; write nothing to MLflow")

    s = sub.add_parser("serve", help="serve registered models over HTTP with Ray Serve (gallery at /, API at /v1)")
    s.add_argument("--model", dest="models", action="append", default=[], metavar="NAME",
                   help="a registered model to serve (repeatable; default: every model with the alias)")
    s.add_argument("--alias", help="registry alias to serve (default champion; latest: the newest version)")
    s.add_argument("--host", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, help="HTTP port (default 8000)")
    s.add_argument("--config", help="serve settings YAML: replicas, autoscaling, batching, limits "
                                    "(e.g. pipelines/configs/serve/default.yaml)")
    s.add_argument("--address", help="Ray cluster to run on (default: a local Ray; --reload: auto)")
    s.add_argument("--reload", action="store_true",
                   help="resolve the served aliases again and swap in new versions, with no failed requests")

    sb = sub.add_parser("submit", help="run train, tune or eval as a Ray Job on a cluster (Ray Jobs API)")
    sb.add_argument("--address", help="the cluster's Jobs API, e.g. http://127.0.0.1:8265 (default: RAY_ADDRESS)")
    sb.add_argument("job", choices=["train", "tune", "eval"])
    sb.add_argument("target", metavar="CONFIG", help="the experiment or sweep YAML (eval: the model, e.g. models:/NAME@champion)")
    sb.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value (repeatable), as with the local command")
    sb.add_argument("--name", help="submission id (default: Ray's raysubmit_...)")
    sb.add_argument("--pip", action="append", default=[], metavar="REQ",
                    help="a package the cluster's Python lacks, installed for this job (repeatable)")
    sb.add_argument("--follow", action="store_true", help="stream the logs; exit with the job's status")

    jb = sub.add_parser("jobs", help="the Ray Jobs on a cluster: list, logs, stop")
    jsub = jb.add_subparsers(dest="jobs_command", required=True, parser_class=_Parser)
    for name, text in (("list", "every job, oldest first"), ("logs", "a job's logs"), ("stop", "stop a job")):
        j = jsub.add_parser(name, help=text)
        if name != "list":
            j.add_argument("job_id", metavar="ID")
        if name == "logs":
            j.add_argument("--follow", action="store_true", help="stream until the job ends; exit with its status")
        j.add_argument("--address", help="the cluster's Jobs API (default: RAY_ADDRESS, then http://127.0.0.1:8265)")

    d = sub.add_parser("data", help="built-in datasets")
    dsub = d.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    prep = dsub.add_parser("prepare", help="write a built-in dataset as Parquet")
    prep.add_argument("name", choices=sorted(DATASETS))
    prep.add_argument("--out", type=Path, help="output folder (default: <GENRAY_HOME>/data/NAME-SIZE-seedS)")
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--size", choices=["tiny", "full"], default="full")

    sub.add_parser("families", help="list model families, their capabilities and configs")
    return p


def cmd_train(args) -> int:
    from pipelines import config, train

    overrides = list(args.overrides)
    if args.workers is not None:
        overrides.append(f"scaling.workers={args.workers}")
    if args.gpu:
        overrides.append("scaling.gpu=true")
    spec = config.load(args.config, overrides)
    name = args.name or spec.tracking.run_name or train.default_run_name(args.config)
    out = train.run(spec, name=name)
    print_summary(out)
    return 0


def print_summary(out) -> None:
    from pipelines import tracking

    print()
    print(f"run            {out.name}  (rerun with --name {out.name} to continue it)")
    print(f"mlflow run     {out.run_id}  in {out.tracking_uri}")
    print(f"checkpoint     {out.checkpoint}")
    grid = tracking.latest_sample_grid(out.tracking_uri, out.run_id)
    if grid:
        print(f"sample grid    {grid}")
    if out.model_version:
        print(f"registered     models:/{out.model_name}/{out.model_version}")
    shown = {k: v for k, v in out.metrics.items() if k.startswith("eval/")}
    if shown:
        print("final eval     " + "  ".join(f"{k[5:]}={v:.4f}" for k, v in shown.items()))
    if out.tracking_uri.startswith("sqlite:"):
        mlflow_cmd = Path(sys.executable).with_name("mlflow")
        print(f"open the UI    {mlflow_cmd} ui --backend-store-uri {out.tracking_uri} --port 5000")


def cmd_tune(args) -> int:
    from pipelines import tune

    sweep = tune.load(args.config, args.overrides)
    name = args.resume or args.name or tune.default_sweep_name(args.config)
    try:
        out = tune.run(sweep, name=name, resume=args.resume is not None)
    except KeyboardInterrupt:
        out = None
    if out is None or out.interrupted:
        sets = "".join(f" --set {shlex.quote(o)}" for o in args.overrides)  # a resume must repeat them
        print(f"genray: sweep {name} interrupted; continue it with: genray tune {args.config}{sets} --resume {name}",
              file=sys.stderr)
        return 130
    tune.print_report(out, sweep)
    return 0 if out.best is not None else 1


def cmd_eval(args) -> int:
    from pipelines import evaluate

    request = evaluate.EvalRequest(
        target=args.target, num_samples=args.num_samples, batch_size=args.batch_size, workers=args.workers,
        reference=args.reference, feature_net=args.feature_net, inception=args.inception,
        sampling=evaluate.parse_sampling(args.overrides), likelihood_rows=args.likelihood_rows, seed=args.seed,
        log=not args.no_log,
    )
    evaluate.print_report(evaluate.evaluate(request))
    return 0


def cmd_serve(args) -> int:
    import socket
    import time

    import ray

    from pipelines import serve, tracking
    from pipelines.config import ConfigError
    from pipelines.train import project_home

    home = project_home()
    if args.reload:
        app_name = serve.load_spec(args.config, {}).app_name
        if not serve.state_file(home, app_name).is_file():
            raise ConfigError(f"nothing to reload: {serve.state_file(home, app_name)} does not exist "
                              "(is `genray serve` running with this GENRAY_HOME?)")
        if not ray.is_initialized():
            try:
                ray.init(address=args.address or "auto", log_to_driver=False, configure_logging=False)
            except ConnectionError as e:
                raise ConfigError(f"--reload: no running Ray cluster to reload ({e}); pass --address") from None
        for name, (old, new) in serve.reload(home=home, app_name=app_name).items():
            print(f"{name}: version {old} -> {new}" if old != new else f"{name}: version {new} (unchanged)")
        return 0
    spec = serve.load_spec(args.config, {"models": args.models, "alias": args.alias, "host": args.host,
                                         "port": args.port})
    if spec.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"genray serve: binding {spec.host}: the API has no authentication of its own; put a proxy "
              "with auth and TLS in front of it", file=sys.stderr)
    uri = tracking.tracking_uri(home)
    # A bad name, a missing alias or weights that are not safetensors fail here, before Ray starts.
    versions = serve.resolve_versions(uri, spec.models, spec.alias)
    serve.check_versions(uri, home, versions)
    with socket.socket() as probe:
        try:
            probe.bind((spec.host, spec.port))
        except OSError as e:
            raise ConfigError(f"--port {spec.port}: cannot listen on {spec.host}:{spec.port} ({e.strerror}); "
                              "pick another port") from None
    try:
        if not ray.is_initialized():
            ray.init(address=args.address, log_to_driver=False, configure_logging=False)
        deployed = serve.deploy(spec, uri=uri, home=home, versions=versions, checked=True)
        serve.wait_until_ready(deployed.url)
        print_serving(deployed)
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        stop_serving()
        return 0


def stop_serving() -> None:
    """Ctrl-C: take the app down and leave; a second Ctrl-C during the shutdown is ignored."""
    import signal

    from ray import serve as ray_serve

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print("genray serve: stopping", flush=True)
    ray_serve.shutdown()
    print("genray serve: stopped", flush=True)


def print_serving(deployed) -> None:
    from pipelines import serve

    for name, version in deployed.versions.items():
        print(f"serving        models:/{name}/{version}  ({deployed.spec.alias})")
    print(f"gallery        {deployed.url}/")
    print(f"API docs       {deployed.url}/docs")
    first = next(iter(deployed.versions))
    print(f"try            {serve.curl_example(deployed.url, {'name': first})}")
    print("               (Ctrl-C stops the server; `genray serve --reload` swaps in re-aliased versions)",
          flush=True)


def cmd_submit(args) -> int:
    from pipelines import jobs

    return jobs.submit(args.job, args.target, overrides=args.overrides, address=args.address, follow=args.follow,
                       name=args.name, pip=args.pip or None)


def cmd_jobs(args) -> int:
    from pipelines import jobs

    if args.jobs_command == "list":
        return jobs.list_jobs(args.address)
    if args.jobs_command == "logs":
        return jobs.job_logs(args.job_id, args.address, args.follow)
    return jobs.stop_job(args.job_id, args.address)


def cmd_data(args) -> int:
    from pipelines.train import project_home

    out = args.out or project_home() / "data" / f"{args.name}-{args.size}-seed{args.seed}"
    paths = DATASETS[args.name](Path(out), seed=args.seed, size=args.size)
    for split, path in paths.items():
        print(f"{split:6s} {path}")
    return 0


def cmd_families(args) -> int:
    from components.models import FAMILIES

    rows = [("family", "capabilities", "configs")]
    for name, builder in FAMILIES.items():
        model = _tiny(builder)
        configs = sorted(
            str(p.relative_to(CONFIGS.parent.parent))
            for p in CONFIGS.rglob("*.yaml")
            if f"family: {name}\n" in p.read_text()
        )
        rows.append((name, ", ".join(sorted(model.capabilities)), ", ".join(configs) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}")
    return 0


def _tiny(builder):
    kwargs = {"image_shape": (1, 8, 8), "num_classes": 0}
    if "size" in inspect.signature(builder).parameters:
        kwargs["size"] = "tiny"
    return builder(**kwargs)


def main(argv: list[str] | None = None) -> int:
    from pipelines.config import ConfigError

    args = _parser().parse_args(argv)
    handlers = {"train": cmd_train, "tune": cmd_tune, "eval": cmd_eval, "serve": cmd_serve, "submit": cmd_submit,
                "jobs": cmd_jobs, "data": cmd_data, "families": cmd_families}
    try:
        return handlers[args.command](args)
    except (ConfigError, DataFormatError) as e:
        print(f"genray: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("genray: interrupted; rerun with the same --name to continue from the latest checkpoint",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
