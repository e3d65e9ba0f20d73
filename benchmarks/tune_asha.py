"""ASHA against no early stopping: the same search space, trials and seed, run twice with Ray Tune.

    .venv/bin/python benchmarks/tune_asha.py [--config pipelines/configs/gan/sweep_dcgan_digits.yaml]
        [--trials 8] [--steps 600] [--set KEY=VALUE ...] [--out docs/tune_asha.json]

Random search with one seed draws the same trials for both runs, so the only difference is ASHA
stopping some of them at their checkpoints. Reports each run's wall time (the whole `genray tune`
job: data, trials, table, champion), steps trained in all, and the best objective it reached,
with the ratios ASHA / none. Both runs share one fresh project home, with the dataset and the
domain classifier prepared before either clock starts.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def run_once(config: str, overrides: list[str], scheduler: str, home: Path) -> dict:
    from genray.pipelines import tune

    sweep = tune.load(config, [*overrides, f"tune.scheduler={scheduler}", "tune.search=random",
                               "tune.register_model=false"])
    started = time.perf_counter()
    out = tune.run(sweep, name=f"bench-{scheduler}", home=home, say=lambda line: None)
    wall = time.perf_counter() - started
    metric = sweep.tune.metric
    return {
        "scheduler": scheduler,
        "wall_s": wall,
        "trials": len(out.rows),
        "stopped_early": sum(r.status == "stopped early" for r in out.rows),
        "failed": sum(r.status == "failed" for r in out.rows),
        "steps_trained": int(sum(r.metrics.get("step", 0) for r in out.rows)),
        "best": out.best.metrics[metric] if out.best else None,
        "best_params": out.best.params if out.best else None,
        "metric": metric,
        "table": out.files["markdown"].read_text(),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="pipelines/configs/gan/sweep_dcgan_digits.yaml")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    from genray.pipelines import train, tune
    from genray.pipelines.data import resolve_data
    from genray.pipelines.env import init_ray

    every = max(1, args.steps // 6)
    overrides = [f"tune.num_samples={args.trials}", f"trainer.max_steps={args.steps}",
                 f"trainer.checkpoint_every={every}", f"trainer.eval_every={every}",
                 f"tune.grace_period={every}", *args.overrides]
    init_ray()
    with tempfile.TemporaryDirectory(prefix="genray-bench-tune-") as tmp:
        home = Path(tmp)
        # One home for both runs; the dataset and the domain classifier are prepared before the
        # clock starts, so neither run pays for them.
        spec = tune.load(args.config, overrides).spec
        data = resolve_data(spec, home)
        train.resolve_model_inputs(spec, data, uri=tune.tracking.tracking_uri(home), home=home)
        results = []
        for scheduler in ("none", "asha"):
            results.append(run_once(args.config, overrides, scheduler, home))
            print(json.dumps({k: v for k, v in results[-1].items() if k != "table"}), flush=True)
    none, asha = results
    print()
    print(f"| scheduler | wall (s) | trials stopped early | steps trained | best {none['metric']} |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['scheduler']} | {r['wall_s']:.0f} | {r['stopped_early']} of {r['trials']} | "
              f"{r['steps_trained']} | {r['best']:.4g} |")
    print(f"\nASHA / none: wall {asha['wall_s'] / none['wall_s']:.2f}x, steps {asha['steps_trained'] / none['steps_trained']:.2f}x, "
          f"best objective {asha['best'] / none['best']:.3f}x")
    for r in results:
        print(f"\n{r['scheduler']}:\n{r['table']}")
    if args.out:
        args.out.write_text(json.dumps({"config": args.config, "overrides": overrides, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
