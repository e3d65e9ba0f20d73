"""Every model family by name: a plain dict from the config's `family:` to its builder.

A builder takes keyword-only, type-annotated arguments (the pipeline validates the YAML `model:`
section against its signature); `image_shape` and `num_classes` come from the data.
"""
from components.models import dcgan, diffusion, vae

FAMILIES = {
    "vae": vae.build_vae,
    "beta_vae": vae.build_beta_vae,
    "dcgan": dcgan.build_dcgan,
    "diffusion": diffusion.build_diffusion,
}
