"""Scores kept class by class on disk (`ScoreColumns`): what the threshold rules, the prior estimators and the review
read instead of a whole [N, C] float matrix, so that their memory does not grow with N."""
import numpy as np
import pytest

from aevlp.stage_two.priors import estimate_priors
from aevlp.stage_two.score_columns import ScoreColumns
from aevlp.stage_two.thresholds import class_thresholds
from aevlp.tools.review import _ranks
from aevlp.tools.visual import fired_tile, fired_tiles


@pytest.fixture(scope="module")
def world():
    g = np.random.default_rng(3)
    n, c = 997, 300
    scores = g.random((n, c)).astype(np.float32)
    observed = np.zeros((n, c), np.int8)
    observed[np.arange(n), g.integers(0, 12, n)] = 1  # 12 classes with observed positives, the rest none
    scores[observed == 1] += 0.5
    return scores, observed, g.random(n) > 0.05


def _on_disk(scores: np.ndarray, step: int) -> ScoreColumns:
    cols = ScoreColumns(*scores.shape)
    for lo in range(0, len(scores), step):
        cols.write_rows(lo, scores[lo:lo + step])
    return cols


def test_rows_written_in_blocks_read_back_by_class_and_by_rows(world):
    scores, _, usable = world
    cols = _on_disk(scores, 128)  # 997 rows: the last block is short
    assert cols.shape == scores.shape and len(cols) == 997
    for k in (0, 1, 150, 299):
        assert np.array_equal(cols.column(k), scores[:, k])
    assert np.array_equal(cols.rows(100, 357), scores[100:357])
    assert np.array_equal(cols.array(), scores)
    view = cols.take(usable)
    assert view.shape == (int(usable.sum()), 300)
    assert np.array_equal(view.column(7), scores[usable, 7])
    assert np.array_equal(view.rows(3, 9), scores[usable][3:9])
    with pytest.raises(TypeError):
        view.write_rows(0, scores[:1])
    small = ScoreColumns(4, 3, np.uint8)
    small.write_rows(0, np.arange(12).reshape(4, 3))
    assert small.column(2).tolist() == [2, 5, 8, 11] and small.column(2).dtype == np.uint8
    cols.close()


def test_thresholds_and_priors_from_columns_equal_those_from_the_array(world):
    scores, observed, usable = world
    cols = _on_disk(scores, 100)
    hidden = np.full(scores.shape[1], 40.0)
    for rule in ("rate", "observed"):
        a, ta = class_thresholds(scores, observed, rule, hidden=hidden, global_theta=0.6, usable=usable)
        b, tb = class_thresholds(cols, observed, rule, hidden=hidden, global_theta=0.6, usable=usable)
        assert np.array_equal(a, b) and ta.equals(tb)
    assert (a[:12] != 0.6).any()  # the classes with observed positives got their own θ
    pa, pb = estimate_priors(scores, observed, usable=usable), estimate_priors(cols, observed, usable=usable)
    assert np.array_equal(pa.positives, pb.positives, equal_nan=True) and np.isfinite(pa.positives[:12]).all()


def test_each_rows_rank_of_a_class_capped_at_255(world):
    scores, _, _ = world
    ranks = _ranks(_on_disk(scores, 200))
    # independently: a class's rank in its row is the number of the row's classes scoring higher
    expected = np.minimum((scores[:, None, :] > scores[:, :, None]).sum(2), 255)
    for k in (0, 42, 299):
        assert np.array_equal(ranks.column(k), expected[:, k])
    assert ranks.array().max() == 255


def test_the_fired_tile_of_every_class_at_once():
    g = np.random.default_rng(0)
    sims = (g.random((5, 10, 7)) * 0.4).astype(np.float16)  # 5 images, global + 9 tiles, 7 classes
    tau = 0.01
    x = sims.astype(np.float64) / tau
    soft = np.exp(x - x.max(-1, keepdims=True))
    soft /= soft.sum(-1, keepdims=True)  # softmax over classes, view by view
    expected = 1 + soft[:, 1:].argmax(1)  # the tile (1..9) where each class scores highest
    assert np.array_equal(fired_tiles(sims, tau), expected)
    assert fired_tile(sims[2], 4, tau) == expected[2, 4]
