"""Class priors without full labels: how many positives of each class hide among its unknown entries.

Each class is a positive–unlabelled (PU) problem. Its observed positives are a sample of its positives;
its unknown entries (every other training row: no observed label for the class) mix positives and
negatives. How the teacher scores the two sets says how many positives the unknowns hold: the share of
the unknowns that looks like the observed positives. Four estimators of that share (the class prior among
the unknowns, π_c), each from 1-D scores [N] of one class (`damp.prior`):

- `bbe`: best-bin estimation (Garg et al., NeurIPS 2021): over thresholds t, the share of unknowns scoring
  at least t divided by the share of observed positives doing so, taken at the t that minimises it plus its
  confidence bound (the "top bin", where positives are pure).
- `elkan-noto`: Elkan & Noto (KDD 2008), estimator e1: a calibrated P(observed | score) g (isotonic
  regression on the score), c = the mean of g over the observed positives, and each unknown counts
  (1 − c)/c · g/(1 − g) positives.
- `km2`: Ramaswamy et al. (ICML 2016): the largest λ for which λ·(unknowns) + (1 − λ)·(observed positives)
  is still a distribution, found by the gradient of its distance to the distributions in a Gaussian-kernel
  embedding; π = 1 − 1/λ (on a seeded subsample of at most `KM2_SAMPLE` points per set).
- `quantile`: twice the unknowns scoring above the observed positives' median (unobserved positives score
  like the observed ones, and no negative reaches the median).

All of them assume the observed positives score like the class's other positives. In the single-positive
protocol they do not quite: an image with fewer tags is more likely to be observed for each of them
(docs/method.md measures what that costs). `E` (expected positives per image) follows: the observed labels
plus every class's estimated positives among its unknowns, per training image.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from aevlp.stage_two.score_columns import ScoreColumns

__all__ = ["ESTIMATORS", "MIN_OBSERVED", "Priors", "estimate_priors", "bbe", "elkan_noto", "km2", "quantile",
           "Expected", "labelled_val", "estimated", "resolve_expected"]

MIN_OBSERVED = 3  # fewer observed positives than this: no estimate for the class
KM2_SAMPLE = 300


def bbe(pos: np.ndarray, unknown: np.ndarray, delta: float = 0.1, gamma: float = 0.01) -> float:
    """π by best-bin estimation (module docstring): min over t of q_u(t)/q_p(t) plus the bound."""
    t = np.unique(np.concatenate([pos, unknown]))
    qp = 1.0 - np.searchsorted(np.sort(pos), t, side="left") / len(pos)  # share of pos >= t
    qu = 1.0 - np.searchsorted(np.sort(unknown), t, side="left") / len(unknown)
    ok = qp > 0
    slack = np.sqrt(np.log(4 / delta) / (2 * len(pos))) + np.sqrt(np.log(4 / delta) / (2 * len(unknown)))
    i = int(np.argmin(np.where(ok, qu / np.maximum(qp, 1e-12) + (1 + gamma) * slack / np.maximum(qp, 1e-12),
                               np.inf)))
    return float(np.clip(qu[i] / qp[i], 0.0, 1.0))


def _isotonic(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The non-decreasing least-squares fit of s on x (pool adjacent violators), at each x."""
    order = np.argsort(x, kind="stable")
    means, weights = [], []
    for v in s[order].astype(np.float64):
        means.append(v)
        weights.append(1.0)
        while len(means) > 1 and means[-2] > means[-1]:
            w = weights[-2] + weights[-1]
            means[-2] = (means[-2] * weights[-2] + means[-1] * weights[-1]) / w
            weights[-2] = w
            means.pop()
            weights.pop()
    fit = np.repeat(means, np.asarray(weights, dtype=int))
    out = np.empty_like(fit)
    out[order] = fit
    return out


def elkan_noto(pos: np.ndarray, unknown: np.ndarray) -> float:
    """π by Elkan & Noto's e1 (module docstring), g = P(observed | score) by isotonic regression."""
    x = np.concatenate([pos, unknown])
    g = np.clip(_isotonic(x, np.concatenate([np.ones(len(pos)), np.zeros(len(unknown))])), 0, 1 - 1e-6)
    c = float(g[: len(pos)].mean())
    gu = g[len(pos):]
    k = (1 - c) / max(c, 1e-9) * (gu / (1 - gu)).sum()
    return float(np.clip(k / len(unknown), 0.0, 1.0))


def quantile(pos: np.ndarray, unknown: np.ndarray, q: float = 0.5) -> float:
    """π from the unknowns above the observed positives' q-quantile, divided by the share 1 − q above it."""
    t = np.quantile(pos, q)
    return float(np.clip((unknown > t).sum() / (1 - q) / len(unknown), 0.0, 1.0))


def _nearest_distribution(kernel: np.ndarray, u: np.ndarray, lr: float, steps: int = 300) -> float:
    """min over the simplex of (u − v)ᵀK(u − v): the RKHS distance of the signed measure u to the
    distributions on the sample points (accelerated projected gradient, step `lr` = 1/(2·λ_max(K)))."""
    v = np.full(len(u), 1 / len(u))
    y, t = v.copy(), 1.0
    for _ in range(steps):
        nxt = _project_simplex(y - lr * 2 * kernel @ (y - u))
        t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
        y = nxt + (t - 1) / t_next * (nxt - v)
        v, t = nxt, t_next
    d = u - v
    return float(np.sqrt(max(d @ kernel @ d, 0.0)))


def _project_simplex(x: np.ndarray) -> np.ndarray:
    s = np.sort(x)[::-1]
    css = np.cumsum(s) - 1
    rho = np.nonzero(s - css / np.arange(1, len(x) + 1) > 0)[0][-1]
    return np.maximum(x - css[rho] / (rho + 1), 0)


def km2(pos: np.ndarray, unknown: np.ndarray, seed: int = 0, epsilon: float = 0.04, upper: float = 8.0) -> float:
    """π by KM2 (module docstring): λ* by bisection on the slope of d(λ), with the threshold 1/√min(n)."""
    g = np.random.default_rng(seed)
    mix = g.choice(unknown, min(len(unknown), KM2_SAMPLE), replace=False).astype(np.float64)
    comp = g.choice(pos, min(len(pos), KM2_SAMPLE), replace=False).astype(np.float64)
    n, m = len(mix), len(comp)
    x = np.concatenate([mix, comp])
    sq = (x[:, None] - x[None, :]) ** 2
    diff = np.concatenate([np.full(n, 1 / n), np.full(m, -1 / m)])
    width = np.sqrt(np.median(sq)) or 1e-3
    best = max((np.sqrt(max(diff @ np.exp(-sq / (2 * (w * width) ** 2)) @ diff, 0.0)), w)
               for w in np.logspace(-1, 1, 5))
    kernel = np.exp(-sq / (2 * (best[1] * width) ** 2))
    dist, lr = best[0], 1 / (2 * max(np.linalg.eigvalsh(kernel)[-1], 1e-12))
    if dist <= 1e-9:
        return 1.0  # the unknowns look exactly like the positives

    def d(lam: float) -> float:
        return _nearest_distribution(kernel, np.concatenate([np.full(n, lam / n), np.full(m, (1 - lam) / m)]), lr)

    nu = min(1 / np.sqrt(min(n, m)) / dist, 0.9)
    lo, hi = 1.0, upper
    while hi - lo > epsilon:
        mid = (lo + hi) / 2
        slope = (d(mid + epsilon / 2) - d(mid)) * 2 / epsilon
        lo, hi = (lo, mid) if slope > nu * dist else (mid, hi)
    lam = (lo + hi) / 2
    return float(np.clip(1 - 1 / lam, 0.0, 1.0))


ESTIMATORS = {"bbe": bbe, "elkan-noto": elkan_noto, "km2": km2, "quantile": quantile}


@dataclass(frozen=True)
class Priors:
    """Per class: observed positives, unknown entries, the estimated positives among the unknowns (NaN where
    no estimate was possible), and why."""

    method: str
    observed: np.ndarray  # [C]
    unknown: np.ndarray  # [C]
    positives: np.ndarray  # [C] estimated positives among the unknowns; NaN: no estimate
    why: tuple[str, ...]

    @property
    def rate(self) -> np.ndarray:
        """π_c: the estimated share of positives among each class's unknown entries."""
        return self.positives / np.maximum(self.unknown, 1)

    def table(self, truth: np.ndarray | None = None, observed: np.ndarray | None = None,
              usable: np.ndarray | None = None) -> pd.DataFrame:
        """One row per class: observed, unknown, the estimate and its source; the truth beside it where the
        full labels `truth` [N, C] are known (with `observed` and `usable`, the same rows)."""
        df = pd.DataFrame({"observed": self.observed, "unknown": self.unknown,
                           "est_positives": np.round(self.positives, 1), "est_rate": np.round(self.rate, 4),
                           "rate_source": list(self.why)})
        if truth is not None:
            unk = (observed == 0) & usable[:, None]
            true_pos = ((truth == 1) & unk).sum(0)
            df["true_positives"], df["true_rate"] = true_pos, np.round(true_pos / np.maximum(unk.sum(0), 1), 4)
        return df


def estimate_priors(scores: np.ndarray | ScoreColumns, observed: np.ndarray, method: str = "quantile",
                    usable: np.ndarray | None = None) -> Priors:
    """The class priors among the unknowns from scores [N, C] (an array or `ScoreColumns`; higher = more likely
    positive) and the observed labels [N, C] (1 observed positive, 0 unknown, -1 observed negative); `usable`
    [N]: the rows to count."""
    if method not in ESTIMATORS:
        raise ValueError(f"unknown prior estimator {method!r} (known: {', '.join(ESTIMATORS)})")
    scores = ScoreColumns.of(scores)
    if usable is not None:
        scores, observed = scores.take(np.asarray(usable, bool)), np.asarray(observed)[np.asarray(usable, bool)]
    n_pos, n_unk = (observed == 1).sum(0), (observed == 0).sum(0)
    positives, why = np.full(scores.shape[1], np.nan), []
    for c in range(scores.shape[1]):
        col = scores.column(c)
        pos, unk = col[observed[:, c] == 1], col[observed[:, c] == 0]
        if len(pos) < MIN_OBSERVED or len(unk) == 0:
            why.append(f"only {len(pos)} observed positives: no estimate")
            continue
        positives[c] = ESTIMATORS[method](pos.astype(np.float64), unk.astype(np.float64)) * len(unk)
        why.append(method)
    return Priors(method, n_pos, n_unk, positives, tuple(why))


@dataclass(frozen=True)
class Expected:
    """E (expected positives per training image) and, per class, the positives hidden among its unknown
    training entries (None: n_c·(E − 1), the single-positive protocol's count for a class observed n_c times),
    with where they came from, in words."""

    value: float
    source: str
    hidden: np.ndarray | None = None  # [C]
    priors: Priors | None = None
    estimated: bool = False

    def hidden_for(self, n_observed: np.ndarray) -> np.ndarray:
        """[C] positives hidden among each class's unknown training entries."""
        if self.hidden is not None:
            return self.hidden
        return np.asarray(n_observed, dtype=np.float64) * max(self.value - 1.0, 0.0)


def labelled_val(val_labels: np.ndarray, train_observed: np.ndarray) -> Expected:
    """From a fully labelled val split (a random sample of the images): E is its labels' mean, and class c,
    positive in a share p_c of the images, hides p_c·N − n_c of its positives among its unknown training
    entries (N training rows, n_c observed positives: `train_observed` [N, C], the usable rows)."""
    share = np.asarray(val_labels == 1).mean(0)
    hidden = np.minimum(np.maximum(share * len(train_observed) - (train_observed == 1).sum(0), 0.0),
                        (train_observed == 0).sum(0))
    return Expected(float(np.asarray(val_labels == 1).sum(1).mean()),
                    f"the fully labelled val split ({len(val_labels)} images)", hidden)


def estimated(scores: np.ndarray, observed: np.ndarray, method: str, where: str) -> Expected:
    """E from a PU estimate on `scores`/`observed` [M, C] (rows the scorer did not learn from; `where` says which):
    each class's prior among its unknowns gives its hidden positives there, E = (observed + hidden) per row (a
    class without an estimate takes the others' mean prior). The training rows' counts are then n_c·(E − 1),
    the protocol's: measured on the demo's worlds (docs/method.md) they are 4–5× closer to the truth per class
    than each class's own estimate from a few hundred val rows, which stays in `priors` for the tables."""
    p = estimate_priors(scores, observed, method)
    known = np.isfinite(p.positives)
    fill = float(np.average(p.rate[known], weights=np.maximum(p.observed[known], 1))) if known.any() else 0.0
    hidden = np.where(known, p.positives, fill * p.unknown)
    value = float(((observed == 1).sum() + hidden.sum()) / max(len(observed), 1))
    return Expected(value, f"estimated ({method}) from {where}", None, p, estimated=True)


def resolve_expected(train_observed: np.ndarray, *, configured: float = 0.0, dataset: str = "",
                     published: float | None = None, train_labels: np.ndarray | None = None,
                     train_positives: float | None = None, val_labels: np.ndarray | None = None,
                     student_val: tuple | None = None, teacher=None, method: str = "quantile") -> Expected:
    """E and the per-class hidden positives from the best source there is (`train_observed` [N, C]: the usable
    training rows' observed labels): `loss.expected_pos` (`configured`), the dataset's published value, the full
    training labels (or `train_positives`, their mean positives per row computed already), a fully labelled val
    split, a PU estimate from a student's scores on the held-out val rows (`student_val` = (scores, observed)), or
    from the teacher's scores on the training rows (`teacher`: a function returning them, called only when needed)."""
    if configured:
        return Expected(float(configured), "loss.expected_pos")
    if published:
        return Expected(float(published), f"{dataset}'s published value")
    if train_labels is not None:
        train_positives = (np.asarray(train_labels) == 1).sum(1).mean()
    if train_positives is not None:
        return Expected(float(train_positives), "the full training labels")
    if val_labels is not None and len(val_labels):
        return labelled_val(val_labels, train_observed)
    if student_val is not None and len(student_val[0]):
        return estimated(*student_val, method, "the student's scores on the held-out val rows")
    if teacher is not None:
        return estimated(teacher(), train_observed, method, "the teacher's scores on the training rows")
    return Expected(float((train_observed == 1).sum(1).mean()), "the observed labels (nothing to estimate from)")
