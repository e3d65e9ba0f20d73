"""The FID Inception-v3: pytorch-fid's state-dict layout, its FID-specific pooling, safe loading.

The real weights (pt_inception-2015-12-05-6726825d.pth) are not available here, so every test
uses a randomly initialised network; what is checked is that the file's layout would load and
that nothing but plain tensors is ever read from disk.
"""
import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from genray.components.metrics.inception import (
    FID_WEIGHTS_SHA256_PREFIX,
    INCEPTION_ENV,
    InceptionFeatures,
    extract_inception_features,
    find_inception_weights,
    inception_id,
    load_inception,
    preprocess,
)

# The random weights never match pytorch-fid's hash; that warning is tested once, below.
pytestmark = pytest.mark.filterwarnings("ignore:.*sha256.*:UserWarning")


@pytest.fixture(scope="module")
def net() -> InceptionFeatures:
    """Random weights scaled so activations keep their size through 94 convs (torch's default
    init shrinks pool3 to ~1e-8, which would make the equality checks below vacuous), and
    non-trivial BatchNorm statistics, so a round trip that dropped buffers would show."""
    torch.manual_seed(0)
    model = InceptionFeatures()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.1, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 32, 32, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def saved(net, tmp_path_factory):
    """The network's state dict as .pth (torch.save) and as .safetensors."""
    d = tmp_path_factory.mktemp("inception")
    state = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    torch.save(state, d / "weights.pth")
    save_file(state, str(d / "weights.safetensors"))
    return d / "weights.pth", d / "weights.safetensors"


# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 1, 8, 8), (2, 3, 32, 32)])
def test_features_are_finite_float64_2048(net, shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    feats = extract_inception_features(net, x, batch_size=2)
    assert feats.shape == (2, 2048)
    assert feats.dtype == np.float64
    assert np.isfinite(feats).all()
    assert (feats >= 0).all()  # average of ReLU outputs


def test_grey_is_repeated_and_resize_is_pytorch_fids(images):
    x = preprocess(images)
    assert x.shape == (2, 3, 299, 299) and x.dtype == torch.float32
    ref = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
    torch.testing.assert_close(x, ref, rtol=0, atol=0)
    grey = preprocess(images[:, :1])
    torch.testing.assert_close(grey, preprocess(images[:, :1].repeat(1, 3, 1, 1)), rtol=0, atol=0)


def test_batches_do_not_change_features(net, images):
    """Eval-mode BatchNorm: a sample's features do not depend on its batch."""
    together = extract_inception_features(net, images, batch_size=2)
    one_by_one = extract_inception_features(net, images, batch_size=1)
    np.testing.assert_allclose(one_by_one, together, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "bad", [torch.zeros(2, 2, 8, 8), torch.zeros(2, 8, 8), torch.zeros(0, 3, 8, 8)], ids=["2ch", "3d", "empty"]
)
def test_rejects_bad_images(net, bad):
    with pytest.raises(ValueError, match="images|at least one"):
        extract_inception_features(net, bad)


# pytorch-fid: fid_inception_v3() = torchvision Inception3(num_classes=1008, aux_logits=False)
# with patched Mixed_5b-d, 6b-e, 7b, 7c; shapes from torchvision's inception.py constructors.
KNOWN_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.weight": (32,),
    "Conv2d_1a_3x3.bn.running_var": (32,),
    "Conv2d_2b_3x3.conv.weight": (64, 32, 3, 3),
    "Conv2d_3b_1x1.conv.weight": (80, 64, 1, 1),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch_pool.conv.weight": (64, 288, 1, 1),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
    "Mixed_7c.branch3x3_2b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "Mixed_7c.branch_pool.bn.running_mean": (192,),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


def test_state_dict_matches_pytorch_fid_layout(net):
    state = net.state_dict()
    for name, shape in KNOWN_SHAPES.items():
        assert name in state, name
        assert tuple(state[name].shape) == shape, name
    assert not any(k.startswith("AuxLogits") for k in state)
    # 94 conv-BN units x (conv.weight, bn.weight/bias/running_mean/running_var/num_batches_tracked) + fc
    assert sum(isinstance(m, nn.Conv2d) for m in net.modules()) == 94
    assert len(state) == 94 * 6 + 2
    # torchvision documents 27,161,264 parameters for inception_v3 (aux, 1000 classes). Less
    # AuxLogits (conv0 768*128 + 256 BN, conv1 128*768*25 + 1536 BN, fc 768*1000 + 1000 =
    # 3,326,696) gives 23,834,568; 1008 logits add 8*2048 + 8 = 16,392.
    assert sum(p.numel() for p in net.parameters()) == 27_161_264 - 3_326_696 + 16_392 == 23_850_960


def test_fid_pooling_patches(net):
    """The pool branch is last in each block's output; 5b/7b average without counting the
    padding (TensorFlow), 7c max-pools (pytorch-fid's FIDInceptionE_2)."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        x = torch.randn(1, 192, 5, 5, generator=g)
        pooled = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        out = net.Mixed_5b(x)[:, -32:]
        torch.testing.assert_close(out, net.Mixed_5b.branch_pool(pooled))
        with_pad = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True)
        assert not torch.allclose(out, net.Mixed_5b.branch_pool(with_pad))

        x = torch.randn(1, 1280, 4, 4, generator=g)
        pooled = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        torch.testing.assert_close(net.Mixed_7b(x)[:, -192:], net.Mixed_7b.branch_pool(pooled))

        x = torch.randn(1, 2048, 4, 4, generator=g)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1)
        torch.testing.assert_close(net.Mixed_7c(x)[:, -192:], net.Mixed_7c.branch_pool(pooled))


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def test_pth_and_safetensors_load_to_identical_features(net, images, saved):
    pth, st = saved
    expected = extract_inception_features(net, images)
    from_pth = load_inception(pth)
    from_st = load_inception(st)
    assert not from_pth.training and not from_st.training
    np.testing.assert_array_equal(extract_inception_features(from_pth, images), expected)
    np.testing.assert_array_equal(extract_inception_features(from_st, images), expected)


def test_file_without_batchnorm_counters_loads(net, images, tmp_path):
    """Files saved before torch 0.4.1 lack num_batches_tracked; it is unused in eval mode."""
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(state, path)
    np.testing.assert_array_equal(
        extract_inception_features(load_inception(path), images), extract_inception_features(net, images)
    )


@pytest.mark.filterwarnings("default")
def test_warns_when_not_the_official_file(saved):
    with pytest.warns(UserWarning, match=FID_WEIGHTS_SHA256_PREFIX):
        load_inception(saved[0])


def test_inception_id_names_the_file_hash(saved):
    import hashlib

    pth = saved[0]
    assert inception_id(pth) == "inception-v3-fid-" + hashlib.sha256(pth.read_bytes()).hexdigest()[:12]
    assert inception_id(pth) != inception_id(saved[1])


class _RunsCode:
    """Unpickling this calls exec: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    marker = tmp_path / "marker"
    torch.save({"Conv2d_1a_3x3.conv.weight": _RunsCode(marker)}, path)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}.*weights_only"):
        load_inception(path)
    assert not marker.exists()

    # The payload is live: full unpickling of the same kind of file does run it.
    live_marker = tmp_path / "live_marker"
    live = tmp_path / "live.pth"
    torch.save({"x": _RunsCode(live_marker)}, live)
    torch.load(live, weights_only=False)
    assert live_marker.read_text() == "ran"


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "pt_inception.pth"
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(str(path))}.*{INCEPTION_ENV}"):
        load_inception(path)
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        inception_id(path)


def test_wrong_keys_are_listed(net, tmp_path):
    state = dict(net.state_dict())
    state["AuxLogits.fc.weight"] = torch.zeros(1008, 768)
    del state["Mixed_7c.branch_pool.conv.weight"]
    path = tmp_path / "wrong.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=re.escape(str(path))) as err:
        load_inception(path)
    assert "missing keys: Mixed_7c.branch_pool.conv.weight" in str(err.value)
    assert "unexpected keys: AuxLogits.fc.weight" in str(err.value)


def test_wrong_shapes_are_listed(net, tmp_path):
    state = dict(net.state_dict())
    state["fc.weight"] = torch.zeros(1000, 2048)
    state["fc.bias"] = torch.zeros(1000)
    path = tmp_path / "torchvision_like.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}.*wrong shapes: fc\.bias \(1000,\) \(want \(1008,\)\)"):
        load_inception(path)


@pytest.mark.parametrize(
    "name, content",
    [
        ("list.pth", [torch.zeros(1)]),
        ("checkpoint.pth", {"model": {"fc.weight": torch.zeros(1)}, "step": 3}),
    ],
)
def test_not_a_state_dict(tmp_path, name, content):
    path = tmp_path / name
    torch.save(content, path)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}.*flat state dict"):
        load_inception(path)


def test_unreadable_files(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=re.escape(str(junk))):
        load_inception(junk)
    junk_st = tmp_path / "junk.safetensors"
    junk_st.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=rf"{re.escape(str(junk_st))}.*safetensors"):
        load_inception(junk_st)
    other = tmp_path / "weights.npz"
    other.write_bytes(b"")
    with pytest.raises(ValueError, match=r"\.pth, \.pt, \.safetensors"):
        load_inception(other)


# ---------------------------------------------------------------------------------------------
# Finding the weights
# ---------------------------------------------------------------------------------------------


def test_find_inception_weights(monkeypatch, tmp_path):
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    assert find_inception_weights(None) is None
    monkeypatch.setenv(INCEPTION_ENV, "")
    assert find_inception_weights(None) is None
    monkeypatch.setenv(INCEPTION_ENV, str(tmp_path / "from_env.pth"))
    assert find_inception_weights(None) == tmp_path / "from_env.pth"
    assert find_inception_weights(tmp_path / "explicit.pth") == tmp_path / "explicit.pth"
    assert find_inception_weights(str(tmp_path / "explicit.pth")) == tmp_path / "explicit.pth"
    assert os.environ[INCEPTION_ENV].endswith("from_env.pth")
