"""Retrieval-augmented diffusion (RDM, Blattmann et al. 2022): exact nearest neighbours against
a brute-force search, the index's files, the encoder digest, and a tiny retrieval-conditioned
diffusion model: its training condition excludes each image's own row, pseudo-queries and swapped
indexes, guidance 0 as the model without retrieval, refusals, and the checkpoint round trip."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.models import build, materialize
from genray.components.models.diffusion import build_diffusion
from genray.components.models.refs import ModelRef, as_json
from genray.components.models.retrieval import (Index, IndexRef, RetrievalCondition, encoder_digest, load_index,
                                                nearest, save_index, unit)

SHAPE = (1, 8, 8)
CAPTIONED = DatasetInfo("image", (8, 8, 1), 64, 10, None, ("image", "label", "caption"))
FAST = {"num_timesteps": 20, "num_inference_steps": 3, "vlb_timesteps": 2}


def random_unit(n, d, seed=0):
    return unit(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("chunk", [7, 1000])
def test_nearest_is_the_brute_force_top_k(chunk):
    emb, q = random_unit(50, 6), random_unit(9, 6, seed=1)
    sims, ids = nearest(q, emb, 4, chunk=chunk)
    want = np.argsort(-(q @ emb.T).numpy(), axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(ids.numpy(), want)
    np.testing.assert_allclose(sims.numpy(), np.take_along_axis((q @ emb.T).numpy(), want, 1), rtol=1e-6)


def test_exclude_self_drops_the_query_row_and_keeps_the_order():
    emb = random_unit(30, 5)
    _, ids = nearest(emb[:6], emb, 3, exclude_self=True, chunk=8)
    _, with_self = nearest(emb[:6], emb, 4)
    assert (with_self[:, 0] == torch.arange(6)).all()  # its own row is nearest ...
    assert torch.equal(ids, with_self[:, 1:])  # ... and excluded, the rest in order
    with pytest.raises(ValueError, match="k=30 neighbours besides the query from 30 rows"):
        nearest(emb[:1], emb, 30, exclude_self=True)


def test_the_index_files_round_trip_and_a_folder_that_is_not_one_is_refused(tmp_path):
    index = Index(random_unit(12, 4), torch.arange(12) % 3, {"encoder": "abc", "split": "train"})
    save_index(tmp_path / "idx", index)
    back = load_index(tmp_path / "idx")
    assert torch.equal(back.embeddings, index.embeddings) and torch.equal(back.labels, index.labels)
    assert back.meta["rows"] == 12 and back.meta["dim"] == 4 and back.encoder == "abc" and back.classes() == [0, 1, 2]
    with pytest.raises(UserError, match="index: .* is not a retrieval index"):
        load_index(tmp_path)


def test_the_encoder_digest_names_the_weights():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert encoder_digest(a) == encoder_digest(b)
    with torch.no_grad():
        b.bias[0] += 1e-6
    assert encoder_digest(a) != encoder_digest(b)


def test_the_condition_is_one_token_per_neighbour_and_the_null_drops_them():
    cond = RetrievalCondition(embed_dim=4, context_dim=6, emb_dim=5, k=3)
    nb = random_unit(6, 4).view(2, 3, 4)
    out = cond(nb, 2, "cpu", keep=torch.tensor([True, False]))
    torch.testing.assert_close(out["context"][0], cond.to_token(nb[0]))
    torch.testing.assert_close(out["cond_emb"][0], cond.to_emb(nb[0].mean(0)))
    assert out["context_mask"].tolist() == [[True] * 3, [False] * 3] and out["cond_emb"][1].abs().sum() == 0
    null = cond(None, 2, "cpu")
    assert not null["context_mask"].any() and null["context"].abs().sum() == 0


# ----------------------------------------------------------------------------- the model


def clip_ref(seed=0) -> ModelRef:
    torch.manual_seed(seed)
    return materialize(ModelRef("models:/clip@champion", "clip", {"size": "tiny", "text_len": 8},
                                CAPTIONED.to_json()))


def index_of(ref: ModelRef, n=24, seed=0, labels=None) -> Index:
    x = torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    with torch.no_grad():
        emb = ref.module.embed_images(x)
    labels = torch.arange(n) % 10 if labels is None else labels
    return Index(emb, labels, {"encoder": encoder_digest(ref.module), "clip": ref.ref})


def rdm(ref=None, index=None, seed=0, **kw):
    ref = ref or clip_ref()
    index = index or index_of(ref)
    torch.manual_seed(seed)
    model = build_diffusion(data=DatasetInfo.for_images(SHAPE, 10), size="tiny", conditioning="retrieval",
                            image_encoder=ref, retrieval_index=IndexRef.of("idx", index), retrieval_k=3, **FAST, **kw)
    with torch.no_grad():  # as if trained: the UNet's zero-initialised output layers would hide the condition
        for p in list(model.net.parameters()) + list(model.retrieval.parameters()):
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return model, ref, index


def test_a_retrieval_model_declares_it_and_keeps_its_index_as_buffers():
    model, ref, index = rdm()
    assert "retrieval" in model.capabilities and model.conditioning == "none" and "variations" not in model.capabilities
    assert torch.equal(model.index_embeddings, index.embeddings) and torch.equal(model.index_labels, index.labels)
    assert "guidance_scale" in model.sampling_settings.model_fields


def test_training_conditions_on_each_images_neighbours_but_never_itself(monkeypatch):
    model, ref, index = rdm(p_uncond=0.0)
    x = torch.rand(24, *SHAPE, generator=torch.Generator().manual_seed(0)) * 2 - 1  # the indexed images
    seen = {}
    real = model.retrieval.forward

    def spy(neighbours, n, device, keep=None):
        seen["neighbours"] = neighbours
        return real(neighbours, n, device, keep)

    monkeypatch.setattr(model.retrieval, "forward", spy)
    loss, _ = model({"x": x[:8]})
    assert torch.isfinite(loss)
    nb = seen["neighbours"]  # (8, 3, D)
    own = index.embeddings[:8]
    assert nb.shape == (8, 3, index.dim)
    assert ((nb * own[:, None]).sum(-1) < 1 - 1e-4).all()  # no image sees itself
    _, want = nearest(own, index.embeddings, 3, exclude_self=True)
    torch.testing.assert_close(nb, index.embeddings[want])


def test_samples_follow_the_query_rows_and_the_swapped_index():
    model, ref, index = rdm()
    rows = torch.tensor([0, 5, 9, 3])
    a = model.sample(4, generator=torch.Generator().manual_seed(1), query_rows=rows, guidance_scale=3.0)
    b = model.sample(4, generator=torch.Generator().manual_seed(1), query_rows=rows, guidance_scale=3.0)
    assert torch.equal(a, b) and a.shape == (4, *SHAPE) and a.abs().max() <= 1
    other = index_of(ref, n=16, seed=7)  # same CLIP, other images: another index
    c = model.sample(4, generator=torch.Generator().manual_seed(1), query_rows=rows, index=other, guidance_scale=3.0)
    assert not torch.equal(a, c)
    # Given neighbours are the same as retrieving them.
    nb = model.retrieve(index.embeddings[rows])
    d = model.sample(4, generator=torch.Generator().manual_seed(1), neighbours=nb, guidance_scale=3.0)
    torch.testing.assert_close(a, d, atol=1e-3, rtol=0)  # given neighbours are renormalised: float noise
    # Guidance 0 is the model without retrieval: the index no longer matters.
    e = model.sample(4, generator=torch.Generator().manual_seed(1), query_rows=rows, guidance_scale=0.0)
    f = model.sample(4, generator=torch.Generator().manual_seed(1), query_rows=rows, index=other, guidance_scale=0.0)
    torch.testing.assert_close(e, f)


def test_an_index_of_another_clip_or_shape_is_refused():
    model, ref, index = rdm()
    foreign = index_of(clip_ref(seed=5))
    with pytest.raises(UserError, match="index: this index was built with another embedding model"):
        model.sample(2, index=foreign)
    with pytest.raises(UserError, match="index: embeddings of 7 numbers, but this model retrieves with a CLIP of"):
        model.sample(2, index=Index(random_unit(10, 7), torch.zeros(10, dtype=torch.long), {}))
    with pytest.raises(UserError, match=r"query_rows: \(2,\) row ids of the index in \[0, 24\)"):
        model.sample(2, query_rows=torch.tensor([0, 24]))
    with pytest.raises(UserError, match=r"neighbours: \(2, 3, 64\) finite CLIP image embeddings"):
        model.sample(2, neighbours=torch.zeros(2, 2, 64))
    with pytest.raises(UserError, match="model.retrieval_index idx: this index was built with another embedding"):
        rdm(index=foreign)
    plain = build_diffusion(data=DatasetInfo.for_images(SHAPE, 10), size="tiny", **FAST)
    with pytest.raises(UserError, match="this diffusion model does not retrieve"):
        plain.sample(2, query_rows=torch.tensor([0, 1]))
    with pytest.raises(UserError, match="conditioning 'retrieval' and model.retrieval_index come together"):
        build_diffusion(data=DatasetInfo.for_images(SHAPE, 10), size="tiny", conditioning="retrieval",
                        image_encoder=clip_ref(), **FAST)


def test_a_checkpoint_rebuilds_without_the_index_folder():
    from genray.components.checkpoint import model_state

    model, ref, index = rdm()
    args = {"size": "tiny", "conditioning": "retrieval", "image_encoder": ref,
            "retrieval_index": IndexRef.of("idx", index), "retrieval_k": 3, **FAST}
    state = model_state("diffusion", args, DatasetInfo.for_images(SHAPE, 10))
    stored = state["args"]["retrieval_index"]
    assert stored["rows"] == 24 and stored["dim"] == index.dim and "embeddings" not in stored
    again = build(state["family"], state["args"], DatasetInfo.from_json(state["data"]))
    assert again.index_embeddings.abs().sum() == 0  # placeholders until the weights load
    again.load_state_dict(model.state_dict())
    rows = torch.tensor([1, 2])
    torch.testing.assert_close(again.sample(2, generator=torch.Generator().manual_seed(0), query_rows=rows),
                               model.eval().sample(2, generator=torch.Generator().manual_seed(0), query_rows=rows))
    assert again.encoder_digest() == index.encoder


def test_pseudo_queries_come_from_the_generator():
    model, _, index = rdm()
    a = model.pseudo_queries(50, torch.Generator().manual_seed(3))
    assert torch.equal(a, model.pseudo_queries(50, torch.Generator().manual_seed(3)))
    assert 0 <= int(a.min()) and int(a.max()) < index.rows and len(set(a.tolist())) > 10
    assert replace(IndexRef.of("idx", index), index=None).resolved
    assert as_json({"r": IndexRef.of("idx", index)})["r"]["encoder"] == index.encoder


def test_a_seeds_first_samples_do_not_depend_on_n():
    """Pseudo-queries come from a stream of their own: the noise stays every model's noise."""
    model, _, _ = rdm()
    two = model.sample(2, generator=torch.Generator().manual_seed(5))
    three = model.sample(3, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(two, three[:2])
    gen = torch.Generator().manual_seed(5)
    model.pseudo_queries(4, gen)
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(5).get_state())
