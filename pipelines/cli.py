"""`genray`: the command line.

    genray train CONFIG [--set key=value ...] [--workers N] [--gpu] [--name RUN]
    genray tune CONFIG [--set key=value ...] [--name SWEEP | --resume SWEEP]
    genray eval TARGET [--num-samples N] [--set sampling.key=value ...] [--workers W]
    genray compare [--families F ...] [--data fashion_mnist] (--budget-minutes M | --steps N) [--seeds 3] [--out docs/]
    genray serve [--model NAME ...] [--alias champion] [--host 127.0.0.1] [--port 8000] [--config FILE]
    genray serve --reload
    genray submit [--address URL] {train|tune|eval} CONFIG [--set key=value ...] [--follow]
    genray jobs list | logs ID [--follow] | stop ID   [--address URL]
    genray data prepare NAME [--out PATH] [--seed S] [--size tiny|full] [--from DIR]
    genray data import DIR|HF_PARQUET --out PATH [--size 32] [--grayscale] [--workers N]
    genray data tokenize REF [--data NAME|DIR] [--out PATH] [--actors N] [--batch-size B] [--split train|test|both]
    genray data index CLIP [--data NAME|DIR] [--split train] [--classes C,C] [--name NAME] [--actors N]
    genray directions MODEL [--data NAME|DIR] [--rows 20000] [--test-rows 1000] [--amount 1] [--out DIR]
    genray sample MODEL [-n 64] [-o grid.png] [--set KEY=VALUE ...] [--index NAME]
    genray configs list | show NAME | copy NAME DEST
    genray families

    python -m genray VERB ...                         the same
    python -m genray.pipelines.train|tune|evaluate|compare    one job alone (the first three: what `genray submit` runs)

train, tune, eval, compare and directions are handed to the job's own `main` (train.main, tune.main, evaluate.main,
compare.main, directions.main),
which parses the same arguments (pipelines/arguments.py): both forms run the same code. The other
verbs are here. Only genray/__main__.py imports this module; it imports the jobs only when their verb is run.

User mistakes (a missing file, an unknown key, a value out of range, bad Parquet) print one
line naming what is wrong and what is allowed, and exit with code 2. No traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from genray.components.errors import UserError
from genray.pipelines import arguments, console
from genray.pipelines.console import CONFIGS


def parser() -> argparse.ArgumentParser:
    p = arguments.Parser(prog="genray", description="Train, sweep, track and serve generative models on Ray.")
    p.add_argument("--version", action="version", version=f"genray {version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=arguments.Parser)
    for verb, add in arguments.ADD.items():
        add(sub.add_parser(verb, help=arguments.HELP[verb], description=arguments.HELP[verb]))
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # bare `genray`: what it can do
        parser().print_help()
        return 0
    args = parser().parse_args(argv)  # usage errors and --help for every verb, here
    if args.command in arguments.MODULES:  # the job parses the same arguments itself
        return importlib.import_module(arguments.MODULES[args.command]).main(argv[1:])
    handlers = {"serve": cmd_serve, "submit": cmd_submit, "jobs": cmd_jobs, "data": cmd_data,
                "families": cmd_families, "configs": cmd_configs, "sample": cmd_sample}
    return console.run(handlers[args.command], args)


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as installed

    try:
        return installed("genray")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


# ----------------------------------------------------------------------------- configs and samples


def cmd_configs(args) -> int:
    from genray.pipelines import catalog

    if args.configs_command == "list":
        configs = catalog.shipped()
        width = max(len(n) for n in configs)
        for name, path in configs.items():
            print(f"{name:<{width}}  {catalog.describe(path)}")
        print(f"\n{len(configs)} configs in {catalog.CONFIGS}; run one with `genray train NAME` (sweeps: `genray tune NAME`)")
    elif args.configs_command == "show":
        print(catalog.find(args.name).read_text(), end="")
    else:
        print(f"wrote {catalog.copy(args.name, args.dest)}")
    return 0


def cmd_sample(args) -> int:
    from genray.pipelines import sample

    out = sample.sample_to_file(args.target, args.out, n=args.num_samples, seed=args.seed,
                                overrides=args.overrides, class_labels=args.class_label, prompt=args.prompt,
                                stop=args.stop, index=args.index)
    if str(out.path) == "-":  # the samples went to standard output: the summary goes beside them
        print(f"{out.n} samples of {out.model} ({out.settings})", file=sys.stderr)
    else:
        print(f"wrote {out.path}: {out.n} samples of {out.model} ({out.settings})")
    return 0


# ----------------------------------------------------------------------------- serve


def cmd_serve(args) -> int:
    console.set_verbose(args.verbose)
    import socket
    import time

    import ray

    from genray.pipelines import serve, tracking
    from genray.pipelines.config import ConfigError
    from genray.pipelines.env import log_path, project_home

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
                                         "port": args.port, "api_key_file": args.api_key_file})
    # A key file that is missing, empty or readable by others fails here, before anything starts.
    # The key stays in this process; the spec holds its path only (serve/auth.py).
    keyed = serve.key_check(spec) is not None
    if spec.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"genray serve: binding {spec.host}: " + (
            "the API key crosses the network in every request; put a proxy with TLS in front of it" if keyed else
            "the API has no authentication (--api-key-file adds a key); put a proxy with auth and TLS in front of it"),
            file=sys.stderr)
    uri = tracking.tracking_uri(home)
    logs = console.route_logs(log_path(home, "serve", spec.app_name))
    if logs is not None:
        print(f"Ray Serve and library output: {logs} (--verbose shows it here)")
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
        console.print_serving(deployed)
        if keyed:
            print(f"api key        every route but /healthz and / needs it; with curl: "
                  f"{serve.curl_example(deployed.url, {'name': next(iter(deployed.versions))}, spec)}", flush=True)
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        console.stop_serving()
        return 0


# ----------------------------------------------------------------------------- Ray Jobs


def cmd_submit(args) -> int:
    from genray.pipelines import jobs

    return jobs.submit(args.job, args.target, overrides=args.overrides, address=args.address, follow=args.follow,
                       name=args.name, pip=args.pip or None)


def cmd_jobs(args) -> int:
    from genray.pipelines import jobs

    if args.jobs_command == "list":
        return jobs.list_jobs(args.address)
    if args.jobs_command == "logs":
        return jobs.job_logs(args.job_id, args.address, args.follow)
    return jobs.stop_job(args.job_id, args.address)


# ----------------------------------------------------------------------------- data and families


def cmd_data(args) -> int:
    import time

    from genray.components.data import DATASETS
    from genray.pipelines.env import log_path, project_home

    if args.data_command == "import":
        from genray.pipelines.importing import run_import

        console.set_verbose(args.verbose)
        r = run_import(args.source, args.out, workers=args.workers, size=args.size, grayscale=args.grayscale,
                       test_fraction=args.test_fraction, seed=args.seed, image_column=args.image_column,
                       label_column=args.label_column)
        print(f"train  {r.train}  ({r.rows['train']} images)")
        print(f"test   {r.test}  ({r.rows['test']} images)")
        if r.classes:
            print(f"classes {len(r.classes)}: {', '.join(r.classes[:10])}{' ...' if len(r.classes) > 10 else ''}")
        if r.skipped:
            shown = "; ".join(f"{n} ({why})" for n, why in r.skipped[:5])
            print(f"skipped {len(r.skipped)} unreadable images: {shown}{' ...' if len(r.skipped) > 5 else ''} "
                  f"(all listed in {r.skipped_file})", file=sys.stderr)
        print(f"train on it with --set data.path={r.train} --set data.test_path={r.test}")
        return 0
    if args.data_command == "tokenize":
        from genray.pipelines.tokenizing import SPLITS, tokenize

        console.set_verbose(args.verbose)
        home = project_home()
        logs = console.route_logs(log_path(home, "tokenize", time.strftime("%Y%m%d-%H%M%S")))
        if logs is not None:
            print(f"Ray and library output: {logs} (--verbose shows it here)")
        r = tokenize(args.ref, data=args.data, out=args.out, size=args.size, seed=args.seed,
                     splits=SPLITS if args.split == "both" else (args.split,), actors=args.actors,
                     batch_size=args.batch_size, overwrite=args.overwrite, home=home)
        for split, path in r.files.items():
            print(f"{split:6s} {path}  ({r.rows[split]:,} rows)")
        if set(r.files) == {"train", "test"}:
            print(f"train a prior on it with --set data.path={r.files['train']} --set data.test_path={r.files['test']}")
        return 0
    if args.data_command == "index":
        from genray.pipelines.retrieval import build_index

        console.set_verbose(args.verbose)
        home = project_home()
        logs = console.route_logs(log_path(home, "index", time.strftime("%Y%m%d-%H%M%S")))
        if logs is not None:
            print(f"Ray and library output: {logs} (--verbose shows it here)")
        r = build_index(args.ref, data=args.data, split=args.split, classes=args.classes, name=args.name,
                        size=args.size, seed=args.seed, actors=args.actors, batch_size=args.batch_size,
                        overwrite=args.overwrite, home=home)
        shown = ", ".join(map(str, r.classes)) or "unlabelled"
        print(f"index  {r.folder}  ({r.rows:,} rows of {r.dim} numbers; classes {shown}; {r.images_per_s:,.0f} images/s)")
        print(f"retrieve from it with --set model.retrieval_index={r.folder.name} (training), --index "
              f"{r.folder.name} (genray sample, genray eval)")
        return 0
    out = args.out or project_home() / "data" / f"{args.name}-{args.size}-seed{args.seed}"
    extra = {}
    if args.source is not None:
        if args.name not in ("fashion_mnist", "fashion_edges", "fashion_halves"):
            raise UserError(f"--from: only fashion_mnist, fashion_edges and fashion_halves read files from a folder "
                            f"(the Fashion-MNIST .gz files); {args.name} is generated or bundled")
        extra["source"] = args.source
    paths = DATASETS[args.name](Path(out), seed=args.seed, size=args.size, **extra)
    for split, path in paths.items():
        print(f"{split:6s} {path}")
    return 0


def cmd_families(args) -> int:
    """Each family's capabilities and sampling settings, read from a tiny model of it on an
    example of its data kind (8x8 grey images, or short text), and the shipped configs that use it."""
    from genray.components.models import FAMILIES, build, example_args, example_data

    rows = [("family", "capabilities", "sampling settings", "configs")]
    for name in FAMILIES:
        model = build(name, example_args(name), example_data(name))
        configs = sorted(
            str(p.relative_to(CONFIGS.parent.parent))
            for p in CONFIGS.rglob("*.yaml")
            if f"family: {name}\n" in p.read_text()
        )
        rows.append((name, ", ".join(sorted(model.capabilities)),
                     ", ".join(model.sampling_settings.model_fields) or "-", ", ".join(configs) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(f"{c:<{w}}" for c, w in zip(r, widths)) + f"  {r[3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
