"""Soft targets for the unknown entries: the teacher's score calibrated, class by class, into the chance that an
unknown entry is positive (`loss.name = "gpr-soft"`; docs/method.md, "Soft targets").

DAMP's score f is a mean of softmaxes over the classes (a row's scores sum to one), not a per-class probability.
The observed positives make each class calibratable: in the single-positive protocol the observed positive is
drawn uniformly from an image's positives, so the class's hidden positives among its unknown entries score like
its observed positives do (the same distribution), and the unknowns' scores are a mixture of that and the
negatives'. With h hidden positives among u unknown entries (`aevlp.stage_two.priors`: E known, a labelled val
split, or estimated), the chance that an unknown entry scoring s is positive is

    π(s) = (h / u) · f_pos(s) / f_unk(s),

estimated on B quantile bins of the unknowns' scores (each holds u/B of them): π_bin = B · h · (share of the
observed positives in the bin) / u, clipped to [0, 1] and made non-decreasing in s (pool-adjacent violators,
weighted by the bins' counts). A class with fewer than MIN_POSITIVES (10) observed positives, or no hidden positives
known, gets no target (NaN): its unknown entries keep GR's own soft label.
"""
from __future__ import annotations

import numpy as np

__all__ = ["MIN_POSITIVES", "calibrated", "bins_for", "soft_targets"]

MIN_POSITIVES = 10  # fewer observed positives than this (two bins of five): the class gets no target


def bins_for(n_observed: int) -> int:
    """Quantile bins for a class with n observed positives: about five of them a bin, 2 to 20 bins."""
    return int(np.clip(n_observed // 5, 2, 20))


def _pav(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence closest to `values` in weighted least squares (pool-adjacent violators)."""
    blocks: list[list[float]] = []  # [value, weight, count]
    for v, w in zip(values.tolist(), weights.tolist()):
        blocks.append([v, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, n2 = blocks.pop()
            v1, w1, n1 = blocks.pop()
            w = w1 + w2
            blocks.append([(v1 * w1 + v2 * w2) / w if w else (v1 + v2) / 2, w, n1 + n2])
    return np.concatenate([np.full(n, v) for v, _, n in blocks]) if blocks else np.empty(0)


def calibrated(col: np.ndarray, observed: np.ndarray, hidden: float, usable: np.ndarray | None = None) -> np.ndarray:
    """[N] π for one class: the calibrated chance that each unknown entry (observed == 0) is positive, from its
    score `col` [N], the class's observed labels [N] and its hidden positives `hidden` among the unknowns; 1 for
    the observed positives, NaN where the class cannot be calibrated (see the module's note); `usable` rows only
    inform the fit (every unknown row gets its bin's value)."""
    usable = np.ones(len(col), bool) if usable is None else np.asarray(usable, bool)
    out = np.full(len(col), np.nan, dtype=np.float32)
    out[observed == 1] = 1.0
    pos, unk_rows = col[(observed == 1) & usable], np.flatnonzero(observed == 0)
    unk = col[unk_rows[usable[unk_rows]]]
    if len(pos) < MIN_POSITIVES or not np.isfinite(hidden) or hidden <= 0 or len(unk) < 2:
        return out
    b = bins_for(len(pos))
    edges = np.quantile(unk, np.linspace(0, 1, b + 1)[1:-1])  # B bins of equal unknown counts
    n_unk = np.bincount(np.searchsorted(edges, unk, side="right"), minlength=b).astype(np.float64)
    share = np.bincount(np.searchsorted(edges, pos, side="right"), minlength=b) / len(pos)
    raw = np.clip(min(hidden, len(unk)) * share / np.maximum(n_unk, 1), 0.0, 1.0)
    pi = np.clip(_pav(raw, n_unk), 0.0, 1.0)
    out[unk_rows] = pi[np.searchsorted(edges, col[unk_rows], side="right")]
    return out


def soft_targets(labeler, keep: np.ndarray) -> np.ndarray:
    """float16 [K, C]: `calibrated` for every class on the kept training rows (`keep` [N] bool), from the labeler's
    round-averaged scores (DAMP's, fused with a student's where it has one) and hidden positives. The rows not
    kept (unreadable images) inform no fit."""
    observed, usable = labeler.observed.numpy(), np.asarray(keep, bool)
    n_obs = np.array([int(((observed[:, c] == 1) & usable).sum()) for c in range(observed.shape[1])])
    hidden = labeler.expected.hidden_for(n_obs)
    scores, rows = labeler.scores(), np.flatnonzero(usable)
    out = np.empty((len(rows), observed.shape[1]), dtype=np.float16)
    for c in range(observed.shape[1]):
        out[:, c] = calibrated(scores.column(c), observed[:, c], float(hidden[c]), usable)[rows]
    return out
