"""Model selection: which epoch's checkpoint is tested (`train.select`).

With a fully labelled val split the best epoch is the one with the best val mAP (the papers' protocol).
Observed-only data has no such split: the held-out rows carry one known tag each, like the training rows.
Four criteria then, each measured against a fully labelled val held aside (docs/training.md):

- `observed-auc`: per class, the AUC of the held-out rows' observed positives against their unknown entries,
  averaged. The unknowns mix positives (a share π_c) and negatives, so this AUC is π_c·½ + (1 − π_c)·AUC_c,
  with AUC_c the true positives-against-negatives AUC: a fixed increasing function of it, whatever the epoch.
  It ranks epochs as the true (weighted) mean AUC does;
- `observed`: val mAP against the held-out rows' observed tags (every unknown entry counted negative: a model
  that ranks a hidden positive high is charged for it);
- `observed+pseudo`: the same, with the held-out rows' pseudo-positives counted positive too: the labels a
  training run with these settings would give those rows (their stored views scored by the teacher, fused
  with the student where there is one, per-class θ);
- `last`: no selection, the last epoch.

`auto` takes `val` where the val split is fully labelled, else `OBSERVED_ONLY_DEFAULT` (the one measured
best). Every epoch logs the criteria that cost nothing (metrics.jsonl: `val_map`, `val_auc_observed`, and with a
labelled val split `val_map_observed`), so such a run shows how the proxies would have chosen; `val_map_pseudo`
when it is the criterion (it reads the val images' stored views).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aevlp.metrics import mean_average_precision

__all__ = ["CRITERIA", "OBSERVED_ONLY_DEFAULT", "ModelSelection", "observed_auc", "resolve_selection",
           "val_pseudo_labels"]

CRITERIA = ("auto", "val", "observed-auc", "observed", "observed+pseudo", "last")
OBSERVED_ONLY_DEFAULT = "observed-auc"


@dataclass(frozen=True)
class ModelSelection:
    """The criterion that picks the tested epoch, why, and the targets each proxy reads."""

    criterion: str  # val | observed | observed+pseudo | last
    why: str
    val_labels: np.ndarray  # [M, C] the val split's labels (full, or the held-out rows' tags)
    val_observed: np.ndarray | None  # [M, C] the held-out rows' observed tags, where they differ from val_labels
    val_pseudo: np.ndarray | None  # [M, C] their pseudo-labels (observed+pseudo), where computable

    def measures(self, scores: np.ndarray) -> dict[str, float]:
        """Each criterion's value on val scores [M, C]: val_map, and val_map_observed / val_map_pseudo where
        their targets exist."""
        out = {"val_map": mean_average_precision(scores, self.val_labels)}
        tags = self.val_labels if self.val_observed is None else self.val_observed
        out["val_auc_observed"] = observed_auc(scores, tags)
        if self.val_observed is not None:
            out["val_map_observed"] = mean_average_precision(scores, tags)
        if self.val_pseudo is not None:
            out["val_map_pseudo"] = mean_average_precision(scores, ((tags == 1) | (self.val_pseudo == 1)).astype(int))
        return out

    def value(self, measures: dict[str, float]) -> float:
        """The number the criterion maximises (`last`: the val mAP, though every epoch counts as improving)."""
        key = {"val": "val_map", "observed": "val_map_observed", "observed+pseudo": "val_map_pseudo",
               "observed-auc": "val_auc_observed", "last": "val_map"}[self.criterion]
        return measures.get(key, measures["val_map"])


def observed_auc(scores: np.ndarray, tags: np.ndarray) -> float:
    """100 × the mean over classes of the AUC of the rows tagged with the class against the rest (ties half; a
    class without a tagged row or without the rest: 50)."""
    import pandas as pd

    aucs = []
    for c in range(scores.shape[1]):
        pos = tags[:, c] == 1
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        if not n_pos or not n_neg:
            aucs.append(0.5)
            continue
        ranks = pd.Series(scores[:, c]).rank().to_numpy()
        aucs.append((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return 100 * float(np.mean(aucs))


def resolve_selection(setting: str, *, val_full: bool, val_labels: np.ndarray, val_observed: np.ndarray,
                      val_pseudo: np.ndarray | None) -> ModelSelection:
    """`train.select` for this data: `auto` is `val` with a fully labelled val split, else the observed-only
    default; `observed+pseudo` without the held-out rows' views falls back to `observed`."""
    criterion, why = setting, f"train.select = {setting}"
    if setting == "auto":
        criterion = "val" if val_full else OBSERVED_ONLY_DEFAULT
        why = ("the val split is fully labelled" if val_full else
               f"no fully labelled val split: the observed-only default ({OBSERVED_ONLY_DEFAULT})")
    if criterion == "val" and not val_full:
        why += "; the val split holds only observed tags, so this is the observed proxy"
    if criterion == "observed+pseudo" and val_pseudo is None:
        criterion, why = "observed", why + "; the cache lacks the val rows' views (cache.store_embeddings = all), " \
                                           "so the observed tags alone"
    differs = val_full and np.any(val_observed != val_labels)
    return ModelSelection(criterion, why, val_labels, val_observed if differs else None, val_pseudo)


def val_pseudo_labels(labeler, cache, val_observed: np.ndarray) -> np.ndarray | None:
    """[M, C] the labels a training run with this labeler would give the val rows: their stored (unflipped)
    views scored against the class features, fused with the student's val scores where stored; None where the
    cache does not hold every view of the val images, or the labeler does not select from DAMP's scores."""
    import torch

    if labeler.damp.source != "damp" or not cache.has_eval_embeddings() or "val_embeddings" not in cache.f:
        return None
    emb = cache.eval_embeddings("val", views=True)
    if emb.shape[1] < 2 or len(emb) != len(val_observed):
        return None
    sims = torch.as_tensor(emb.astype(np.float32)) @ torch.as_tensor(cache.f["text_features"][:].astype(np.float32)).T
    student = None
    if labeler.student is not None:
        if labeler.student_val is None or len(labeler.student_val) != len(val_observed):
            return None
        student = torch.as_tensor(labeler.student_val)
    return labeler.select_rows(sims, torch.as_tensor(val_observed), student)
