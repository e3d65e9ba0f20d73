"""The training split as the workers get it (pipelines/data.py): decoded in the driver's memory and
cut into one shard per rank for small data, streamed by Ray Data for large."""
from __future__ import annotations

import math

import numpy as np
import pytest

from genray.pipelines import config, data

pytestmark = pytest.mark.integration


def spec(batch_size: int = 16, dataset: str = "digits"):
    return config.validate({
        "data": {"dataset": dataset, "size": "tiny"},
        "model": {"family": "vae", "size": "tiny"},
        "trainer": {"batch_size": batch_size, "seed": 3},
        "tracking": {"experiment": "test", "register_model": False},
    }, "<test>")


def rows_of(ds) -> dict[str, np.ndarray]:
    batches = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def test_small_data_is_decoded_in_memory_as_permuted_copies(ray_session, genray_home):
    s = spec()
    source = data.resolve_data(s, genray_home)
    built = data.build_dataset(s, source)
    assert built.in_memory and built.repeats == math.ceil(16 * data.MIN_STEPS_PER_PASS / 256)  # 256 tiny digits rows
    stored = data.read_decoded(source.train, source.columns, source.info.modality, source.info.shape, normalize=False)
    assert stored["x"].dtype == np.uint8 and built.rows["x"].dtype == np.uint8  # pixels stay uint8 to the device
    assert np.array_equal(built.rows["x"], data.permute_rows(stored, 3, built.repeats)["x"])
    got = rows_of(built.dataset)  # the Ray Dataset holds exactly those rows, in that order
    assert got["x"].shape == (256 * built.repeats, 1, 8, 8) and np.array_equal(got["x"], built.rows["x"])
    assert np.array_equal(got["y"], built.rows["y"])


def test_shards_are_equal_contiguous_and_the_same_on_every_call(ray_session, genray_home):
    s = spec()
    built = data.build_dataset(s, data.resolve_data(s, genray_home))
    total = len(built.rows["y"])
    for n in (1, 3):
        shards = [rows_of(d) for d in built.shards(n)]
        size = total // n
        assert [len(sh["y"]) for sh in shards] == [size] * n  # every rank takes the same steps per pass
        for i, sh in enumerate(shards):
            assert np.array_equal(sh["x"], built.rows["x"][i * size:(i + 1) * size])
        again = rows_of(built.shards(n)[-1])  # a restarted worker group reads the same shard
        assert np.array_equal(again["y"], shards[-1]["y"])


def test_large_data_is_streamed_and_has_no_in_memory_shards(ray_session, genray_home, monkeypatch):
    monkeypatch.setattr(data, "DRIVER_BUILD_MAX_BYTES", 0)
    s = spec()
    built = data.build_dataset(s, data.resolve_data(s, genray_home))
    assert not built.in_memory
    got = rows_of(built.dataset)
    assert got["x"].shape[0] == 256 * built.repeats and got["x"].dtype == np.uint8
    with pytest.raises(ValueError, match="streaming split"):
        built.shards(2)
