"""The byte-level text encoder: tokenising, shapes, the padding mask, the null (all-padding)
caption, and batch-permutation equivariance."""
import pytest
import torch

from genray.components.models.text_encoder import PAD, TextEncoder, encode_text


def encoder(seed=0, **kw):
    torch.manual_seed(seed)
    return TextEncoder(**{**dict(dim=32, depth=2, heads=4, max_len=16), **kw})


def test_encode_text_round_trips_pads_and_truncates():
    tokens = encode_text(["hi", "", "héllo wörld, long text"], max_len=8)
    assert tokens.shape == (3, 8) and tokens.dtype == torch.int64
    assert tokens[0].tolist() == [ord("h") + 1, ord("i") + 1] + [PAD] * 6
    assert tokens[1].tolist() == [PAD] * 8
    assert bytes((tokens[2] - 1).tolist()) == "héllo wörld".encode()[:8]  # truncated to 8 bytes
    text = "naïve café ☕"
    ids = encode_text([text], max_len=64)[0]
    assert bytes((ids[ids != PAD] - 1).tolist()).decode() == text
    with pytest.raises(ValueError, match="max_len must be >= 1"):
        encode_text(["a"], 0)


@torch.no_grad()
def test_shapes_mask_and_zero_padding():
    model = encoder().eval()
    tokens = encode_text(["a cat", "a dog on a mat", ""], max_len=12)
    emb, mask = model(tokens)
    assert emb.shape == (3, 12, 32) and mask.shape == (3, 12) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [5, 12, 0]
    assert torch.equal(mask, tokens != PAD)
    assert torch.equal(emb[~mask], torch.zeros_like(emb[~mask]))
    assert emb[mask].abs().sum(-1).gt(0).all()
    assert emb.isfinite().all()
    # Shorter sequences than max_len are fine.
    assert model(tokens[:, :6])[0].shape == (3, 6, 32)


@pytest.mark.parametrize("train", [False, True], ids=["eval_fast_path", "train"])
def test_all_padding_row_is_finite_and_masked(train):
    model = encoder().train(train)
    tokens = torch.zeros(2, 16, dtype=torch.long)
    tokens[1, :3] = torch.tensor([5, 6, 7])
    with torch.set_grad_enabled(train):
        emb, mask = model(tokens)
    assert emb.isfinite().all()
    assert not mask[0].any() and torch.equal(emb[0], torch.zeros(16, 32))
    # The null row does not disturb the real one.
    torch.testing.assert_close(emb[1], model(tokens[1:])[0][0])
    if train:
        emb.sum().backward()
        assert all(p.grad is None or p.grad.isfinite().all() for p in model.parameters())


@torch.no_grad()
def test_permuting_the_batch_permutes_the_outputs():
    model = encoder().eval()
    tokens = encode_text(["red", "a blue square", "", "green circle"], max_len=16)
    perm = torch.tensor([2, 0, 3, 1])
    emb, mask = model(tokens)
    emb_p, mask_p = model(tokens[perm])
    torch.testing.assert_close(emb_p, emb[perm], rtol=1e-5, atol=1e-5)
    assert torch.equal(mask_p, mask[perm])


def test_bad_tokens_raise_naming_the_limit():
    model = encoder()
    with pytest.raises(ValueError, match="exceeds max_len=16"):
        model(torch.ones(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 257\)"):
        model(torch.tensor([[1, 257]]))
    with pytest.raises(ValueError, match=r"\[0, 257\)"):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match="integer"):
        model(torch.ones(1, 4))
    with pytest.raises(ValueError, match="divisible by heads"):
        TextEncoder(dim=30, depth=1, heads=4, max_len=8)
