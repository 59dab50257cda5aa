"""The summary a filled stage-one cache reports (stage one's, a merge's and a re-prompt's return value)."""
from __future__ import annotations

import h5py
import numpy as np

from aevlp.cache.reader import default_labels
from aevlp.metrics import pseudo_label_quality
from aevlp.stage_one.teacher import zero_shot_summary

__all__ = ["filled_summary"]


def filled_summary(f: h5py.File) -> dict:
    """Pseudo-label quality, the zero-shot teacher's test mAP, and counts of a filled cache file."""
    bad = f["bad"][:]
    pseudo = np.stack([default_labels(f, r) for r in range(f["sims"].shape[0])]) if "labels" in f else None
    stats = _quality(pseudo, f["observed"][:], f["labels"][:], bad) if "labels" in f else {}
    return {**stats, **zero_shot_summary(f), "images": int(len(bad)), "bad_images": int(bad.sum())}


def _quality(pseudo: np.ndarray, observed: np.ndarray, labels: np.ndarray, bad: np.ndarray) -> dict:
    """Mean over rounds of pseudo-label P/R/F1 against the ground truth (non-observed entries)."""
    keep = ~bad
    if not keep.any():
        return {}
    qs = [pseudo_label_quality(pseudo[r][keep], observed[keep], labels[keep]) for r in range(pseudo.shape[0])]
    return {f"pseudo_{k}": round(float(np.mean([q[k] for q in qs])), 3)
            for k in ("precision", "recall", "f1", "f1_official")} | \
        {"pseudo_positives_per_image": round(float(np.mean([(p[keep] == 1).sum(1).mean() for p in pseudo])), 3),
         "pseudo_negatives_per_image": round(float(np.mean([(p[keep] == -1).sum(1).mean() for p in pseudo])), 3)}
