"""The checkpoint format: safetensors + JSON + a weights_only optimizer file; nothing unpickled."""
from __future__ import annotations

import pickle

import pytest
import torch

from genray.components import checkpoint
from genray.components.data import DatasetInfo
from genray.components.models import build


def _model():
    torch.manual_seed(0)
    return build("vae", {"size": "tiny"}, DatasetInfo.for_images((1, 8, 8), 10))


def _state():
    return {"step": 7, "epoch": 1,
            "model": checkpoint.model_state("vae", {"size": "tiny"}, DatasetInfo.for_images((1, 8, 8), 10))}


def test_round_trip_restores_weights_ema_optimizer_and_state(tmp_path):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss, _ = model({"x": torch.rand(4, 1, 8, 8) * 2 - 1}, "main")
    loss.backward()
    opt.step()
    ema = {k: v * 0.5 for k, v in model.state_dict().items()}
    checkpoint.save(tmp_path, checkpoint.Checkpoint(model.state_dict(), _state(), ema, {"opt": opt.state_dict()}))

    back = checkpoint.load(tmp_path)
    assert back.state == _state()
    for k, v in model.state_dict().items():
        assert torch.equal(back.model[k], v) and torch.equal(back.ema[k], v * 0.5)
    opt2 = torch.optim.AdamW(_model().parameters(), lr=1e-3)
    opt2.load_state_dict(back.optimizer["opt"])
    a, b = opt.state_dict()["state"][0], opt2.state_dict()["state"][0]
    assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["step"], b["step"])


def test_build_model_rebuilds_from_the_checkpoint_alone(tmp_path):
    model = _model().eval()
    checkpoint.save(tmp_path, checkpoint.Checkpoint(model.state_dict(), _state()))
    rebuilt, state = checkpoint.build_model(tmp_path)
    assert state["step"] == 7
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(rebuilt.sample(4, generator=g()), model.sample(4, generator=g()))


class _Boom:
    def __reduce__(self):
        return (print, ("pwned",))


def test_optimizer_file_with_code_in_it_is_refused(tmp_path):
    checkpoint.save(tmp_path, checkpoint.Checkpoint(_model().state_dict(), _state()))
    (tmp_path / checkpoint.OPTIMIZER_FILE).write_bytes(pickle.dumps({"x": _Boom()}))
    with pytest.raises(pickle.UnpicklingError):
        checkpoint.load(tmp_path)


def test_incomplete_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="state.json"):
        checkpoint.load(tmp_path)
