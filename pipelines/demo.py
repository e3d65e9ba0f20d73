"""`make demo`: the whole pipeline on embedded defaults, on a fresh machine, in minutes.

    python -m genray.pipelines.demo [--steps N] [--workers N] [--port P] [--no-serve]

1. data      the built-in 8x8 digits, written as Parquet (scikit-learn's copy: offline)
2. train     a VAE with 2 Ray Train workers on a local Ray instance, tracked in the local
             MLflow store and registered as models:/vae-digits/N
3. sweep     Ray Tune over the prior temperature of that model (sampling only, nothing
             retrains), each trial scored by `genray eval` (FD on the digits features)
4. register  the best temperature's model gets alias `champion`, the temperature its default
5. serve     Ray Serve on 127.0.0.1: the gallery at /, the API at /v1, until Ctrl-C

Everything lands under GENRAY_HOME (default ./genray-runs).
"""
import signal
import sys
import time
from pathlib import Path

from genray.pipelines import arguments, config, console, train, tune
from genray.pipelines.console import CONFIGS
from genray.pipelines.env import log_path, project_home

# Calibrated on a 2-core CPU machine: a tiny VAE on the 8x8 digits trains at a few hundred
# steps per second of data there, so training, the sweep and the first samples fit in minutes.
DEMO_STEPS = 1500
DEMO_SIZE = "small"


def main(argv: list[str] | None = None) -> int:
    p = arguments.Parser(prog="python -m genray.pipelines.demo")
    p.add_argument("--steps", type=int, default=DEMO_STEPS)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-serve", action="store_true", help="stop after registering the champion")
    p.add_argument("--verbose", action="store_true", help="show Ray's, Tune's and the workers' own output too")
    return console.run(demo, p.parse_args(argv))


def demo(args) -> int:
    console.set_verbose(args.verbose)
    started = time.perf_counter()
    stamp = time.strftime("%Y%m%d-%H%M%S")

    def step(k: int, text: str) -> None:
        print(f"\n[{k}/5 {time.perf_counter() - started:5.0f} s] {text}", flush=True)

    path = CONFIGS / "vae" / "vae_digits.yaml"
    step(1, "data: the built-in 8x8 digits as Parquet (written once, then reused)")
    spec = config.load(path, [
        f"trainer.max_steps={args.steps}",
        f"scaling.workers={args.workers}",
        f"model.size={DEMO_SIZE}",
        f"trainer.checkpoint_every={max(1, args.steps // 3)}",
        f"trainer.eval_every={max(1, args.steps // 3)}",
        "trainer.quality_samples=0",  # the sweep scores sample quality below
    ])
    step(2, f"train: VAE on digits, {args.workers} Ray Train workers, {args.steps} steps ({_rel(path)})")
    out = train.run(spec, name=f"demo-{stamp}")
    console.print_summary(out)
    if not out.model_version:
        print("genray demo: training registered no model", file=sys.stderr)
        return 1

    sweep_path = CONFIGS / "vae" / "sweep_temperature_digits.yaml"
    step(3, f"sweep: Ray Tune over the prior temperature of models:/{out.model_name}/{out.model_version} "
            f"({_rel(sweep_path)})")
    sweep = tune.load(sweep_path, [f"tune.target=models:/{out.model_name}/{out.model_version}"])
    result = tune.run(sweep, name=f"demo-sweep-{stamp}")
    tune.print_report(result, sweep)
    if result.best is None:
        print("genray demo: no trial of the sweep finished", file=sys.stderr)
        return 1

    step(4, f"register: models:/{out.model_name}@{sweep.tune.alias} is the best temperature's model")
    if args.no_serve:
        return 0
    return serve_champion(out.model_name, sweep.tune.alias, args.port, step)


def serve_champion(model_name: str, alias: str, port: int, step) -> int:
    from genray.pipelines import serve, tracking

    home = project_home()
    console.route_logs(log_path(home, "serve", "demo"))
    spec = serve.ServeSpec(models=[model_name], alias=alias, port=port)
    step(5, f"serve: Ray Serve on http://{spec.host}:{spec.port}")
    deployed = serve.deploy(spec, uri=tracking.tracking_uri(home), home=home)
    serve.wait_until_ready(deployed.url)
    console.print_serving(deployed)
    # Ray Tune leaves its own SIGINT handler installed after the sweep: Ctrl-C must stop serving.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        console.stop_serving()
    return 0


def _rel(path: Path) -> Path:
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


if __name__ == "__main__":
    sys.exit(main())
