import numpy as np
import pytest

from aevlp.metrics import (
    average_precision,
    mean_average_precision,
    per_class_ap,
    pseudo_label_quality,
    topk_precision_recall,
)


def brute_ap(s, y):
    """Independent AP: one threshold per distinct score, sum of (R_n - R_{n-1}) * P_n."""
    s, y = np.asarray(s, float), np.asarray(y) == 1
    if not y.any():
        return 0.0
    ap, r_prev = 0.0, 0.0
    for t in sorted(set(s), reverse=True):
        pred = s >= t
        tp = (pred & y).sum()
        p, r = tp / pred.sum(), tp / y.sum()
        ap += (r - r_prev) * p
        r_prev = r
    return ap


def test_golden_ap():
    assert average_precision([.9, .8, .7, .1], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)


def test_ties_are_one_threshold():
    # All tied: one threshold, precision = base rate.
    assert average_precision([.5, .5, .5, .5], [1, 0, 0, 1]) == pytest.approx(0.5)
    # Tie between a positive and a negative at the top: precision 1/2 there, then 2/3.
    assert average_precision([.9, .9, .5], [1, 0, 1]) == pytest.approx(0.5 * 0.5 + 0.5 * (2 / 3))


def test_ap_matches_brute_force(rng):
    for _ in range(50):
        n = int(rng.integers(2, 40))
        s = np.round(rng.random(n), 1)  # rounding creates ties
        y = (rng.random(n) < 0.3).astype(int)
        assert average_precision(s, y) == pytest.approx(brute_ap(s, y), abs=1e-12)


def test_perfect_and_range(rng):
    y = (rng.random((30, 5)) < 0.4).astype(int)
    y[0] = 1
    assert mean_average_precision(y + 0.0, y) == pytest.approx(100.0)
    m = mean_average_precision(rng.random((30, 5)), y)
    assert 0.0 <= m <= 100.0


def test_empty_class_counts_as_zero():
    y = np.array([[1, 0], [0, 0], [1, 0]])
    s = np.array([[.9, .1], [.1, .2], [.8, .3]])
    assert average_precision(s[:, 1], y[:, 1]) == 0.0
    assert mean_average_precision(s, y) == pytest.approx(50.0)


def test_invariant_to_monotone_transform(rng):
    s = rng.random((40, 4))
    y = (rng.random((40, 4)) < 0.3).astype(int)
    assert mean_average_precision(np.exp(3 * s) - 1, y) == pytest.approx(mean_average_precision(s, y))


def test_shape_errors():
    with pytest.raises(ValueError):
        mean_average_precision(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError):
        average_precision([1, 2], [1])


def test_per_class_table():
    y = np.array([[1, 0], [0, 0], [1, 0]])
    t = per_class_ap(np.array([[.9, .1], [.1, .2], [.8, .3]]), y, ["a", "b"])
    assert list(t["class"]) == ["a", "b"]
    assert t["ap"].tolist() == pytest.approx([100.0, 0.0])
    assert t["positives"].tolist() == [2, 0]


def test_pseudo_label_quality_excludes_observed_and_uses_true_f1():
    truth = np.array([[1, 1, 0, 1], [1, 0, 1, 0]])
    observed = np.array([[1, 0, 0, 0], [0, 0, 1, 0]])
    pseudo = np.array([[1, 1, 1, 0], [1, 0, 1, 1]])
    q = pseudo_label_quality(pseudo, observed, truth)
    # Non-observed pseudo positives: (0,1)T (0,2)F (1,0)T (1,3)F -> P = 2/4; hidden truths: (0,1),(0,3),(1,0) -> R = 2/3
    assert q["precision"] == pytest.approx(50.0)
    assert q["recall"] == pytest.approx(200 / 3)
    assert q["f1"] == pytest.approx(2 * 50 * (200 / 3) / (50 + 200 / 3))
    assert q["f1_official"] == pytest.approx(q["f1"] / 2)


def test_topk():
    s = np.array([[.9, .8, .1], [.1, .2, .9]])
    y = np.array([[1, 0, 1], [0, 0, 1]])
    r = topk_precision_recall(s, y, 1)
    assert r["precision@1"] == pytest.approx(100.0)
    assert r["recall@1"] == pytest.approx(75.0)
    with pytest.raises(ValueError):
        topk_precision_recall(s, y, 4)


def test_reported_metrics_match_scikit_learn():
    from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

    from aevlp.metrics import evaluation_report, micro_average_precision, threshold_scores
    g = np.random.default_rng(7)
    y = (g.random((60, 6)) < 0.3).astype(int)
    y[:, 5] = 0  # a class with no positives
    s = np.clip(y * 0.3 + g.random((60, 6)) * 0.8, 0, 1)
    s[:, 4] = 0.1  # a class never predicted at 0.5
    assert micro_average_precision(s, y) == pytest.approx(100 * average_precision_score(y.ravel(), s.ravel()))
    m = threshold_scores(s, y)
    pred = (s >= 0.5).astype(int)
    cp = precision_score(y, pred, average="macro", zero_division=0)
    cr = recall_score(y, pred, average="macro", zero_division=0)
    assert m["CP"] == pytest.approx(100 * cp) and m["CR"] == pytest.approx(100 * cr)
    assert m["CF1"] == pytest.approx(100 * 2 * cp * cr / (cp + cr))
    assert m["OP"] == pytest.approx(100 * precision_score(y, pred, average="micro", zero_division=0))
    assert m["OR"] == pytest.approx(100 * recall_score(y, pred, average="micro", zero_division=0))
    assert m["OF1"] == pytest.approx(100 * f1_score(y, pred, average="micro", zero_division=0))
    rep = evaluation_report(s, y)
    assert set(rep) >= {"map", "micro_map", "CP", "CR", "CF1", "OP", "OR", "OF1", "precision@3", "recall@3"}
    top3 = np.argsort(-s, axis=1)[:, :3]
    hits = np.take_along_axis(y, top3, 1).sum(1)
    assert rep["precision@3"] == pytest.approx(100 * np.mean(hits / 3))
