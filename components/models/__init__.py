"""Every model family by name, and the one way to construct a model.

`FAMILIES` is a plain dict from the config's `family:` to its builder. A builder takes
keyword-only, type-annotated arguments (the pipeline validates the YAML `model:` section against
its signature) plus `data`, the dataset's description (components.data.DatasetInfo), which the
pipeline supplies. Arguments annotated ModelRef name other trained models (frozen parts).
"""
from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Any

from safetensors.torch import load as load_safetensors
from torch import nn

from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.models import cyclegan, dcgan, diffusion, gpt, pix2pix, pixelcnn, stylegan2, vae, wavenet
from genray.components.models import rbm
from genray.components.models import glow, realnvp
from genray.components.models import vqvae
from genray.components.models import maskgit
from genray.components.models import consistency
from genray.components.models import clip
from genray.components.models import unclip
from genray.components.models.refs import ModelRef, ref_arguments
from genray.components.models.retrieval import IndexRef, index_arguments

FAMILIES = {
    "vae": vae.build_vae,
    "beta_vae": vae.build_beta_vae,
    "dcgan": dcgan.build_dcgan,
    "pix2pix": pix2pix.build_pix2pix,
    "cyclegan": cyclegan.build_cyclegan,
    "stylegan2": stylegan2.build_stylegan2,
    "diffusion": diffusion.build_diffusion,
    "gpt": gpt.build_gpt,
    "pixelcnn": pixelcnn.build_pixelcnn,
    "wavenet": wavenet.build_wavenet,
    "rbm": rbm.build_rbm,
    "realnvp": realnvp.build_realnvp,
    "glow": glow.build_glow,
    "vqvae": vqvae.build_vqvae,
    "maskgit": maskgit.build_maskgit,
    "consistency": consistency.build_consistency,
    "clip": clip.build_clip,
    "unclip": unclip.build_unclip,
}

# Families that read every row's caption whatever their conditioning: CLIP trains on pairs, and
# unCLIP's prior on (caption, image embedding) pairs.
READS_CAPTIONS = frozenset({"clip", "unclip"})

# The data kind each family trains on, when it is not images: what `genray families` and the
# tests build an example of each family on (example_data).
FAMILY_KINDS = {"gpt": "tokens", "maskgit": "tokens", "wavenet": "audio", "pix2pix": "paired_image",
                "cyclegan": "two_domain_image"}


def example_data(family: str) -> DatasetInfo:
    """A small description of the data `family` trains on: 8x8 grey images (or pairs of them, or
    two domains of them), 16-token rows over printable ASCII and newline, or 256-sample clips at 8 kHz;
    images with captions for a family that reads them."""
    if FAMILY_KINDS.get(family) == "paired_image":
        return DatasetInfo("paired_image", (8, 8, 1), 0, 0, None, ("image", "image_paired"))
    if FAMILY_KINDS.get(family) == "two_domain_image":
        return DatasetInfo("two_domain_image", (8, 8, 1), 0, 0, None, ("image", "domain"))
    if FAMILY_KINDS.get(family) == "audio":
        return DatasetInfo("audio", (256,), 0, 0, None, ("waveform", "sample_rate"), sample_rate=8000)
    if FAMILY_KINDS.get(family) == "tokens":
        vocab = tuple(chr(c) for c in range(32, 127)) + ("\n",)
        return DatasetInfo("tokens", (16,), 0, 0, vocab, ("tokens",))
    images = DatasetInfo.for_images((1, 8, 8))
    return replace(images, columns=images.columns + ("caption",)) if family in READS_CAPTIONS else images


# Families that cannot be built without other trained models (ModelRef arguments they need):
# untrained stand-ins for those parts, for an example of the family (example_args).
EXAMPLE_REFS = {"unclip": unclip.example_refs}


def example_args(family: str) -> dict[str, Any]:
    """Builder arguments of a tiny example of `family` on example_data(family): what `genray
    families` and the tests build. The size, and for a family in EXAMPLE_REFS, its parts untrained."""
    refs = EXAMPLE_REFS.get(family)
    return {"size": "tiny", **(refs(example_data(family)) if refs is not None else {})}


def caption_length(family: str, args: dict[str, Any]) -> int:
    """Bytes of each row's caption a model of `family` with builder `args` reads (what the data
    pipeline decodes the caption column to), or 0 when it reads none: its text_len, given or the
    builder's default, for a family in READS_CAPTIONS or a text-conditioned model."""
    if family not in READS_CAPTIONS and args.get("conditioning") != "text":
        return 0
    if args.get("text_len") is not None:
        return int(args["text_len"])
    default = inspect.signature(FAMILIES[family]).parameters.get("text_len")
    if default is None or default.default is inspect.Parameter.empty:
        raise ValueError(f"{family} reads captions, so its builder needs a defaulted text_len argument")
    return int(default.default)


def build(family: str, args: dict[str, Any], data: DatasetInfo) -> nn.Module:
    """family's builder on `args` and `data`, its model references made into frozen modules first."""
    builder = FAMILIES[family]
    args = dict(args)
    for name in ref_arguments(builder):
        if args.get(name) is not None:
            args[name] = materialize(ModelRef.parse(args[name]))
    for name in index_arguments(builder):  # retrieval indexes: resolved like references (retrieval.py)
        if args.get(name) is not None:
            args[name] = IndexRef.parse(args[name])
    return builder(**args, data=data)


def materialize(ref: ModelRef) -> ModelRef:
    """The reference with its frozen module: the architecture from the resolved family, arguments
    and data, and the weights when they came along (a fresh run; a checkpoint has them inside)."""
    if ref.family is None:
        raise UserError(f"{ref.ref}: this model reference was not resolved to a trained model; "
                        "genray train resolves model references before building")
    module = build(ref.family, ref.args or {}, DatasetInfo.from_json(ref.data or {}))
    if ref.weights is not None:
        module.load_state_dict(load_safetensors(ref.weights))
    return replace(ref, module=module.eval().requires_grad_(False), weights=None)
