"""Cache → pseudo-labels for each training epoch, with stage two's own DAMP parameters.

Epoch e (from 1) reads augmentation round (e-1) mod R, so consecutive epochs see differently
flipped views, as the official code's per-batch recomputation does, without running CLIP.
"""
from __future__ import annotations

import numpy as np
import torch

from aevlp.cache import Cache
from aevlp.damp import pseudo_labels
from aevlp.errors import AevlpError
from aevlp.specs import DampSpec

__all__ = ["PseudoLabeler"]


class PseudoLabeler:
    """Builds int8 [N, C] pseudo-labels from cached similarities for a given epoch."""

    def __init__(self, cache: Cache, damp: DampSpec, observed: np.ndarray):
        self.cache, self.damp = cache, damp
        self.observed = torch.as_tensor(observed)
        self._memo: dict[int, np.ndarray] = {}
        self._plain = _plain_global_sims(cache) if damp.source == "global-plain" else None

    def round_for(self, epoch: int) -> int:
        return (epoch - 1) % self.cache.rounds

    def for_epoch(self, epoch: int) -> np.ndarray:
        r = self.round_for(epoch)
        if r not in self._memo:
            sims = self._plain[r][:, None] if self._plain is not None else self.cache.sims(r)
            self._memo[r] = self.compute(torch.as_tensor(sims.astype(np.float32)))
        return self._memo[r]

    def compute(self, sims: torch.Tensor) -> np.ndarray:
        source = "global" if self.damp.source == "global-plain" else self.damp.source
        _, z = pseudo_labels(sims, self.observed, **self.damp.selection(), source=source)
        return z.numpy()


def _plain_global_sims(cache: Cache) -> np.ndarray:
    """[R, N, C] similarities of each round's global view to the plain (not GCN-refined) class features."""
    plain = cache.plain_text_features()
    if plain is None or cache.embedding_mode == "none":
        raise AevlpError(f"{cache.path} lacks what VLPL's pseudo-labels need: the global views' embeddings and the "
                         "class text features before the GCN (stage one stores both since 2026-12 with "
                         "cache.store_embeddings = global or all)",
                         hint="re-run stage one: `aevlp pseudolabel ... --store-embeddings global --force`")
    emb = cache.global_embeddings().astype(np.float32)  # [R, N, D]
    return (emb @ plain.astype(np.float32).T).astype(np.float16)  # rounded as the cache's own sims are
