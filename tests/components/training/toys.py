"""Small models for the recipe tests, one per training method, and the two-process harness.

Each is a real (if tiny) instance of its method: a regressor (one backprop loss), a GAN and a
two-pair CycleGAN (adversarial), a Bernoulli RBM (contrastive divergence), a model trained
against its own EMA target (consistency training's shape), an ActNorm flow layer
(data-dependent initialisation); and a tiny real VQ-VAE, whose codebook is buffers updated
inside its forward.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from genray.components.training import Adversarial, Backprop, ContrastiveDivergence, EMATarget


class Regressor(nn.Module):
    def __init__(self, d: int = 4):
        super().__init__()
        self.net = nn.Linear(d, 1)
        self.recipe = Backprop()

    def forward(self, batch, phase):
        loss = F.mse_loss(self.net(batch["x"]).squeeze(1), batch["y"])
        return loss, {}


class ToyGAN(nn.Module):
    """Generator and discriminator MLPs on 2-D points; R1 on the "disc_reg" phase."""

    def __init__(self, *, g_lr=None, d_lr=None, n_critic=1, r1_every=0, r1_gamma=1.0):
        super().__init__()
        self.generator = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
        self.discriminator = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 1))
        self.r1_gamma, self.r1_every = r1_gamma, r1_every
        self.recipe = Adversarial(generator=("generator",), discriminator=("discriminator",), g_lr=g_lr, d_lr=d_lr,
                                  n_critic=n_critic, r1_every=r1_every)

    def forward(self, batch, phase):
        x = batch["x"]
        z = torch.randn_like(x)
        if phase == "disc":
            fake = self.generator(z).detach()
            loss = F.softplus(-self.discriminator(x)).mean() + F.softplus(self.discriminator(fake)).mean()
        elif phase == "disc_reg":
            x = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.discriminator(x).sum(), x, create_graph=True)
            loss = 0.5 * self.r1_gamma * g.pow(2).sum(1).mean() * self.r1_every
        else:
            loss = F.softplus(-self.discriminator(self.generator(z))).mean()
        return loss, {}


class ToyCycleGAN(nn.Module):
    """Four networks in two adversarial pairs: G_ab/D_b and G_ba/D_a, with a cycle loss."""

    def __init__(self, d: int = 3):
        super().__init__()
        self.g_ab, self.g_ba = nn.Linear(d, d), nn.Linear(d, d)
        self.d_a, self.d_b = nn.Linear(d, 1), nn.Linear(d, 1)
        self.recipe = Adversarial(generator=("g_ab", "g_ba"), discriminator=("d_a", "d_b"))

    def forward(self, batch, phase):
        a, b = batch["x"], batch["x_b"]
        if phase == "disc":
            fb, fa = self.g_ab(a).detach(), self.g_ba(b).detach()
            loss = (F.softplus(-self.d_b(b)) + F.softplus(self.d_b(fb)) + F.softplus(-self.d_a(a))
                    + F.softplus(self.d_a(fa))).mean()
        else:
            fb, fa = self.g_ab(a), self.g_ba(b)
            cycle = (self.g_ba(fb) - a).abs().mean() + (self.g_ab(fa) - b).abs().mean()
            loss = F.softplus(-self.d_b(fb)).mean() + F.softplus(-self.d_a(fa)).mean() + 10 * cycle
        return loss, {}


class BernoulliRBM(nn.Module):
    """E(v, h) = -b.v - c.h - v.W.h with binary units (Hinton 2002); PCD chains in a buffer."""

    def __init__(self, visible: int = 6, hidden: int = 4, num_chains: int = 8, k: int = 1, persistent: bool = True):
        super().__init__()
        self.W = nn.Parameter(0.01 * torch.randn(visible, hidden))
        self.b = nn.Parameter(torch.zeros(visible))
        self.c = nn.Parameter(torch.zeros(hidden))
        self.register_buffer("chains", torch.bernoulli(torch.full((num_chains, visible), 0.5)))
        self.recipe = ContrastiveDivergence(k=k, persistent=persistent)

    def hidden_probs(self, v: Tensor) -> Tensor:
        return torch.sigmoid(v @ self.W + self.c)

    def gibbs(self, v: Tensor, k: int) -> Tensor:
        for _ in range(k):
            h = torch.bernoulli(self.hidden_probs(v))
            v = torch.bernoulli(torch.sigmoid(h @ self.W.T + self.b))
        return v

    def statistics(self, v: Tensor) -> dict[str, Tensor]:
        """E[-dF/dtheta] with the hidden units summed out (F the free energy)."""
        ph = self.hidden_probs(v)
        return {"W": v.T @ ph / len(v), "b": v.mean(0), "c": ph.mean(0)}


class SelfTarget(nn.Module):
    """Regresses its output on x + noise onto its EMA target's output on x: the shape of
    consistency training's loss (Song et al. 2023, eq. 10), without the noise schedule."""

    def __init__(self, d: int = 3, decay: float = 0.9):
        super().__init__()
        self.net = nn.Linear(d, d)
        self.recipe = EMATarget(decay=decay)

    def forward(self, batch, phase, target):
        x = batch["x"]
        with torch.no_grad():
            goal = target.net(x)
        return F.mse_loss(self.net(x + 0.1 * torch.randn_like(x)), goal) + F.mse_loss(self.net(x), x), {}


class ActNorm(nn.Module):
    """Glow's ActNorm (Kingma & Dhariwal 2018, §3.1): per-channel scale and bias initialised from
    the first batch so its outputs have zero mean and unit variance; trained as a flow (NLL)."""

    def __init__(self, d: int = 3):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(d))
        self.bias = nn.Parameter(torch.zeros(d))
        self.recipe = Backprop(init=self.initialize)

    @torch.no_grad()
    def initialize(self, batch):
        x = batch["x"]
        self.bias.copy_(-x.mean(0))
        self.log_scale.copy_(-torch.log(x.std(0) + 1e-6))

    def forward(self, batch, phase):
        z = (batch["x"] + self.bias) * self.log_scale.exp()
        nll = 0.5 * z.pow(2).sum(1) - self.log_scale.sum()
        return nll.mean(), {}


# ------------------------------------------------------------------------------------ two ranks


def _engine(model):
    from genray.components.training import Engine, OptimDefaults, StepSettings

    return Engine(model, defaults=OptimDefaults(lr=1e-2, betas=(0.9, 0.99)), settings=StepSettings(max_steps=100, grad_clip=None))


def _cycle_rank(rank: int, tmp: str):
    torch.manual_seed(0)
    model = ToyCycleGAN()
    engine = _engine(model)
    reduced: list[int] = []
    real_all_reduce = dist.all_reduce

    def spy(tensor, *args, **kwargs):  # the real collective, recording what it carried
        reduced.append(tensor.numel())
        return real_all_reduce(tensor, *args, **kwargs)

    dist.all_reduce = spy
    grads_seen = {name: 0 for name in ("g_ab", "g_ba", "d_a", "d_b")}
    for name in grads_seen:
        for p in getattr(model, name).parameters():
            p.register_hook(lambda g, name=name: grads_seen.__setitem__(name, grads_seen[name] + 1))
    torch.manual_seed(rank)  # each rank its own data
    engine.train_step({"x": torch.randn(8, 3), "x_b": torch.randn(8, 3)})
    dist.all_reduce = real_all_reduce
    return {"reduced": torch.tensor(reduced), "grads": torch.tensor([grads_seen[n] for n in sorted(grads_seen)]),
            **{k: v for k, v in model.state_dict().items()}}


def _target_rank(rank: int, tmp: str):
    torch.manual_seed(0)
    model = SelfTarget(decay=0.9)
    engine = _engine(model)
    before = {k: v.clone() for k, v in model.recipe.target.state_dict().items()}
    torch.manual_seed(100 + rank)
    engine.train_step({"x": torch.randn(8, 3)})
    expected = {k: 0.9 * before[k] + 0.1 * v for k, v in model.state_dict().items()}
    for _ in range(4):
        engine.train_step({"x": torch.randn(8, 3)})
    return {"one_step_ok": torch.tensor(True), **{f"target.{k}": v for k, v in model.recipe.target.state_dict().items()},
            **{f"model.{k}": v for k, v in model.state_dict().items()},
            **{f"expected.{k}": v for k, v in expected.items()}}


def _actnorm_rank(rank: int, tmp: str):
    torch.manual_seed(0)
    model = ActNorm()
    engine = _engine(model)
    torch.manual_seed(rank)
    batch = {"x": torch.randn(64, 3) * (3.0 + rank) + 5.0 * rank}
    engine.initialize(batch)
    return {k: v for k, v in model.state_dict().items()}


def codebook_batches(rank: int, steps: int = 4) -> list[Tensor]:
    """Each rank's own 8x8 images for the VQ-VAE codebook claims: 6 per step, shifted by rank."""
    g = torch.Generator().manual_seed(10 + rank)
    return [(torch.rand(6, 1, 8, 8, generator=g) * 2 - 1) * (0.5 + 0.5 * rank) for _ in range(steps)]


def vq_codebook_model(restart: bool):
    """A tiny VQ-VAE whose EMA codebook forgets fast and restarts codes early (16 codes of 4)."""
    from genray.components.data import DatasetInfo
    from genray.components.models import build

    torch.manual_seed(0)
    args = {"size": "tiny", "codebook_size": 16, "code_dim": 4, "ema_decay": 0.5, "restart_dead_codes": restart,
            "dead_code_threshold": 0.5}
    return build("vqvae", args, DatasetInfo.for_images((1, 8, 8)))


def _codebook_rank(rank: int, tmp: str):
    """The VQ-VAE's EMA codebook (buffers updated inside forward) through the engine: init from each
    rank's first batch, then steps on each rank's own data with each rank's own global generator, as
    the training loop seeds it. Restarts on; and off, the EMA step alone on a fixed encoder (lr 0),
    to compare with one step on both ranks' batches together."""
    from genray.components.training import Engine, OptimDefaults, StepSettings

    out = {}
    for restart in (True, False):
        model = vq_codebook_model(restart)
        engine = Engine(model, defaults=OptimDefaults(lr=1e-2 if restart else 0.0),
                        settings=StepSettings(max_steps=100, grad_clip=None))
        batches = codebook_batches(rank)
        torch.manual_seed(100 + rank)
        engine.initialize({"x": batches[0]})
        dead = 0.0
        for x in batches:
            torch.manual_seed(200 + rank)
            dead += engine.train_step({"x": x})["dead_codes"]
        out.update({f"{restart}/{k}": v for k, v in model.state_dict().items()})
        out[f"{restart}/dead"] = torch.tensor(dead)
    return out


def two_rank_scenarios(rank: int, tmp: str) -> dict[str, Tensor]:
    """The rank claims of points c, f and g and of the VQ-VAE's codebook in one process group (one
    spawn: ~10 s)."""
    out = {}
    for prefix, fn in (("cycle", _cycle_rank), ("target", _target_rank), ("actnorm", _actnorm_rank),
                       ("codebook", _codebook_rank)):
        out.update({f"{prefix}/{k}": v for k, v in fn(rank, tmp).items()})
    return out


def run_two_ranks(fn: Callable[[int, str], Any], tmp: str) -> list[Any]:
    """fn(rank, tmp) in two real processes joined by a gloo group; returns what each saved."""
    import torch.multiprocessing as mp

    mp.spawn(_entry, args=(fn, tmp), nprocs=2, join=True)
    return [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=True) for r in range(2)]


def _entry(rank: int, fn, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=2)
    try:
        torch.save(fn(rank, tmp), os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
