"""GR Loss's per-epoch schedules of (w, b) for k̂ and (μ, σ) for v (docs/method.md, "Schedules").

Reproduces the official code exactly, including its one-epoch lag: w and b use max(e-n-1, 0), so
they never reach w_T/b_T, while μ and σ use max(e-n, 0) and reach their final values at e = T.
"""
from __future__ import annotations

from collections.abc import Sequence

from aevlp.errors import ConfigError
from aevlp.settings import LossParams, TrainSpec, checked

__all__ = ["gr_schedule"]


def gr_schedule(epoch: int, num_epochs: int, beta: Sequence[float], alpha: Sequence[float],
                linear_init: int = 0) -> dict:
    """Schedule values for `epoch` (counted from 1).

    beta = [w0, wT, b0, bT]; alpha = [mu0, sigma0, muT, sigmaT]. While epoch <= linear_init
    (head-only warm-up) everything stays at its initial value.
    """
    checked(LossParams, beta=tuple(beta), alpha=tuple(alpha))
    checked(TrainSpec, epochs=num_epochs, linear_init=linear_init)
    if not 1 <= epoch <= num_epochs:
        raise ConfigError(f"epoch must be in [1, {num_epochs}], got {epoch}")
    w0, wT, b0, bT = (float(x) for x in beta)
    mu0, s0, muT, sT = (float(x) for x in alpha)
    span = num_epochs - linear_init
    lagged = max(epoch - linear_init - 1, 0) / span
    t = max(epoch - linear_init, 0) / span
    return {"w": w0 + (wT - w0) * lagged, "b": b0 + (bT - b0) * lagged,
            "mu": mu0 + (muT - mu0) * t, "sigma": s0 + (sT - s0) * t}
