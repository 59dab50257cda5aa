"""Single-positive observed labels, bit-identical to Cole et al.'s `generate_observed_labels`."""
from __future__ import annotations

import numpy as np

__all__ = ["COLE_SEED", "single_positive"]

COLE_SEED = 1200  # Cole et al.'s seed of the observed labels and the train/val split (docs/method.md, protocol)


def single_positive(labels, seed: int = COLE_SEED, rng: np.random.RandomState | None = None) -> np.ndarray:
    """Keep one random true positive per row (num_pos=1, num_neg=0), 0 everywhere else.

    Why the odd RNG use: Cole shuffles the negatives of every row too (and keeps none), which
    consumes RNG state; copying both shuffles in the same order is what makes the published
    `formatted_*_labels_obs.npy` files reproducible bit for bit (docs/method.md, "Benchmark protocol").
    Call it once per phase: each call starts a fresh RandomState(seed). A file read a block of rows at a time
    passes one `rng` (RandomState(seed)) to every block's call, in order: the draws are those of one call.
    """
    y = np.asarray(labels)
    if y.ndim != 2:
        raise ValueError(f"labels must be an [N, C] matrix, got shape {y.shape}")
    bad = (y != 0) & (y != 1)
    if bad.any():
        raise ValueError(f"labels must hold only 0/1; found {np.unique(y[bad])[:5].tolist()}")
    del bad
    rng = np.random.RandomState(seed) if rng is None else rng
    observed = np.zeros_like(y)
    for i in range(y.shape[0]):
        pos = np.nonzero(y[i] == 1)[0]
        rng.shuffle(pos)
        neg = np.nonzero(y[i] != 1)[0]
        rng.shuffle(neg)
        observed[i, pos[:1]] = 1
    return observed
