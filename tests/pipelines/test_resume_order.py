"""A resumed run reads exactly the batches an uninterrupted run reads (issue 23, item 3).

The "kill" is a run stopped at step k (max_steps=k) and continued to N under the same name, as
`genray train` after an interruption; the reference is one run straight to N with the same seed.
With a constant learning rate (min_lr_ratio=1) nothing else depends on max_steps, so equal
weights after N steps mean equal batches from the interrupted pass onward.
"""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from genray.pipelines import config, data, train

pytestmark = pytest.mark.integration

ROWS = 256  # digits, size tiny


def spec(workers: int, max_steps: int):
    return config.validate({
        "data": {"dataset": "digits", "size": "tiny"},
        "model": {"family": "vae", "size": "tiny"},
        "trainer": {"max_steps": max_steps, "batch_size": 16, "min_lr_ratio": 1.0, "checkpoint_every": 10**6,
                    "eval_every": 10**6, "log_every": 10**6, "eval_batches": 1, "num_samples": 4,
                    "quality_samples": 0},
        "scaling": {"workers": workers, "cpus_per_worker": 0.5},
        "tracking": {"experiment": "test", "register_model": False},
    }, "<test>")


# (workers, MIN_STEPS_PER_PASS, stop at, train to). 256 rows in batches of 16: MIN_STEPS_PER_PASS=4
# makes a pass one copy of the data (16 steps, ordered by the worker's seeded shuffle buffer); 24
# makes it two seeded permuted copies (32 steps, no shuffle buffer). Each run stops mid-pass and
# crosses into the next pass after it resumes. Two workers, killed with SIGKILL and restarted by
# Ray Train: tests/pipelines/test_train.py, test_killed_worker_resumes_from_checkpoint_...
CASES = [(0, 4, 5, 20), (0, 24, 20, 36)]


@pytest.mark.parametrize("workers, min_steps_per_pass, stop, total", CASES)
def test_resumed_run_trains_on_the_batches_of_an_uninterrupted_one(workers, min_steps_per_pass, stop, total,
                                                                   ray_session, genray_home, monkeypatch):
    monkeypatch.setattr(data, "MIN_STEPS_PER_PASS", min_steps_per_pass)  # short passes: cross one quickly
    steps_per_pass = math.ceil(16 * min_steps_per_pass / ROWS) * ROWS // 16  # as data.build_dataset forms a pass
    assert 0 < stop % steps_per_pass and stop < steps_per_pass < total  # stopped mid-pass, resumed across a pass

    straight = train.run(spec(workers, total), name=f"straight-{workers}-{min_steps_per_pass}", home=genray_home,
                         show_progress=False)
    name = f"resumed-{workers}-{min_steps_per_pass}"
    stopped = train.run(spec(workers, stop), name=name, home=genray_home, show_progress=False)
    resumed = train.run(spec(workers, total), name=name, home=genray_home, show_progress=False)

    assert stopped.metrics["step"] == stop and straight.metrics["step"] == resumed.metrics["step"] == total
    assert straight.metrics["epoch"] == resumed.metrics["epoch"] == total // steps_per_pass
    for weights in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(str(straight.checkpoint / weights)), load_file(str(resumed.checkpoint / weights))
        assert a.keys() == b.keys()
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        assert not differ, f"{weights}: {differ} differ between the resumed and the uninterrupted run"
