"""The ADM UNet: the denoising network of diffusion models (Ho et al. 2020; Dhariwal & Nichol 2021),
with optional class labels and cross-attention to a text context (Rombach et al. 2022, §3.3).

The network maps (x_t, t[, y, context]) to a tensor shaped like x_t. What that output *means*
(eps, x0, v, a velocity field) and how t is scaled are the objective's business, not this file's:
the network knows nothing of noise schedules, samplers or losses.

Layout (Dhariwal & Nichol 2021, appendix; Ho et al. 2020, appendix B): level i runs at
image_size / 2**i with channels * channel_mults[i] feature maps. Going down, each level has
num_res_blocks residual blocks then a strided-conv downsample (none after the last level); a
middle block (ResBlock, attention, ResBlock) sits at the lowest resolution; going up, each level
has num_res_blocks + 1 blocks, each eating one skip connection (concatenated), then a nearest +
conv upsample (none after level 0).

Null context: every cross-attention layer has a learned null key/value token that every query can
always attend to (a learned "null_kv", as in open implementations such as lucidrains'
imagen-pytorch). A context whose mask is all False (the unconditional branch of classifier-free
guidance, Ho & Salimans 2022) therefore attends only to that token and stays finite, and
``context=None`` is the same thing: an empty context, the null token alone.
"""
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) times t (B,) -> float32 (B, dim).

    Vaswani et al. 2017, §3.5, as used for diffusion times by Ho et al. 2020, appendix B:
    [sin(t * f_k), cos(t * f_k)] with f_k = max_period^(-k / (dim/2)), k = 0 .. dim/2 - 1.
    An odd dim gets one zero column at the end. The frequencies resolve integer-scale times, so a
    continuous-time objective with t in [0, 1] should scale t up (e.g. by 1000) before calling.
    """
    if t.ndim != 1:
        raise ValueError(f"timestep_embedding: t must be one time per example, shape (B,), got {tuple(t.shape)}")
    if dim < 1:
        raise ValueError(f"timestep_embedding: dim must be >= 1, got {dim}")
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(-math.log(max_period) * k / max(half, 1))  # (dim/2,)
    args = t.float()[:, None] * freqs[None]  # (B, dim/2)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (B, 2 * (dim/2))
    if dim % 2:
        emb = F.pad(emb, (0, 1))  # (B, dim)
    return emb


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------


def _norm(c: int) -> nn.GroupNorm:
    # 32 groups as in ADM (Wu & He 2018's default) when C allows it; gcd always divides C.
    return nn.GroupNorm(math.gcd(32, c), c)


def _zero(m: nn.Module) -> nn.Module:
    """Zero a layer's weight and bias, so the residual branch it ends starts as nothing
    (Goyal et al. 2017's zero-gamma trick; ADM's zero_module)."""
    nn.init.zeros_(m.weight)
    nn.init.zeros_(m.bias)
    return m


class ResBlock(nn.Module):
    """norm -> SiLU -> conv -> AdaGN(emb) -> SiLU -> dropout -> zero-init conv, plus a skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = _norm(c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x (B, C_in, H, W), emb (B, emb_dim) already through SiLU -> (B, C_out, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        # Dhariwal & Nichol 2021, §3 (AdaGN): h = GroupNorm(h) * (1 + scale) + shift.
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)  # (B, C_out, 1, 1) each
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))  # (B, C_out, H, W)
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the H*W positions, then (with context_dim) cross-attention to a context.

    Each sub-block is norm -> attention -> zero-init projection, added back to its input, so the
    block starts as the identity. Heads: C // head_dim, lowered until it divides C, at least 1.
    """

    def __init__(self, c: int, head_dim: int, context_dim: int | None):
        super().__init__()
        self.heads = max(1, c // head_dim)
        while c % self.heads:
            self.heads -= 1
        self.norm = _norm(c)
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = _zero(nn.Linear(c, c))
        self.cross = context_dim is not None
        if self.cross:
            # Rombach et al. 2022, §3.3: queries from the image, keys and values from the context.
            self.cross_norm = _norm(c)
            self.q = nn.Linear(c, c)
            self.kv = nn.Linear(context_dim, 2 * c)
            # The always-attendable null token (see the module docstring): its key and value.
            self.null_kv = nn.Parameter(torch.randn(2, c) * 0.02)
            self.cross_proj = _zero(nn.Linear(c, c))

    def _heads(self, z: Tensor) -> Tensor:
        b, n, c = z.shape
        return z.view(b, n, self.heads, c // self.heads).transpose(1, 2)  # (B, heads, N, C/heads)

    def forward(self, x: Tensor, context: Tensor | None, keep: Tensor | None) -> Tensor:
        """x (B, C, H, W); context (B, L, context_dim), L may be 0, or None without cross-attention;
        keep (B, L) bool, True = attend, or None for all of them."""
        b, c, hgt, wid = x.shape
        # -- self-attention (Ho et al. 2020 use it at 16x16; Dhariwal & Nichol 2021 at 32, 16 and 8) --
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.qkv(h).chunk(3, dim=2)  # (B, HW, C) each
        a = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))  # (B, heads, HW, C/heads)
        a = self.proj(a.transpose(1, 2).reshape(b, hgt * wid, c))  # (B, HW, C)
        x = x + a.transpose(1, 2).reshape(b, c, hgt, wid)
        if not self.cross:
            return x
        # -- cross-attention to the null token and the context --
        h = self.cross_norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q = self.q(h)  # (B, HW, C)
        k, v = self.kv(context).chunk(2, dim=2)  # (B, L, C) each
        null_k, null_v = self.null_kv.to(k.dtype)[:, None, None, :].expand(2, b, 1, c)  # (B, 1, C) each
        k = torch.cat([null_k, k], dim=1)  # (B, 1 + L, C)
        v = torch.cat([null_v, v], dim=1)  # (B, 1 + L, C)
        mask = None
        if keep is not None:
            # SDPA's bool mask: True = may attend. The null column is always True, so no row is
            # fully masked and the softmax never normalises over nothing but -inf.
            mask = F.pad(keep, (1, 0), value=True)[:, None, None, :]  # (B, 1, 1, 1 + L)
        a = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v),
                                           attn_mask=mask)  # (B, heads, HW, C/heads)
        a = self.cross_proj(a.transpose(1, 2).reshape(b, hgt * wid, c))  # (B, HW, C)
        return x + a.transpose(1, 2).reshape(b, c, hgt, wid)


class Stage(nn.Module):
    """One ResBlock, then attention if this level has it."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, attention: bool,
                 head_dim: int, context_dim: int | None):
        super().__init__()
        self.res = ResBlock(c_in, c_out, emb_dim, dropout)
        self.attn = AttentionBlock(c_out, head_dim, context_dim) if attention else None

    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None, keep: Tensor | None) -> Tensor:
        h = self.res(x, emb)  # (B, C_out, H, W)
        return h if self.attn is None else self.attn(h, context, keep)


class Level(nn.Module):
    """The stages of one resolution, then the resample to the next (None at the ends)."""

    def __init__(self, stages: list[Stage], resample: nn.Module | None):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.resample = resample


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------


class UNet(nn.Module):
    """eps_theta(x_t, t[, y, context]) of Ho et al. 2020, in the ADM layout of Dhariwal & Nichol
    2021. The output has out_channels (default in_channels) and x's H and W, and is exactly zero
    at initialisation (zero-init output conv)."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int | None = None,
        image_size: tuple[int, int],
        channels: int,
        channel_mults: tuple[int, ...],
        num_res_blocks: int,
        attention_levels: tuple[int, ...],
        head_dim: int = 32,
        dropout: float = 0.0,
        num_classes: int = 0,
        context_dim: int | None = None,
    ):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"unet: in_channels and out_channels must be >= 1, got {in_channels=}, {out_channels=}")
        if channels < 1 or head_dim < 1:
            raise ValueError(f"unet: channels and head_dim must be >= 1, got {channels=}, {head_dim=}")
        if not channel_mults or any(m < 1 for m in channel_mults):
            raise ValueError(
                f"unet: channel_mults needs one positive multiplier per resolution level, e.g. (1, 2, 2); "
                f"got {tuple(channel_mults)}"
            )
        if num_res_blocks < 1:
            raise ValueError(f"unet: num_res_blocks must be >= 1, got {num_res_blocks}")
        n_levels = len(channel_mults)
        bad = [lvl for lvl in attention_levels if not 0 <= lvl < n_levels]
        if bad:
            raise ValueError(
                f"unet: attention_levels are indices into channel_mults (0 = full resolution, "
                f"{n_levels - 1} = lowest), so each must be in [0, {n_levels - 1}]; got {tuple(attention_levels)}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"unet: dropout must be in [0, 1), got {dropout}")
        if num_classes < 0:
            raise ValueError(f"unet: num_classes must be >= 0 (0 = no class labels), got {num_classes}")
        if context_dim is not None and context_dim < 1:
            raise ValueError(f"unet: context_dim must be >= 1, or None for no cross-attention; got {context_dim}")
        if len(image_size) != 2:
            raise ValueError(f"unet: image_size must be (H, W), got {tuple(image_size)}")
        self.factor = 2 ** (n_levels - 1)
        self._check_size(tuple(image_size), n_levels)
        self.in_channels = in_channels
        self.image_size = tuple(image_size)
        self.channels = channels
        self.num_classes = num_classes
        self.context_dim = context_dim

        # -- conditioning: time (and label) -> one embedding vector per example --
        emb_dim = 4 * channels  # as in the DDPM and ADM code: time_embed_dim = 4 * model_channels
        self.emb_dim = emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # Row num_classes is the null label, trained by label dropout for classifier-free guidance
        # (Ho & Salimans 2022).
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None

        def stage(c_in: int, c_out: int, attention: bool) -> Stage:
            return Stage(c_in, c_out, emb_dim, dropout, attention, head_dim, context_dim)

        # -- down: num_res_blocks per level, every output kept as a skip --
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        c = channels
        skips = [c]
        down = []
        for level, mult in enumerate(channel_mults):
            stages = []
            for _ in range(num_res_blocks):
                stages.append(stage(c, channels * mult, level in attention_levels))
                c = channels * mult
                skips.append(c)
            resample = None
            if level < n_levels - 1:
                resample = nn.Conv2d(c, c, 3, stride=2, padding=1)  # ADM's conv_resample downsample
                skips.append(c)
            down.append(Level(stages, resample))
        self.down = nn.ModuleList(down)

        # -- middle, at the lowest resolution: always with attention --
        self.mid = stage(c, c, True)
        self.mid_res = ResBlock(c, c, emb_dim, dropout)

        # -- up: num_res_blocks + 1 per level, each eating one skip (concatenated) --
        up = []
        for level, mult in reversed(list(enumerate(channel_mults))):
            stages = []
            for _ in range(num_res_blocks + 1):
                stages.append(stage(c + skips.pop(), channels * mult, level in attention_levels))
                c = channels * mult
            resample = None
            if level > 0:
                # Nearest + conv, not a transposed conv: no checkerboard artifacts (Odena et al. 2016).
                resample = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1))
            up.append(Level(stages, resample))
        self.up = nn.ModuleList(up)

        self.norm_out = _norm(c)
        self.conv_out = _zero(nn.Conv2d(c, out_channels, 3, padding=1))

    def _check_size(self, size: tuple[int, int], n_levels: int) -> None:
        h, w = size
        if h < 1 or w < 1 or h % self.factor or w % self.factor:
            raise ValueError(
                f"unet: image H and W must be divisible by 2**(len(channel_mults) - 1) = {self.factor}, "
                f"because the UNet halves them {n_levels - 1} times and the skip connections must line "
                f"up on the way back; got {h}x{w}. Use fewer channel_mults or resize/pad the images."
            )

    def forward(self, x: Tensor, t: Tensor, *, y: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None, cond_emb: Tensor | None = None) -> Tensor:
        """x (B, in_channels, H, W); t (B,) or () float or long; y (B,) long in [0, num_classes]
        (num_classes = null; None = all null); context (B, L, context_dim) with context_mask (B, L)
        bool, True = real token (None = all real); cond_emb (B, emb_dim), a condition's own
        embedding added to the time embedding (unCLIP's projected CLIP image embedding; zeros or
        None = none) -> (B, out_channels, H, W)."""
        b = x.shape[0]
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"unet: x must be (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        self._check_size(tuple(x.shape[2:]), len(self.down))
        if t.ndim == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"unet: t must be one time per example, shape ({b},) or (), got {tuple(t.shape)}")

        # -- embedding --
        emb = self.time_mlp(timestep_embedding(t, self.channels))  # (B, emb_dim)
        if self.label_emb is not None:
            if y is None:
                y = torch.full((b,), self.num_classes, dtype=torch.long, device=x.device)
            if y.shape != (b,) or y.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"unet: y must be integer labels of shape ({b},), got {y.dtype} {tuple(y.shape)}")
            # One host sync per call; cheap next to the network, and it beats a device-side assert.
            if bool(((y < 0) | (y > self.num_classes)).any()):
                raise ValueError(
                    f"unet: labels must be in [0, {self.num_classes}] ({self.num_classes} = the null label "
                    f"for classifier-free guidance); got min {int(y.min())}, max {int(y.max())}"
                )
            emb = emb + self.label_emb(y)  # (B, emb_dim)
        elif y is not None:
            raise ValueError("unet: this UNet has num_classes=0 (no class labels); call it without y")
        if cond_emb is not None:
            if cond_emb.shape != (b, self.emb_dim):
                raise ValueError(f"unet: cond_emb must be (B={b}, emb_dim={self.emb_dim}), got {tuple(cond_emb.shape)}")
            emb = emb + cond_emb.to(emb.dtype)  # (B, emb_dim)
        emb = F.silu(emb)  # every ResBlock's emb projection starts with SiLU (ADM); do it once here
        keep = self._check_context(b, context, context_mask)
        if self.context_dim is not None and context is None:
            # The null context as an empty sequence: only the null token is left to attend to, and
            # the key/value projections stay in the graph (zero grads), as DDP requires.
            context = x.new_zeros(b, 0, self.context_dim)  # (B, 0, context_dim)

        # -- down --
        h = self.conv_in(x)  # (B, channels, H, W)
        skips = [h]
        for level in self.down:
            for stage in level.stages:
                h = stage(h, emb, context, keep)  # (B, channels * mult, H/2^i, W/2^i)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)  # (B, C, H/2^(i+1), W/2^(i+1))
                skips.append(h)

        # -- middle --
        h = self.mid_res(self.mid(h, emb, context, keep), emb)  # (B, C, H/f, W/f)

        # -- up --
        for level in self.up:
            for stage in level.stages:
                h = stage(torch.cat([h, skips.pop()], dim=1), emb, context, keep)  # (B, channels * mult, ...)
            if level.resample is not None:
                h = level.resample(h)  # (B, C, 2x, 2x)

        return self.conv_out(F.silu(self.norm_out(h)))  # (B, out_channels, H, W)

    def _check_context(self, b: int, context: Tensor | None, context_mask: Tensor | None) -> Tensor | None:
        """Validate the context and return the keep-mask (B, L) bool, or None for all-real."""
        if self.context_dim is None:
            if context is not None or context_mask is not None:
                raise ValueError("unet: this UNet has context_dim=None (no cross-attention); call it without context")
            return None
        if context is None:
            if context_mask is not None:
                raise ValueError("unet: context_mask given without context; pass both, or neither for the null context")
            return None  # the null context (forward makes it an empty sequence)
        if context.ndim != 3 or context.shape[0] != b or context.shape[2] != self.context_dim:
            raise ValueError(
                f"unet: context must be (B={b}, L, context_dim={self.context_dim}), got {tuple(context.shape)}"
            )
        if context_mask is None:
            return None
        if context_mask.dtype != torch.bool or context_mask.shape != context.shape[:2]:
            raise ValueError(
                f"unet: context_mask must be bool (B, L) = {tuple(context.shape[:2])}, True = real token; "
                f"got {context_mask.dtype} {tuple(context_mask.shape)}"
            )
        return context_mask
