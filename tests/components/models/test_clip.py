"""CLIP (components/models/clip.py): the paper's symmetric contrastive loss, the global batch's
negatives across workers (a real 2-process gloo group: the gradients equal one process's on the
whole batch), zero-shot classification, and what a caller may pass."""
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.models import build, caption_length
from genray.components.models.clip import MAX_LOGIT_SCALE, contrastive_loss
from genray.components.models.text_encoder import encode_text

FASHION = DatasetInfo("image", (32, 32, 1), 100, 10, None, ("image", "label", "caption"))
TINY = DatasetInfo("image", (8, 8, 1), 100, 10, None, ("image", "label", "caption"))


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_loss_is_the_papers_symmetric_cross_entropy():
    """Radford et al. 2021, Figure 3, written out with explicit sums over a 4 x 4 batch."""
    image, text, scale = unit(4, 8, seed=1), unit(4, 8, seed=2), torch.tensor(10.0)
    loss, logits = contrastive_loss(image, text, scale)
    s = scale * image @ text.T
    rows = [-(s[i, i] - torch.logsumexp(s[i], 0)) for i in range(4)]  # image i against every caption
    cols = [-(s[i, i] - torch.logsumexp(s[:, i], 0)) for i in range(4)]  # caption i against every image
    assert torch.allclose(loss, (sum(rows) / 4 + sum(cols) / 4) / 2, atol=1e-6)
    assert torch.allclose(logits, s)


def test_matched_pairs_give_a_low_loss_and_shuffled_pairs_a_high_one():
    z = unit(16, 32, seed=3)
    matched, _ = contrastive_loss(z, z, torch.tensor(MAX_LOGIT_SCALE))
    shuffled, _ = contrastive_loss(z, z[torch.randperm(16, generator=torch.Generator().manual_seed(0))],
                                   torch.tensor(MAX_LOGIT_SCALE))
    assert matched < 0.01 and shuffled > math.log(16) / 2


def _worker(rank: int, port: int, image: torch.Tensor, text: torch.Tensor, out: dict):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        rows = slice(rank * 4, rank * 4 + 4)
        img = image[rows].clone().requires_grad_(True)
        txt = text[rows].clone().requires_grad_(True)
        loss, logits = contrastive_loss(img, txt, torch.tensor(5.0))
        loss.backward()
        # This worker's rows got the gradient of both workers' losses (the gather's backward);
        # DDP's average over the 2 workers divides it by 2.
        out[rank] = (loss.detach(), tuple(logits.shape), torch.cat([img.grad, txt.grad]) / 2, rows)
    finally:
        dist.destroy_process_group()


def test_two_workers_contrast_against_the_global_batch_and_match_one_process():
    """Each worker holds 4 of the 8 pairs; with the gather, its rows are scored against all 8
    captions, the workers' mean loss is the 8-pair loss, and the averaged gradient each worker's
    rows get is the 8-pair loss's gradient (so data parallelism changes nothing but speed)."""
    image, text = unit(8, 16, seed=4), unit(8, 16, seed=5)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(port, image, text, out), nprocs=2, join=True)

    img, txt = image.clone().requires_grad_(True), text.clone().requires_grad_(True)
    full, _ = contrastive_loss(img, txt, torch.tensor(5.0))
    full.backward()
    assert all(out[r][1] == (4, 8) for r in (0, 1))  # 4 rows against the global batch's 8 captions
    assert torch.allclose((out[0][0] + out[1][0]) / 2, full.detach(), atol=1e-6)
    for r in (0, 1):
        _, _, grads, rows = out[r]
        assert torch.allclose(grads[:4], img.grad[rows], atol=1e-6)
        assert torch.allclose(grads[4:], txt.grad[rows], atol=1e-6)


def test_training_steps_align_images_with_their_captions():
    """Two classes of images (dark and bright) with two captions: a few AdamW steps from a fixed
    seed make zero-shot classification right on held-out images of both."""
    torch.manual_seed(0)
    model = build("clip", {"size": "tiny", "text_len": 16}, TINY)
    gen = torch.Generator().manual_seed(0)

    def batch(n):
        y = torch.arange(n) % 2
        x = (y[:, None, None, None] * 1.2 - 0.6) + 0.2 * torch.randn(n, 1, 8, 8, generator=gen)
        return {"x": x.clamp(-1, 1), "text": encode_text(["a dark square" if k == 0 else "a bright square"
                                                          for k in y.tolist()], 16)}, y

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(30):
        b, _ = batch(16)
        loss, _ = model(b, "main")
        opt.zero_grad()
        loss.backward()
        opt.step()
    b, y = batch(32)
    scores = model.classify(b["x"], [["a dark square"], ["a bright square"]])
    assert (scores.argmax(1) == y).float().mean() == 1.0
    assert model.evaluate(b)["i2t_top1"] == 1.0


def test_embeddings_are_unit_norm_and_the_temperature_is_clipped():
    model = build("clip", {"size": "tiny", "text_len": 16}, TINY)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    assert torch.allclose(model.embed_images(x).norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(model.embed_text(["a", "b c", ""]).norm(dim=-1), torch.ones(3), atol=1e-5)
    assert math.isclose(float(model.logit_scale().detach()), 1 / 0.07, rel_tol=1e-5)  # §2.5's initial temperature
    with torch.no_grad():
        model.log_logit_scale.fill_(10.0)
    assert float(model.logit_scale().detach()) == MAX_LOGIT_SCALE


def test_the_temperature_can_be_fixed():
    model = build("clip", {"size": "tiny", "learn_temperature": False}, TINY)
    assert not model.log_logit_scale.requires_grad


def test_bad_input_is_named():
    model = build("clip", {"size": "tiny", "text_len": 8}, TINY)
    with pytest.raises(UserError, match=r"texts\[1\]: 12 bytes; this model reads at most 8"):
        model.embed_text(["short", "far too long"])
    with pytest.raises(UserError, match=r"shape \(B, 1, 8, 8\)"):
        model.embed_images(torch.zeros(2, 3, 8, 8))
    with pytest.raises(UserError, match="at least one prompt for every class"):
        model.classify(torch.zeros(1, 1, 8, 8), [["a"], []])
    with pytest.raises(UserError, match="draws no samples"):
        model.sample(1)


def test_data_without_captions_is_refused():
    with pytest.raises(UserError, match="no caption column"):
        build("clip", {}, DatasetInfo("image", (8, 8, 1), 10, 10, None, ("image", "label")))
    with pytest.raises(UserError, match="not tokens data"):
        build("clip", {}, DatasetInfo("tokens", (16,), 10, 0, ("a", "b"), ("tokens",)))


def test_the_pipeline_decodes_captions_for_clip_and_text_conditioned_models():
    assert caption_length("clip", {}) == 48  # the builder's default
    assert caption_length("clip", {"text_len": 20}) == 20
    assert caption_length("diffusion", {"conditioning": "text"}) == 64
    assert caption_length("diffusion", {"conditioning": "class"}) == 0
    assert caption_length("vae", {}) == 0


def test_a_diffusion_model_conditions_on_a_frozen_clip_text_tower():
    """Stable-Diffusion style: model.text_encoder names a trained CLIP; the denoiser's context is
    that CLIP's text tower's per-token outputs, its weights get no gradient and do not move in
    training, and captions longer than the CLIP reads are cut to its text_len."""
    from genray.components.models.refs import ModelRef

    clip = build("clip", {"size": "tiny", "text_len": 8}, TINY)
    ref = ModelRef("models:/clip/1", "clip", {"size": "tiny", "text_len": 8}, TINY.to_json())
    data = DatasetInfo("image", (8, 8, 1), 100, 0, None, ("image", "caption"))
    args = {"size": "tiny", "conditioning": "text", "text_len": 16, "num_timesteps": 20, "num_inference_steps": 2,
            "text_encoder": ref}
    from dataclasses import replace

    from genray.components.models import FAMILIES

    model = FAMILIES["diffusion"](**{**args, "text_encoder": replace(ref, module=clip)}, data=data)
    tokens = encode_text(["a dark square, on the left", "x"], 16)
    context, mask = model.text_encoder(tokens)
    want, want_mask = clip.text_tower.encode(tokens[:, :8])
    assert torch.equal(context, want) and torch.equal(mask, want_mask) and context.shape[1] == 8
    frozen = {k: v.clone() for k, v in model.text_encoder.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = {"x": torch.rand(4, 1, 8, 8) * 2 - 1, "text": encode_text(["a", "b", "c", "d"], 16)}
    loss, _ = model(batch, "main")
    loss.backward()
    opt.step()
    assert all(p.grad is None for p in model.text_encoder.parameters())
    assert all(torch.equal(v, model.text_encoder.state_dict()[k]) for k, v in frozen.items())
    with pytest.raises(UserError, match="needs model.conditioning: text"):
        FAMILIES["diffusion"](**{**args, "conditioning": "none", "text_encoder": replace(ref, module=clip)}, data=data)
    with pytest.raises(UserError, match="must be a genray clip"):
        FAMILIES["diffusion"](**{**args, "text_encoder": replace(ref, family="vae", module=clip)}, data=data)
