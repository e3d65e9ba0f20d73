"""CycleGAN (Zhu et al. 2017): unpaired image-to-image translation between two domains A and B
(data kind two_domain_image: each row one image and its `domain`, 0 = A, 1 = B) with two
generators, g_ab: A -> B and g_ba: B -> A (the paper's G and F), and two PatchGAN
discriminators, d_a (real A vs g_ba's output) and d_b (real B vs g_ab's output).

The objective (§3, eq. 3) is L_GAN(G, D_Y) + L_GAN(F, D_X) + lambda * L_cyc(G, F), with
L_cyc = E|F(G(x)) - x|_1 + E|G(F(y)) - y|_1 (eq. 2) and lambda = 10 (§4). §4 replaces the
negative log likelihood of L_GAN by a least-squares loss (Mao et al. 2017), and updates each
discriminator on a history of 50 generated images rather than the latest ones (Shrivastava et
al. 2017). §5.2 adds an identity loss, E|G(y) - y|_1 + E|F(x) - x|_1, weighted 0.5 * lambda,
that keeps a colour composition the translation need not change.

Trained by the adversarial recipe (components/training/adversarial.py) with two networks per
role: "disc" steps d_a and d_b on real images vs pooled translations, "gen" steps g_ab and g_ba
through both discriminators plus the cycle and identity terms. A batch is a random mix of the
two domains, split here by batch["domain"]; a batch with no rows of one domain drops the terms
that need them. The paper keeps the learning rate for the first half of training and decays it
linearly to zero over the second (§4): the trainer's schedule, `lr_schedule: linear`,
`lr_decay_start: 0.5`, `min_lr_ratio: 0.0` (the shipped config).
"""
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.models.dcgan import dcgan_init
from genray.components.models.layers import StackedGenerators, check_image_shape, translation_inputs
from genray.components.models.pix2pix import MAX_WIDTH_MULT, patch_halvings, patch_layers, receptive_field
from genray.components.models.protocol import NoSettings
from genray.components.training import Adversarial


# ---------------------------------------------------------------------------------------------
# Losses, as plain functions of tensors
# ---------------------------------------------------------------------------------------------


def discriminator_loss(real_out: Tensor | None, fake_out: Tensor | None) -> Tensor:
    """0.5 * (E[(D(y) - 1)^2] + E[D(G(x))^2]): the least-squares GAN loss of one discriminator
    (§4, "Training details": "we train the G to minimize E[(D(G(x)) - 1)^2] and train the D to
    minimize E[(D(y) - 1)^2] + E[D(G(x))^2]"; halved as the paper does "while optimizing D, which
    slows down the rate at which D learns"). Each expectation over the batch and every patch.
    A term whose outputs are None (no rows of that domain in the batch) is left out."""
    terms = []
    if real_out is not None:
        terms.append((real_out.float() - 1).pow(2).mean())
    if fake_out is not None:
        terms.append(fake_out.float().pow(2).mean())
    if not terms:
        raise ValueError("discriminator_loss needs real or fake outputs, got neither")
    return 0.5 * sum(terms)


def generator_loss(fake_out: Tensor) -> Tensor:
    """E[(D(G(x)) - 1)^2]: the least-squares GAN loss of a generator (§4)."""
    return (fake_out.float() - 1).pow(2).mean()


def cycle_loss(reconstruction: Tensor, x: Tensor) -> Tensor:
    """E|F(G(x)) - x|_1 (eq. 2, one direction) as the mean absolute difference per pixel."""
    return (reconstruction.float() - x.float()).abs().mean()


def identity_loss(same: Tensor, x: Tensor) -> Tensor:
    """E|F(x) - x|_1 (§5.2, one generator): a generator fed its own target domain should change
    nothing."""
    return (same.float() - x.float()).abs().mean()


# ---------------------------------------------------------------------------------------------
# The history pool
# ---------------------------------------------------------------------------------------------


class HistoryPool(nn.Module):
    """The last translations a discriminator is shown (Shrivastava et al. 2017, §2.3; CycleGAN
    §4: "a history of generated images rather than the ones produced by the latest generators",
    a buffer of 50). Buffers, so a checkpoint carries the pool and a resumed run sees the same.

    query(images): while the pool is filling, each image is stored and returned as it is. Once
    it is full, each image, with probability 1/2, is swapped with a uniformly chosen stored one
    (the stored one is returned, the new one takes its slot); otherwise it is returned as it is
    (the authors' ImagePool). Random draws, from torch's global CPU generator (the engine reseeds
    it per seed, rank and step), in this order: u = rand(B), then slot = randint(size, (B,)),
    both drawn for every query of a full-or-filling pool so a step's draws do not depend on how
    full the pool is. size 0: no pool, images returned as they are, nothing drawn.
    """

    def __init__(self, size: int, image_shape: tuple[int, int, int]):
        super().__init__()
        if size < 0:
            raise ValueError(f"pool size must be >= 0 (0 = no pool), got {size}")
        self.size = size
        self.register_buffer("images", torch.zeros(size, *image_shape))  # (size, C, H, W)
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))  # slots filled so far

    @torch.no_grad()
    def query(self, images: Tensor) -> Tensor:
        if self.size == 0:
            return images
        u = torch.rand(images.shape[0]).tolist()  # (B,) on the CPU: the same draws on every device
        slots = torch.randint(self.size, (images.shape[0],)).tolist()
        out = []
        count = int(self.count)
        for i, image in enumerate(images):
            if count < self.size:  # filling: keep it, show it
                self.images[count] = image.to(self.images.dtype)
                count += 1
                out.append(image)
            elif u[i] > 0.5:  # full: show a stored one, keep the new one in its place
                old = self.images[slots[i]].clone()
                self.images[slots[i]] = image.to(self.images.dtype)
                out.append(old.to(image.dtype))
            else:
                out.append(image)
        self.count.fill_(count)
        return torch.stack(out)  # (B, C, H, W)


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------


def conv_norm_relu(c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    """Convolution-InstanceNorm-ReLU, reflect-padded when stride 1 (the paper's c7s1-k and the
    residual blocks' 3x3; appendix 7.2), zero-padded by 1 when stride 2 (its dk). No bias: the
    instance norm subtracts it anyway."""
    if stride == 1:
        return [nn.ReflectionPad2d(kernel // 2), nn.Conv2d(c_in, c_out, kernel, bias=False),
                nn.InstanceNorm2d(c_out), nn.ReLU()]
    return [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=1, bias=False), nn.InstanceNorm2d(c_out), nn.ReLU()]


class ResidualBlock(nn.Module):
    """Rk: two reflect-padded 3x3 convolutions with k filters and a skip (He et al. 2016, as
    the paper's appendix 7.2 and the authors' code: ReLU after the first only)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(*conv_norm_relu(channels, channels, 3),
                                  *conv_norm_relu(channels, channels, 3)[:-1])  # no ReLU after the sum

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """x (B, C, H, W) -> (B, C, H, W) in [-1, 1]. Appendix 7.2 (after Johnson et al. 2016):
    c7s1-k, d2k, d4k, n x R4k, u2k, uk, c7s1-C with tanh; k = 64 and n = 6 or 9 in the paper (128 or
    256 pixels), k = width and n = blocks here. Instance norm throughout (§4, Ulyanov et al. 2016)."""

    def __init__(self, channels: int, width: int, blocks: int):
        super().__init__()
        k = width
        self.net = nn.Sequential(
            *conv_norm_relu(channels, k, 7),  # c7s1-k: (B, k, H, W)
            *conv_norm_relu(k, 2 * k, 3, stride=2),  # d2k: (B, 2k, H/2, W/2)
            *conv_norm_relu(2 * k, 4 * k, 3, stride=2),  # d4k: (B, 4k, H/4, W/4)
            *[ResidualBlock(4 * k) for _ in range(blocks)],  # R4k x n: (B, 4k, H/4, W/4)
            nn.ConvTranspose2d(4 * k, 2 * k, 3, stride=2, padding=1, output_padding=1, bias=False),
            nn.InstanceNorm2d(2 * k), nn.ReLU(),  # u2k: (B, 2k, H/2, W/2)
            nn.ConvTranspose2d(2 * k, k, 3, stride=2, padding=1, output_padding=1, bias=False),
            nn.InstanceNorm2d(k), nn.ReLU(),  # uk: (B, k, H, W)
            nn.ReflectionPad2d(3), nn.Conv2d(k, channels, 7), nn.Tanh(),  # c7s1-C: (B, C, H, W)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """x (B, C, H, W) -> a grid of scores (B, H', W'), one per overlapping patch: pix2pix's
    PatchGAN (its patch_layers, scaled to the image by patch_halvings) made unconditional, with
    instance norm instead of batch norm (appendix 7.2: C64-C128-C256-C512, no norm on the first,
    LeakyReLU 0.2) and no sigmoid, the least-squares loss reading the raw score (§4)."""

    def __init__(self, channels: int, size: tuple[int, int], width: int):
        super().__init__()
        self.layers = patch_layers(patch_halvings(min(size)))
        self.receptive_field = receptive_field(self.layers)
        body: list[nn.Module] = []
        c = channels
        for i, (kernel, stride) in enumerate(self.layers[:-1]):
            c_out = width * min(2**i, MAX_WIDTH_MULT)
            body += [nn.Conv2d(c, c_out, kernel, stride=stride, padding=1, bias=i == 0),
                     *([nn.InstanceNorm2d(c_out)] if i > 0 else []), nn.LeakyReLU(0.2)]
            c = c_out
        kernel, stride = self.layers[-1]
        body.append(nn.Conv2d(c, 1, kernel, stride=stride, padding=1))
        self.body = nn.Sequential(*body)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x).squeeze(1).float()  # (B, H', W'), float32 under bf16 autocast too


def touch(*modules: nn.Module) -> Tensor:
    """A zero that depends on every parameter of `modules`: the loss of a phase whose batch held
    nothing to compare (one domain only), so backward runs and every parameter gets a (zero)
    gradient, as a multi-worker gradient sync expects."""
    return sum(p.sum() for m in modules for p in m.parameters()) * 0.0


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class CycleGAN(nn.Module):
    capabilities = frozenset({"translate"})  # no "sample": it needs an input to translate
    directions = ("a_to_b", "b_to_a")
    conditioning, num_classes = "none", 0
    sampling_settings = NoSettings  # deterministic generators: nothing to set when translating

    def __init__(
        self,
        *,
        image_shape: tuple[int, int, int],
        width: int,
        blocks: int,
        lambda_cycle: float = 10.0,
        lambda_identity: float = 0.5,
        pool_size: int = 50,
        g_lr: float | None = None,
        d_lr: float | None = None,
    ):
        super().__init__()
        self.image_shape = check_image_shape(image_shape, "cyclegan")
        if lambda_cycle < 0 or lambda_identity < 0:
            raise ValueError(f"cyclegan: lambda_cycle and lambda_identity must be >= 0, got {lambda_cycle} "
                             f"and {lambda_identity}")
        c, h, w = self.image_shape
        self.lambda_cycle, self.lambda_identity = lambda_cycle, lambda_identity
        self.g_ab, self.g_ba = ResnetGenerator(c, width, blocks), ResnetGenerator(c, width, blocks)
        self.d_a, self.d_b = PatchDiscriminator(c, (h, w), width), PatchDiscriminator(c, (h, w), width)
        self.apply(dcgan_init)  # N(0, 0.02) weights, as the authors' code
        # Translations shown to d_a (fake A, from g_ba) and to d_b (fake B, from g_ab).
        self.pool_a, self.pool_b = HistoryPool(pool_size, self.image_shape), HistoryPool(pool_size, self.image_shape)
        self.recipe = Adversarial(generator=("g_ab", "g_ba"), discriminator=("d_a", "d_b"), g_lr=g_lr, d_lr=d_lr)

    def _domains(self, batch: dict[str, Tensor]) -> tuple[Tensor | None, Tensor | None]:
        """The batch's A rows and B rows, (B_a, C, H, W) and (B_b, C, H, W); None for a domain
        with no rows."""
        if "domain" not in batch:
            raise ValueError("cyclegan trains on two domains: every batch needs 'domain' (0 = A, 1 = B), "
                             "the two_domain_image kind's domain column")
        x, domain = batch["x"], batch["domain"].to(batch["x"].device)
        a, b = x[domain == 0], x[domain == 1]
        if len(a) + len(b) != len(x):
            raise ValueError(f"cyclegan: domain values must be 0 or 1, got {sorted(set(domain.tolist()))}")
        return (a if len(a) else None), (b if len(b) else None)

    def forward(self, batch: dict[str, Tensor], phase: str) -> tuple[Tensor, dict[str, Tensor]]:
        a, b = self._domains(batch)
        logs: dict[str, Tensor] = {}
        if phase == "disc":
            with torch.no_grad():  # translations .detach(): this phase steps d_a and d_b only
                fake_b = self.pool_b.query(self.g_ab(a)) if a is not None else None
                fake_a = self.pool_a.query(self.g_ba(b)) if b is not None else None
            # d_a: real A (needs A rows) vs fake A (translated from B rows); d_b the other way.
            outs = {"d_a_real": self.d_a(a) if a is not None else None,
                    "d_a_fake": self.d_a(fake_a) if fake_a is not None else None,
                    "d_b_real": self.d_b(b) if b is not None else None,
                    "d_b_fake": self.d_b(fake_b) if fake_b is not None else None}
            loss = (discriminator_loss(outs["d_a_real"], outs["d_a_fake"])
                    + discriminator_loss(outs["d_b_real"], outs["d_b_fake"]))
            loss = loss + touch(self.d_a, self.d_b)  # one domain only: d_a's real and d_b's fake terms are absent
            logs = {k: v.mean() for k, v in outs.items() if v is not None}  # mean score, LSGAN targets 1 / 0
        elif phase == "gen":
            loss = touch(self.g_ab, self.g_ba)
            for x, g, f, d, fwd, back in ((a, self.g_ab, self.g_ba, self.d_b, "ab", "a"),
                                          (b, self.g_ba, self.g_ab, self.d_a, "ba", "b")):
                if x is None:
                    continue
                fake = g(x)  # G(x): (B_x, C, H, W) in the other domain
                gan = generator_loss(d(fake))
                cyc = cycle_loss(f(fake), x)  # F(G(x)) vs x, eq. 2
                idt = identity_loss(f(x), x)  # F(x) vs x, §5.2: x is already in F's target domain
                loss = loss + gan + self.lambda_cycle * cyc + self.lambda_cycle * self.lambda_identity * idt
                logs |= {f"gan_{fwd}": gan, f"cycle_{back}": cyc, f"idt_{back}": idt}
        else:
            raise ValueError(f"cyclegan phases are disc and gen, got phase={phase!r}")
        return loss, {k: v.detach() for k, v in logs.items()}

    # -- using the trained model ----------------------------------------------------------------------

    @torch.no_grad()
    def translate(self, x: Tensor, *, generator: torch.Generator | StackedGenerators | None = None,
                  direction: str = "a_to_b") -> Tensor:
        """Images (B, C, H, W) in [-1, 1] of one domain -> their translations (B, C, H, W) in
        [-1, 1]: g_ab for "a_to_b", g_ba for "b_to_a". `generator` is accepted for the protocol
        and unused: the generators draw no noise (§4, CycleGAN has no z), so a translation is
        the same for every seed. Eval mode (instance norm has no running statistics, so only
        for form), restored afterwards."""
        if direction not in self.directions:
            raise UserError(f"cyclegan translates in direction {' or '.join(map(repr, self.directions))}, "
                            f"got direction={direction!r}")
        c, h, w = self.image_shape
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, h, w):
            raise UserError(f"cyclegan translates images of shape (B, {c}, {h}, {w}) in [-1, 1]; got {tuple(x.shape)}")
        net = self.g_ab if direction == "a_to_b" else self.g_ba
        device = next(self.parameters()).device
        was_training = net.training
        net.eval()
        try:
            return net(x.to(device)).float().clamp(-1.0, 1.0)
        finally:
            net.train(was_training)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | StackedGenerators | None = None,
               x: Tensor | None = None, direction: str = "a_to_b") -> Tensor:
        """translate(x, direction=) for n inputs x (n, C, H, W). A translation model has nothing
        to draw from without an input, so x is required."""
        x = translation_inputs("cyclegan", n, x, "translate(x, direction='a_to_b' or 'b_to_a')")
        return self.translate(x, generator=generator, direction=direction)

    def sampling_cost(self, settings: BaseModel) -> int:
        return 1  # one generator pass

    @torch.no_grad()
    def eval_samples(self, n: int, *, generator_seed: int, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Four grids whose i-th tiles line up: "a" (A inputs), "a_to_b" (their translations),
        "b", "b_to_a"; n tiles each, rows repeated when the batch holds fewer. A domain the batch
        lacks has no grids."""
        grids = {}
        for name, x in zip(("a", "b"), self._domains(batch)):
            if x is None:
                continue
            x = x[torch.arange(n, device=x.device) % x.shape[0]]
            grids[name] = x.float().clamp(-1.0, 1.0)
            grids[f"{name}_to_{'b' if name == 'a' else 'a'}"] = self.translate(
                x, direction="a_to_b" if name == "a" else "b_to_a")
        return grids

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Held-out cycle and identity L1 (eq. 2, §5.2) per domain; "loss" the mean of the two
        cycle terms. Unpaired data have no target to score a translation against; how well the
        cycle closes is the loss the generators share. A domain the batch lacks takes the
        present domain's values, so every key is a finite mean over this batch's images."""
        a, b = self._domains(batch)
        scores = {}
        modes = self.g_ab.training, self.g_ba.training
        self.g_ab.eval(), self.g_ba.eval()
        try:
            for name, x, g, f in (("a", a, self.g_ab, self.g_ba), ("b", b, self.g_ba, self.g_ab)):
                if x is not None:
                    scores[f"cycle_{name}"] = cycle_loss(f(g(x)), x)  # F(G(x)) vs x
                    scores[f"idt_{name}"] = identity_loss(f(x), x)
        finally:
            self.g_ab.train(modes[0]), self.g_ba.train(modes[1])
        if not scores:
            raise ValueError("cyclegan.evaluate: the batch has no rows")
        for name, other in (("a", "b"), ("b", "a")):
            for term in ("cycle", "idt"):
                if f"{term}_{name}" not in scores:
                    scores[f"{term}_{name}"] = scores[f"{term}_{other}"]
        return {"loss": (scores["cycle_a"] + scores["cycle_b"]) / 2, **scores}


# ---------------------------------------------------------------------------------------------
# Size presets and builder
# ---------------------------------------------------------------------------------------------


def cyclegan_tiny(**kw): return CycleGAN(width=8, blocks=1, **kw)
def cyclegan_small(**kw): return CycleGAN(width=32, blocks=4, **kw)
def cyclegan_base(**kw): return CycleGAN(width=64, blocks=6, **kw)  # the paper's 128-pixel generator


SIZES = {"tiny": cyclegan_tiny, "small": cyclegan_small, "base": cyclegan_base}


def build_cyclegan(
    *,
    data: DatasetInfo,
    size: Literal["tiny", "small", "base"] = "small",
    lambda_cycle: Annotated[float, Field(ge=0)] = 10.0,
    lambda_identity: Annotated[float, Field(ge=0)] = 0.5,
    pool_size: Annotated[int, Field(ge=0)] = 50,
    g_lr: Annotated[float, Field(gt=0)] | None = None,
    d_lr: Annotated[float, Field(gt=0)] | None = None,
) -> CycleGAN:
    """Zhu et al. 2017 on two unpaired domains (domain 0 = A, 1 = B). lambda_cycle weighs the
    cycle L1 (eq. 3; 10), lambda_identity the identity L1 as a fraction of lambda_cycle (§5.2;
    0.5; 0 = none), pool_size the history of translations each discriminator sees (§4; 50; 0 =
    the latest only); g_lr / d_lr (default: trainer.lr) the two roles' learning rates."""
    if data.modality != "two_domain_image":
        raise UserError(f"cyclegan trains on two_domain_image data (image -> x, domain 0 = A / 1 = B; e.g. the "
                        f"built-in fashion_halves), got {data.modality} data")
    return SIZES[size](image_shape=data.image_shape, lambda_cycle=lambda_cycle, lambda_identity=lambda_identity,
                       pool_size=pool_size, g_lr=g_lr, d_lr=d_lr)
