"""Per-class thresholds θ_c for DAMP's positive pseudo-labels, from the cache and the observed labels alone.

The observed positives are known positives: how the teacher scores them says, class by class, what a
positive scores and whether the teacher tells them from the rest. Two rules (`damp.class_thresholds`):

- `rate`: θ_c is the score above which the unknown entries of class c hold as many images as the class
  is expected to hide among them (`aevlp.stage_two.priors`): n_c·(E−1) where E is known (in the single-positive
  protocol the observed label is one of an image's positives drawn uniformly, so a class observed n_c
  times has about that many more), from a fully labelled val split where there is one, else estimated
  from the scores (positive–unlabelled class priors).
- `observed`: θ_c maximises an F1 estimated without labels: recall(θ) is the share of the class's
  observed positives scoring at least θ; the class's count among the unknown entries is estimated at
  high θ (where few negatives reach); precision follows.

Either way, and whatever E is, a class whose observed positives the teacher scores no better than its
unknown entries (AUC below `damp.min_auc`) gets no positive pseudo-labels: it falls back to GR (GPR with
no pseudo-label equals GR). A CSV (`class,threshold`) sets them by hand (`aevlp cache thresholds` writes one;
`aevlp review` too).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from aevlp.errors import ConfigError
from aevlp.settings import default_of
from aevlp.stage_two.priors import MIN_OBSERVED
from aevlp.stage_two.score_columns import ScoreColumns

__all__ = ["RULES", "MIN_AUC", "MIN_OBSERVED", "class_thresholds", "auc", "rate_rule", "observed_rule",
           "read_thresholds", "write_thresholds", "OFF"]

RULES = ("rate", "observed")
MIN_AUC = default_of("damp.min_auc")
OFF = 1.01  # above every score: no positive pseudo-label for the class


def auc(pos: np.ndarray, other: np.ndarray) -> float:
    """P(a known positive scores above an unknown entry), ties counted half (Mann-Whitney)."""
    if len(pos) == 0 or len(other) == 0:
        return 0.5
    ranks = pd.Series(np.concatenate([pos, other])).rank().to_numpy()
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(other)))


def rate_rule(pos: np.ndarray, unknown: np.ndarray, hidden: float, global_theta: float) -> float:
    """θ such that about `hidden` (the class's positives among its unknown entries) unknown entries score at
    least θ."""
    k = int(round(hidden))
    if k <= 0:
        return OFF
    k = min(k, len(unknown))
    return float(np.sort(unknown)[::-1][k - 1])


def observed_rule(pos: np.ndarray, unknown: np.ndarray, hidden: float, global_theta: float) -> float:
    """θ maximising the label-free F1 estimate (module docstring)."""
    grid = np.unique(np.quantile(np.concatenate([pos, unknown]), np.linspace(0.5, 0.999, 60)))
    recall = np.array([(pos >= t).mean() for t in grid])
    found = np.array([(unknown >= t).sum() for t in grid])
    high = recall >= 0.3  # where the estimate of the class's count among unknowns is least contaminated
    count = np.min(found[high] / recall[high]) if high.any() else hidden
    precision = np.minimum(1.0, recall * count / np.maximum(found, 1))
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-9)
    return float(grid[int(np.argmax(f1))]) if f1.max() > 0 else OFF


def class_thresholds(scores: np.ndarray | ScoreColumns, observed: np.ndarray, rule: str, *, hidden: np.ndarray,
                     global_theta: float, min_auc: float = MIN_AUC,
                     usable: np.ndarray | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """(θ [C], a table per class: observed positives, AUC, the positives hidden among its unknowns, θ, why) from
    DAMP scores f [N, C] (an array or `ScoreColumns`, read a class at a time); `hidden` [C] from
    `aevlp.stage_two.priors` (NaN: unknown for that class); `usable` [N]: the rows
    to read (default all). The weak-teacher check (AUC below `min_auc`) comes before any rule."""
    if rule not in RULES:
        raise ConfigError(f"damp.class_thresholds = {rule!r}: not a rule ({', '.join(RULES)}) nor a .csv file")
    pick = {"rate": rate_rule, "observed": observed_rule}[rule]
    scores = ScoreColumns.of(scores)
    if usable is not None and not np.all(usable):  # (a boolean index copies even when it keeps every row)
        scores, observed = scores.take(np.asarray(usable, bool)), observed[np.asarray(usable, bool)]
    out, rows = np.full(scores.shape[1], global_theta, dtype=np.float64), []
    for c in range(scores.shape[1]):
        col = scores.column(c)
        pos, unknown = col[observed[:, c] == 1], col[observed[:, c] == 0]
        a, h = auc(pos, unknown), float(hidden[c])
        if len(pos) < MIN_OBSERVED:
            why = f"only {len(pos)} observed positives: the global θ"
        elif a < min_auc:
            out[c], why = OFF, f"teacher unreliable (AUC {a:.2f} < {min_auc}): no pseudo-positives, GR's loss"
        elif rule == "rate" and not np.isfinite(h):
            why = "no estimate of its positives among the unknowns: the global θ"
        else:
            out[c], why = pick(pos, unknown, h, global_theta), rule
        rows.append({"observed": len(pos), "auc": round(a, 4), "hidden": round(h, 1) if np.isfinite(h) else None,
                     "threshold": round(float(out[c]), 6), "why": why})
    return out, pd.DataFrame(rows)


def read_thresholds(path: str | Path, classnames: list[str]) -> np.ndarray:
    """θ per class from a CSV with columns class,threshold (every class once; thresholds in [0, 1.01])."""
    p = Path(path)
    try:
        df = pd.read_csv(p, dtype={"class": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ConfigError(f"damp.class_thresholds = {path}: cannot be read as CSV ({e})",
                          hint="write it with `aevlp cache thresholds CACHE --out FILE.csv`") from None
    if not {"class", "threshold"} <= set(df.columns):
        raise ConfigError(f"{p}: needs the columns class,threshold (found {', '.join(df.columns)})")
    twice = sorted(set(df["class"][df["class"].duplicated()]))
    if twice:
        raise ConfigError(f"{p}: class(es) listed more than once: {twice[:5]}", hint="one row per class")
    known = dict(zip(df["class"], pd.to_numeric(df["threshold"], errors="coerce")))
    missing, extra = [c for c in classnames if c not in known], [c for c in known if c not in classnames]
    if missing or extra:
        raise ConfigError(f"{p}: its classes differ from the cache's (missing: {missing[:5]}, unknown: {extra[:5]})")
    values = np.array([known[c] for c in classnames], dtype=np.float64)
    if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > OFF:
        raise ConfigError(f"{p}: every threshold must be a number in [0, {OFF}] ({OFF}: no pseudo-positives)")
    return values


def write_thresholds(path: str | Path, classnames: list[str], thresholds: np.ndarray,
                     table: pd.DataFrame | None = None) -> Path:
    """A CSV class,threshold (what `read_thresholds` and damp.class_thresholds read), with the rule's
    columns beside them when given (observed, auc, why)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame({"class": classnames, "threshold": np.round(thresholds, 6)})
    if table is not None:
        df = pd.concat([df, table.drop(columns=["class", "threshold"], errors="ignore").reset_index(drop=True)], axis=1)
    df.to_csv(p, index=False)
    return p
