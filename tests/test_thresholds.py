"""Per-class thresholds from the observed positives (aevlp/stage_two/thresholds.py), on scores where the right θ_c is
known by construction, and as stage two reads them."""
import numpy as np
import pytest
from conftest import invoke

from aevlp.errors import ConfigError
from aevlp.stage_two.thresholds import OFF, auc, class_thresholds, read_thresholds, write_thresholds


def world(seed=0, n=3000, c=4, e=2.0):
    """Scores f [N, C] where class c's positives score in [0.4 + 0.1c, 1] and its negatives in [0, 0.3 + 0.1c]:
    every θ in the gap separates them exactly, and the gap moves with the class. Labels: each image holds
    one or two classes (E = 1.5 expected positives); the observed label is one of them, drawn uniformly."""
    g = np.random.default_rng(seed)
    labels = np.zeros((n, c), int)
    for i in range(n):
        labels[i, g.choice(c, size=g.integers(1, 3), replace=False)] = 1
    lo, hi = 0.4 + 0.1 * np.arange(c), 0.3 + 0.1 * np.arange(c)
    scores = np.where(labels == 1, lo + (1 - lo) * g.random((n, c)), hi * g.random((n, c)))
    observed = np.zeros_like(labels)
    for i in range(n):
        observed[i, g.choice(np.flatnonzero(labels[i]))] = 1
    return scores, observed, labels


def test_rate_rule_finds_each_classs_own_gap():
    scores, observed, labels = world()
    e = labels.sum(1).mean()
    theta, table = class_thresholds(scores, observed, "rate", hidden=observed.sum(0) * (e - 1), global_theta=0.5)
    for c in range(4):
        gap = (0.3 + 0.1 * c, 0.4 + 0.1 * c)
        # the count estimate n_c·(E−1) is a few % off the truth: θ lands at the gap's edge, within 0.05 of it
        assert gap[0] - 0.05 <= theta[c] <= gap[1] + 0.05, (c, theta[c], gap)
        unknown = observed[:, c] == 0
        picked = unknown & (scores[:, c] >= theta[c])
        truth = unknown & (labels[:, c] == 1)
        assert (picked & truth).sum() / picked.sum() > 0.9 and (picked & truth).sum() / truth.sum() > 0.9
    assert list(table["why"]) == ["rate"] * 4


def test_an_unreliable_class_falls_back_to_no_pseudo_positives():
    scores, observed, labels = world(seed=1)
    scores[:, 2] = np.random.default_rng(5).random(len(scores))  # class 2: the teacher knows nothing of it
    theta, table = class_thresholds(scores, observed, "observed", hidden=observed.sum(0) * 0.5, global_theta=0.5,
                                    min_auc=0.6)
    assert theta[2] == OFF and "unreliable" in table["why"][2]
    assert auc(scores[observed[:, 2] == 1, 2], scores[observed[:, 2] == 0, 2]) == pytest.approx(0.5, abs=0.05)
    assert all(theta[c] < 1 for c in (0, 1, 3))
    few = observed.copy()
    few[:, 3] = 0
    few[:2, 3] = 1
    theta, table = class_thresholds(scores, few, "rate", hidden=few.sum(0) * 0.5, global_theta=0.5)
    assert theta[3] == 0.5 and "only 2 observed" in table["why"][3]  # no evidence: the global θ stays


def test_the_weak_teacher_check_runs_whatever_the_count_of_hidden_positives():
    """min_auc comes before any rule: a class the teacher cannot rank gets no pseudo-positives even where its
    count of hidden positives is unknown (NaN) or zero (E = 1), and only a class with an unknown count keeps the
    global θ (the issue the observed-only data raised: E ≈ 1 used to switch the check off)."""
    scores, observed, _ = world(seed=2)
    scores[:, 1] = np.random.default_rng(3).random(len(scores))  # class 1: noise
    for hidden in (np.full(4, np.nan), np.zeros(4)):
        theta, table = class_thresholds(scores, observed, "rate", hidden=hidden, global_theta=0.5, min_auc=0.6)
        assert theta[1] == OFF and "unreliable" in table["why"][1]
    theta, table = class_thresholds(scores, observed, "rate", hidden=np.full(4, np.nan), global_theta=0.5)
    assert theta[0] == 0.5 and "no estimate" in table["why"][0]


def test_a_thresholds_csv_round_trips_and_is_checked(tmp_path):
    names = ["cat", "dog", "bird"]
    path = write_thresholds(tmp_path / "t.csv", names, np.array([0.2, 0.55, OFF]))
    assert np.allclose(read_thresholds(path, names), [0.2, 0.55, OFF])
    with pytest.raises(ConfigError, match="classes differ"):
        read_thresholds(path, ["cat", "dog", "fish"])
    (tmp_path / "bad.csv").write_text("class,threshold\ncat,0.2\ndog,2\nbird,0.1\n")
    with pytest.raises(ConfigError, match=r"in \[0, 1.01\]"):
        read_thresholds(tmp_path / "bad.csv", names)


def test_stage_two_selects_with_the_csvs_thresholds(tmp_path, tiny_clip, photo_voc):
    """`aevlp cache thresholds` writes the CSV train reads: its θ_c change exactly the selected pseudo-labels."""
    from conftest import tiny_cfg

    from aevlp.cache import Cache
    from aevlp.specs import Specs
    from aevlp.stage_one.pseudolabel import run_pseudolabel
    from aevlp.stage_two.labeler import PseudoLabeler
    cache = tmp_path / "c.h5"
    cfg = tiny_cfg(tiny_clip, photo_voc, cache, "damp.temperature=0.05")
    run_pseudolabel(cfg, progress=False)
    r = invoke("cache", "thresholds", cache, "--config", "voc", "--set", "damp.temperature=0.05", "--out",
               tmp_path / "t.csv")
    assert r.exit_code == 0 and "threshold" in r.output and "wrote" in r.output, r.output
    assert "E = 1.5 (loss.expected_pos)" in r.output  # pipelines/voc.toml sets VOC's published E
    with Cache(cache) as c:
        names, observed = c.classnames(), c.array("observed")
        theta = np.full(20, OFF)
        theta[:10] = 0.0  # the first ten classes: every top-k pick; the rest: none
        write_thresholds(tmp_path / "t.csv", names, theta)
        damp = Specs.of(tiny_cfg(tiny_clip, photo_voc, cache, "damp.temperature=0.05", 'damp.mode="official"',
                                 f'damp.class_thresholds="{tmp_path / "t.csv"}"')).damp
        z = PseudoLabeler(c, damp, observed).for_epoch(1)
    new = (z == 1) & (observed != 1)
    assert new[:, :10].sum() > 0 and new[:, 10:].sum() == 0


def test_expected_positives_come_from_the_best_source_there_is():
    """E and the hidden positives per class: loss.expected_pos, else the dataset's published mean (VOC 1.5: Cole
    et al.), else the full training labels' mean, else a fully labelled val split, else a PU estimate (a student's
    val scores before the teacher's training scores). The counts are n_c·(E − 1) where E is known."""
    from aevlp.stage_two.priors import resolve_expected
    labels = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 1, 0]])  # 7 positives over 4 images
    obs = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0]])
    never = lambda: pytest.fail("the teacher was asked")  # noqa: E731
    e = resolve_expected(obs, configured=2.0, published=1.5, train_labels=labels, teacher=never)
    assert (e.value, e.source) == (2.0, "loss.expected_pos") and list(e.hidden_for(obs.sum(0))) == [2, 1, 1]
    assert resolve_expected(obs, published=1.5, dataset="voc", train_labels=labels).value == 1.5
    e = resolve_expected(obs, train_labels=labels, val_labels=labels, teacher=never)
    assert e.value == pytest.approx(7 / 4) and e.source == "the full training labels"
    e = resolve_expected(obs, val_labels=np.array([[1, 1, 1], [1, 0, 0]]), teacher=never)
    # a labelled val split: E its mean (2); class c hides share_c·N − n_c: 1·4−2, 0.5·4−1, 0.5·4−1
    assert e.value == 2.0 and list(e.hidden) == [2.0, 1.0, 1.0] and "val split" in e.source
    scores, observed, truth = world()  # separable scores: each class's own estimate is the truth, up to sampling
    e = resolve_expected(observed, teacher=lambda: scores)
    hidden = ((truth == 1) & (observed == 0)).sum(0)
    assert e.estimated and "teacher" in e.source and e.value == pytest.approx(truth.sum(1).mean(), rel=0.03)
    assert np.allclose(e.priors.positives, hidden, rtol=0.1)  # the median rule: twice a sample count
    # the rule's counts: n_c·(Ê − 1), the protocol's (each image's tag drawn uniformly from its labels)
    assert np.allclose(e.hidden_for(observed.sum(0)), hidden, rtol=0.1)


def test_each_prior_estimator_recovers_a_known_mixture():
    """Each PU estimator on scores where the truth is known: unknowns mix a share π of positives (scored like the
    observed ones) with negatives, 4 standard deviations apart: BBE, Elkan–Noto and the median rule within 0.03
    of π; KM2 (on a 300-point subsample, its gradient threshold) within 0.08."""
    from aevlp.stage_two.priors import ESTIMATORS
    g = np.random.default_rng(0)
    for pi in (0.1, 0.4):
        k = int(pi * 3000)
        pos = g.normal(4, 1, 300)
        unk = np.concatenate([g.normal(4, 1, k), g.normal(0, 1, 3000 - k)])
        for name, f in ESTIMATORS.items():
            assert f(pos, unk) == pytest.approx(pi, abs=0.08 if name == "km2" else 0.03), (name, pi)
