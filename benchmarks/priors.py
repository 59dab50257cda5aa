"""How well each class-prior estimator (aevlp/stage_two/priors.py) recovers what full labels say, on caches that
have them.

For every cache given (made from data with full training labels, so the truth is known; the estimators see
only the observed labels and the scores, as on observed-only data), side by side in one run: per estimator
E (expected positives per image) against the truth; the mean absolute error of the per-class rates π_c (the
share of positives among a class's unknown entries, in points) and the count error of the `rate` rule's
hidden positives, both as the rule uses them (n_c·(Ê − 1)) and, "own rates", each class's own estimate; the
time. Beside them: n_c·(E − 1) with the *true* E (what a user who knows E gets).

    python benchmarks/priors.py demo/cache/fashion-mosaic.h5 demo/cache/fashion-mosaic-g3.h5
    python benchmarks/priors.py CACHE --student-runs demo/runs/gr-s0 demo/runs/gr-s1   # a student on the val rows

With `--student-runs`, each run's best.pt predicts the val split (both flips averaged, as a GPR-TS student's
val scores are stored) and the estimators read those scores and the val rows' observed tags: the source
stage two uses where E is unknown and a student exists.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, today  # noqa: E402

from aevlp.stage_two.priors import ESTIMATORS, estimated  # noqa: E402


def cache_scores(path: str, student: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(round-averaged DAMP scores f [N, C] (fused with `student` where given), observed, full labels, usable)."""
    from aevlp.cache import Cache
    from aevlp.config import config_for_cache
    from aevlp.stage_two.labeler import labeler_for

    with Cache(path) as c:
        cfg = config_for_cache(c)
        lab = labeler_for(c, cfg, student=student)
        return lab.scores().array(), c.array("observed"), c.array("labels"), ~c.f["bad"][:].astype(bool)


def student_val(path: str, run: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(val scores of RUN's best.pt, the val rows' observed tags, their full labels, the training rows' observed
    labels, their full labels) on the dataset of cache `path`."""
    from aevlp.cache import Cache
    from aevlp.stage_two.refine import student_val_scores

    with Cache(path) as c:
        data = c.dataset()
        scores = student_val_scores(Path(run), data, c)
        return scores, data.val.observed, data.val.labels, c.array("observed"), c.array("labels")


def _row(name, e, train_observed, n_unknown, true_pos, true_rate, true_e, t0) -> dict:
    """One estimator's errors: the per-class rates (pooled n_c·(Ê − 1), what the rule uses; and each class's own
    PU estimate), E."""
    pooled = e.hidden_for((train_observed == 1).sum(0))
    own = e.priors.rate
    return {"estimator": name, "rate_mae_points": float(100 * np.mean(np.abs(pooled / n_unknown - true_rate))),
            "count_error_pct": float(100 * np.mean(np.abs(pooled - true_pos) / np.maximum(true_pos, 1))),
            "own_rate_mae_points": float(100 * np.nanmean(np.abs(own - true_rate))),
            "E": e.value, "E_error_pct": 100 * (e.value - true_e) / true_e, "seconds": time.perf_counter() - t0,
            "rates": [round(float(r), 4) for r in pooled / n_unknown], "own_rates": [round(float(r), 4) for r in own]}


def measure_student(path: str, run: str) -> dict:
    scores, vobs, vlab, tobs, tlab = student_val(path, run)
    unk = tobs == 0
    true_pos = ((tlab == 1) & unk).sum(0)
    true_rate, true_e = true_pos / unk.sum(0), tlab.sum(1).mean()
    rows = []
    for name in ESTIMATORS:
        t0 = time.perf_counter()
        e = estimated(scores, vobs, name, "the student's val scores")
        rows.append(_row(name, e, tobs, unk.sum(0), true_pos, true_rate, true_e, t0))
    return {"cache": path, "student": run, "true_E": float(true_e),
            "true_rates": [round(float(r), 4) for r in true_rate], "rows": rows}


def measure(path: str, student: str = "") -> dict:
    scores, observed, labels, usable = cache_scores(path, student)
    unk = (observed == 0) & usable[:, None]
    true_pos = ((labels == 1) & unk).sum(0)
    true_rate = true_pos / np.maximum(unk.sum(0), 1)
    true_e = float(labels[usable].sum(1).mean())
    n_c = ((observed == 1) & usable[:, None]).sum(0)
    rows = []
    for name in ESTIMATORS:
        t0 = time.perf_counter()
        e = estimated(scores[usable], observed[usable], name, "the scores")
        rows.append(_row(name, e, observed[usable], unk.sum(0), true_pos, true_rate, true_e, t0))
    known = n_c * (true_e - 1)
    rows.append({"estimator": "n_c(E-1), true E", "rate_mae_points": float(100 * np.mean(np.abs(
        known / np.maximum(unk.sum(0), 1) - true_rate))), "count_error_pct": float(100 * np.mean(
            np.abs(known - true_pos) / np.maximum(true_pos, 1))), "E": true_e, "E_error_pct": 0.0, "seconds": 0.0,
        "rates": [round(float(r), 4) for r in known / np.maximum(unk.sum(0), 1)]})
    return {"cache": path, "student": student, "true_E": true_e, "true_rates": [round(float(r), 4) for r in true_rate],
            "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("caches", nargs="+")
    ap.add_argument("--student", default="", help="fuse the scores with this stored student source")
    ap.add_argument("--student-runs", nargs="*", default=[], help="runs whose best.pt scores the val rows")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    results = [measure(c, args.student) for c in args.caches]
    results += [measure_student(args.caches[0], run) for run in args.student_runs]
    out = {"machine": machine(), "date": today(), "results": results}
    for r in out["results"]:
        print(f"\n{r['cache']}{' + ' + r['student'] if r['student'] else ''}: true E {r['true_E']:.3f}")
        if "true_rates" in r:
            print("true rates " + " ".join(f"{x:.3f}" for x in r["true_rates"]))
        print(f"{'estimator':22s} {'rate MAE (pts)':>15s} {'count err %':>12s} {'own rates MAE':>14s} {'E':>7s} "
              f"{'E err %':>8s} {'s':>7s}")
        for row in r["rows"]:
            print(f"{row['estimator']:22s} {row['rate_mae_points']:15.2f} {row['count_error_pct']:12.1f} "
                  f"{row.get('own_rate_mae_points', float('nan')):14.2f} {row['E']:7.3f} {row['E_error_pct']:8.1f} "
                  f"{row['seconds']:7.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
