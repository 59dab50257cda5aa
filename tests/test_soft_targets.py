"""gpr-soft: each class's teacher score calibrated from its observed positives (aevlp/stage_two/soft_targets.py),
and the loss that learns the unknown entries towards it. Golden values are worked out by hand from the formula
in docs/method.md ("Soft targets"), not by the code under test."""
import math

import numpy as np
import pytest
import torch

from aevlp.losses import gpr_soft_loss, gr_loss
from aevlp.stage_two.soft_targets import bins_for, calibrated

NAN = float("nan")


def _class(pos_scores, n_unknown=100):
    """Scores [N] and observed labels [N]: unknowns at 0.00, 0.01, ..., then the observed positives."""
    col = np.concatenate([np.arange(n_unknown) / n_unknown, pos_scores]).astype(np.float32)
    obs = np.concatenate([np.zeros(n_unknown, np.int8), np.ones(len(pos_scores), np.int8)])
    return col, obs


def test_two_bins_by_hand():
    """10 observed positives: 2 bins of 50 unknowns, split at their median; all positives score above it, so the
    upper bin holds every hidden positive: π = h·1/50 there and 0 below; the observed positives get 1."""
    assert bins_for(10) == 2
    col, obs = _class(np.full(10, 0.9))
    pi = calibrated(col, obs, hidden=20.0)
    assert np.allclose(pi[:50], 0.0) and np.allclose(pi[50:100], 20 / 50) and np.all(pi[100:] == 1)


def test_a_decreasing_estimate_is_pooled_to_a_constant():
    """Positives all in the lower bin would make π fall as the score rises: pool-adjacent violators average the two
    bins (equal counts): (20/50 + 0) / 2."""
    col, obs = _class(np.full(10, 0.1))
    assert np.allclose(calibrated(col, obs, hidden=20.0)[:100], 0.2)


@pytest.mark.parametrize("pos, hidden", [(np.full(9, 0.9), 20.0), (np.full(10, 0.9), 0.0), (np.full(10, 0.9), NAN)])
def test_a_class_that_cannot_be_calibrated_gets_no_target(pos, hidden):
    """Fewer than ten observed positives (two bins of five), or no hidden positives known: NaN (GR's own k̂ then)."""
    col, obs = _class(pos)
    pi = calibrated(col, obs, hidden=hidden)
    assert np.isnan(pi[:100]).all() and np.all(pi[100:] == 1)


def test_on_a_mixture_the_targets_sum_to_the_hidden_positives_and_follow_the_true_posterior():
    """SCAR data: positives score Beta(5, 2), negatives Beta(2, 5); 2,000 unknowns hide 400 positives, 100 more
    positives are observed. The targets sum to the hidden count (each bin's share of the positives times h), and
    per bin they match the true posterior h·f_pos / (h·f_pos + (u − h)·f_neg), integrated over the bin."""
    g = np.random.default_rng(0)
    hidden_pos, neg, observed = g.beta(5, 2, 400), g.beta(2, 5, 1600), g.beta(5, 2, 100)
    col = np.concatenate([hidden_pos, neg, observed]).astype(np.float32)
    obs = np.concatenate([np.zeros(2000, np.int8), np.ones(100, np.int8)])
    pi = calibrated(col, obs, hidden=400.0)
    assert pi[:2000].sum() == pytest.approx(400, rel=0.02)
    truth = np.concatenate([np.ones(400), np.zeros(1600)])
    order = np.argsort(col[:2000])
    for chunk in np.array_split(order, 5):  # fifths of the unknowns by score: mean target vs the share positive
        assert pi[chunk].mean() == pytest.approx(truth[chunk].mean(), abs=0.12)
    assert np.all(np.diff(pi[order]) >= 0)  # non-decreasing in the score


def test_unusable_rows_inform_nothing_but_still_get_their_bins_value():
    col, obs = _class(np.full(10, 0.9))
    usable = np.ones(len(col), bool)
    usable[:10] = False  # ten unreadable images among the lowest unknowns
    pi = calibrated(col, obs, hidden=20.0, usable=usable)
    assert not np.isnan(pi[:10]).any() and np.allclose(pi[:10], 0.0)
    assert np.allclose(pi[55:100], 20 / 45)  # 90 usable unknowns: 45 a bin


def test_loss_equals_gr_without_targets_and_the_formula_with_them():
    z = torch.tensor([[0.4, -1.2, 2.0]], dtype=torch.float64)
    y = torch.tensor([[1, 0, 0]])
    hp = dict(w=1.5, b=-2.0, mu=0.5, sigma=1.0, q2=0.5, q3=1.0)
    none = torch.full((1, 3), NAN, dtype=torch.float64)
    assert gpr_soft_loss(z, y, none, **hp, reg=0.0, expected_pos=1.0).item() == pytest.approx(
        gr_loss(z, y, **hp).item(), rel=1e-12)
    t = torch.tensor([[NAN, 0.25, 0.8]], dtype=torch.float64)
    p = [1 / (1 + math.exp(-v)) for v in (0.4, -1.2, 2.0)]
    v = [math.exp(-((q - 0.5) ** 2) / 2) for q in p]
    term = lambda k, q, w: w * (k * (1 - q ** 0.5) / 0.5 + (1 - k) * (1 - (1 - q)))  # noqa: E731 (q3 = 1: L3 = p)
    observed = -math.log(p[0] + 1e-7)  # GR's epsilon inside the log (docs/method.md)
    want = (observed + term(0.25, p[1], v[1]) + term(0.8, p[2], v[2])) / 3
    reg = (sum(p) - 1.0) ** 2 / 9
    assert gpr_soft_loss(z, y, t, **hp, reg=0.1, expected_pos=1.0).item() == pytest.approx(want + 0.1 * reg,
                                                                                          rel=1e-9)
