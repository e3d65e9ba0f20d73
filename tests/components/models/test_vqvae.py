"""VQ-VAE (van den Oord et al. 2017) against its formulas: the nearest code, the straight-through
gradient, the commitment term, one EMA step of the codebook, dead-code restarts, the likelihood
bound, tokens, input checks, and a short real training run with and without restarts. The
codebook on two ranks is in tests/components/training/test_recipes.py, with the other rank claims."""
import math

import pytest
import torch
from sklearn.datasets import load_digits

from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.metrics.likelihood import BIN_WIDTH
from genray.components.models.vqvae import VQVAE, VectorQuantizer, build_vqvae, commitment, straight_through

SHAPE = (1, 8, 8)  # 8x8 digits: a 2x2 grid of codes


def tiny(seed=0, **kw) -> VQVAE:
    torch.manual_seed(seed)
    return build_vqvae(data=DatasetInfo.for_images(SHAPE), size="tiny", **kw)


def images(n=6, seed=0) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def as_map(rows: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Rows (B*h*w, D), position by position, -> a latent map (B, D, h, w): the quantiser's layout."""
    return rows.view(-1, h, w, rows.shape[1]).permute(0, 3, 1, 2)


def quantizer(codebook, cluster_size, **kw) -> VectorQuantizer:
    kw = {"decay": 0.9, "epsilon": 0.1, "restart": False, "dead_threshold": 0.0, **kw}
    q = VectorQuantizer(*codebook.shape, **kw)
    q.codebook.copy_(codebook)
    q.cluster_size.copy_(cluster_size)
    q.code_sum.copy_(codebook * cluster_size[:, None])
    return q


def test_the_quantiser_picks_the_nearest_code():
    g = torch.Generator().manual_seed(0)
    q = VectorQuantizer(7, 3, decay=0.99, epsilon=1e-5, restart=False, dead_threshold=0.0)
    z_e = torch.randn(2, 3, 4, 5, generator=g)
    ids, z_q = q.quantize(z_e)
    rows = z_e.permute(0, 2, 3, 1).reshape(-1, 3)
    brute = torch.tensor([min(range(7), key=lambda i: float((r - q.codebook[i]).pow(2).sum())) for r in rows])
    assert ids.shape == (2, 4, 5) and torch.equal(ids.flatten(), brute)
    torch.testing.assert_close(z_q, as_map(q.codebook[brute], 4, 5))


def test_straight_through_copies_the_decoder_input_gradient_to_the_encoder():
    # straight_through: the quantised value forward, the identity backward.
    z_e = torch.randn(2, 3, 2, 2, requires_grad=True)
    z_q = torch.randn(2, 3, 2, 2)
    out = straight_through(z_e, z_q)
    torch.testing.assert_close(out, z_q)
    weights = torch.randn(2, 3, 2, 2)
    (out * weights).sum().backward()
    torch.testing.assert_close(z_e.grad, weights)

    # Through the model: dL/dz_e = dL/d(decoder input) + beta * 2 (z_e - z_q) / (B * pixels).
    for beta in (0.0, 0.25):
        model = tiny(beta=beta)
        seen = {}

        def encoder_out(module, args, out):
            seen["z_e"] = out
            out.register_hook(lambda g: seen.update(enc=g))

        def decoder_in(module, args):
            seen["z_in"] = args[0]
            args[0].register_hook(lambda g: seen.update(dec=g))

        model.encoder.register_forward_hook(encoder_out)
        model.decoder.register_forward_pre_hook(decoder_in)
        x = images()
        ids, z_q = model.quantizer.quantize(model.encoder(x))  # before forward's EMA step moves the codes
        loss, _ = model({"x": x})
        loss.backward()
        torch.testing.assert_close(seen["z_in"], z_q)  # the decoder sees the codes
        extra = beta * 2 * (seen["z_e"] - z_q).detach() / (len(x) * 64)
        torch.testing.assert_close(seen["enc"], seen["dec"] + extra)
        if beta == 0:
            assert torch.equal(seen["enc"], seen["dec"])


def test_commitment_loss_by_hand():
    z_e = torch.tensor([[1.0, 2.0], [0.5, -1.0]], requires_grad=True).view(1, 2, 1, 2)  # D = 2, grid 1x2
    z_q = torch.tensor([[1.5, 2.0], [0.0, 0.0]]).view(1, 2, 1, 2)
    # ||z_e - z_q||^2 over both positions, channel-first: z_e[0, :, 0, 0] = (1, 0.5) against (1.5, 0),
    # z_e[0, :, 0, 1] = (2, -1) against (2, 0).
    hand = (1 - 1.5) ** 2 + (2 - 2) ** 2 + (0.5 - 0) ** 2 + (-1 - 0) ** 2
    assert commitment(z_e, z_q).item() == pytest.approx(hand)

    # Through the model: the encoder's output set by hand, codes at known places; the log is the
    # unweighted term, the loss carries beta times it.
    model = tiny(codebook_size=3, code_dim=2, beta=0.25).eval()
    model.quantizer.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [3.0, -1.0]]))
    rows = torch.tensor([[0.2, 0.1], [0.9, 1.4], [2.0, -0.5], [-0.3, 0.4]])  # -> codes 0, 1, 2, 0
    model.encoder.forward = lambda x: as_map(rows, 2, 2).expand(len(x), -1, -1, -1)
    hand = (0.2**2 + 0.1**2) + (0.1**2 + 0.4**2) + (1.0**2 + 0.5**2) + (0.3**2 + 0.4**2)
    _, logs = model({"x": images(3)})
    assert logs["commitment"].item() == pytest.approx(hand, rel=1e-6)
    t = model.terms(images(3))
    assert t["ids"][0].flatten().tolist() == [0, 1, 2, 0]
    assert logs["recon"].item() == pytest.approx(t["recon"].mean().item(), rel=1e-6)


def test_one_ema_update_by_hand():
    e0 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    q = quantizer(e0, torch.tensor([2.0, 1.0, 0.5]))  # decay 0.9, epsilon 0.1; m0 = e0 * N0
    rows = torch.tensor([[1.2, 0.1], [0.8, -0.1], [0.1, 1.3], [0.9, 0.2]])
    z_e = as_map(rows, 2, 2)
    ids, _ = q.quantize(z_e)
    assert ids.flatten().tolist() == [0, 0, 1, 0]
    out = q.update(z_e, ids)
    # counts n = (3, 1, 0); sums: code 0 (1.2 + 0.8 + 0.9, 0.1 - 0.1 + 0.2), code 1 (0.1, 1.3)
    assert out["counts"].tolist() == [3.0, 1.0, 0.0]
    N = [0.9 * 2.0 + 0.1 * 3, 0.9 * 1.0 + 0.1 * 1, 0.9 * 0.5 + 0.1 * 0]
    m = [[0.9 * 2.0 + 0.1 * 2.9, 0.9 * 0.0 + 0.1 * 0.2],
         [0.9 * 0.0 + 0.1 * 0.1, 0.9 * 1.0 + 0.1 * 1.3],
         [0.9 * 0.5, 0.9 * 0.5]]
    n = sum(N)
    smoothed = [(N_i + 0.1) / (n + 3 * 0.1) * n for N_i in N]  # Laplace: total stays n
    e = [[m_ij / s_i for m_ij in m_i] for m_i, s_i in zip(m, smoothed)]
    torch.testing.assert_close(q.cluster_size, torch.tensor(N))
    torch.testing.assert_close(q.code_sum, torch.tensor(m))
    torch.testing.assert_close(q.codebook, torch.tensor(e))
    assert sum(smoothed) == pytest.approx(n)


def restart_toy(restart: bool, steps: int = 10):
    """16 codes: 2 live ones at the data, 14 far away with almost no usage; data in 8 clusters."""
    torch.manual_seed(0)
    codebook = torch.cat([torch.tensor([[10.0, 10.0], [10.0, -10.0]]),
                          torch.stack([torch.full((14,), -50.0), torch.arange(14.0)], 1)])
    sizes = torch.cat([torch.full((2,), 32.0), torch.full((14,), 0.01)])
    q = quantizer(codebook, sizes, decay=0.9, epsilon=1e-5, restart=restart, dead_threshold=0.1)
    centres = torch.tensor([[sx * 10 + dx, sy * 10 + dy] for sx in (1,) for sy in (1, -1)
                            for dx in (-3, 3) for dy in (-3, 0, 3)][:8])
    g = torch.Generator().manual_seed(1)
    usage, first = [], None
    for step in range(steps):
        rows = centres[torch.randint(8, (64,), generator=g)] + 0.5 * torch.randn(64, 2, generator=g)
        z_e = as_map(rows, 8, 8)
        ids, _ = q.quantize(z_e)
        usage.append(len(ids.unique()) / 16)
        out = q.update(z_e, ids)
        if first is None:
            first = (rows, q.codebook.clone(), out["dead_codes"].item())
    return q, usage, first


def test_dead_codes_restart_onto_encoder_outputs_and_lift_usage():
    q, usage, (rows, after_first, dead) = restart_toy(restart=True)
    assert dead == 14 and usage[0] == 2 / 16
    # Each restarted code is one of the batch's encoder outputs, with the mean usage as its count.
    for code in after_first[2:]:
        assert (rows - code).pow(2).sum(1).min() == 0
    assert min(usage[1:]) >= 0.5, usage

    q_off, usage_off, (_, after_off, dead_off) = restart_toy(restart=False)
    assert dead_off == 14 and usage_off == [2 / 16] * len(usage_off)
    assert (q_off.codebook[2:, 0] < -40).all()  # never chosen, never moved towards the data
    assert (q_off.cluster_size[2:] < 0.01).all()


def test_the_bound_is_recon_nll_minus_log_prior_by_hand():
    model = tiny(codebook_size=8, code_dim=4).eval()
    model.quantizer.cluster_size.copy_(torch.arange(1.0, 9.0))  # a non-uniform prior
    model.log_sigma_raw.data.fill_(-1.0)
    x = images(5)
    with torch.no_grad():
        z_e = model.encoder(x)
        rows = z_e.permute(0, 2, 3, 1).reshape(-1, 4)
        ids = torch.cdist(rows, model.quantizer.codebook).argmin(1).view(5, 2, 2)
        mean = model.decoder(model.quantizer.codebook[ids].permute(0, 3, 1, 2))
        sigma = model.log_sigma().exp()
        nll = (0.5 * ((x - mean) / sigma) ** 2 + torch.log(sigma) + 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
        N, eps = model.quantizer.cluster_size, model.quantizer.epsilon
        log_pi = torch.log((N + eps) / (N.sum() + 8 * eps))
        hand = -nll + log_pi[ids].flatten(1).sum(1)
    torch.testing.assert_close(model.log_prob(x), hand)
    assert model.log_prob_kind == "bound" and model.log_prob_space == "continuous"

    # evaluate's bits/dim: the bound at dequantised pixels, plus the bin volume, in bits per pixel.
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(3))
    nats = -model.log_prob(x + BIN_WIDTH * (u - 0.5)) - 64 * math.log(BIN_WIDTH)
    scores = model.evaluate({"x": x}, generator=torch.Generator().manual_seed(3))
    assert scores["bits_per_dim"].item() == pytest.approx((nats / (64 * math.log(2))).mean().item(), rel=1e-5)


def test_tokens_round_trip_and_the_prior_they_are_sampled_from():
    model = tiny(codebook_size=16, code_dim=4).eval()
    x = images(4)
    ids = model.tokens(x)
    assert ids.shape == (4, 2, 2) and ids.dtype == torch.long and 0 <= ids.min() and ids.max() < 16
    torch.testing.assert_close(model.encode(x), model.quantizer.codebook[ids].permute(0, 3, 1, 2))
    assert torch.equal(model.decode_tokens(ids), model.decode(model.encode(x)))  # decode(encode(x)): the reconstruction
    assert torch.equal(model.quantizer.quantize(model.quantizer.lookup(ids))[0], ids)  # codes -> latents -> codes

    # sample_tokens draws from the unigram prior pi, or softmax(log pi / T).
    model.quantizer.cluster_size.copy_(torch.tensor([8.0, 4.0, 2.0, 1.0] + [0.0] * 12))
    pi = torch.tensor([8.0, 4.0, 2.0, 1.0]) / 15
    drawn = model.sample_tokens(5000, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(drawn.flatten(), minlength=16).double() / drawn.numel()
    assert (freq[:4] - pi.double()).abs().max() < 0.01 and freq[4:].sum() < 1e-3
    cold = model.sample_tokens(5000, generator=torch.Generator().manual_seed(0), temperature=0.5)
    freq = torch.bincount(cold.flatten(), minlength=16).double() / cold.numel()
    assert (freq[:4] - pi.double() ** 2 / pi.double().pow(2).sum()).abs().max() < 0.01
    assert (model.sample_tokens(3, temperature=0) == 0).all()


def test_bad_inputs_name_the_field():
    model = tiny(codebook_size=16).eval()
    for call in (model.tokens, model.encode, model.log_prob):
        with pytest.raises(UserError, match=r"x must be images \(B, 1, 8, 8\)"):
            call(torch.zeros(2, 1, 16, 16))
    with pytest.raises(UserError, match=r"ids must be code ids in \[0, 16\) \(codebook_size\)"):
        model.decode_tokens(torch.full((1, 2, 2), 16))
    with pytest.raises(UserError, match=r"ids must be code ids in \[0, 16\)"):
        model.decode_tokens(torch.full((1, 2, 2), -1))
    with pytest.raises(UserError, match=r"ids must be a grid of code ids \(B, 2, 2\)"):
        model.decode_tokens(torch.zeros(1, 3, 2, dtype=torch.long))
    with pytest.raises(UserError, match="ids must be integer code ids"):
        model.decode_tokens(torch.zeros(1, 2, 2))
    with pytest.raises(UserError, match=r"z must be latents \(B, 64, 2, 2\)"):
        model.decode(torch.zeros(1, 64, 4, 4))
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, temperature=-1.0)
    with pytest.raises(ValueError, match="codebook_size"):
        VQVAE(image_shape=SHAPE, width=16, depth=1, codebook_size=1)
    with pytest.raises(ValueError, match="image"):
        build_vqvae(data=DatasetInfo("tokens", (16,), 10, 0, ("a", "b"), ("tokens",)), size="tiny")


@pytest.mark.parametrize("downsample, grid", [(2, (4, 4)), (4, (2, 2)), (8, (1, 1))])
def test_downsample_sets_the_grid_and_a_round_trip_keeps_it(downsample, grid):
    model = tiny(codebook_size=16, code_dim=4, downsample=downsample).eval()
    x = images(3)
    assert model.grid == grid and model.latent_shape == (4, *grid)
    assert model.tokens(x).shape == (3, *grid)
    assert model.decode_tokens(model.tokens(x)).shape == x.shape
    halvings = {2: 1, 4: 2, 8: 3}[downsample]
    strided = [m for m in model.encoder.body if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    ups = [m for m in model.decoder.body if isinstance(m, torch.nn.Upsample)]
    assert len(strided) == len(ups) == halvings


def test_the_default_downsample_keeps_the_papers_layout():
    """Two stride-2 convs (C -> w/2 -> w) and their mirror: checkpoints from before the option load."""
    model = build_vqvae(data=DatasetInfo.for_images((1, 32, 32)), size="small")  # width 64
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert state["encoder.body.0.weight"] == (32, 1, 4, 4) and state["encoder.body.2.weight"] == (64, 32, 4, 4)
    last = max(int(k.split(".")[2]) for k in state if k.startswith("decoder.body."))
    assert state[f"decoder.body.{last}.weight"] == (1, 32, 3, 3)
    assert state[f"decoder.body.{last - 3}.weight"] == (32, 64, 3, 3)  # up, conv w -> w/2, relu, up, conv


def test_an_unknown_downsample_is_refused():
    with pytest.raises(ValueError, match=r"downsample must be one of \(2, 4, 8\), got 3"):
        VQVAE(image_shape=SHAPE, width=16, depth=1, downsample=3)


# -- a short real run -------------------------------------------------------------------------------


def digits_run(restart: bool) -> tuple[dict, dict]:
    """A tiny VQ-VAE, 60 Adam steps on sklearn's 8x8 digits (a fast EMA, so codes die within the
    run): held-out scores before and after."""
    x = torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 8 - 1
    train, held = x[:1500], {"x": x[1500:]}
    model = tiny(codebook_size=32, code_dim=8, ema_decay=0.9, restart_dead_codes=restart)
    g = torch.Generator().manual_seed(0)
    model.initialize({"x": train[:32]})

    def score() -> dict[str, float]:
        scores = model.eval().evaluate(held, generator=torch.Generator().manual_seed(0))
        return {k: float(v) for k, v in scores.items()}

    start = score()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        loss, _ = model({"x": train[torch.randint(len(train), (32,), generator=g)]})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return start, score()


def test_it_learns_digits_and_restarts_keep_the_codebook_in_use():
    for restart in (True, False):
        start, end = digits_run(restart)
        assert end["psnr"] > start["psnr"] + 2.5, (restart, start["psnr"], end["psnr"])
        assert end["bits_per_dim"] < start["bits_per_dim"] - 0.3, (restart, start["bits_per_dim"], end["bits_per_dim"])
        if restart:  # measured: 88% of the codes in use on held-out digits, perplexity 23
            assert end["usage"] > 0.8 and end["perplexity"] > 12, end
        else:  # measured: 6%, perplexity 1.9: the codebook collapsed and nothing brings it back
            assert end["usage"] < 0.3 and end["perplexity"] < 4, end
