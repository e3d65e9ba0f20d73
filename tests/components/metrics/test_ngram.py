"""Unigram and bigram baselines: hand-counted probabilities, and what they must do on data."""
import math

import numpy as np
import pytest

from genray.components.metrics.ngram import bigram_log_probs, ngram_baselines, unigram_log_probs


def test_unigram_and_bigram_against_hand_counts():
    train = np.array([[0, 1, 1], [1, 0, 2]])  # counts 0:2 1:3 2:1 (N=6); pairs 01 11 10 02
    test = np.array([[1, 0]])
    a, v = 0.5, 3
    uni = np.exp(unigram_log_probs(train, v, a))
    assert np.allclose(uni, [(2 + a) / (6 + a * v), (3 + a) / (6 + a * v), (1 + a) / (6 + a * v)])
    bi = np.exp(bigram_log_probs(train, v, a))
    assert np.allclose(bi.sum(axis=1), 1.0)
    assert math.isclose(bi[0, 1], (1 + a) / (2 + a * v)) and math.isclose(bi[1, 0], (1 + a) / (2 + a * v))
    assert math.isclose(bi[2, 0], a / (0 + a * v))  # a context never seen: uniform
    s = ngram_baselines(train, test, v, a)
    assert s.tokens == 2
    assert math.isclose(s.unigram_bits, -(math.log2(uni[1]) + math.log2(uni[0])) / 2)
    # The bigram scores a row's first token with the unigram, then each token given the one before.
    assert math.isclose(s.bigram_bits, -(math.log2(uni[1]) + math.log2(bi[1, 0])) / 2)


def test_a_mask_scores_only_the_positions_it_marks():
    train = np.array([[0, 1, 1], [1, 0, 2]])
    test = np.array([[1, 0, 2], [2, 2, 1]])
    uni, bi = unigram_log_probs(train, 3), bigram_log_probs(train, 3)
    mask = np.array([[False, True, True], [True, False, False]])
    s = ngram_baselines(train, test, 3, mask=mask)
    assert s.tokens == 3
    # Masked-out tokens still serve as the context of the next one: (1 ->) 0, (0 ->) 2, and 2 first.
    by_hand = -(bi[1, 0] + bi[0, 2] + uni[2]) / 3 / math.log(2)
    assert math.isclose(s.bigram_bits, by_hand)
    assert math.isclose(s.unigram_bits, -(uni[0] + uni[2] + uni[2]) / 3 / math.log(2))
    assert ngram_baselines(train, test, 3, mask=np.ones((2, 3), bool)) == ngram_baselines(train, test, 3)
    with pytest.raises(ValueError, match="shape"):
        ngram_baselines(train, test, 3, mask=np.ones((2, 2), bool))


def test_bigram_beats_unigram_on_text_with_local_structure():
    rng = np.random.default_rng(0)
    # A Markov chain that mostly steps to the next symbol: the unigram is ~uniform, the bigram sharp.
    def chain(n, t=32, v=8):
        x = np.zeros((n, t), dtype=np.int64)
        x[:, 0] = rng.integers(v, size=n)
        for i in range(1, t):
            jump = rng.random(n) < 0.1
            x[:, i] = np.where(jump, rng.integers(v, size=n), (x[:, i - 1] + 1) % v)
        return x
    s = ngram_baselines(chain(400), chain(100), 8)
    assert abs(s.unigram_bits - 3.0) < 0.01  # log2 8 = 3: the symbols are equally frequent
    assert s.bigram_bits < 1.0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        ngram_baselines(np.array([[0, 3]]), np.array([[0, 1]]), 3)
    with pytest.raises(ValueError, match="alpha"):
        ngram_baselines(np.array([[0, 1]]), np.array([[0, 1]]), 3, alpha=0)
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        ngram_baselines(np.array([0, 1]), np.array([[0, 1]]), 3)
