"""Benchmark metrics exactly as the SPML protocol (Cole et al.) computes them.

AP is sklearn's non-interpolated step sum, re-implemented in numpy so aevlp needs no sklearn;
a class without positives scores 0 and still counts in the mean (docs/method.md, "Benchmark protocol").
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = [
    "average_precision",
    "mean_average_precision",
    "micro_average_precision",
    "per_class_ap",
    "pseudo_label_quality",
    "topk_precision_recall",
    "threshold_scores",
    "evaluation_report",
    "pseudo_label_quality_per_class",
]


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def average_precision(scores, targets) -> float:
    """Non-interpolated AP in [0, 1]; tied scores form one threshold; 0.0 without positives."""
    s = _as_numpy(scores).astype(np.float64).ravel()
    y = (_as_numpy(targets).ravel() == 1)
    if s.shape != y.shape:
        raise ValueError(f"scores and targets differ in length: {s.shape[0]} vs {y.shape[0]}")
    n_pos = int(y.sum())
    if n_pos == 0:
        return 0.0
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    # Keep only the last index of each run of tied scores: one threshold per distinct score.
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tp = tp[last]
    precision = tp / (last + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(scores, targets) -> float:
    """100 × mean over all C classes of `average_precision` (empty classes count as 0)."""
    s, y = _as_numpy(scores), _as_numpy(targets)
    if s.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"expected [N, C] scores and targets of one shape, got {s.shape} and {y.shape}")
    if s.shape[1] == 0:
        raise ValueError("mean_average_precision needs at least one class")
    return 100.0 * float(np.mean([average_precision(s[:, c], y[:, c]) for c in range(s.shape[1])]))


def micro_average_precision(scores, targets) -> float:
    """100 × AP over all N·C (image, class) pairs pooled: the "micro" mAP some papers report."""
    s, y = _as_numpy(scores), _as_numpy(targets)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and targets {y.shape} differ")
    return 100.0 * average_precision(s.ravel(), y.ravel())


def threshold_scores(scores, targets, threshold: float = 0.5) -> dict:
    """CP, CR, CF1 (per-class precision/recall averaged, F1 of those averages) and OP, OR, OF1 (over all
    entries), in %, predicting a label where score >= threshold, as the multi-label literature reports
    them (e.g. ML-GCN). A class never predicted has precision 0; one never present has recall 0."""
    s, y = _as_numpy(scores), _as_numpy(targets) == 1
    pred = s >= threshold
    tp, fp, fn = (pred & y).sum(0), (pred & ~y).sum(0), (~pred & y).sum(0)
    cp = float(np.mean(np.divide(tp, tp + fp, out=np.zeros(len(tp)), where=(tp + fp) > 0)))
    cr = float(np.mean(np.divide(tp, tp + fn, out=np.zeros(len(tp)), where=(tp + fn) > 0)))
    op = float(tp.sum() / max(tp.sum() + fp.sum(), 1))
    orr = float(tp.sum() / max(tp.sum() + fn.sum(), 1))
    f1 = lambda a, b: 2 * a * b / (a + b) if a + b > 0 else 0.0  # noqa: E731
    return {k: 100.0 * v for k, v in {"CP": cp, "CR": cr, "CF1": f1(cp, cr), "OP": op, "OR": orr,
                                      "OF1": f1(op, orr)}.items()}


def evaluation_report(scores, targets, threshold: float = 0.5) -> dict:
    """Everything aevlp reports for a split: Cole's mAP, micro mAP, CP/CR/CF1/OP/OR/OF1 at the
    threshold, and per-image precision/recall of the top 3 labels."""
    s, y = _as_numpy(scores), _as_numpy(targets)
    out = {"map": mean_average_precision(s, y), "micro_map": micro_average_precision(s, y),
           **threshold_scores(s, y, threshold)}
    if s.shape[1] >= 3:
        out.update(topk_precision_recall(s, y, 3))
    return out


def per_class_ap(scores, targets, classnames: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per class: AP (in %), number of positives and whether it counted as empty."""
    s, y = _as_numpy(scores), _as_numpy(targets)
    names = list(classnames) if classnames is not None else [str(c) for c in range(s.shape[1])]
    if len(names) != s.shape[1]:
        raise ValueError(f"{len(names)} class names for {s.shape[1]} score columns")
    n_pos = (y == 1).sum(axis=0)
    ap = [100.0 * average_precision(s[:, c], y[:, c]) for c in range(s.shape[1])]
    return pd.DataFrame({"class": names, "ap": ap, "positives": n_pos.astype(int)})


def pseudo_label_quality(pseudo, observed, truth) -> dict:
    """Precision/recall/F1 (in %) of positive pseudo-labels over *non-observed* entries (§3.8).

    `f1` is the true harmonic mean 2PR/(P+R); `f1_official` is the official code's 1/(1/P+1/R),
    which is half of it, reported only so numbers can be compared with the paper's logs.
    """
    z = _as_numpy(pseudo) == 1
    obs = _as_numpy(observed) == 1
    t = _as_numpy(truth) == 1
    if not (z.shape == obs.shape == t.shape):
        raise ValueError(f"shape mismatch: pseudo {z.shape}, observed {obs.shape}, truth {t.shape}")
    unobs = ~obs
    predicted = int((z & unobs).sum())
    tp = int((z & t & unobs).sum())
    actual = int((t & unobs).sum())
    p = 100.0 * tp / predicted if predicted else 0.0
    r = 100.0 * tp / actual if actual else 0.0
    f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return {"precision": p, "recall": r, "f1": f1, "f1_official": f1 / 2,
            "num_pseudo_positive": predicted, "num_true_positive": tp, "num_hidden_positive": actual}


def topk_precision_recall(scores, targets, k: int) -> dict:
    """Mean per-image precision@k and recall@k (in %), as Cole et al. log them."""
    s, y = _as_numpy(scores), _as_numpy(targets) == 1
    if not 1 <= k <= s.shape[1]:
        raise ValueError(f"k must be in [1, {s.shape[1]}], got {k}")
    top = np.argsort(-s, axis=1, kind="mergesort")[:, :k]
    hits = np.take_along_axis(y, top, axis=1).sum(axis=1)
    n_pos = y.sum(axis=1)
    rec = np.divide(hits, n_pos, out=np.zeros(len(hits), dtype=float), where=n_pos > 0)
    return {f"precision@{k}": 100.0 * float(np.mean(hits / k)), f"recall@{k}": 100.0 * float(np.mean(rec))}


def pseudo_label_quality_per_class(pseudo, observed, truth, classnames: Sequence[str]) -> pd.DataFrame:
    """Per-class precision/recall (in %) of positive pseudo-labels over non-observed entries."""
    z, obs, t = (_as_numpy(a) == 1 for a in (pseudo, observed, truth))
    unobs = ~obs
    pred = (z & unobs).sum(0)
    tp = (z & t & unobs).sum(0)
    hidden = (t & unobs).sum(0)
    return pd.DataFrame({"class": list(classnames), "pseudo_positives": pred, "true_positives": tp,
                         "hidden_positives": hidden,
                         "precision": np.where(pred > 0, 100.0 * tp / np.maximum(pred, 1), np.nan),
                         "recall": np.where(hidden > 0, 100.0 * tp / np.maximum(hidden, 1), np.nan)})
