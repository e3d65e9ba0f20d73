"""Diffusion pieces kept apart from the networks: one idea per module.

- ``schedules``: noise schedules (linear, cosine, sigmoid, zero terminal SNR), ``NoiseSchedule``,
  ``q_sample`` and ``check_prediction``;
- ``prediction``: the eps / x0 / v parameterisations and conversions between them;
- ``objective``: the training loss (with Min-SNR-gamma) and the variational bound in nats;
- ``ddpm``: ancestral sampling (Ho et al. 2020, Algorithm 2);
- ``ddim``: DDIM sampling on a timestep subsequence (Song et al. 2021);
- ``guidance``: classifier-free guidance around any conditional network (Ho & Salimans 2022).

A denoiser is any ``denoise(x_t, t) -> output`` with output of x_t's shape.
"""
