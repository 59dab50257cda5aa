"""Cache → pseudo-labels for each training epoch, with stage two's own DAMP parameters.

Epoch e (from 1) reads augmentation round (e-1) mod R, so consecutive epochs see differently
flipped views, as the official code's per-batch recomputation does, without running CLIP.
"""
from __future__ import annotations

import numpy as np
import torch

from aevlp.cache import Cache
from aevlp.damp import pseudo_labels
from aevlp.specs import DampSpec

__all__ = ["PseudoLabeler"]


class PseudoLabeler:
    """Builds int8 [N, C] pseudo-labels from cached similarities for a given epoch."""

    def __init__(self, cache: Cache, damp: DampSpec, observed: np.ndarray):
        self.cache, self.damp = cache, damp
        self.observed = torch.as_tensor(observed)
        self._memo: dict[int, np.ndarray] = {}

    def round_for(self, epoch: int) -> int:
        return (epoch - 1) % self.cache.rounds

    def for_epoch(self, epoch: int) -> np.ndarray:
        r = self.round_for(epoch)
        if r not in self._memo:
            self._memo[r] = self.compute(torch.as_tensor(self.cache.sims(r).astype(np.float32)))
        return self._memo[r]

    def compute(self, sims: torch.Tensor) -> np.ndarray:
        _, z = pseudo_labels(sims, self.observed, **self.damp.selection(), source=self.damp.source)
        return z.numpy()
