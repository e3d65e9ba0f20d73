"""Load on `genray serve`: requests/s and p50/p99 latency at 1, 8 and 32 concurrent clients,
with dynamic batching and without (max_batch_size 1), for one served model.

    .venv/bin/python benchmarks/serve_load.py [--family diffusion|vae] [--seconds 10]
        [--clients 1 8 32] [--out docs/serve_load.json]

The model is the shipped digits recipe's architecture (pipelines/configs/diffusion/ddpm_digits.yaml:
class-conditional, 16 channels, DDIM 20 steps; or vae_digits.yaml), registered untrained in a
fresh MLflow store: throughput does not depend on what the weights learned. Each request asks
for one sample with its own seed. Clients are asyncio tasks in this process, each sending its
next request as soon as the last is answered, over real HTTP to Serve's proxy on 127.0.0.1.
One model replica with one CPU, as `genray serve` runs by default.
"""
import argparse
import asyncio
import json
import socket
import statistics
import tempfile
import time
from pathlib import Path

RECIPES = {
    "diffusion": {"family": "diffusion", "size": "small", "channels": 16, "conditioning": "class",
                  "num_timesteps": 1000, "sampler": "ddim", "num_inference_steps": 20, "num_classes": 10},
    "vae": {"family": "vae", "size": "small", "latent_dim": 16, "num_classes": 0},
}


def register_untrained(uri: str, home: Path, name: str, recipe: dict) -> str:
    import torch

    from genray.components import checkpoint
    from genray.components.data import DatasetInfo
    from genray.components.models import build
    from genray.pipelines import tracking

    args = {k: v for k, v in recipe.items() if k not in ("family", "num_classes")}
    data = DatasetInfo.for_images((1, 8, 8), recipe["num_classes"])
    torch.manual_seed(0)
    model = build(recipe["family"], args, data)
    run_id, _ = tracking.start_run(uri, tracking.ensure_experiment(uri, "bench", home), name, {}, {})
    state = {"step": 0, "mlflow_run_id": run_id, "model": checkpoint.model_state(recipe["family"], args, data)}
    with tempfile.TemporaryDirectory() as d:
        checkpoint.save(d, checkpoint.Checkpoint(model=model.state_dict(), state=state))
        version = tracking.log_and_register(uri, run_id, Path(d), name)
    tracking.finish_run(uri, run_id, "FINISHED")
    tracking.set_alias(uri, name, version, "champion", {})
    return version


async def load(url: str, name: str, clients: int, seconds: float) -> dict:
    import httpx

    latencies: list[float] = []
    batch_sizes: list[int] = []
    failures = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        # Warm up: the first requests pay for lazy initialisation.
        for i in range(3):
            await client.post(f"/v1/models/{name}/sample", json={"n": 1, "seed": i})
        deadline = time.perf_counter() + seconds

        async def one_client(k: int) -> None:
            nonlocal failures
            seed = k * 1_000_000
            while time.perf_counter() < deadline:
                seed += 1
                t = time.perf_counter()
                r = await client.post(f"/v1/models/{name}/sample", json={"n": 1, "seed": seed})
                if r.status_code != 200:
                    failures += 1
                    continue
                latencies.append(time.perf_counter() - t)
                batch_sizes.append(r.json()["batch_requests"])

        started = time.perf_counter()
        await asyncio.gather(*(one_client(k) for k in range(clients)))
        wall = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"clients": clients, "requests": len(latencies), "failures": failures, "wall_s": round(wall, 2),
            "requests_per_s": round(len(latencies) / wall, 2), "p50_ms": round(q[49] * 1000, 1),
            "p99_ms": round(q[98] * 1000, 1), "mean_batch": round(statistics.mean(batch_sizes), 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--family", choices=sorted(RECIPES), default="diffusion")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)

    import ray
    from ray import serve as ray_serve

    from genray.pipelines import serve

    home = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    uri = f"sqlite:///{home / 'mlflow.db'}"
    name = f"{args.family}-bench"
    register_untrained(uri, home, name, RECIPES[args.family])
    ray.init(address="local", log_to_driver=False, configure_logging=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = {"family": args.family, "recipe": RECIPES[args.family], "seconds": args.seconds, "runs": []}
    for batching, max_batch in (("on", args.max_batch_size), ("off", 1)):
        # The same requests in flight per replica both ways: only the batch size differs.
        spec = serve.ServeSpec(port=port, models=[name], deployment={
            "max_batch_size": max_batch, "batch_wait_timeout_s": 0.01 if max_batch > 1 else 0.0,
            "max_ongoing_requests": 2 * args.max_batch_size})
        deployed = serve.deploy(spec, uri=uri, home=home)
        serve.wait_until_ready(deployed.url)
        for clients in args.clients:
            row = {"batching": batching, "max_batch_size": max_batch,
                   **asyncio.run(load(deployed.url, name, clients, args.seconds))}
            print(json.dumps(row), flush=True)
            results["runs"].append(row)
        ray_serve.delete(spec.app_name)
    ray_serve.shutdown()
    by = {(r["batching"], r["clients"]): r["requests_per_s"] for r in results["runs"]}
    top = max(args.clients)
    if ("on", top) in by and by.get(("off", top)):
        results["speedup_at_max_clients"] = round(by[("on", top)] / by[("off", top)], 2)
        print(f"batching at {top} clients: {results['speedup_at_max_clients']}x the requests/s of no batching")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
