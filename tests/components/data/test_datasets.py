"""The built-in datasets: deterministic files, valid schema, and contents that mean what they say
(factors match pixels, captions match factors, pitches match spectra)."""

import re
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from genray.components.data import DATASETS, decode_batch, read_info
from genray.components.data import fashion_mnist, moons, shapes, spoken_digits, text, tones
from genray.components.errors import UserError

# Fashion-MNIST is read from Debian's package, which `make install` installs as root; without it,
# its own tests (test_fashion_mnist.py, test_fashion_edges.py) cover them on synthetic IDX files.
HAS_FASHION_MNIST = (fashion_mnist.DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file()
# spoken_digits needs Debian's espeak-ng, which `make install` installs as root too.
HAS_ESPEAK = shutil.which("espeak-ng") is not None
FASHION = ("fashion_mnist", "fashion_edges", "fashion_halves")
AVAILABLE = sorted(n for n in DATASETS if (n not in FASHION or HAS_FASHION_MNIST)
                   and (n != "spoken_digits" or HAS_ESPEAK))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Every dataset prepared once at size tiny, seed 0."""
    root = tmp_path_factory.mktemp("tiny")
    return {name: DATASETS[name](root / name, seed=0, size="tiny") for name in AVAILABLE}


def _columns(path):
    return {name: col.to_numpy(zero_copy_only=False) for name, col in zip(*_table(path))}


def _table(path):
    t = pq.read_table(path)
    return t.column_names, t.columns


def test_registry():
    assert set(DATASETS) == {"digits", "fashion_mnist", "fashion_edges", "fashion_halves", "shapes", "scenes", "moons", "text",
                             "tones", "spoken_digits"}


@pytest.mark.parametrize("name", AVAILABLE)
def test_tiny_files_are_valid_and_decode(tiny, name):
    paths = tiny[name]
    assert set(paths) == {"train", "test"}
    for path in paths.values():
        assert path.name in ("train.parquet", "test.parquet")
        info = read_info(path)
        assert 64 <= info.num_rows <= 512
        batch = decode_batch(_columns(path), info.modality, info.shape)
        assert batch["x"].shape[0] == info.num_rows


@pytest.mark.parametrize("name", AVAILABLE)
def test_deterministic(tiny, tmp_path, name):
    again = DATASETS[name](tmp_path / "again", seed=0, size="tiny")
    for split in ("train", "test"):
        assert again[split].read_bytes() == tiny[name][split].read_bytes(), f"{name}/{split} differs"
    if name in ("shapes", "moons", "tones", "spoken_digits"):  # procedural: the seed draws every example
        other = DATASETS[name](tmp_path / "other", seed=1, size="tiny")
        assert other["train"].read_bytes() != tiny[name]["train"].read_bytes()


def test_unknown_size_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="size must be one of"):
        DATASETS["moons"](tmp_path, size="huge")


# ---------------------------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------------------------


def test_digits_full(tmp_path):
    paths = DATASETS["digits"](tmp_path, size="full")
    train, test = read_info(paths["train"]), read_info(paths["test"])
    assert train.num_rows + test.num_rows == 1797
    assert train.num_classes == test.num_classes == 10
    assert train.shape == (8, 8, 1)
    cols = _columns(paths["train"])
    pixels = np.frombuffer(b"".join(cols["image"]), np.uint8)
    assert pixels.min() == 0 and pixels.max() == 255
    assert all(c == f"a handwritten {y}" for c, y in zip(cols["caption"], cols["label"]))
    # The split is a partition: no image is in both (the rare duplicate digit aside).
    assert len(set(cols["image"]) & set(_columns(paths["test"])["image"])) < 5


# ---------------------------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sprites(tiny):
    cols = _columns(tiny["shapes"]["train"])
    images = np.frombuffer(b"".join(cols["image"]), np.uint8).reshape(-1, 32, 32, 3)
    return images, cols


def test_shapes_position_factors_move_the_shape(sprites):
    images, cols = sprites
    lit = images.max(axis=-1) > 0  # (N, H, W)
    assert lit.any(axis=(1, 2)).all(), "every image shows its shape"
    rows, cols_idx = np.indices((32, 32))
    count = lit.sum(axis=(1, 2))
    centroid_x = (lit * cols_idx).sum(axis=(1, 2)) / count
    centroid_y = (lit * rows).sum(axis=(1, 2)) / count
    assert np.corrcoef(centroid_x, cols["factor_x"])[0, 1] > 0.95
    assert np.corrcoef(centroid_y, cols["factor_y"])[0, 1] > 0.95
    # Shapes never touch the border: the margin keeps them whole.
    assert not lit[:, [0, -1], :].any() and not lit[:, :, [0, -1]].any()


def test_shapes_scale_factor_grows_the_shape(sprites):
    images, cols = sprites
    lit = (images.max(axis=-1) > 0).sum(axis=(1, 2))
    for s in range(len(shapes.SHAPES)):
        mine = cols["factor_shape"] == s
        means = [lit[mine & np.isclose(cols["factor_scale"], v)].mean() for v in shapes.SCALES]
        assert np.all(np.diff(means) > 0), f"{shapes.SHAPES[s]}: lit pixels by scale {means}"


def test_shapes_color_factor_is_the_dominant_channels(sprites):
    images, cols = sprites
    for image, color in zip(images, cols["factor_color"]):
        channel_mean = image.reshape(-1, 3).astype(float).mean(axis=0)
        on = tuple(int(m > 0.5 * channel_mean.max()) for m in channel_mean)
        assert on == shapes.COLORS[shapes.COLOR_NAMES[color]]


def test_shapes_captions_agree_with_factors(sprites):
    _, cols = sprites
    pattern = re.compile(r"a (small|medium|large) (\w+) (square|ellipse|heart) at the (top|middle|bottom) (left|center|right)")
    np.testing.assert_array_equal(cols["label"], cols["factor_shape"])
    for i, caption in enumerate(cols["caption"]):
        size, color, shape, row, col = pattern.fullmatch(caption).groups()
        scale_index = shapes.SCALES.index(round(float(cols["factor_scale"][i]), 1))
        assert size == shapes.SIZE_WORDS[scale_index]
        assert color == shapes.COLOR_NAMES[cols["factor_color"][i]]
        assert shape == shapes.SHAPES[cols["factor_shape"][i]]
        assert row == ("top", "middle", "bottom")[min(int(cols["factor_y"][i] * 3), 2)]
        assert col == ("left", "center", "right")[min(int(cols["factor_x"][i] * 3), 2)]


def test_shapes_factor_ranges(sprites):
    _, cols = sprites
    assert set(np.unique(cols["factor_shape"])) == {0, 1, 2}
    assert set(np.unique(cols["factor_color"])) == set(range(6))
    assert sorted(np.unique(cols["factor_scale"]).tolist()) == pytest.approx(shapes.SCALES)
    for name in ("factor_x", "factor_y"):
        assert cols[name].dtype == np.float32 and 0 <= cols[name].min() and cols[name].max() <= 1
    assert 0 <= cols["factor_rotation"].min() and cols["factor_rotation"].max() < 2 * np.pi


# ---------------------------------------------------------------------------------------------
# moons, tones, text
# ---------------------------------------------------------------------------------------------


def test_moons_points_lie_near_their_arc(tiny):
    cols = _columns(tiny["moons"]["train"])
    points = np.stack(cols["point"])  # (N, 2)
    label = cols["label"]
    t = np.linspace(0, np.pi, 2001)
    dist = np.empty(len(points))
    for m in (0, 1):
        arc = moons.arc(t, np.full_like(t, m, dtype=np.int64))  # (2001, 2)
        mine = label == m
        dist[mine] = np.linalg.norm(points[mine, None, :] - arc[None], axis=-1).min(axis=1)
    assert np.quantile(dist, 0.99) < 4 * moons.NOISE
    assert 0.4 < label.mean() < 0.6
    assert abs(points.mean(axis=0)).max() < 0.2  # centred near the origin


def test_tones_fft_peak_is_the_pitch(tiny):
    cols = _columns(tiny["tones"]["train"])
    wave = np.stack(cols["waveform"])  # (N, T)
    sr = int(cols["sample_rate"][0])
    assert sr == tones.SAMPLE_RATE and wave.shape[1] == 2000
    assert np.abs(wave).max() <= 1
    freqs = np.fft.rfftfreq(wave.shape[1], d=1 / sr)
    peak = freqs[np.abs(np.fft.rfft(wave, axis=1)).argmax(axis=1)]
    assert np.all(np.abs(peak - cols["pitch_hz"]) <= sr / wave.shape[1])
    np.testing.assert_allclose(cols["pitch_hz"], np.asarray(tones.NOTE_HZ)[cols["label"]], rtol=1e-6)
    assert read_info(tiny["tones"]["train"]).sample_rate == sr


@pytest.mark.skipif(not HAS_ESPEAK, reason="espeak-ng is not installed (make install as root installs it)")
def test_spoken_digits_are_speech_of_the_digit_named(tiny):
    cols = _columns(tiny["spoken_digits"]["train"])
    wave, label = np.stack(cols["waveform"]), cols["label"]
    assert wave.shape == (128, spoken_digits.CLIP_SAMPLES) and set(cols["sample_rate"]) == {8000}
    assert set(label) == set(range(10))
    peak = np.abs(wave).max(axis=1)
    assert peak.min() >= 0.5 - 1e-6 and peak.max() <= 0.9 + 1e-6
    # Speech fills a good part of each clip, and silence the rest.
    voiced = (np.abs(wave) > 0.01).mean(axis=1)
    assert 0.1 < voiced.min() and voiced.max() < 0.95
    # The words sound like themselves: "six" is two /s/ hisses around a short vowel, so far more
    # of its energy lies above 2 kHz than in "nine", which is voiced and nasal throughout.
    power = np.abs(np.fft.rfft(wave, axis=1)) ** 2
    high = power[:, np.fft.rfftfreq(wave.shape[1], 1 / 8000) > 2000].sum(1) / power.sum(1)
    assert high[label == 6].mean() > 3 * high[label == 9].mean()


def test_spoken_digits_explain_a_missing_espeak(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="apt-get install espeak-ng"):
        spoken_digits.prepare(tmp_path / "out", size="tiny")


def test_text_vocab_and_round_trip(tiny):
    info = read_info(tiny["text"]["train"])
    vocab = info.vocab
    assert vocab is not None and list(vocab) == sorted(vocab) and text.UNKNOWN in vocab
    assert "\n" in vocab and "\t" not in vocab and len(vocab) <= 96
    s = "def f(x):\n    return x + 1  # ok?"
    assert text.decode(text.encode(s, vocab), vocab) == s
    assert text.decode(text.encode("caf\u00e9\tx", vocab), vocab) == "caf??x"  # out of vocab -> UNKNOWN

    # Test sequences are real text from the held-out files only.
    files = text.source_files()
    held_out = "".join(text.normalize(p.read_text("utf-8", "replace")) for i, p in enumerate(files) if i % 10 == 5)
    seqs = np.stack(_columns(tiny["text"]["test"])["tokens"])
    assert seqs.shape[1] == 128
    assert text.decode(seqs[3], vocab) in held_out
