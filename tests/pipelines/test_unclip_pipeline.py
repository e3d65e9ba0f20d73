"""unCLIP through the real pipeline, in Ray Train's local mode: a tiny CLIP on captioned digits
("a handwritten 3"), a tiny decoder naming it by runs:/, and a tiny unclip naming both (the
decoder's own CLIP a reference inside a reference). The registered unclip samples from a prompt
through the MLflow pyfunc, makes variations, and carries the CLIP unchanged."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from genray.pipelines import config, train

pytestmark = pytest.mark.integration


def tiny(model: dict, steps: int = 3) -> config.ExperimentSpec:
    return config.validate({
        "data": {"dataset": "digits", "size": "tiny"},
        "model": {"size": "tiny", **model},
        "trainer": {"max_steps": steps, "batch_size": 16, "checkpoint_every": steps, "eval_every": steps,
                    "log_every": 1, "eval_batches": 1, "num_samples": 4, "quality_samples": 0},
        "scaling": {"workers": 0},
        "tracking": {"experiment": "test"},
    }, "<test>")


def test_unclip_trains_on_a_trained_clip_and_decoder_and_registers_one_model(ray_session, genray_home):
    import mlflow.pyfunc

    from genray.components.checkpoint import build_model

    clip = train.run(tiny({"family": "clip", "text_len": 20}), name="u-clip", home=genray_home)
    decoder = train.run(tiny({"family": "diffusion", "conditioning": "image_embedding",
                              "image_encoder": f"runs:/{clip.run_id}", "num_timesteps": 20,
                              "num_inference_steps": 2, "vlb_timesteps": 2, "eval_guidance_scales": [0.0, 2.0]}),
                        name="u-decoder", home=genray_home)
    out = train.run(tiny({"family": "unclip", "clip": f"runs:/{clip.run_id}", "decoder": f"runs:/{decoder.run_id}",
                          "text_len": 20, "num_timesteps": 20, "prior_steps": 2}, steps=4),
                    name="u-unclip", home=genray_home)
    assert out.metrics["step"] == 4 and out.model_name == "unclip-digits"
    assert {"eval/loss", "eval/cosine", "eval/sample_cosine"} <= set(out.metrics)

    # The checkpoint stores both references resolved (no weights), the decoder's with its own CLIP
    # nested in its arguments, and rebuilds without the registry.
    model, state = build_model(out.checkpoint)
    args = state["model"]["args"]
    assert args["clip"]["ref"] == f"runs:/{clip.run_id}" and args["clip"]["family"] == "clip"
    assert args["decoder"]["family"] == "diffusion" and "weights" not in args["decoder"]
    assert args["decoder"]["args"]["image_encoder"]["ref"] == f"runs:/{clip.run_id}"
    # The CLIP is carried unchanged, in both places; so is the decoder.
    clip_model, _ = build_model(clip.checkpoint)
    for k, v in clip_model.state_dict().items():
        assert torch.equal(model.clip.state_dict()[k], v), k
        assert torch.equal(model.decoder.image_encoder.clip.state_dict()[k], v), k
    decoder_model, _ = build_model(decoder.checkpoint)
    for k, v in decoder_model.state_dict().items():
        assert torch.equal(model.decoder.state_dict()[k], v), k

    # The registered model: one model, sampled from a prompt by the pyfunc (settings as params).
    mlflow.set_registry_uri(f"sqlite:///{genray_home / 'mlflow.db'}")
    pyfunc = mlflow.pyfunc.load_model(out.model_uri)
    x = pyfunc.predict({"n": 2, "seed": 1, "prompt": "a handwritten 3"})
    assert x.shape == (2, 1, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(x, pyfunc.predict({"n": 2, "seed": 1, "prompt": "a handwritten 3"}))
    x2 = pyfunc.predict({"n": 2, "seed": 1, "prompt": "a handwritten 3"}, params={"prior_steps": 1, "decoder_steps": 1})
    assert x2.shape == x.shape and not np.array_equal(x, x2)
    with pytest.raises(Exception, match="prompt"):
        pyfunc.predict({"n": 1, "seed": 1, "prompt": "a handwritten digit, drawn small"})  # 31 bytes > 20

    # Variations of real digits: from their own CLIP embeddings, through the decoder alone.
    model.eval()
    digits = torch.rand(3, 1, 8, 8) * 2 - 1
    v = model.variations(digits, 2, generator=torch.Generator().manual_seed(0))
    assert v.shape == (6, 1, 8, 8) and v.min() >= -1 and v.max() <= 1
    assert torch.equal(v, model.variations(digits, 2, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(model.decoder.variations(digits, 2, generator=torch.Generator().manual_seed(0),
                                                num_inference_steps=model.sampling_settings().decoder_steps,
                                                guidance_scale=model.sampling_settings().guidance_scale), v)
    # ... and through the pyfunc: x (flat values) and n per image.
    by_pyfunc = pyfunc.predict({"n": 2, "seed": 0, "x": digits.flatten().tolist()})
    np.testing.assert_allclose(by_pyfunc, v.numpy(), atol=1e-5)
    with pytest.raises(Exception, match="x: 5 values are not whole 1x8x8 images"):
        pyfunc.predict({"n": 1, "x": [0.0] * 5})
