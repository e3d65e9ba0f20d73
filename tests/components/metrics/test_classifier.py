"""The domain classifier: learns a separable toy task, is deterministic, and round-trips to disk."""
import json
import re

import numpy as np
import pytest
import torch

from genray.components.metrics.classifier import (
    DomainClassifier,
    accuracy,
    classifier_id,
    extract_features,
    load_classifier,
    save_classifier,
    train_classifier,
)


def quadrant_blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """8x8x1 images of noise with one bright 2x2 blob; the label is the quadrant holding it.

    Each blob sits at least 1 px from the quadrant's inner edges, so the classifier's +-1 px
    training shifts never carry it into another quadrant.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, size=n)
    x = np.full((n, 1, 8, 8), -0.8, dtype=np.float32) + rng.normal(0, 0.1, size=(n, 1, 8, 8)).astype(np.float32)
    for i, q in enumerate(y):
        r = 4 * (q // 2) + (rng.integers(0, 2) if q // 2 == 0 else rng.integers(1, 3))
        c = 4 * (q % 2) + (rng.integers(0, 2) if q % 2 == 0 else rng.integers(1, 3))
        x[i, 0, r : r + 2, c : c + 2] = 0.9
    return x, y


@pytest.fixture(scope="module")
def trained():
    x, y = quadrant_blobs(512, seed=0)
    return train_classifier(x, y, num_classes=4, steps=150, batch_size=64, seed=0)


def test_learns_a_separable_task(trained):
    x_test, y_test = quadrant_blobs(256, seed=1)
    assert not trained.training
    assert accuracy(trained, x_test, y_test) >= 0.95


def test_accuracy_counts_argmax_matches(trained):
    x, _ = quadrant_blobs(64, seed=2)
    pred = trained(torch.as_tensor(x)).argmax(dim=1)
    assert accuracy(trained, x, pred) == 1.0
    assert accuracy(trained, x, (pred + 1) % 4) == 0.0
    assert accuracy(trained, x, np.where(np.arange(64) < 16, pred.numpy(), (pred.numpy() + 1) % 4)) == 0.25


def test_training_is_deterministic_for_a_seed_and_leaves_the_global_rng_alone():
    x, y = quadrant_blobs(64, seed=3)
    rng_before = torch.get_rng_state()
    a = train_classifier(x, y, num_classes=4, steps=5, batch_size=16, seed=7).state_dict()
    assert torch.equal(torch.get_rng_state(), rng_before)
    b = train_classifier(x, y, num_classes=4, steps=5, batch_size=16, seed=7).state_dict()
    c = train_classifier(x, y, num_classes=4, steps=5, batch_size=16, seed=8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32), (3, 13, 9)])
def test_features_have_the_documented_shape_and_dtype(shape):
    torch.manual_seed(0)
    model = DomainClassifier(in_channels=shape[0], num_classes=3, feature_dim=24).eval()
    x = torch.rand(5, *shape) * 2 - 1
    with torch.no_grad():
        f, logits = model.features(x), model(x)
    assert f.shape == (5, 24) and f.dtype == torch.float32
    assert logits.shape == (5, 3)
    feats = extract_features(model, x.numpy(), batch_size=2)
    assert feats.shape == (5, 24) and feats.dtype == np.float64
    # In eval mode BatchNorm is a fixed affine map: a sample's features do not depend on its batch.
    np.testing.assert_allclose(feats, f.double().numpy(), rtol=1e-5, atol=1e-6)


def test_extract_features_restores_training_mode(trained):
    trained.train()
    try:
        extract_features(trained, quadrant_blobs(4, seed=4)[0])
        assert trained.training
    finally:
        trained.eval()


def test_bad_images_and_labels_are_refused():
    model = DomainClassifier(in_channels=1, num_classes=4)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\).*\(2, 1, 7, 7\)"):
        model(torch.zeros(2, 1, 7, 7))
    with pytest.raises(ValueError, match=r"\(2, 3, 8, 8\)"):
        model(torch.zeros(2, 3, 8, 8))
    x, y = quadrant_blobs(8, seed=5)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        train_classifier(x, y, num_classes=3, steps=1)
    with pytest.raises(ValueError, match=r"N = 8"):
        train_classifier(x, y[:4], num_classes=4, steps=1)


def test_save_load_round_trip(trained, tmp_path):
    x, _ = quadrant_blobs(32, seed=6)
    save_classifier(trained, tmp_path / "clf")
    loaded = load_classifier(tmp_path / "clf")
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(trained(torch.as_tensor(x)), loaded(torch.as_tensor(x)))
    config = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert config == {**trained.config, "sha256": config["sha256"]}
    ident = classifier_id(tmp_path / "clf")
    assert re.fullmatch(r"domain-classifier-[0-9a-f]{12}", ident) and ident[-12:] == config["sha256"][:12]
    # Same weights -> same id; the id names the weights, not the directory.
    save_classifier(loaded, tmp_path / "again")
    assert classifier_id(tmp_path / "again") == ident
    other = DomainClassifier(in_channels=1, num_classes=4)
    assert classifier_id(save_classifier(other, tmp_path / "other")) != ident


def test_load_refuses_a_config_that_does_not_match_the_weights(trained, tmp_path):
    path = save_classifier(trained, tmp_path / "clf")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "width": 16}))
    with pytest.raises(ValueError, match=r"does not match model.safetensors: tensor 'body.0.0.weight'"):
        load_classifier(path)


def test_load_refuses_changed_weights_and_missing_files(trained, tmp_path):
    path = save_classifier(trained, tmp_path / "clf")
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_classifier(path)
    with pytest.raises(ValueError, match="sha256"):
        classifier_id(path)
    with pytest.raises(FileNotFoundError, match="save_classifier"):
        load_classifier(tmp_path / "nothing")


def test_aux_factor_heads_make_the_features_carry_each_factor_and_survive_saving(tmp_path):
    """A label that ignores a factor (bar orientation vs brightness) plus an aux head for that
    factor: the shared features must then separate it too."""
    g = torch.Generator().manual_seed(0)
    n = 600
    label = torch.randint(0, 2, (n,), generator=g)
    level = torch.randint(0, 3, (n,), generator=g)
    x = torch.full((n, 1, 8, 8), -1.0)
    value = -0.5 + 0.7 * level.float()  # three brightness levels
    for i in range(n):
        if label[i]:
            x[i, 0, 3:5, :] = value[i]
        else:
            x[i, 0, :, 3:5] = value[i]
    model = train_classifier(x, label, num_classes=2, steps=150, batch_size=64, seed=0, aux={"level": level})
    assert model.config["aux_classes"] == {"level": 3}
    with torch.no_grad():
        h = model.features(x)
        assert (model.head(h).argmax(1) == label).float().mean() > 0.95
        assert (model.aux_heads["level"](h).argmax(1) == level).float().mean() > 0.9
    path = save_classifier(model, tmp_path / "clf")
    again = load_classifier(path)
    assert again.config == model.config
    assert np.array_equal(extract_features(again, x[:20]), extract_features(model, x[:20]))
