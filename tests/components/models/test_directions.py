"""Attribute directions: which columns become attributes, the two formulas against numpy, the
saved form, the amount's range, and edits through a real (tiny) VAE."""
import numpy as np
import pytest
import torch

from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.models import build
from genray.components.models import directions as dirs


def columns(n=400, seed=0):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, n)
    return {
        "label": label,
        "factor_shape": label.copy(),  # shapes' label is its shape: left out as the same attribute
        "factor_color": rng.integers(0, 4, n),
        "factor_scale": rng.choice(np.array([0.5, 0.75, 1.0], np.float32), n),
        "factor_x": rng.random(n).astype(np.float32),
        "factor_flat": np.zeros(n, np.float32),  # constant: nothing to find
    }


def test_the_label_and_varying_factors_become_attributes_of_the_right_kind():
    found = dirs.attributes_of(columns(), {"label": ("square", "ellipse", "heart")})
    assert [(a.name, a.column, a.kind) for a in found] == [
        ("class", "label", "categorical"), ("color", "factor_color", "categorical"),
        ("scale", "factor_scale", "continuous"), ("x", "factor_x", "continuous")]
    assert found[0].values == ("square", "ellipse", "heart")
    assert found[1].values == ("0", "1", "2", "3")  # no names given: the values themselves


def test_categorical_directions_are_differences_of_means_and_continuous_ones_twice_the_slope():
    rng = np.random.default_rng(1)
    n, d = 5000, 5
    cols = {"label": rng.integers(0, 3, n), "factor_size": rng.normal(2.0, 0.5, n)}
    z = rng.normal(size=(n, d)) + np.eye(d)[cols["label"]] * 3.0 + np.outer(cols["factor_size"], np.arange(d))
    found = dirs.fit(torch.tensor(z, dtype=torch.float32), cols, dirs.attributes_of(cols))
    assert found.names == ("class=0", "class=1", "class=2", "size")
    for k in range(3):
        has = cols["label"] == k
        np.testing.assert_allclose(found.vectors[k].numpy(), z[has].mean(0) - z[~has].mean(0), rtol=1e-5, atol=1e-5)
    # Least squares of each latent on the standardised size, times two (numpy's polyfit):
    s = (cols["factor_size"] - cols["factor_size"].mean()) / cols["factor_size"].std()
    slopes = np.array([np.polyfit(s, z[:, j], 1)[0] for j in range(d)])
    np.testing.assert_allclose(found.vectors[3].numpy(), 2 * slopes, rtol=1e-4, atol=1e-4)
    # ... which recovers the planted effect: 2 std(size) * (0, 1, 2, 3, 4), up to sampling noise.
    np.testing.assert_allclose(found.vectors[3].numpy(), 2 * 0.5 * np.arange(d), atol=0.15)


def test_a_value_too_rare_to_measure_gets_no_direction_and_no_attribute_at_all_is_a_user_error():
    label = np.array([0] * 40 + [1] * 10 + [2] * 3)  # 53 rows; at least 5 with and 5 without a value
    found = dirs.fit(torch.randn(53, 4), {"label": label}, dirs.attributes_of({"label": label}))
    assert found.names == ("class=0", "class=1")
    with pytest.raises(UserError, match="no attribute has a direction"):  # 20 with and 20 without: none qualifies
        dirs.fit(torch.randn(53, 4), {"label": label}, dirs.attributes_of({"label": label}), min_rows=20)


def test_saved_directions_load_the_same_and_a_bad_folder_is_named(tmp_path):
    cols = columns()
    z = torch.randn(len(cols["label"]), 2, 3, 3)
    found = dirs.fit(z, cols, dirs.attributes_of(cols), source={"model": "models:/m/1"})
    back = dirs.Directions.load(found.save(tmp_path / "d"))
    assert back.names == found.names and back.latent_shape == (2, 3, 3) and back.source == {"model": "models:/m/1"}
    assert torch.equal(back.vectors, found.vectors) and back.attributes == found.attributes
    with pytest.raises(UserError, match=r"not a directions folder"):
        dirs.Directions.load(tmp_path)


def test_move_adds_amount_times_the_direction_per_row_and_checks_names_and_amounts():
    found = dirs.Directions(("class=a", "scale"), torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 2.0]]), (2, 2),
                            (dirs.Attribute("class", "label", "categorical", ("a",)),
                             dirs.Attribute("scale", "factor_scale", "continuous")))
    z = torch.zeros(3, 2, 2)
    moved = found.move(z, "scale", torch.tensor([1.0, -0.5, 0.0]))
    assert moved[:, 1, 1].tolist() == [2.0, -1.0, 0.0] and moved.flatten(1)[:, :3].abs().sum() == 0
    assert found.attribute("class=a").name == "class"
    with pytest.raises(UserError, match="no such direction; this model has class=a, scale"):
        found.move(z, "class=b", 1.0)
    for bad in (3.5, -4.0, float("nan")):
        with pytest.raises(UserError, match=r"in \[-3, 3\]"):
            found.move(z, "scale", bad)


def test_an_edit_decodes_the_moved_latent_of_a_vae():
    torch.manual_seed(0)
    model = build("vae", {"size": "tiny"}, DatasetInfo.for_images((1, 8, 8))).eval()
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    d = model.latent_shape
    found = dirs.Directions(("up",), torch.randn(1, int(np.prod(d))), tuple(d),
                            (dirs.Attribute("up", "factor_up", "continuous"),))
    z = model.encode(x)
    assert torch.allclose(dirs.edit(model, x, found, "up", 0.0), model.decode(z))
    assert torch.allclose(dirs.edit(model, x, found, "up", 1.5), model.decode(z + 1.5 * found.vectors[0].reshape(d)))
    wrong = dirs.Directions(("up",), torch.randn(1, 3), (3,), found.attributes)
    with pytest.raises(UserError, match="do not fit this model"):
        dirs.edit(model, x, wrong, "up", 1.0)
