"""The LMDM's training noise schedule: the one cosine ᾱ table.

Both users import it from here: the DDIM sampler (``pipeline/sampler.py``) for its
step coefficients, and the torch LMDM (``models/lmdm.py``) for the ``pred_noise`` it
derives from its x0 prediction. This module imports torch only, so neither import
makes a cycle.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

N_TRAIN_STEPS = 1000  # official LMDM n_timestep
COSINE_S = 0.008  # official cosine schedule offset s (Nichol & Dhariwal 2021)


def cosine_alphas_cumprod(n_steps: int = N_TRAIN_STEPS, s: float = COSINE_S) -> Tensor:
    """ᾱ_t, t = 0..n_steps−1, of the cosine schedule as float32 on the CPU, shape (n_steps,).

    Betas are formed in float64, clipped to [0, 0.999], cast to float32, and the
    cumulative product is taken in float32 — the order the official code uses,
    so the table matches it bit for bit. ᾱ[0] ≈ 0.99996, ᾱ[499] ≈ 0.4938, ᾱ[999] ≈ 2.4e−9.
    """
    steps = torch.arange(n_steps + 1, dtype=torch.float64) / n_steps + s
    f = torch.cos(steps / (1.0 + s) * (math.pi / 2.0)) ** 2
    f = f / f[0]
    betas = (1.0 - f[1:] / f[:-1]).clamp(0.0, 0.999).to(torch.float32)
    return torch.cumprod(1.0 - betas, dim=0)
