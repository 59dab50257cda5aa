"""GR Loss's per-epoch schedules of (w, b) for k̂ and (μ, σ) for v (METHOD.md §2.2).

Reproduces the official code exactly, including its one-epoch lag: w and b use max(e-n-1, 0), so
they never reach w_T/b_T, while μ and σ use max(e-n, 0) and reach their final values at e = T.
"""
from __future__ import annotations

from collections.abc import Sequence

from aevlp.errors import ConfigError

__all__ = ["gr_schedule"]


def gr_schedule(epoch: int, num_epochs: int, beta: Sequence[float], alpha: Sequence[float],
                linear_init: int = 0) -> dict:
    """Schedule values for `epoch` (counted from 1).

    beta = [w0, wT, b0, bT]; alpha = [mu0, sigma0, muT, sigmaT]. While epoch <= linear_init
    (head-only warm-up) everything stays at its initial value.
    """
    if len(beta) != 4:
        raise ConfigError(f"beta must be [w0, wT, b0, bT], got {list(beta)}")
    if len(alpha) != 4:
        raise ConfigError(f"alpha must be [mu0, sigma0, muT, sigmaT], got {list(alpha)}")
    if num_epochs < 1:
        raise ConfigError(f"num_epochs must be >= 1, got {num_epochs}")
    if not 0 <= linear_init < num_epochs:
        raise ConfigError(f"linear_init must be in [0, num_epochs), got {linear_init} with {num_epochs} epochs")
    if not 1 <= epoch <= num_epochs:
        raise ConfigError(f"epoch must be in [1, {num_epochs}], got {epoch}")
    if alpha[1] <= 0 or alpha[3] <= 0:
        raise ConfigError(f"sigma must be > 0, got sigma0={alpha[1]}, sigmaT={alpha[3]}")
    w0, wT, b0, bT = (float(x) for x in beta)
    mu0, s0, muT, sT = (float(x) for x in alpha)
    span = num_epochs - linear_init
    lagged = max(epoch - linear_init - 1, 0) / span
    t = max(epoch - linear_init, 0) / span
    return {"w": w0 + (wT - w0) * lagged, "b": b0 + (bT - b0) * lagged,
            "mu": mu0 + (muT - mu0) * t, "sigma": s0 + (sT - s0) * t}
