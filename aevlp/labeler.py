"""Cache → pseudo-labels for each training epoch, with stage two's own DAMP parameters.

Epoch e (from 1) reads augmentation round (e-1) mod R, so consecutive epochs see differently
flipped views, as the official code's per-batch recomputation does, without running CLIP. Where a
student's scores are stored in the cache (`damp.student`, `aevlp.refine`), the DAMP scores are fused
with them before selection; per-class thresholds (`damp.class_thresholds`, `aevlp.thresholds`) apply to
the scores selected from.
"""
from __future__ import annotations

import numpy as np
import torch

from aevlp.cache import Cache
from aevlp.damp import aggregate, pseudo_labels, select
from aevlp.errors import AevlpError
from aevlp.specs import DampSpec
from aevlp.thresholds import RULES, class_thresholds, read_thresholds

__all__ = ["PseudoLabeler"]


class PseudoLabeler:
    """Builds int8 [N, C] pseudo-labels from cached similarities for a given epoch."""

    def __init__(self, cache: Cache, damp: DampSpec, observed: np.ndarray, expected_pos: float = 0.0):
        self.cache, self.damp = cache, damp
        self.observed = torch.as_tensor(observed)
        self._memo: dict[int, np.ndarray] = {}
        self._scores: np.ndarray | None = None
        self._plain = _plain_global_sims(cache) if damp.source == "global-plain" else None
        self.student, self.provenance = self._student(len(observed))
        self.thresholds, self.threshold_table = self._class_thresholds(expected_pos)

    def round_for(self, epoch: int) -> int:
        return (epoch - 1) % self.cache.rounds

    def for_epoch(self, epoch: int) -> np.ndarray:
        r = self.round_for(epoch)
        if r not in self._memo:
            sims = self._plain[r][:, None] if self._plain is not None else self.cache.sims(r)
            self._memo[r] = self.compute(torch.as_tensor(sims.astype(np.float32)))
        return self._memo[r]

    def compute(self, sims: torch.Tensor) -> np.ndarray:
        sel = self.damp.selection()
        if self.thresholds is not None:
            sel["threshold"] = torch.as_tensor(self.thresholds, dtype=torch.float32)
        if self.student is None:
            source = "global" if self.damp.source == "global-plain" else self.damp.source
            return pseudo_labels(sims, self.observed, **sel, source=source)[1].numpy()
        f, g = self._fused(sims)
        return select(f, g, top_k=sel["top_k"], threshold=sel["threshold"], negative_ratio=sel["negative_ratio"],
                      negatives=sel["negatives"], observed=self.observed).numpy()

    def _fused(self, sims: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f, g) of one round: DAMP's, fused with the student's scores where they are stored."""
        sel = {k: v for k, v in self.damp.selection().items() if k in ("temperature", "eta")}
        f, g = aggregate(sims[:, 0], sims[:, 1:], self.observed, **sel)
        if self.student is None:
            return f, g
        w = self.damp.student_weight
        return w * self.student + (1 - w) * f, w * self.student + (1 - w) * g

    def scores(self) -> np.ndarray:
        """[N, C] the score positives are selected from (DAMP's f, fused with a student's where stored),
        averaged over the rounds: what the threshold rules read (computed once)."""
        if self._scores is None:
            rounds = (torch.as_tensor(self.cache.sims(r).astype(np.float32)) for r in range(self.cache.rounds))
            self._scores = torch.stack([self._fused(s)[0] for s in rounds]).mean(0).numpy()
        return self._scores

    def _student(self, n: int) -> tuple[torch.Tensor | None, dict | None]:
        if not self.damp.student:
            return None, None
        if self.damp.source != "damp":
            raise AevlpError(f"damp.student fuses with DAMP scores, not with damp.source = {self.damp.source}")
        from aevlp.cache.sources import read_source

        scores, provenance = read_source(self.cache, self.damp.student)
        return torch.as_tensor(scores[:n]), provenance

    def _class_thresholds(self, expected_pos: float):
        """(θ [C] or None, the rule's table or None) for damp.class_thresholds (docs/method.md)."""
        how = self.damp.class_thresholds
        if not how:
            return None, None
        if self.damp.source != "damp":
            raise AevlpError(f"damp.class_thresholds applies to DAMP scores, not to damp.source = {self.damp.source}")
        if how in RULES:
            return class_thresholds(self.scores(), self.observed.numpy(), how, expected_pos=expected_pos,
                                    global_theta=self.damp.threshold, min_auc=self.damp.min_auc)
        return read_thresholds(how, self.cache.classnames()), None


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
