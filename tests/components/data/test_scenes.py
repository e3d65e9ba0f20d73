"""Two-object scenes: held-out pairs kept out of training, captions that say what the layout
shows, objects that never touch, and reproducible files."""
import numpy as np
import pyarrow.parquet as pq
import pytest

from genray.components.data import read_info, scenes, shapes


def test_held_out_pairs_are_a_fixed_share_of_the_unordered_pairs_of_object_kinds():
    held = scenes.held_out_pairs()
    assert len(scenes.KINDS) == 18 and len(held) == round(0.15 * 171) == 26
    assert held == scenes.held_out_pairs() and all(i <= j for i, j in held)
    i, j = next(iter(held))
    assert scenes.is_held_out(np.array([j, i]), np.array([i, j])).all()  # either order


def test_training_scenes_never_show_a_held_out_pair_and_test_scenes_show_both():
    rng = np.random.default_rng(0)
    train = scenes.sample_scenes(2000, rng, held_out=False)
    test = scenes.sample_scenes(2000, rng, held_out=None)
    kinds = lambda f: (scenes.kind_index(f["shape_a"], f["color_a"]), scenes.kind_index(f["shape_b"], f["color_b"]))  # noqa: E731
    assert not scenes.is_held_out(*kinds(train)).any() and not train["held_out"].any()
    assert np.array_equal(scenes.is_held_out(*kinds(test)), test["held_out"])
    assert 0.08 < test["held_out"].mean() < 0.22  # about the held-out share of pairs


def test_captions_name_the_subject_first_with_the_relation_its_position_needs():
    assert scenes.caption(0, 0, 0, 2, 2, False) == "a red square left of a blue heart"
    assert scenes.caption(0, 0, 0, 2, 2, True) == "a blue heart right of a red square"
    assert scenes.caption(1, 1, 3, 0, 1, False) == "a yellow ellipse above a green square"
    assert scenes.caption(1, 1, 3, 0, 1, True) == "a green square below a yellow ellipse"
    f = scenes.sample_scenes(500, np.random.default_rng(1), held_out=None)
    horizontal = f["relation"] == 0
    assert (f["x_a"][horizontal] < f["x_b"][horizontal]).all()  # a is the left one
    assert (f["y_a"][~horizontal] < f["y_b"][~horizontal]).all()  # a is the top one (y grows downwards)


def test_the_two_objects_are_drawn_in_their_colours_where_the_factors_put_them_and_never_touch():
    f = scenes.sample_scenes(64, np.random.default_rng(2), held_out=None)
    f["color_b"] = (f["color_a"] + 1) % len(shapes.COLOR_NAMES)  # tell the two apart by colour
    images = scenes.render(f)
    assert images.shape == (64, 32, 32, 3) and images.dtype == np.uint8
    rgb = np.asarray(list(shapes.COLORS.values()))
    for k in range(64):
        for o in ("a", "b"):
            pure = (images[k] == rgb[f[f"color_{o}"][k]] * 255).all(-1)  # fully covered pixels of that colour
            ys, xs = np.nonzero(pure)
            assert len(xs) > 4, (k, o)
            assert abs(xs.mean() + 0.5 - 32 * f[f"x_{o}"][k]) < 1.5 and abs(ys.mean() + 0.5 - 32 * f[f"y_{o}"][k]) < 1.5
        single = {o: scenes.render({**{k2: v[k : k + 1] for k2, v in f.items()},
                                     **({"shape_b": f["shape_a"][k : k + 1], "color_b": f["color_a"][k : k + 1],
                                         "x_b": f["x_a"][k : k + 1], "y_b": f["y_a"][k : k + 1]} if o == "a" else
                                        {"shape_a": f["shape_b"][k : k + 1], "color_a": f["color_b"][k : k + 1],
                                         "x_a": f["x_b"][k : k + 1], "y_a": f["y_b"][k : k + 1]})})[0].max(-1) > 0
                  for o in ("a", "b")}
        grown = np.zeros_like(single["a"])  # object a's pixels and their neighbours
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                grown |= np.roll(np.roll(single["a"], dy, 0), dx, 1)
        assert not (grown & single["b"]).any(), k


def test_prepare_writes_both_splits_reproducibly_with_factors_and_the_held_out_flag(tmp_path):
    paths = scenes.prepare(tmp_path / "a", seed=3, size="tiny")
    again = scenes.prepare(tmp_path / "b", seed=3, size="tiny")
    info = read_info(str(paths["train"]))
    assert (info.modality, info.shape, info.num_rows, info.num_classes) == ("image", (32, 32, 3), 512, 3)
    train, test = pq.read_table(paths["train"]), pq.read_table(paths["test"])
    assert sum(train.column("held_out").to_pylist()) == 0 and sum(test.column("held_out").to_pylist()) > 0
    assert {"factor_relation", "factor_shape_a", "factor_color_b", "factor_x_a", "factor_y_b"} <= set(train.column_names)
    assert train.equals(pq.read_table(again["train"]))
    assert scenes.VALUE_NAMES["factor_relation"] == ("horizontal", "vertical")


def test_part_captions_name_one_object_and_its_place_and_compose_into_a_scene():
    assert scenes.part_caption(0, 0, 0, False) == "a red square on the left"
    assert scenes.part_caption(1, 2, 2, True) == "a blue heart at the bottom"
    assert scenes.composed_prompt(0, 0, 0, 2, 2) == "a red square on the left AND a blue heart on the right"


def test_a_share_of_training_rows_carry_one_part_and_the_test_rows_none(tmp_path):
    paths = scenes.prepare(tmp_path, seed=0, size="tiny")
    train = pq.read_table(paths["train"]).to_pydict()
    test = pq.read_table(paths["test"]).to_pydict()
    is_part = [" of " not in c and "above" not in c and "below" not in c for c in train["caption"]]
    assert 0.2 < np.mean(is_part) < 0.4  # about PART_SHARE
    for c, part, r, sa, ca, sb, cb in zip(train["caption"], is_part, train["factor_relation"], train["factor_shape_a"],
                                          train["factor_color_a"], train["factor_shape_b"], train["factor_color_b"]):
        if part:  # the part names one of the row's two objects, in its place
            assert c in (scenes.part_caption(r, sa, ca, False), scenes.part_caption(r, sb, cb, True)), c
    assert not any(" AND " in c for c in train["caption"] + test["caption"])
    assert all(" of " in c or "above" in c or "below" in c for c in test["caption"])  # full captions only


def test_a_bad_size_is_named():
    with pytest.raises(ValueError, match="size must be one of"):
        scenes.prepare("/tmp/never", size="huge")
