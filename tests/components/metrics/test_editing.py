"""Edit scores on a model whose answers are known: an identity autoencoder over 2-number "images",
read by heads that look at one number each."""
import numpy as np
import pytest
import torch

from genray.components.metrics import editing
from genray.components.models import directions as dirs


class Identity:
    """encode and decode are the identity on (B, 1, 1, 2): latent 0 is the class, latent 1 the size."""

    latent_shape = (1, 1, 2)

    def encode(self, x):
        return x.clone()

    def decode(self, z):
        return z.clone()


def heads(x):
    """class: 1 when the first number is positive; size: 4 ordered bins of the second number,
    centred at -1.5, -0.5, 0.5, 1.5 (sharp logits, so argmax and the expected bin agree)."""
    a, b = x[:, 0, 0, 0], x[:, 0, 0, 1]
    centres = torch.tensor([-1.5, -0.5, 0.5, 1.5])
    return {"class": torch.stack([-50 * a, 50 * a], 1), "size": -50 * (b[:, None] - centres) ** 2}


DIRECTIONS = dirs.Directions(
    ("class=no", "class=yes", "size"),
    torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 1.0]]), (1, 1, 2),
    (dirs.Attribute("class", "label", "categorical", ("no", "yes")), dirs.Attribute("size", "factor_size", "continuous")))


def images():
    # class numbers at -0.5 (no) or 0.5 (yes), sizes at the bin centres -1.5 and -0.5
    a = torch.tensor([-0.5, -0.5, 0.5, 0.5])
    b = torch.tensor([-1.5, -0.5, -1.5, -0.5])
    return torch.stack([a, b], 1).reshape(4, 1, 1, 2)


def test_an_aimed_edit_moves_its_attribute_and_keeps_the_other():
    scores = {s.direction: s for s in editing.edit_scores(Identity(), DIRECTIONS, images(), heads, amount=1.0)}
    # class=yes: the two "no" rows move by +2 to 1.5: both are now "yes"; sizes untouched.
    yes = scores["class=yes"]
    assert (yes.kind, yes.effect, yes.kept) == ("categorical", 1.0, 1.0)
    assert scores["class=no"].effect == 1.0  # the two "yes" rows, moved to -1.5
    # size moves each row by one bin (the bins are 1 apart): shift +1; the class stays.
    size = scores["size"]
    assert size.kind == "continuous" and size.effect == pytest.approx(1.0, abs=1e-3) and size.kept == 1.0
    # Half the amount moves the size half-way between bins: the expected bin shifts by about 0.5.
    half = {s.direction: s for s in editing.edit_scores(Identity(), DIRECTIONS, images(), heads, amount=0.5)}
    assert half["size"].effect == pytest.approx(0.5, abs=0.01)


def test_the_control_is_a_random_direction_of_the_same_length_and_summary_averages_by_kind():
    scores = editing.edit_scores(Identity(), DIRECTIONS, images(), heads, amount=1.0, seed=3)
    for s in scores:
        assert 0.0 <= s.effect_control <= 1.0 if s.kind == "categorical" else abs(s.effect_control) <= 2.0
    out = editing.summary(scores)
    assert out["edit_moved"] == 1.0 and out["edit_shift"] == pytest.approx(1.0, abs=1e-3) and out["edit_kept"] == 1.0
    assert set(out) == {"edit_moved", "edit_moved_control", "edit_shift", "edit_shift_control", "edit_kept",
                        "edit_kept_control"}
    # The same seed draws the same controls.
    again = editing.edit_scores(Identity(), DIRECTIONS, images(), heads, amount=1.0, seed=3)
    assert [s.effect_control for s in again] == [s.effect_control for s in scores]


def test_directions_of_attributes_without_a_head_are_not_scored_and_kept_needs_another_head():
    only_class = lambda x: {"class": heads(x)["class"]}  # noqa: E731
    scores = editing.edit_scores(Identity(), DIRECTIONS, images(), only_class)
    assert [s.direction for s in scores] == ["class=no", "class=yes"]
    assert all(s.kept is None for s in scores) and "edit_kept" not in editing.summary(scores)
    assert np.isclose(editing.summary(scores)["edit_moved"], 1.0)
