"""A prior over a frozen tokenizer's codes, seen from outside as an image model: the second stage
of VQ-VAE (van den Oord et al. 2017, sec. 3.2; DALL-E 1's image half), and MaskGIT's setting.

    x (B, C, H, W)  --tokenizer.tokens-->  ids (B, h, w)  --flatten row-major-->  (B, h*w)
    the token network learns the ids; its samples (n, h*w) --decode_tokens-->  images (n, C, H, W)

The token network is any genray model over `tokens` data (GPT, MaskGIT): it was built for a
vocabulary of the tokenizer's K codes and sequences of h*w tokens, and keeps every method it has
on token ids. `TokenPrior` wraps it so the rest of genray sees images: training batches are the
image dataset's (the frozen tokenizer turns each batch into ids on the fly, so the prior trains
from the dataset the tokenizer saw, with its labels, and a fresh augmentation or shuffle costs
nothing extra), samples are images in [-1, 1], and eval scores them against the real images like
any image model's (FD against the real-vs-real floor, class consistency).

The tokenizer is a `tokenize`-capable model (a genray VQ-VAE) named by a model reference
(`model.tokenizer: models:/vqvae-fashion_mnist@champion`). It is a frozen submodule: its weights
travel inside the prior's checkpoint, it stays in eval mode, no optimizer sees it.

Likelihood. When the token network has an exact log P(ids) and the tokenizer a point-mass
posterior with a decoder density (VQ-VAE), the prior replaces the tokenizer's unigram in the
VQ-VAE bound:

    log p(x) >= log p(x | z_q(x)) + log P_prior(ids(x))

in the tokenizer's space (a density on [-1, 1]^D): a bound, so `log_prob_kind = "bound"`. The
better the prior, the tighter the bound; genray eval reports it as bits/dim beside the VQ-VAE's
own (unigram) figure.
"""
from typing import Any

import torch
from pydantic import create_model
from torch import Tensor, nn

from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.models.protocol import SETTINGS_CONFIG
from genray.components.models.refs import ModelRef, frozen_module
from genray.components.training import Backprop

# Token-network settings a prior fixes: it always makes a whole grid, from no prompt.
FIXED_SETTINGS = ("max_new_tokens",)


def tokenizer_module(ref: ModelRef, data: DatasetInfo, family: str) -> nn.Module:
    """The frozen tokenizer `ref` names, checked against the image data the prior trains on."""
    tok = frozen_module(ref, family, "tokenizer")  # any family that declares tokenize, checked next
    if "tokenize" not in getattr(tok, "capabilities", ()):
        raise UserError(f"{family}: model.tokenizer {ref.ref} is a {ref.family}, which does not tokenize images; "
                        "name a trained vqvae")
    if not data.kind.is_image:
        raise UserError(f"{family}: with a tokenizer it trains on the tokenizer's image data (image); got "
                        f"{data.modality} data. Without model.tokenizer it trains on tokens data")
    if tuple(tok.image_shape) != tuple(data.image_shape):
        raise UserError(f"{family}: model.tokenizer {ref.ref} was trained on images {tuple(tok.image_shape)}, this "
                        f"data is {tuple(data.image_shape)}")
    return tok


def check_token_data(data: DatasetInfo, family: str, conditioning: str, images_hint: str) -> None:
    """What a token network (GPT, MaskGIT) needs of the data without a tokenizer: tokens with a
    vocabulary, and labels when class-conditional. `images_hint` says what to do with images."""
    if data.modality != "tokens":
        raise UserError(f"{family} trains on tokens data (a sequence of token ids per row, with a vocabulary); "
                        f"got {data.modality} data of shape {list(data.shape)}. {images_hint}")
    if not data.vocab:
        raise UserError(f"{family}: the tokens dataset has no vocabulary (metadata genray.vocab); it sets the output size")
    if conditioning == "class" and data.num_classes < 1:
        raise UserError(f"{family}: conditioning: class needs class labels, but the dataset has none "
                        f"(num_classes={data.num_classes}); use a labelled dataset or conditioning: none")


def token_data(tokenizer: nn.Module, data: DatasetInfo) -> DatasetInfo:
    """The tokens dataset the token network is built for: rows of h*w code ids "0".."K-1", the
    image data's labels kept."""
    h, w = tokenizer.grid
    vocab = tuple(str(i) for i in range(tokenizer.codebook_size))
    columns = ("tokens", "label") if data.num_classes else ("tokens",)
    return DatasetInfo("tokens", (h * w,), data.num_rows, data.num_classes, vocab, columns)


class TokenPrior(nn.Module):
    """`net` (a token model over h*w ids) made into an image model through `tokenizer` (frozen)."""

    def __init__(self, net: nn.Module, tokenizer: nn.Module):
        super().__init__()
        h, w = tokenizer.grid
        if net.seq_len != h * w or net.vocab_size != tokenizer.codebook_size:
            raise ValueError(f"token prior: the network models {net.seq_len} tokens over {net.vocab_size} ids; the "
                             f"tokenizer makes {h}x{w} grids over {tokenizer.codebook_size} codes")
        self.net = net
        self.tokenizer = tokenizer.requires_grad_(False).eval()
        self.grid = (h, w)
        self.image_shape = tuple(tokenizer.image_shape)
        self.num_classes, self.conditioning = net.num_classes, net.conditioning
        caps = {"sample"} | ({"condition"} & net.capabilities)
        if "log_prob" in net.capabilities and "log_prob" in tokenizer.capabilities and hasattr(tokenizer, "terms"):
            caps.add("log_prob")
            self.log_prob_space, self.log_prob_kind = tokenizer.log_prob_space, "bound"
        self.capabilities = frozenset(caps)
        fields = net.sampling_settings.model_fields
        self.sampling_settings = create_model(
            f"{type(net).__name__}PriorSampling", __config__=SETTINGS_CONFIG,
            **{k: (f.annotation, f) for k, f in fields.items() if k not in FIXED_SETTINGS})
        self.recipe = Backprop()

    def train(self, mode: bool = True):
        super().train(mode)
        self.tokenizer.eval()  # frozen, whatever the rest is doing
        return self

    # -- images <-> tokens ---------------------------------------------------------------------------

    @torch.no_grad()
    def tokens(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) in [-1, 1] -> code ids (B, h*w), row-major."""
        return self.tokenizer.tokens(x.float()).flatten(1)

    @torch.no_grad()
    def images(self, ids: Tensor) -> Tensor:
        """Code ids (B, h*w) -> decoded images (B, C, H, W) in [-1, 1]."""
        return self.tokenizer.decode_tokens(ids.view(len(ids), *self.grid))

    def _token_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {**batch, "x": self.tokens(batch["x"])}

    # -- training ------------------------------------------------------------------------------------

    def forward(self, batch: dict[str, Tensor], phase: str = "main") -> tuple[Tensor, dict[str, Tensor]]:
        return self.net(self._token_batch(batch), phase)

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The token network's held-out scores on the images' codes (its "loss": nats per token)."""
        return self.net.evaluate(self._token_batch(batch), generator=generator)

    # -- using the trained model -----------------------------------------------------------------------

    def sampling_cost(self, settings) -> int:
        return self.net.sampling_cost(self.net.sampling_settings.model_validate(settings.model_dump()))

    @torch.no_grad()
    def sample_tokens(self, n: int, *, generator=None, **kwargs: Any) -> Tensor:
        """n grids of code ids, (n, h*w) long."""
        return self.net.sample(n, generator=generator, **kwargs)

    @torch.no_grad()
    def sample(self, n: int, *, generator=None, **kwargs: Any) -> Tensor:
        """n images (n, C, H, W) in [-1, 1]: the network's code grids, decoded by the tokenizer.
        kwargs: the condition (y, or prompt) and the sampling settings."""
        return self.images(self.sample_tokens(n, generator=generator, **kwargs))

    @torch.no_grad()
    def log_prob(self, x: Tensor, *, y: Tensor | None = None, generator: torch.Generator | None = None,
                 **kwargs: Any) -> Tensor:
        """log p(x | z_q) + log P_prior(ids) <= log p(x), nats per image (B,) (module docstring)."""
        t = self.tokenizer.terms(x.float())
        return -t["recon"] + self.net.log_prob(t["ids"].flatten(1), y=y, **kwargs)

    @torch.no_grad()
    def eval_samples(self, n: int, *, generator_seed: int, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """n images from the prior (classes cycling when class-conditional)."""
        return {k: self.images(v) for k, v in
                self.net.eval_samples(n, generator_seed=generator_seed, batch=self._token_batch(batch)).items()}
