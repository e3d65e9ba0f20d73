"""unCLIP (Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation with CLIP Latents";
DALL-E 2), small, from genray's own parts:

    caption --CLIP text tower--> text embedding --diffusion prior--> CLIP image embedding
            --decoder (a diffusion model conditioned on it)--> image

The two frozen parts are trained genray models, named in the config like every ModelRef:

    clip     a genray `clip`: its frozen text tower gives the prior's condition, the caption's
             unit-norm embedding and its per-token outputs;
    decoder  a genray `diffusion` built with `conditioning: image_embedding` and
             `image_encoder: <a trained clip>` (components/models/diffusion.py, unCLIP §2.1): it
             decodes images from CLIP image embeddings and makes variations of an image.

This family trains only the prior (§2.2, the diffusion prior): a small transformer that denoises
a CLIP image embedding given the caption, predicting the un-noised embedding directly (x0
prediction, MSE), on a cosine schedule. Its targets are the decoder's own image encoder's
embeddings, so the prior always predicts in the space the decoder reads (usually the decoder's
image encoder is the same CLIP as `clip`, and the checkpoint then holds it twice; a different
CLIP only changes what the condition is). Both frozen parts are submodules, so the registered
unclip is one model, rebuilt from its checkpoint alone, whose parts are each registered models.

Sampling: the prompt's text embedding -> the prior's DDIM (prior_steps, classifier-free guidance
prior_guidance_scale, the caption dropped to the empty one for p_uncond of training rows) -> the
embedding renormalised to unit length -> the decoder's DDIM (decoder_steps, guidance_scale).
Random draws, in order: the prior's x_T (n, D), then the decoder's x_T and any noise of its steps.
"""
import math
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, create_model
from torch import Tensor, nn

from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.models.layers import check_image_shape, randn
from genray.components.models.protocol import SETTINGS_CONFIG
from genray.components.models.refs import ModelRef, frozen_module
from genray.components.models.text_encoder import encode_whole
from genray.components.models.unet import timestep_embedding
from genray.components.samplers import ddim, guidance, objective, schedules
from genray.components.training import Backprop

# The prior's four tokens after the caption's: its text embedding, the timestep, the noised
# image embedding, and the learned query whose output is the prediction (Ramesh et al. 2022, §2.2).
NUM_SLOTS = 4


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------


class DiffusionPrior(nn.Module):
    """Ramesh et al. 2022, §2.2: a transformer over [the caption's per-token outputs, its CLIP text
    embedding, the timestep's embedding, the noised image embedding, a learned query]; the
    query's output is the predicted un-noised image embedding (B, embed_dim). The paper's
    decoder-only transformer has a causal mask; with one output token a bidirectional encoder
    does the same job. Pre-LN layers (Xiong et al. 2020), as genray's text encoder; caption
    padding is masked out of attention, the four slots always attend."""

    def __init__(self, *, embed_dim: int, text_embed_dim: int, text_token_dim: int, text_len: int,
                 width: int, depth: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"unclip prior: width must be divisible by heads, got {width=}, {heads=}")
        self.embed_dim, self.width, self.text_len = embed_dim, width, text_len
        self.token_in = nn.Linear(text_token_dim, width)
        self.text_in = nn.Linear(text_embed_dim, width)
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.x_in = nn.Linear(embed_dim, width)
        self.query = nn.Parameter(torch.randn(width) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, text_len + NUM_SLOTS, width) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, embed_dim)

    def forward(self, x_t: Tensor, t: Tensor, *, text_emb: Tensor, text_tokens: Tensor, text_mask: Tensor) -> Tensor:
        """x_t (B, D) noised scaled embeddings, t (B,) long; text_emb (B, D_text), text_tokens
        (B, L, d_tokens), text_mask (B, L) bool, True = a real token -> x0_hat (B, D)."""
        b, L = x_t.shape[0], text_tokens.shape[1]
        if L != self.text_len:
            raise ValueError(f"unclip prior: {L} caption tokens, built for {self.text_len}")
        slots = torch.stack([
            self.text_in(text_emb),  # (B, W)
            self.time_mlp(timestep_embedding(t, self.width)),  # (B, W)
            self.x_in(x_t),  # (B, W)
            self.query.expand(b, self.width),  # (B, W)
        ], dim=1)  # (B, 4, W)
        h = torch.cat([self.token_in(text_tokens), slots], dim=1) + self.pos  # (B, L + 4, W)
        ignore = torch.cat([~text_mask, text_mask.new_zeros(b, NUM_SLOTS)], dim=1)  # (B, L + 4), True = padding
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=ignore)  # (B, L + 4, W)
        return self.out(self.norm(h[:, -1]))  # (B, D): the query's output


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


def sampling_settings_type(prior_timesteps: int, decoder_timesteps: int, defaults: dict[str, Any]) -> type[BaseModel]:
    """The prior's DDIM steps and guidance, then the decoder's; ranges from each one's T."""
    return create_model(
        "UnCLIPSampling", __config__=SETTINGS_CONFIG,
        prior_steps=(int, Field(defaults["prior_steps"], ge=1, le=prior_timesteps,
                                description=f"the prior's DDIM steps (1..{prior_timesteps})")),
        prior_guidance_scale=(float, Field(defaults["prior_guidance_scale"], ge=0, le=100, allow_inf_nan=False,
                                           description="the prior's classifier-free guidance: 0 ignores the prompt, "
                                                       "1 conditional, >1 guided")),
        decoder_steps=(int, Field(defaults["decoder_steps"], ge=1, le=decoder_timesteps,
                                  description=f"the decoder's DDIM steps (1..{decoder_timesteps})")),
        guidance_scale=(float, Field(defaults["guidance_scale"], ge=0, le=100, allow_inf_nan=False,
                                     description="the decoder's classifier-free guidance on the image embedding")),
    )


class UnCLIP(nn.Module):
    capabilities = frozenset({"sample", "condition", "variations"})
    conditioning, num_classes = "text", 0

    def __init__(self, *, prior: DiffusionPrior, clip: nn.Module, decoder: nn.Module, text_len: int,
                 num_timesteps: int = 1000, p_uncond: float = 0.1, prior_steps: int = 25,
                 prior_guidance_scale: float = 1.0, decoder_steps: int = 25, guidance_scale: float = 1.0):
        super().__init__()
        if not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"unclip: p_uncond (caption dropout) must be in [0, 1], got {p_uncond}")
        self.prior = prior
        self.clip = clip.requires_grad_(False).eval()  # frozen: the caption's text tower
        self.decoder = decoder.requires_grad_(False).eval()  # frozen: embeddings -> images
        self.image_shape = tuple(decoder.image_shape)
        self.text_len = text_len  # bytes of a caption the prior reads (at most the CLIP's text_len)
        self.embed_dim = int(decoder.embed_dim)
        self.p_uncond = p_uncond
        # Ramesh et al. 2022, §2.2 (after Nichol & Dhariwal 2021): a cosine schedule.
        self.schedule = schedules.make_schedule("cosine", num_timesteps)
        self.sampling_settings = sampling_settings_type(
            num_timesteps, decoder.schedule.num_timesteps,
            {"prior_steps": min(prior_steps, num_timesteps), "prior_guidance_scale": prior_guidance_scale,
             "decoder_steps": decoder_steps, "guidance_scale": guidance_scale})
        self.recipe = Backprop()

    def train(self, mode: bool = True):
        super().train(mode)
        self.clip.eval()  # frozen, whatever the prior is doing
        self.decoder.eval()
        return self

    def sampling_cost(self, settings: BaseModel) -> int:
        """Network evaluations of one sample call: the prior's steps and the decoder's (a guided
        step batches both branches as one, as diffusion counts it)."""
        return settings.prior_steps + settings.decoder_steps

    # -- the frozen parts ------------------------------------------------------------------------

    @torch.no_grad()
    def image_embeddings(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> the decoder's CLIP image embeddings (B, D), unit norm: what the
        prior learns to predict and the decoder decodes."""
        return self.decoder.image_encoder(x)

    def fit_tokens(self, text: Tensor) -> Tensor:
        """Caption byte tokens (B, L) cut or zero-padded to the prior's text_len."""
        tokens = text[:, : self.text_len].long()
        return F.pad(tokens, (0, self.text_len - tokens.shape[1]))  # (B, text_len)

    @torch.no_grad()
    def text_condition(self, text: Tensor) -> dict[str, Tensor]:
        """The prior's condition from caption tokens (B, L): the frozen CLIP's text embedding
        (scaled by sqrt(D_text), unit variance per dimension like the image embeddings) and its
        per-token outputs with their mask. The empty caption (all padding) is the null condition
        of classifier-free guidance: a zero embedding, no tokens."""
        tokens = self.fit_tokens(text).to(self.clip.log_logit_scale.device)
        h, mask = self.clip.text_tower.encode(tokens)  # (B, L, d), (B, L); zero at padding
        emb = self.clip.embed_text(tokens)  # (B, D_text), unit norm
        real = mask.any(dim=1, keepdim=True)  # (B, 1)
        return {"text_emb": emb * real * math.sqrt(emb.shape[1]), "text_tokens": h.float(), "text_mask": mask}

    # -- the prior's objective -------------------------------------------------------------------

    def prior_loss(self, x0: Tensor, cond: dict[str, Tensor], *, t: Tensor | None = None, noise: Tensor | None = None,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Ramesh et al. 2022, §2.2: || f(z_t, t, y) - z ||^2 with f predicting the un-noised
        (scaled) image embedding z = x0 directly -> (per-example loss (B,), x0_hat (B, D))."""
        seen: dict[str, Tensor] = {}

        def denoise(x_t: Tensor, t: Tensor) -> Tensor:
            seen["x0_hat"] = self.prior(x_t, t, **cond)
            return seen["x0_hat"]

        loss = objective.training_loss(denoise, x0, self.schedule, prediction="x0", t=t, noise=noise,
                                       generator=generator)  # (B,)
        return loss, seen["x0_hat"]

    def forward(self, batch: dict[str, Tensor], phase: str = "main") -> tuple[Tensor, dict[str, Tensor]]:
        if phase != "main":
            raise ValueError(f"unclip has one phase, 'main'; got phase={phase!r}")
        text = self._captions(batch)
        x0 = self.image_embeddings(batch["x"]) * math.sqrt(self.embed_dim)  # (B, D), ~unit variance per dim
        if self.p_uncond > 0:
            # Ho & Salimans 2022, Algorithm 1 (unCLIP §2.2 drops the text conditioning 10% of the time).
            drop = torch.rand(text.shape[0], device=text.device) < self.p_uncond  # (B,)
            text = text.masked_fill(drop[:, None], 0)
        loss, _ = self.prior_loss(x0, self.text_condition(text))
        return loss.mean(), {}

    def _captions(self, batch: dict[str, Tensor]) -> Tensor:
        if "text" not in batch:
            raise ValueError("unclip trains on images with captions: every batch needs 'text', the caption's byte "
                             "tokens (the data's caption column, decoded because the family reads captions)")
        return batch["text"]

    # -- using the trained model ------------------------------------------------------------------

    @torch.no_grad()
    def sample_embeddings(self, text: Tensor, *, generator: torch.Generator | None = None, prior_steps: int,
                          prior_guidance_scale: float) -> Tensor:
        """CLIP image embeddings (n, D), unit norm, for caption tokens (n, L): the prior's
        deterministic DDIM (eta 0, trailing spacing) from x_T ~ N(0, I), guided, renormalised."""
        n, device = text.shape[0], self.prior.query.device
        cond = self.text_condition(text)
        null = self.text_condition(torch.zeros_like(text))
        denoise = guidance.guided_denoiser(self.prior, cond, null, prior_guidance_scale)
        # Embeddings are not bounded by 1 per dimension (they are scaled by sqrt(D)): no clipping.
        z = ddim.ddim_sample(denoise, (n, self.embed_dim), self.schedule, prediction="x0", num_steps=prior_steps,
                             eta=0.0, spacing="trailing", generator=generator, device=device, clip_x0=False)
        return F.normalize(z, dim=1)  # (n, D)

    def prompt_tokens(self, prompt: str | list[str], n: int) -> Tensor:
        """One prompt for all n samples, or one per sample -> byte tokens (n, text_len), refusing a
        prompt longer than the prior reads (cut silently, it would be another prompt)."""
        prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
        if len(prompts) != n:
            raise UserError(f"prompt: give one prompt, or one per sample ({n}); got {len(prompts)}")
        return encode_whole(prompts, self.text_len, field="prompt", noun="prompt")

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, prompt: str | list[str] | None = None,
               text: Tensor | None = None, prior_steps: int | None = None, prior_guidance_scale: float | None = None,
               decoder_steps: int | None = None, guidance_scale: float | None = None) -> Tensor:
        """(n, C, H, W) images in [-1, 1] for a prompt (one for all, or one per sample) or byte
        tokens `text` (n, L); without either (or with ""), unconditional. Settings left None take
        the model's defaults."""
        s = self.sampling_settings.model_validate(
            {k: v for k, v in {"prior_steps": prior_steps, "prior_guidance_scale": prior_guidance_scale,
                               "decoder_steps": decoder_steps, "guidance_scale": guidance_scale}.items()
             if v is not None})
        if prompt is not None and text is not None:
            raise UserError("prompt: give a prompt or caption tokens (text), not both")
        if prompt is not None:
            text = self.prompt_tokens(prompt, n)
        elif text is None:
            text = torch.zeros(n, self.text_len, dtype=torch.long)
        elif text.ndim != 2 or text.shape[0] != n:
            raise UserError(f"text: caption byte tokens (n={n}, L); got {tuple(text.shape)}")
        e = self.sample_embeddings(text, generator=generator, prior_steps=s.prior_steps,
                                   prior_guidance_scale=s.prior_guidance_scale)  # (n, D)
        return self.decoder.sample(n, generator=generator, image_embedding=e, sampler="ddim",
                                   num_inference_steps=s.decoder_steps, guidance_scale=s.guidance_scale)

    @torch.no_grad()
    def variations(self, x: Tensor, n_per_image: int = 1, *, generator: torch.Generator | None = None,
                   **settings: Any) -> Tensor:
        """Ramesh et al. 2022, §3.1: images decoded from each image's own CLIP embedding,
        (B * n_per_image, C, H, W), image i's in rows i * n_per_image ...; no prior involved.
        settings: this model's (decoder_steps and guidance_scale apply)."""
        s = self.sampling_settings.model_validate(settings)
        return self.decoder.variations(x, n_per_image, generator=generator, sampler="ddim",
                                       num_inference_steps=s.decoder_steps, guidance_scale=s.guidance_scale)

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The prior's held-out loss at seeded (t, noise) draws ("loss"), the cosine between its
        one-step prediction and the true image embedding ("cosine"), and between the embedding the
        prior samples from each caption (default settings) and the true one ("sample_cosine")."""
        text = self._captions(batch)
        e = self.image_embeddings(batch["x"])  # (B, D)
        x0 = e * math.sqrt(self.embed_dim)
        n = x0.shape[0]
        t = objective.sample_timesteps(n, self.schedule.num_timesteps, device=x0.device, generator=generator)
        noise = randn(tuple(x0.shape), generator=generator, device=x0.device)
        loss, x0_hat = self.prior_loss(x0, self.text_condition(text), t=t, noise=noise)
        defaults = self.sampling_settings()
        sampled = self.sample_embeddings(text, generator=generator, prior_steps=defaults.prior_steps,
                                         prior_guidance_scale=defaults.prior_guidance_scale)
        return {"loss": loss.mean(), "cosine": F.cosine_similarity(x0_hat.float(), x0, dim=1).mean(),
                "sample_cosine": (sampled * e).sum(1).mean()}

    @torch.no_grad()
    def eval_samples(self, n: int, *, generator_seed: int, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """One grid: images for the held-out batch's captions (cycled to n)."""
        text = batch.get("text")
        text = text[torch.arange(n) % text.shape[0]] if text is not None else None
        return {"": self.sample(n, generator=torch.Generator().manual_seed(generator_seed), text=text)}


# ---------------------------------------------------------------------------------------------
# Size presets and the builder
# ---------------------------------------------------------------------------------------------

# The prior transformer's (width, depth, heads) per size.
def prior_tiny(): return dict(width=64, depth=2, heads=4)
def prior_small(): return dict(width=128, depth=4, heads=4)
def prior_base(): return dict(width=256, depth=6, heads=8)


SIZES = {"tiny": prior_tiny, "small": prior_small, "base": prior_base}


def build_unclip(
    *,
    data: DatasetInfo,
    size: Literal["tiny", "small", "base"] = "small",
    clip: ModelRef | None = None,
    decoder: ModelRef | None = None,
    text_len: Annotated[int, Field(ge=1, le=1024)] = 48,
    num_timesteps: Annotated[int, Field(ge=2, le=100_000)] = 1000,
    p_uncond: Annotated[float, Field(ge=0, le=1)] = 0.1,
    prior_steps: Annotated[int, Field(ge=1)] = 25,
    prior_guidance_scale: Annotated[float, Field(ge=0)] = 1.0,
    decoder_steps: Annotated[int, Field(ge=1)] | None = None,
    guidance_scale: Annotated[float, Field(ge=0)] | None = None,
) -> UnCLIP:
    """unCLIP's diffusion prior between a trained CLIP (`clip`) and a trained unCLIP decoder
    (`decoder`: a diffusion model with conditioning image_embedding), both required and frozen.
    text_len: caption bytes the data pipeline decodes and the prior reads (cut at the CLIP's own
    text_len). decoder_steps and guidance_scale default to the decoder's own sampling defaults."""
    if not data.kind.is_image:
        raise UserError(f"unclip trains on images with captions, not {data.modality} data")
    c, h, w = check_image_shape(data.image_shape, "unclip")
    if "caption" not in data.columns:
        raise UserError(f"unclip trains on images with captions; this data has no caption column "
                        f"(columns: {', '.join(data.columns)})")
    clip_model = _part(clip, "clip", "clip", "a trained genray clip, whose text tower encodes the captions")
    dec = _part(decoder, "decoder", "diffusion",
                "a trained genray diffusion model with conditioning: image_embedding (unCLIP's decoder)")
    if "variations" not in dec.capabilities:  # what an image-embedding decoder declares
        raise UserError(f"unclip: model.decoder {decoder.ref} is a diffusion model without an image encoder; train "
                        "one with model.conditioning: image_embedding and model.image_encoder: <a trained clip>")
    if tuple(dec.image_shape) != (c, h, w):
        raise UserError(f"unclip: model.decoder {decoder.ref} makes images {tuple(dec.image_shape)}, this data is "
                        f"{(c, h, w)}")
    decoder_defaults = dec.sampling_settings()
    if decoder_steps is not None and decoder_steps > dec.schedule.num_timesteps:
        raise UserError(f"unclip: decoder_steps {decoder_steps} exceeds the decoder's {dec.schedule.num_timesteps} "
                        "timesteps")
    text_len = min(text_len, int(clip_model.text_len))  # the CLIP reads no more
    prior = DiffusionPrior(embed_dim=dec.embed_dim, text_embed_dim=int(clip_model.embed_dim),
                           text_token_dim=clip_model.text_tower.encoder.token_emb.embedding_dim,
                           text_len=text_len, **SIZES[size]())
    return UnCLIP(
        prior=prior, clip=clip_model, decoder=dec, text_len=text_len, num_timesteps=num_timesteps,
        p_uncond=p_uncond, prior_steps=prior_steps, prior_guidance_scale=prior_guidance_scale,
        decoder_steps=decoder_steps if decoder_steps is not None else decoder_defaults.num_inference_steps,
        guidance_scale=guidance_scale if guidance_scale is not None else decoder_defaults.guidance_scale,
    )


def _part(ref: ModelRef | None, name: str, family: str, what: str) -> nn.Module:
    if ref is None:
        raise UserError(f"unclip: model.{name} is required: {what} (models:/NAME@ALIAS, runs:/ID or a checkpoint "
                        "directory)")
    return frozen_module(ref, "unclip", name, (family,), what)


def example_refs(data: DatasetInfo) -> dict[str, ModelRef]:
    """Untrained tiny stand-ins for the two trained parts, described but without weights, for an
    example unclip on `data` (images with captions): what `genray families` and the shared tests
    build, where no trained model is at hand. components.models.build makes their modules."""
    clip = ModelRef("example:clip", "clip", {"size": "tiny", "text_len": 48}, data.to_json())
    decoder = ModelRef("example:decoder", "diffusion",
                       {"size": "tiny", "conditioning": "image_embedding", "num_timesteps": 50,
                        "num_inference_steps": 4, "image_encoder": clip.to_json()},
                       DatasetInfo.for_images(data.image_shape).to_json())
    return {"clip": clip, "decoder": decoder}
