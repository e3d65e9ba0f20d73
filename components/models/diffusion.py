"""Denoising diffusion (Ho et al. 2020) in pixel space or in an autoencoder's latent space
(latent diffusion, Rombach et al. 2022), unconditional, class- or text-conditional with
classifier-free guidance (Ho & Salimans 2022).

This file only assembles the pieces, each of which lives in its own place:

    network    components/models/unet.py          eps, x0 or v from (x_t, t, condition)
    text       components/models/text_encoder.py  caption bytes -> a sequence to cross-attend to
    schedule   components/samplers/schedules.py   beta_t, alpha_bar_t (linear, cosine, sigmoid)
    objective  components/samplers/objective.py   the denoising loss and the variational bound
    samplers   components/samplers/ddpm.py, ddim.py, guidance.py

so a DDPM-trained network never knows whether DDPM or DDIM steps it, and sampling settings
(sampler, steps, eta, spacing, guidance scale) can change on a trained model without retraining.

Latent diffusion: the autoencoder is a genray VAE with a latent map (`latent_channels > 0`),
trained by genray and named in the config (`model.autoencoder: models:/NAME@ALIAS`, `runs:/ID`
or a checkpoint directory): a ModelRef, which the pipeline resolves like every model reference.
Its frozen weights are a submodule here, so a latent-diffusion checkpoint rebuilds on its own.
The latent scale (1 / std of the latents, Rombach et al. 2022, appendix G) is a buffer set by
data-dependent initialisation on the first training batch.

Stable-Diffusion style: with `model.text_encoder` naming a trained CLIP (another ModelRef), the
denoiser cross-attends to the frozen CLIP text tower's per-token outputs instead of a caption
encoder trained with it (Rombach et al. 2022, §4.3.2, and Stable Diffusion's frozen CLIP
ViT-L/14 text encoder). The whole CLIP rides along frozen in the checkpoint.

unCLIP's decoder (Ramesh et al. 2022, §2.1): with `conditioning: image_embedding` and
`model.image_encoder` naming a trained CLIP, the denoiser is conditioned on the frozen CLIP's
embedding of each training image, projected into four extra context tokens that the UNet
cross-attends to and added to its time embedding, and dropped to the null condition with
p_uncond (the paper drops it 10% of the time). Such a decoder declares conditioning "none" (the
protocol's conditions are labels and prompts) and takes the embedding as an extra keyword:
`sample(n, image_embedding=(n, D))`; without one it samples from the null condition. It declares
"variations": `variations(x)` decodes images from x's own CLIP embeddings. components/models/
unclip.py puts a diffusion prior from text to these embeddings in front of it (DALL-E 2).

Retrieval-augmented diffusion (Blattmann et al. 2022, RDM): with `conditioning: retrieval`,
`model.image_encoder` a trained CLIP and `model.retrieval_index` an index of that CLIP's image
embeddings of a dataset (components/models/retrieval.py), each training image is embedded, its
`retrieval_k` nearest neighbours in the index other than itself are retrieved, and the denoiser
cross-attends to their embeddings (one context token each; their mean joins the time
embedding), dropped to the null condition with p_uncond. The index's embeddings and labels are
buffers, so the checkpoint carries them. A sample starts from pseudo-queries, rows drawn from the
index (`query_rows`, or at random from the generator), and conditions on each query's k
neighbours other than itself; `index=` swaps in another index of the same CLIP at sampling time
(a class subset, another dataset), which changes what is generated without retraining, and
`neighbours=` (n, k, D) gives the embeddings directly. Such a model declares conditioning "none"
and the capability "retrieval"; guidance_scale 0 is the same model without retrieval.
"""
import math
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, Field, create_model
from torch import Tensor, nn

from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.models.layers import StackedGenerators, check_image_shape, randint, randn
from genray.components.models.protocol import SETTINGS_CONFIG
from genray.components.models.refs import ModelRef, frozen_module
from genray.components.models.retrieval import (Index, IndexRef, RetrievalCondition, check_index_fits,
                                                check_same_encoder, encoder_digest, nearest)
from genray.components.models.text_encoder import TextEncoder, encode_text
from genray.components.models.unet import UNet
from genray.components.samplers import ddim, ddpm, guidance, objective, prediction as param, schedules
from genray.components.training import Backprop


def sampling_settings_type(num_timesteps: int, conditional: bool, defaults: dict[str, Any]) -> type[BaseModel]:
    """This model's sampling settings: steps up to its T, guidance only when it is conditional,
    defaults from its config (Song et al. 2021 for DDIM's eta and steps; Lin et al. 2024, table 2,
    for the spacings; Ho & Salimans 2022 for the guidance scale)."""
    fields: dict[str, Any] = {
        "sampler": (Literal["ddpm", "ddim"], Field(defaults["sampler"],
                    description="ddpm: ancestral, all T steps; ddim: num_inference_steps steps")),
        "num_inference_steps": (int, Field(defaults["num_inference_steps"], ge=1, le=num_timesteps,
                                description=f"DDIM steps (1..{num_timesteps})")),
        "eta": (float, Field(defaults["eta"], ge=0, le=1, allow_inf_nan=False,
                description="DDIM stochasticity: 0 deterministic, 1 DDPM-like")),
        "spacing": (Literal[ddim.SPACINGS], Field(defaults["spacing"], description="which timesteps DDIM visits")),
    }
    if conditional:
        fields["guidance_scale"] = (float, Field(defaults["guidance_scale"], ge=0, le=100, allow_inf_nan=False,
                                    description="classifier-free guidance: 0 unconditional, 1 conditional, >1 guided"))
    return create_model("DiffusionSampling", __config__=SETTINGS_CONFIG, **fields)


def query_stream(generator: torch.Generator | StackedGenerators | None):
    """A generator (or stacked generators) of its own for each given one, seeded from its seed:
    draws from it leave the given generator's state, and so the sampling noise, untouched."""
    def mixed(g: torch.Generator) -> torch.Generator:
        return torch.Generator(device=g.device).manual_seed((g.initial_seed() * 0x9E3779B97F4A7C15 + 1) % 2**63)

    if generator is None:
        return None
    if isinstance(generator, StackedGenerators):
        return StackedGenerators([(mixed(g), k) for g, k in generator.parts])
    return mixed(generator)


class FrozenCLIPText(nn.Module):
    """A trained CLIP's text tower as the caption encoder: tokens (B, L) -> its per-token outputs
    (B, L', dim) and mask, L' = min(L, the CLIP's text_len) (bytes past what the CLIP reads are
    cut, as encode_text cuts a caption at text_len). Frozen: no gradient, never trained."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip.requires_grad_(False).eval()
        self.dim = clip.text_tower.encoder.token_emb.embedding_dim

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            return self.clip.text_tower.encode(tokens[:, : self.clip.text_len])


class FrozenCLIPImage(nn.Module):
    """A trained CLIP's image tower as unCLIP's condition: images (B, C, H, W) in [-1, 1] -> its
    unit-norm embeddings (B, embed_dim), float32. Frozen: no gradient, never trained."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip.requires_grad_(False).eval()
        self.embed_dim = int(clip.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.clip.embed_images(x.float())


class ImageEmbeddingCondition(nn.Module):
    """Ramesh et al. 2022, §2.1: a CLIP image embedding (B, D) -> `num_tokens` extra context
    tokens (B, k, context_dim) for the UNet's cross-attention and a vector (B, emb_dim) added to
    its time embedding, both learned linear projections. The null condition of classifier-free
    guidance is an all-False context mask and a zero time-embedding term."""

    def __init__(self, embed_dim: int, context_dim: int, emb_dim: int, num_tokens: int = 4):
        super().__init__()
        self.embed_dim, self.context_dim, self.num_tokens = embed_dim, context_dim, num_tokens
        self.to_tokens = nn.Linear(embed_dim, num_tokens * context_dim)
        self.to_emb = nn.Linear(embed_dim, emb_dim)

    def forward(self, e: Tensor | None, n: int, device, keep: Tensor | None = None) -> dict[str, Tensor]:
        """The UNet's condition kwargs for n examples from embeddings e (n, D), or the null
        condition for e None; keep (n,) bool drops the rows where it is False to the null."""
        if e is None:
            return {"context": torch.zeros(n, self.num_tokens, self.context_dim, device=device),
                    "context_mask": torch.zeros(n, self.num_tokens, dtype=torch.bool, device=device),
                    "cond_emb": torch.zeros(n, self.to_emb.out_features, device=device)}
        e = e.to(device, self.to_tokens.weight.dtype)
        keep = torch.ones(n, dtype=torch.bool, device=device) if keep is None else keep.to(device)
        tokens = self.to_tokens(e).view(n, self.num_tokens, self.context_dim)  # (n, k, context_dim)
        return {"context": tokens * keep[:, None, None],
                "context_mask": keep[:, None].expand(n, self.num_tokens).contiguous(),  # (n, k)
                "cond_emb": self.to_emb(e) * keep[:, None]}  # (n, emb_dim)


class Diffusion(nn.Module):

    def __init__(
        self,
        *,
        net: UNet,
        image_shape: tuple[int, int, int],
        num_classes: int = 0,
        text_encoder: nn.Module | None = None,  # TextEncoder, or FrozenCLIPText
        text_len: int = 64,
        image_encoder: FrozenCLIPImage | None = None,
        image_condition: ImageEmbeddingCondition | None = None,
        retrieval: RetrievalCondition | None = None,
        index: Index | None = None,
        autoencoder: nn.Module | None = None,
        latent_scale: float = 1.0,
        schedule: str = "cosine",
        num_timesteps: int = 1000,
        zero_terminal_snr: bool = False,
        prediction: str = "eps",
        min_snr_gamma: float | None = None,
        p_uncond: float = 0.1,
        sampler: str = "ddim",
        num_inference_steps: int = 50,
        eta: float = 0.0,
        spacing: str = "trailing",
        guidance_scale: float = 1.0,
        variance: str = "posterior",
        vlb_timesteps: int = 20,
        eval_guidance_scales: tuple[float, ...] = (0.0, 1.0, 3.0),
    ):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.net = net
        self.num_classes = num_classes
        self.text_encoder = text_encoder
        self.text_len = text_len
        if (image_encoder is None) != (image_condition is None and retrieval is None):
            raise ValueError("diffusion: image_encoder comes with image_condition (unCLIP's decoder) or retrieval (RDM)")
        if (retrieval is None) != (index is None):
            raise ValueError("diffusion: a retrieval condition needs its index, and an index its condition")
        self.image_encoder = image_encoder
        self.image_condition = image_condition
        self.retrieval = retrieval
        if index is not None:
            # Buffers: a checkpoint carries its index and rebuilds without the index's folder.
            self.register_buffer("index_embeddings", index.embeddings.float().clone())
            self.register_buffer("index_labels", index.labels.long().clone())
            self.index_meta = dict(index.meta)
        self._digest: str | None = None
        self.autoencoder = autoencoder
        if autoencoder is not None:
            # Frozen: the denoiser learns the autoencoder's latent space, never moves it.
            autoencoder.requires_grad_(False).eval()
            self.latent_shape = tuple(autoencoder.latent_shape)
        else:
            self.latent_shape = self.image_shape
        # A buffer: set from the first batch (init_latent_scale), saved with the weights.
        self.register_buffer("latent_scale", torch.tensor(float(latent_scale)))

        self.schedule = schedules.make_schedule(schedule, num_timesteps, zero_terminal_snr=zero_terminal_snr)
        if prediction not in param.PREDICTIONS:
            raise ValueError(f"diffusion: prediction must be one of {param.PREDICTIONS}, got {prediction!r}")
        schedules.check_prediction(self.schedule, prediction)
        if not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"diffusion: p_uncond (condition dropout) must be in [0, 1], got {p_uncond}")
        self.prediction = prediction
        self.min_snr_gamma = min_snr_gamma
        self.p_uncond = p_uncond
        self.variance = variance
        self.vlb_timesteps = vlb_timesteps
        self.eval_guidance_scales = tuple(eval_guidance_scales)
        # Sampling settings and their defaults; every one can be overridden per call to `sample`.
        self.sampling_settings = sampling_settings_type(
            self.schedule.num_timesteps, self.conditional or self.image_conditioned or self.retrieval_conditioned,
            {"sampler": sampler, "num_inference_steps": min(num_inference_steps, self.schedule.num_timesteps),
             "eta": eta, "spacing": spacing, "guidance_scale": guidance_scale})
        self.conditioning = "class" if num_classes > 0 else "text" if text_encoder is not None else "none"
        self.recipe = Backprop(init=self.init_latent_scale if autoencoder is not None else None)

        caps = {"sample"}
        if self.conditional:
            caps.add("condition")
        if self.image_conditioned:
            caps.add("variations")
        if self.retrieval_conditioned:
            caps.add("retrieval")
        if autoencoder is None:
            # The bound is on 8-bit pixels; in a latent space it would not be a likelihood of images.
            caps.add("log_prob")
        self.capabilities = frozenset(caps)
        # The variational bound over 8-bit bins (components/metrics/likelihood.py).
        self.log_prob_space, self.log_prob_kind = "discrete", "bound"

    # -- settings ----------------------------------------------------------------------------------

    @property
    def conditional(self) -> bool:
        """Conditioned on what the protocol names (a label or a prompt): the "condition" capability."""
        return self.num_classes > 0 or self.text_encoder is not None

    @property
    def image_conditioned(self) -> bool:
        """unCLIP's decoder: conditioned on a CLIP image embedding (sample's image_embedding=)."""
        return self.image_condition is not None

    @property
    def retrieval_conditioned(self) -> bool:
        """RDM: conditioned on the CLIP embeddings of k neighbours retrieved from its index."""
        return self.retrieval is not None

    @property
    def retrieval_k(self) -> int:
        return self.retrieval.k

    def encoder_digest(self) -> str:
        """The digest of the frozen CLIP that retrieves (retrieval.encoder_digest), computed once."""
        if self._digest is None:
            self._digest = encoder_digest(self.image_encoder.clip)
        return self._digest

    def index(self) -> Index:
        """The index the model trained with (its buffers)."""
        return Index(self.index_embeddings, self.index_labels, self.index_meta)

    def retrieve(self, queries: Tensor, index: Index | None = None) -> Tensor:
        """The retrieval_k neighbours (other than the query itself) of unit-norm queries (B, D) in
        `index` (default the model's own): their embeddings, (B, k, D)."""
        index = index if index is not None else self.index()
        emb = index.embeddings.to(queries.device)
        _, ids = nearest(queries, emb, self.retrieval.k, exclude_self=True)
        return emb[ids]  # (B, k, D)

    def pseudo_queries(self, n: int, generator: torch.Generator | StackedGenerators | None,
                       index: Index | None = None) -> Tensor:
        """n rows of `index` drawn uniformly (RDM samples from pseudo-queries taken from the
        database): their row ids, (n,). They come from a stream of their own seeded from the
        generator's seed (`query_stream`), so the noise the generator then gives is the noise any
        other model draws: a seed's first samples are the same whatever n is."""
        rows = (index if index is not None else self.index()).rows
        return randint(rows, (n,), generator=query_stream(generator), device=torch.device("cpu"))

    def checked_index(self, index: Index, field_name: str = "index") -> Index:
        """A swapped-in index, refused (naming `field_name`) when another CLIP made it or its
        embeddings have another size."""
        check_index_fits(index.rows, index.dim, self.image_encoder.embed_dim, self.retrieval.k, field_name=field_name)
        check_same_encoder(index, self.encoder_digest(), field_name=field_name)
        return index

    @property
    def embed_dim(self) -> int:
        """The size D of the CLIP image embeddings an image-conditioned decoder reads."""
        if self.image_encoder is None:
            raise AttributeError("diffusion: only a decoder built with model.image_encoder reads image embeddings")
        return self.image_encoder.embed_dim

    def sampling_cost(self, settings: BaseModel) -> int:
        """Denoiser evaluations per sample call (a guided step batches both branches as one)."""
        return self.schedule.num_timesteps if settings.sampler == "ddpm" else settings.num_inference_steps

    def train(self, mode: bool = True):
        super().train(mode)
        if self.autoencoder is not None:
            self.autoencoder.eval()  # frozen, whatever the rest is doing
        if self.image_encoder is not None:
            self.image_encoder.eval()
        return self

    # -- conditions and latents ----------------------------------------------------------------------

    def condition(self, n: int, device, *, y: Tensor | None = None, text: Tensor | None = None,
                  image_embedding: Tensor | None = None, neighbours: Tensor | None = None,
                  keep: Tensor | None = None) -> dict[str, Tensor]:
        """The network's condition kwargs for n examples; None means the null condition (the
        unconditional branch of classifier-free guidance: label index num_classes, empty text, no
        image embedding). keep (n,) bool drops an image embedding's rows to the null where False."""
        cond: dict[str, Tensor] = {}
        if self.image_condition is not None:
            cond.update(self.image_condition(image_embedding, n, device, keep))
        if self.retrieval is not None:
            cond.update(self.retrieval(neighbours, n, device, keep))
        if self.num_classes > 0:
            cond["y"] = torch.full((n,), self.num_classes, device=device, dtype=torch.long) if y is None else y.to(device)
        if self.text_encoder is not None:
            tokens = torch.zeros(n, self.text_len, dtype=torch.long, device=device) if text is None else text.to(device)
            cond["context"], cond["context_mask"] = self.text_encoder(tokens)  # (B, L, D), (B, L)
        return cond

    def drop_condition(self, batch: dict[str, Tensor]) -> tuple[Tensor | None, Tensor | None]:
        """Ho & Salimans 2022, Algorithm 1: replace the condition by the null one with p_uncond."""
        y, text = batch.get("y"), batch.get("text")
        if self.num_classes == 0:
            y = None
        if self.text_encoder is None:
            text = None
        if self.p_uncond > 0 and (y is not None or text is not None):
            n = batch["x"].shape[0]
            drop = torch.rand(n, device=batch["x"].device) < self.p_uncond  # (B,)
            if y is not None:
                y = torch.where(drop, torch.full_like(y, self.num_classes), y)
            if text is not None:
                text = text.masked_fill(drop[:, None], 0)
        return y, text

    @torch.no_grad()
    def init_latent_scale(self, batch: dict[str, Tensor]) -> None:
        """Rombach et al. 2022, appendix G: scale latents to unit variance, 1 / std of posterior
        samples of the first training batch (the recipe's data-dependent initialisation)."""
        std = float(self.autoencoder.sample_posterior(batch["x"].float()).std())
        if not math.isfinite(std) or std <= 0:
            raise UserError(f"diffusion: the autoencoder's latents have std {std} on the training data; is it trained?")
        self.latent_scale.fill_(1.0 / std)

    def to_latent(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Images -> what the diffusion runs on: the images themselves, or a scaled sample of the
        autoencoder's posterior (Rombach et al. 2022, §3 and appendix G: unit-variance latents)."""
        if self.autoencoder is None:
            return x
        return self.autoencoder.sample_posterior(x, generator) * self.latent_scale  # (B, c, h, w)

    def from_latent(self, z: Tensor) -> Tensor:
        if self.autoencoder is None:
            return z.float().clamp(-1.0, 1.0)
        return self.autoencoder.decode(z.float() / self.latent_scale)

    def denoiser(self, cond: dict[str, Tensor]):
        return lambda x_t, t: self.net(x_t, t, **cond)

    # -- training -------------------------------------------------------------------------------------

    def forward(self, batch: dict[str, Tensor], phase: str = "main") -> tuple[Tensor, dict[str, Tensor]]:
        if phase != "main":
            raise ValueError(f"diffusion has one phase, 'main'; got phase={phase!r}")
        x0 = self.to_latent(batch["x"])
        y, text = self.drop_condition(batch)
        e = keep = neighbours = None
        if self.image_encoder is not None:
            # Ramesh et al. 2022, §2.1: condition on the frozen CLIP's embedding of the image itself,
            # dropped to the null condition with p_uncond (the paper's 10%); RDM: on the embeddings
            # of the image's neighbours in the index, itself excluded.
            e = self.image_encoder(batch["x"])  # (B, D), unit norm
            keep = torch.rand(e.shape[0], device=e.device) >= self.p_uncond  # (B,)
            if self.retrieval is not None:
                e, neighbours = None, self.retrieve(e)
        cond = self.condition(x0.shape[0], x0.device, y=y, text=text, image_embedding=e, neighbours=neighbours,
                              keep=keep)
        # Ho et al. 2020, Algorithm 1 (t uniform, Gaussian noise) with the chosen target and weights.
        loss = objective.training_loss(self.denoiser(cond), x0, self.schedule, prediction=self.prediction,
                                       min_snr_gamma=self.min_snr_gamma)  # (B,)
        return loss.mean(), {}

    # -- using the trained model ----------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Held-out denoising loss at seeded (t, noise) draws ("loss", the training objective),
        the same as plain eps-MSE whatever the prediction target ("eps_mse"), and, in pixel space,
        the variational bound in bits/dim."""
        x0 = self.to_latent(batch["x"], generator)
        n = x0.shape[0]
        e = self.image_encoder(batch["x"]) if self.image_encoder is not None else None
        cond = self.condition(n, x0.device, y=batch.get("y") if self.num_classes else None,
                              text=batch.get("text") if self.text_encoder is not None else None,
                              image_embedding=e if self.image_condition is not None else None,
                              neighbours=self.retrieve(e) if self.retrieval is not None else None)
        t = objective.sample_timesteps(n, self.schedule.num_timesteps, device=x0.device, generator=generator)
        noise = randn(x0.shape, generator=generator, device=x0.device)
        seen: dict[str, Tensor] = {}

        def denoise(x_t: Tensor, t: Tensor) -> Tensor:
            seen["x_t"], seen["out"] = x_t, self.net(x_t, t, **cond)
            return seen["out"]

        loss = objective.training_loss(denoise, x0, self.schedule, prediction=self.prediction,
                                       min_snr_gamma=self.min_snr_gamma, t=t, noise=noise)
        alpha_bar = self.schedule.at("alphas_cumprod", t, x0.ndim)
        _, eps_hat = param.to_x0_eps(self.prediction, seen["out"].float(), seen["x_t"].float(), alpha_bar)
        scores = {"loss": loss.mean(), "eps_mse": (eps_hat - noise).pow(2).mean()}
        if "log_prob" in self.capabilities and self.vlb_timesteps > 0:
            nats = -self.log_prob(batch["x"], y=batch.get("y"), text=batch.get("text"), generator=generator)
            scores["bits_per_dim"] = objective.nats_to_bits_per_dim(nats, math.prod(self.image_shape)).mean()
        return scores

    @torch.no_grad()
    def log_prob(
        self,
        x: Tensor,
        num_timesteps: int | None = None,
        *,
        y: Tensor | None = None,
        text: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Ho et al. 2020, eq. 5: the variational lower bound on log p(x) of 8-bit images scaled to
        [-1, 1], nats per example (B,); a discrete likelihood, so bits/dim compare with PixelCNN's.
        The sum over timesteps is estimated from num_timesteps evenly spaced terms (all T when
        num_timesteps >= T). With y/text it bounds log p(x | condition); without, the
        unconditional model (the null condition). An image-embedding decoder's bound is always the
        unconditional one: conditioned on x's own CLIP embedding it would not be a likelihood of x."""
        k = self.vlb_timesteps if num_timesteps is None else num_timesteps
        if k < 1:
            raise ValueError(f"diffusion.log_prob: num_timesteps must be >= 1, got {k}")
        k = min(k, self.schedule.num_timesteps - 1) or None
        cond = self.condition(x.shape[0], x.device, y=y if self.num_classes else None,
                              text=text if self.text_encoder is not None else None)
        terms = objective.variational_bound(self.denoiser(cond), x.float(), self.schedule,
                                            prediction=self.prediction, num_timesteps=k,
                                            variance=self.variance, generator=generator)
        return -terms["total"]

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        y: Tensor | None = None,
        prompt: str | list[str] | None = None,
        text: Tensor | None = None,
        image_embedding: Tensor | None = None,
        neighbours: Tensor | None = None,
        query_rows: Tensor | None = None,
        index: Index | None = None,
        guidance_scale: float | None = None,
        sampler: str | None = None,
        num_inference_steps: int | None = None,
        eta: float | None = None,
        spacing: str | None = None,
    ) -> Tensor:
        """(n, C, H, W) images in [-1, 1]. Settings left as None take the model's defaults;
        sampler="ddpm" is ancestral sampling over all T steps (num_inference_steps, eta and
        spacing are DDIM's).

        Class-conditional: y (n,) picks classes (index num_classes = unconditional); without y the
        labels cycle 0, 1, ..., so a grid shows every class. Text-conditional: a prompt (one for
        all, or one per sample) or byte tokens `text` (n, L); without either, unconditional. A
        prompt "A AND B" composes its parts (composed guidance, Liu et al. 2022): each part's
        guidance term at `guidance_scale`, summed.
        unCLIP's decoder (built with image_encoder): `image_embedding` (n, D), CLIP image
        embeddings (renormalised to unit length, as CLIP gives them), decoded with guidance
        `guidance_scale`; without it, samples of the null condition.
        Retrieval (built with conditioning "retrieval"): each sample conditions on the retrieval_k
        neighbours of a pseudo-query row of `index` (default the model's own; another index of the
        same CLIP swaps what is retrieved): `query_rows` (n,) picks the rows, else they are drawn
        from the generator; `neighbours` (n, k, D) gives the embeddings instead. guidance_scale 0
        samples the same model without retrieval.
        """
        s = self.sampling_settings.model_validate(
            {k: v for k, v in {"sampler": sampler, "num_inference_steps": num_inference_steps, "eta": eta,
                               "spacing": spacing, "guidance_scale": guidance_scale}.items() if v is not None})
        device = next(self.net.parameters()).device
        if not self.conditional and (y is not None or prompt is not None or text is not None):
            raise ValueError("diffusion was built unconditional (no 'condition' capability); call sample without y/prompt")
        if y is not None and self.num_classes == 0:
            raise ValueError("diffusion is not class-conditional; use prompt= for a text-conditional model")
        if (prompt is not None or text is not None) and self.text_encoder is None:
            raise ValueError("diffusion is not text-conditional; use y= for a class-conditional model")
        if image_embedding is not None:
            image_embedding = self._check_embedding(image_embedding, n, device)
        if self.retrieval is not None:
            neighbours = self._neighbours(n, device, neighbours, query_rows, index, generator)
        elif neighbours is not None or query_rows is not None or index is not None:
            raise UserError("index: this diffusion model does not retrieve (it was not trained with "
                            "conditioning: retrieval); it takes no index, query_rows or neighbours")
        if self.num_classes > 0:
            if y is None:
                y = torch.arange(n, device=device) % self.num_classes
            elif y.shape != (n,) or int(y.min()) < 0 or int(y.max()) > self.num_classes:
                raise ValueError(f"diffusion.sample: y must be ({n},) labels in [0, {self.num_classes}], got {y.tolist()}")
        parts = None
        if prompt is not None:
            prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
            if len(prompts) != n:
                raise ValueError(f"diffusion.sample: {len(prompts)} prompts for n={n} samples")
            parts = [guidance.split_prompt(p) for p in prompts]
            text = encode_text([p[0] for p in parts], self.text_len)

        cond = self.condition(n, device, y=y, text=text, image_embedding=image_embedding, neighbours=neighbours)
        K = max(len(p) for p in parts) if parts is not None else 1  # concepts per prompt, at most
        if K > 1:
            # "A AND B": composed guidance (Liu et al. 2022), each part at the guidance scale;
            # a sample with fewer parts gives the missing ones weight 0.
            conds = [cond] + [self.condition(n, device, text=encode_text([p[k] if k < len(p) else "" for p in parts],
                                                                         self.text_len)) for k in range(1, K)]
            weights = torch.tensor([[s.guidance_scale if k < len(p) else 0.0 for p in parts] for k in range(K)])
            denoise = guidance.composed_denoiser(self.net, conds, self.condition(n, device), weights)
        elif self.image_conditioned and image_embedding is None:
            denoise = self.denoiser(cond)  # the null condition: guidance would change nothing
        elif cond:
            null = self.condition(n, device)
            denoise = guidance.guided_denoiser(self.net, cond, null, s.guidance_scale)
        else:
            denoise = self.denoiser(cond)
        shape = (n, *self.latent_shape)
        # Clipping x0 to the data range only makes sense for pixels; latents are unbounded.
        clip = self.autoencoder is None
        if s.sampler == "ddpm":  # every one of the T steps: num_inference_steps does not apply
            z = ddpm.ddpm_sample(denoise, shape, self.schedule, prediction=self.prediction, variance=self.variance,
                                 generator=generator, device=device, clip_x0=clip)
        else:
            z = ddim.ddim_sample(denoise, shape, self.schedule, prediction=self.prediction,
                                 num_steps=s.num_inference_steps, eta=s.eta, spacing=s.spacing,
                                 generator=generator, device=device, clip_x0=clip)
        return self.from_latent(z).float().clamp(-1.0, 1.0)

    def _neighbours(self, n: int, device, neighbours: Tensor | None, query_rows: Tensor | None, index: Index | None,
                    generator: torch.Generator | None) -> Tensor:
        """What a retrieval model conditions on: the given neighbours, checked, or those of the
        query rows (given, or drawn) in the index (given and checked, or the model's own)."""
        k, d = self.retrieval.k, self.image_encoder.embed_dim
        if neighbours is not None:
            neighbours = torch.as_tensor(neighbours)
            if neighbours.shape != (n, k, d) or not torch.isfinite(neighbours).all():
                raise UserError(f"neighbours: ({n}, {k}, {d}) finite CLIP image embeddings (k = retrieval_k neighbours "
                                f"per sample); got {tuple(neighbours.shape)}")
            return torch.nn.functional.normalize(neighbours.to(device, torch.float32), dim=-1)
        index = self.checked_index(index) if index is not None else self.index()
        if query_rows is None:
            query_rows = self.pseudo_queries(n, generator, index)
        query_rows = torch.as_tensor(query_rows).long()
        if query_rows.shape != (n,) or int(query_rows.min()) < 0 or int(query_rows.max()) >= index.rows:
            raise UserError(f"query_rows: ({n},) row ids of the index in [0, {index.rows})")
        queries = index.embeddings[query_rows.to(index.embeddings.device)].to(device)
        return self.retrieve(queries, index)  # which moves the index's rows to the queries' device too

    def _check_embedding(self, e: Tensor, n: int, device) -> Tensor:
        if not self.image_conditioned:
            raise UserError("image_embedding: this diffusion model was not built with model.image_encoder "
                            "(unCLIP's decoder); it takes no image embedding")
        e = torch.as_tensor(e)
        if e.shape != (n, self.embed_dim):
            raise UserError(f"image_embedding: one CLIP image embedding per sample, shape ({n}, {self.embed_dim}); "
                            f"got {tuple(e.shape)}")
        e = e.to(device, torch.float32)
        if not torch.isfinite(e).all() or bool((e.norm(dim=1) == 0).any()):
            raise UserError("image_embedding: every embedding must be finite and non-zero")
        return torch.nn.functional.normalize(e, dim=1)  # (n, D)

    def _check_images(self, x: Tensor, what: str) -> Tensor:
        c, h, w = self.image_shape
        if not isinstance(x, Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != (c, h, w) or len(x) == 0:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise UserError(f"{what}: images of shape (B, {c}, {h}, {w}) in [-1, 1]; got {got}")
        if not torch.isfinite(x).all() or float(x.min()) < -1 or float(x.max()) > 1:
            raise UserError(f"{what}: image values must be finite and in [-1, 1]")
        return x

    @torch.no_grad()
    def variations(self, x: Tensor, n_per_image: int = 1, *, generator: torch.Generator | None = None,
                   **settings: Any) -> Tensor:
        """unCLIP's variations (Ramesh et al. 2022, §3.1): n_per_image images decoded from each
        image's own CLIP embedding, (B * n_per_image, C, H, W) in [-1, 1], each image's in a row
        (image i's variations are rows i * n_per_image ...). settings: those of `sample`."""
        if not self.image_conditioned:
            raise UserError("variations: this diffusion model was not built with model.image_encoder")
        if isinstance(n_per_image, bool) or not isinstance(n_per_image, int) or n_per_image < 1:
            raise UserError(f"n_per_image: a whole number >= 1, got {n_per_image!r}")
        x = self._check_images(x, "x")
        device = next(self.net.parameters()).device
        e = self.image_encoder(x.to(device)).repeat_interleave(n_per_image, dim=0)  # (B * n_per_image, D)
        return self.sample(len(e), generator=generator, image_embedding=e, **settings)

    @torch.no_grad()
    def eval_samples(self, n: int, *, generator_seed: int, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The grids the training loop logs at each eval: one per guidance scale in
        eval_guidance_scales for a conditional model (conditions taken from the held-out batch for
        text, cycling labels for classes), one grid otherwise. Same seed per grid, so the grids
        differ only by the guidance scale. An image-embedding decoder's grids are variations of
        the held-out batch: images decoded from its images' own CLIP embeddings."""
        if self.retrieval_conditioned:  # the same pseudo-queries at every scale
            rows = self.pseudo_queries(n, torch.Generator().manual_seed(generator_seed))
            return {f"guidance_{scale:g}": self.sample(n, generator=torch.Generator().manual_seed(generator_seed),
                                                        query_rows=rows, guidance_scale=scale)
                    for scale in self.eval_guidance_scales}
        if self.image_conditioned:
            x = batch["x"][torch.arange(n) % batch["x"].shape[0]]
            e = self.image_encoder(x.to(next(self.net.parameters()).device))  # (n, D)
            return {f"guidance_{scale:g}": self.sample(n, generator=torch.Generator().manual_seed(generator_seed),
                                                        image_embedding=e, guidance_scale=scale)
                    for scale in self.eval_guidance_scales}
        if not self.conditional:
            return {"": self.sample(n, generator=torch.Generator().manual_seed(generator_seed))}
        text = None
        if self.text_encoder is not None and "text" in batch:
            text = batch["text"][torch.arange(n) % batch["text"].shape[0]]
        out = {}
        for scale in self.eval_guidance_scales:
            out[f"guidance_{scale:g}"] = self.sample(
                n, generator=torch.Generator().manual_seed(generator_seed), text=text, guidance_scale=scale
            )
        return out


# ---------------------------------------------------------------------------------------------
# Size presets and the builder (the config's `model:` section maps onto the builder's arguments)
# ---------------------------------------------------------------------------------------------

# The UNet's widths and depth per size (levels beyond what the image size allows are dropped),
# and the text encoder's (dim, depth, heads).
def unet_tiny(): return dict(channels=16, channel_mults=(1, 2, 2), num_res_blocks=1, head_dim=16)
def unet_small(): return dict(channels=64, channel_mults=(1, 2, 2), num_res_blocks=2, head_dim=32)
def unet_base(): return dict(channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2, head_dim=64)


SIZES = {"tiny": unet_tiny, "small": unet_small, "base": unet_base}
TEXT_SIZES = {"tiny": (32, 1, 2), "small": (128, 2, 4), "base": (256, 4, 4)}


def levels_for(max_levels: int, hw: tuple[int, int]) -> tuple[int, tuple[int, ...]]:
    """How many resolution levels fit (the lowest at least 4x4), and where attention goes: every
    level below full resolution at 16x16 or smaller (Ho et al. 2020 attend at 16x16 on CIFAR-10)."""
    smallest = min(hw)
    levels = max(1, min(max_levels, smallest.bit_length() - 2))  # 8 -> 2, 16 -> 3, 32 -> 4
    attention = tuple(i for i in range(1, levels) if smallest >> i <= 16)
    return levels, attention


def build_diffusion(
    *,
    data: DatasetInfo,
    size: Literal["tiny", "small", "base"] = "small",
    channels: Annotated[int, Field(ge=8)] | None = None,
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0,
    conditioning: Literal["auto", "none", "class", "text", "image_embedding", "retrieval"] = "auto",
    text_len: Annotated[int, Field(ge=1, le=1024)] = 64,
    schedule: Literal["linear", "cosine", "sigmoid"] = "cosine",
    num_timesteps: Annotated[int, Field(ge=2, le=100_000)] = 1000,
    zero_terminal_snr: bool = False,
    prediction: Literal["eps", "x0", "v"] = "eps",
    min_snr_gamma: Annotated[float, Field(gt=0)] | None = None,
    p_uncond: Annotated[float, Field(ge=0, le=1)] = 0.1,
    sampler: Literal["ddpm", "ddim"] = "ddim",
    num_inference_steps: Annotated[int, Field(ge=1)] = 50,
    eta: Annotated[float, Field(ge=0, le=1)] = 0.0,
    spacing: Literal["leading", "trailing", "linspace"] = "trailing",
    guidance_scale: Annotated[float, Field(ge=0)] = 1.0,
    variance: Literal["posterior", "beta"] = "posterior",
    vlb_timesteps: Annotated[int, Field(ge=0)] = 20,
    eval_guidance_scales: tuple[Annotated[float, Field(ge=0)], ...] = (0.0, 1.0, 3.0),
    autoencoder: ModelRef | None = None,
    text_encoder: ModelRef | None = None,
    image_encoder: ModelRef | None = None,
    retrieval_index: IndexRef | None = None,
    retrieval_k: Annotated[int, Field(ge=1, le=64)] = 4,
) -> Diffusion:
    """DDPM-style diffusion (Ho et al. 2020) sampled with DDPM or DDIM; with `autoencoder` set,
    latent diffusion (Rombach et al. 2022).

    conditioning: "auto" is "class" when the data have labels, else "none"; "text" cross-attends
    to the data's captions (byte tokens, text_len of them). `autoencoder` references a genray VAE
    with a latent map (resolved by the pipeline, like every ModelRef); `text_encoder` a trained
    genray CLIP, whose frozen text tower then encodes the captions (Stable Diffusion's choice)
    in place of a caption encoder trained with the denoiser. conditioning "image_embedding" with
    `image_encoder` (a trained genray CLIP) is unCLIP's decoder: conditioned on the frozen CLIP's
    embedding of each image (module docstring). conditioning "retrieval" with `image_encoder` and
    `retrieval_index` (an index of that CLIP's embeddings, `genray data index`) is RDM: conditioned
    on the embeddings of each image's `retrieval_k` nearest neighbours in the index.
    """
    c, h, w = check_image_shape(data.image_shape, "diffusion")
    num_classes = data.num_classes
    if conditioning == "auto":
        conditioning = "class" if num_classes > 0 else "none"
    if conditioning == "class" and num_classes < 1:
        raise UserError("diffusion: conditioning='class' needs labelled data (a 'label' column); "
                        "use conditioning='none' or 'text'")

    ae = _build_autoencoder(autoencoder, (c, h, w)) if autoencoder is not None else None
    net_shape = tuple(ae.latent_shape) if ae is not None else (c, h, w)

    if image_encoder is not None and conditioning not in ("image_embedding", "retrieval"):
        raise UserError(f"diffusion: model.image_encoder ({image_encoder.ref}) embeds the images to condition on; "
                        f"it needs model.conditioning: image_embedding or retrieval (got {conditioning!r})")
    if conditioning in ("image_embedding", "retrieval") and image_encoder is None:
        what = "unCLIP's decoder" if conditioning == "image_embedding" else "retrieval"
        raise UserError(f"diffusion: conditioning {conditioning!r} ({what}) needs model.image_encoder: "
                        "a trained genray clip (models:/NAME@ALIAS, runs:/ID or a checkpoint directory)")
    if (conditioning == "retrieval") != (retrieval_index is not None):
        raise UserError("diffusion: conditioning 'retrieval' and model.retrieval_index come together (an index of the "
                        f"image_encoder's embeddings, `genray data index`); got conditioning {conditioning!r}"
                        + (f" with retrieval_index {retrieval_index.ref}" if retrieval_index is not None else
                           " without retrieval_index"))
    image_encoder = _frozen_clip_image(image_encoder, (c, h, w)) if image_encoder is not None else None
    index = _retrieval_index(retrieval_index, image_encoder, retrieval_k) if retrieval_index is not None else None

    context_dim = None
    if image_encoder is not None:
        context_dim = TEXT_SIZES[size][0]  # the width a text context of this size would have
    if text_encoder is not None:
        if conditioning != "text":
            raise UserError(f"diffusion: model.text_encoder ({text_encoder.ref}) encodes captions; it needs "
                            f"model.conditioning: text (got {conditioning!r})")
        text_encoder = _frozen_clip_text(text_encoder)
        context_dim = text_encoder.dim
    elif conditioning == "text":
        dim, depth, heads = TEXT_SIZES[size]
        text_encoder = TextEncoder(dim=dim, depth=depth, heads=heads, max_len=text_len)
        context_dim = dim

    unet_args = SIZES[size]()
    if channels is not None:
        unet_args["channels"] = channels
    levels, attention = levels_for(len(unet_args["channel_mults"]), net_shape[1:])
    unet_args["channel_mults"] = unet_args["channel_mults"][:levels]
    net = UNet(
        **unet_args,
        in_channels=net_shape[0],
        image_size=tuple(net_shape[1:]),
        attention_levels=attention,
        dropout=dropout,
        num_classes=num_classes if conditioning == "class" else 0,
        context_dim=context_dim,
    )
    image_condition = retrieval = None
    if conditioning == "image_embedding":
        image_condition = ImageEmbeddingCondition(image_encoder.embed_dim, context_dim, net.emb_dim)
    if conditioning == "retrieval":
        retrieval = RetrievalCondition(image_encoder.embed_dim, context_dim, net.emb_dim, retrieval_k)
    return Diffusion(
        net=net, image_shape=(c, h, w), num_classes=num_classes if conditioning == "class" else 0,
        text_encoder=text_encoder, text_len=text_len, image_encoder=image_encoder,
        image_condition=image_condition, retrieval=retrieval, index=index, autoencoder=ae,
        schedule=schedule, num_timesteps=num_timesteps, zero_terminal_snr=zero_terminal_snr,
        prediction=prediction, min_snr_gamma=min_snr_gamma, p_uncond=p_uncond, sampler=sampler,
        num_inference_steps=min(num_inference_steps, num_timesteps), eta=eta, spacing=spacing,
        guidance_scale=guidance_scale, variance=variance, vlb_timesteps=vlb_timesteps,
        eval_guidance_scales=eval_guidance_scales,
    )


def _frozen_clip_text(ref: ModelRef) -> FrozenCLIPText:
    return FrozenCLIPText(frozen_module(ref, "diffusion", "text_encoder", ("clip",), "a genray clip"))


def _frozen_clip_image(ref: ModelRef, image_shape: tuple[int, int, int]) -> FrozenCLIPImage:
    clip_shape = tuple(frozen_module(ref, "diffusion", "image_encoder", ("clip",), "a genray clip").image_shape)
    if clip_shape != image_shape:
        raise UserError(f"diffusion: model.image_encoder {ref.ref} embeds images {clip_shape}, this data is {image_shape}")
    return FrozenCLIPImage(ref.module)


def _retrieval_index(ref: IndexRef, encoder: FrozenCLIPImage, k: int) -> Index:
    """The index's tensors (or, as a checkpoint rebuilds, placeholders its weights fill), checked
    against the CLIP: the same embedding size, and on a fresh run, the same CLIP's weights."""
    embeddings, labels = ref.tensors()
    check_index_fits(*embeddings.shape, encoder.embed_dim, k, field_name=f"diffusion: model.retrieval_index {ref.ref}")
    if ref.index is not None:  # a fresh run: the index must come from this very CLIP
        check_same_encoder(ref.index, encoder_digest(encoder.clip), field_name=f"model.retrieval_index {ref.ref}")
    return Index(embeddings, labels, {**(ref.meta or {}), "encoder": ref.encoder, "ref": ref.ref})


def _build_autoencoder(ref: ModelRef, image_shape: tuple[int, int, int]) -> nn.Module:
    ae = frozen_module(ref, "diffusion", "autoencoder", ("vae", "beta_vae"), "a genray vae or beta_vae")
    ae_shape = tuple(ae.image_shape)
    if ae_shape != image_shape:
        raise UserError(f"diffusion: model.autoencoder {ref.ref} was trained on images {ae_shape}, this data is {image_shape}")
    if len(ae.latent_shape) != 3:
        raise UserError(
            f"diffusion: model.autoencoder {ref.ref}: latent diffusion needs an autoencoder with a latent map (a "
            f"vae/beta_vae trained with latent_channels > 0); this one has a latent vector of {ae.latent_shape[0]}")
    return ae
