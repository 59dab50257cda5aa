"""The SPML benchmark's train/val split of the official train set (Cole et al.; docs/method.md, protocol)."""
from __future__ import annotations

import numpy as np

from aevlp.data.observe import COLE_SEED

__all__ = ["train_val_split"]


def train_val_split(n: int, val_frac: float = 0.2, seed: int = COLE_SEED,
                    ss_frac: float = 1.0, ss_seed: int = 999) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train_idx, val_idx) of range(n); independent of the labels.

    The subsampling step (`ss_frac`, `ss_seed`) is a no-op at 1.0 but is kept, as in Cole's code,
    so that fractions below 1 draw the same subsets the official code draws.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= val_frac < 1.0:
        raise ValueError(f"val_frac must be in [0, 1), got {val_frac}")
    if not 0.0 < ss_frac <= 1.0:
        raise ValueError(f"ss_frac must be in (0, 1], got {ss_frac}")
    n_val = int(np.round(val_frac * n))
    n_train = n - n_val
    perm = np.random.RandomState(seed).permutation(n)
    train = np.sort(perm[:n_train])
    val = np.sort(perm[n - n_val:]) if n_val else np.zeros(0, dtype=perm.dtype)
    ss_rng = np.random.RandomState(ss_seed)
    out = []
    for idx in (train, val):
        keep = int(np.round(ss_frac * len(idx)))
        out.append(idx[np.sort(ss_rng.permutation(len(idx))[:keep])])
    return out[0], out[1]
