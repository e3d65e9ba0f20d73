"""Gradient sync before and after: steady-state examples/s of 2-worker runs (small VAE and DCGAN on
digits, batch 128, 300 steps) for the genray tree given, so two trees can be compared.

    git worktree add /tmp/old b290118        # DDP (prepare_model, find_unused_parameters for GANs)
    .venv/bin/python benchmarks/grad_sync.py /tmp/old
    .venv/bin/python benchmarks/grad_sync.py .          # one all-reduce per phase (components/training/engine.py)

Uses that tree's own benchmarks/train_overhead.py (ray_run: the median examples/s of the log
windows after the first, as MLflow recorded them).
"""
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
sys.path.insert(0, str(root))
spec_ = importlib.util.spec_from_file_location("train_overhead", root / "benchmarks" / "train_overhead.py")
bench = importlib.util.module_from_spec(spec_)
spec_.loader.exec_module(bench)

import ray  # noqa: E402

from genray.pipelines import config  # noqa: E402  (the given tree's)

ray.init(address="local", num_cpus=4, log_to_driver=False, configure_logging=False)
home = Path(tempfile.mkdtemp(prefix="bench-"))
out = {}
for family in ("vae", "dcgan"):
    spec = config.validate({
        "data": {"dataset": "digits"}, "model": {"family": family, "size": "small"},
        "trainer": {"max_steps": 300, "batch_size": 128, "log_every": 25, "eval_every": 10**6,
                    "checkpoint_every": 10**6, "eval_batches": 1, "num_samples": 16, "quality_samples": 0},
        "scaling": {"workers": 2, "cpus_per_worker": 0.5},
        "tracking": {"experiment": "bench", "register_model": False}}, "<bench>")
    out[family] = bench.ray_run(spec, 2, f"b-{family}", home)
print(json.dumps({"tree": str(root), **out}, indent=1))
