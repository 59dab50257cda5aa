"""A cache's pseudo-labels class by class: the teacher's scores, the thresholds that select from them, and
how many images each threshold makes positive (with precision and recall where full labels exist).

What `aevlp cache thresholds` prints and writes, and what the review page (`aevlp review`) shows.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from aevlp.stage_two.labeler import PseudoLabeler
from aevlp.stage_two.priors import Expected
from aevlp.stage_two.score_columns import ScoreColumns
from aevlp.stage_two.thresholds import OFF

__all__ = ["ClassScores", "class_scores", "threshold_table"]


@dataclasses.dataclass
class ClassScores:
    """Round-averaged DAMP scores f [N, C] of the training rows (read a class at a time: `ScoreColumns`), their
    observed labels, full labels (None for observed-only data; read a class at a time too) and what stage two would
    select with (the global θ, or per-class θ_c)."""

    classnames: list[str]
    scores: ScoreColumns
    observed: np.ndarray
    labels: ScoreColumns | None
    bad: np.ndarray
    thresholds: np.ndarray
    rule_table: pd.DataFrame | None
    expected: Expected | None = None  # E and each class's hidden positives, with their source

    def truth(self, c: int) -> np.ndarray | None:
        """[N] bool: class c's positives in the full training labels (None for observed-only data)."""
        return None if self.labels is None else self.labels.column(c) == 1


def class_scores(labeler: PseudoLabeler) -> ClassScores:
    """The scores and thresholds a labeler of the whole cache selects with (its damp.class_thresholds rule or
    CSV, or the global θ)."""
    cache, observed = labeler.cache, labeler.observed.numpy()
    theta = labeler.thresholds if labeler.thresholds is not None else \
        np.full(observed.shape[1], labeler.damp.threshold)
    return ClassScores(cache.classnames(), labeler.scores(), observed, _label_columns(cache),
                       cache.f["bad"][:].astype(bool),
                       np.asarray(theta, dtype=np.float64), labeler.threshold_table, labeler.expected)


def _label_columns(cache) -> ScoreColumns | None:
    """The cache's full training labels as int8 columns (a block of rows read at a time), None if it has none."""
    if "labels" not in cache.f:
        return None
    ds = cache.f["labels"]
    out = ScoreColumns(*ds.shape, dtype=np.int8)
    for lo, hi in cache.row_blocks(ds.shape[0]):
        out.write_rows(lo, ds[lo:hi])
    return out


def _counts(s: ClassScores, c: int, theta: float, col: np.ndarray, truth: np.ndarray | None) -> dict:
    """Training images θ makes positive for class c (its scores `col`) beside the observed, and their
    precision/recall against `truth` (class c's full labels, `ClassScores.truth`)."""
    unknown = (s.observed[:, c] != 1) & ~s.bad
    picked = unknown & (col >= theta)
    out = {"positive": int(picked.sum())}
    if truth is not None:
        truth = unknown & truth
        tp = int((picked & truth).sum())
        out.update(precision=round(100 * tp / max(int(picked.sum()), 1), 1),
                   recall=round(100 * tp / max(int(truth.sum()), 1), 1))
    return out


def _hidden_source(expected: Expected | None, c: int) -> str:
    """Where class c's count of hidden positives comes from, in words."""
    if expected is None:
        return ""
    if expected.hidden is None:
        return f"n_c·(E − 1), E {expected.value:.3g} from {expected.source}"
    if expected.priors is not None and expected.priors.why[c] != expected.priors.method:
        return f"{expected.priors.why[c]}: the other classes' mean prior"
    return expected.source


def threshold_table(s: ClassScores, global_theta: float) -> pd.DataFrame:
    """One row per class: its observed positives and the teacher's mean score on them, the positives it hides
    among its unknown entries (the rule's count, its source, and the truth where full labels exist), the
    suggested θ_c, what θ_c and the global θ make positive (precision/recall against full labels where known)."""
    rows, usable = [], ~s.bad
    n_obs = np.array([int(((s.observed[:, c] == 1) & usable).sum()) for c in range(len(s.classnames))])
    hidden = s.expected.hidden_for(n_obs) if s.expected is not None else np.full(len(n_obs), np.nan)
    for c, name in enumerate(s.classnames):
        obs, col = (s.observed[:, c] == 1) & usable, s.scores.column(c)
        truth = s.truth(c)
        mine, glob = _counts(s, c, s.thresholds[c], col, truth), _counts(s, c, global_theta, col, truth)
        row = {"class": name, "observed": int(obs.sum()),
               "mean_score_observed": round(float(col[obs].mean()) if obs.any() else 0.0, 4),
               "hidden": round(float(hidden[c]), 1), "hidden_source": _hidden_source(s.expected, c)}
        if truth is not None:
            row["true_hidden"] = int((truth & (s.observed[:, c] == 0) & usable).sum())
        row.update(threshold=round(float(s.thresholds[c]), 6), **mine, **{f"{k}_at_global": v for k, v in glob.items()})
        if s.rule_table is not None:
            row.update(auc=s.rule_table["auc"].iloc[c], why=s.rule_table["why"].iloc[c])
        rows.append(row)
    table = pd.DataFrame(rows)
    table.loc[table["threshold"] > 1, "threshold"] = OFF
    return table
