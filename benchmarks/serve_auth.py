"""Does a wrong API key take as long to refuse as the right key takes to pass? Medians over real
HTTP, and the key check alone.

    .venv/bin/python benchmarks/serve_auth.py [--requests 200] [--out serve_auth.json]

Serve's HTTP proxy on 127.0.0.1, with two gateways built by `build_app` and no models: one with
an API key (read from a chmod-600 file, as `genray serve --api-key-file` does), one without at
/open. Every variant asks for GET /docs, which the gateway answers itself, so the right key and
a wrong one take the same path up to the key check. Variants: the right key; wrong keys as long
as the right one that differ in the last byte (a guess right but for one byte) or in the first;
a short wrong key; no Authorization header; no key needed (/open/docs). One request at a time
over one keep-alive connection, round-robin over the variants after a warm-up, so drift in the
machine's load falls on every variant alike. Then `KeyCheck.matches` alone, in this process,
the same way. The wrong keys' figures should agree with each other within noise: the digests
compared are HMACs of what was sent, so how close a guess is changes nothing.
"""
import argparse
import json
import secrets
import shutil
import socket
import statistics
import tempfile
import time
import timeit
from pathlib import Path


def quantiles_ms(seconds: list[float]) -> dict:
    q = statistics.quantiles(seconds, n=10)
    return {"median_ms": round(statistics.median(seconds) * 1000, 3), "p10_ms": round(q[0] * 1000, 3),
            "p90_ms": round(q[-1] * 1000, 3), "requests": len(seconds)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=200, help="timed requests per variant")
    p.add_argument("--warmup", type=int, default=20, help="untimed requests per variant first")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)

    import httpx
    import ray
    from ray import serve as ray_serve

    from genray.pipelines import serve

    # ------------------------------------------------------------------------------------ setup
    folder = Path(tempfile.mkdtemp(prefix="gauth-", dir="/tmp"))  # short: Ray's socket paths
    key = secrets.token_urlsafe(32)
    key_path = folder / "api-key"
    key_path.write_text(key + "\n")
    key_path.chmod(0o600)
    last = "A" if key[-1] != "A" else "B"
    first = "A" if key[0] != "A" else "B"
    variants = {
        "right key": ("/docs", {"Authorization": f"Bearer {key}"}),
        "wrong: last byte": ("/docs", {"Authorization": f"Bearer {key[:-1]}{last}"}),
        "wrong: first byte": ("/docs", {"Authorization": f"Bearer {first}{key[1:]}"}),
        "wrong: short": ("/docs", {"Authorization": "Bearer x"}),
        "no header": ("/docs", {}),
        "no key needed": ("/open/docs", {}),
    }
    ray.init(address="local", num_cpus=2, _temp_dir=str(folder / "ray"), log_to_driver=False,
             configure_logging=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_serve.start(http_options={"host": "127.0.0.1", "port": port})
    keyed = serve.ServeSpec(port=port, api_key_file=str(key_path))
    check = serve.key_check(keyed)  # what the gateway holds: for the in-process timing below
    ray_serve.run(serve.build_app(keyed, "", folder, {}), name="keyed", route_prefix="/")
    ray_serve.run(serve.build_app(serve.ServeSpec(port=port), "", folder, {}), name="open", route_prefix="/open")

    # --------------------------------------------------------------------------------- over HTTP
    times: dict[str, list[float]] = {name: [] for name in variants}
    statuses: dict[str, set[int]] = {name: set() for name in variants}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for round_ in range(args.warmup + args.requests):
            for name, (path, headers) in variants.items():
                started = time.perf_counter()
                r = client.get(path, headers=headers)
                elapsed = time.perf_counter() - started
                statuses[name].add(r.status_code)
                if round_ >= args.warmup:
                    times[name].append(elapsed)
    ray_serve.shutdown()
    ray.shutdown()
    shutil.rmtree(folder, ignore_errors=True)
    http = {name: {**quantiles_ms(t), "status": sorted(statuses[name])} for name, t in times.items()}

    # ------------------------------------------------------------------------- the check alone
    # Interleaved like the requests; the minimum is the figure least disturbed by other load
    # (timeit's advice), the median shows how much there was.
    presented = {name: headers["Authorization"].removeprefix("Bearer ").encode()
                 for name, (_, headers) in variants.items() if "Authorization" in headers}
    runs: dict[str, list[float]] = {name: [] for name in presented}
    for _ in range(30):
        for name, value in presented.items():
            runs[name].append(timeit.timeit(lambda: check.matches(value), number=5_000) / 5_000 * 1e9)
    alone = {name: {"min_ns": round(min(r)), "median_ns": round(statistics.median(r))} for name, r in runs.items()}

    # ------------------------------------------------------------------------------------ report
    print(f"GET /docs over HTTP, {args.requests} requests per variant (median, p10-p90 ms):")
    for name, row in http.items():
        print(f"  {name:18s} {row['median_ms']:7.2f}  {row['p10_ms']:6.2f}-{row['p90_ms']:<6.2f}  status {row['status']}")
    print("KeyCheck.matches alone, ns per call (min and median of 30 x 5,000, interleaved):")
    for name, ns in alone.items():
        print(f"  {name:18s} {ns['min_ns']:7d} {ns['median_ns']:7d}")
    if args.out:
        args.out.write_text(json.dumps({"http": http, "check_ns": alone, "requests": args.requests}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
