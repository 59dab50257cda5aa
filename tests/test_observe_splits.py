import numpy as np
import pytest

from aevlp.data import single_positive, train_val_split


def cole_reference(label_matrix, seed=1200):
    """Cole et al.'s generate_observed_labels (num_pos=1, num_neg=0), re-written independently."""
    rng = np.random.RandomState(seed)
    lm = np.array(label_matrix, dtype=float)
    lm[lm == 0] = -1
    obs = np.zeros_like(lm)
    for i in range(lm.shape[0]):
        idx_pos = np.nonzero(lm[i, :] == 1.0)[0]
        rng.shuffle(idx_pos)
        idx_neg = np.nonzero(lm[i, :] == -1.0)[0]
        rng.shuffle(idx_neg)
        obs[i, idx_pos[:1]] = 1.0
    return obs


@pytest.fixture
def labels():
    rs = np.random.RandomState(5)
    y = (rs.rand(300, 20) < 0.15).astype(np.float32)
    y[::37] = 0  # some rows without positives
    return y


def test_bit_identical_to_cole(labels):
    assert np.array_equal(single_positive(labels), cole_reference(labels))
    assert np.array_equal(single_positive(labels, seed=7), cole_reference(labels, seed=7))


def test_observed_properties(labels):
    obs = single_positive(labels)
    has_pos = labels.sum(1) > 0
    assert np.array_equal(obs.sum(1), has_pos.astype(obs.dtype))
    assert np.all(labels[obs == 1] == 1)
    assert np.array_equal(obs, single_positive(labels))  # fresh RNG per call
    assert not np.array_equal(obs, single_positive(labels, seed=1))


def test_observed_rejects_bad_values():
    with pytest.raises(ValueError, match="0/1"):
        single_positive(np.array([[0, 2]]))


def test_split_properties():
    tr, va = train_val_split(1001)
    assert len(va) == round(0.2 * 1001)
    assert set(tr).isdisjoint(va) and set(tr) | set(va) == set(range(1001))
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(va) > 0)
    tr2, va2 = train_val_split(1001)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)


def test_split_matches_cole_formula():
    n = 57
    perm = np.random.RandomState(1200).permutation(n)
    n_val = int(np.round(0.2 * n))
    tr, va = train_val_split(n)
    assert np.array_equal(tr, np.sort(perm[: n - n_val]))
    assert np.array_equal(va, np.sort(perm[-n_val:]))


def test_expected_benchmark_sizes():
    # docs/method.md, "Benchmark protocol": VOC official train 5,717 -> 4,574 / 1,143
    tr, va = train_val_split(5717)
    assert (len(tr), len(va)) == (4574, 1143)
    tr, va = train_val_split(82081)  # COCO
    assert (len(tr), len(va)) == (65665, 16416)


def test_subsample_fraction():
    tr, va = train_val_split(100, ss_frac=0.5)
    assert (len(tr), len(va)) == (40, 10)


@pytest.mark.parametrize("check_bytes", [7 * 20 * 4, 1 << 20])  # 7 float32 rows a block; the whole file at once
@pytest.mark.parametrize("with_obs", [True, False])
def test_load_dataset_read_by_blocks_equals_the_whole_file(tmp_path, monkeypatch, labels, check_bytes, with_obs):
    """The label files are checked and split a block of rows at a time: every split equals the whole file
    indexed by the benchmark's split, and observed labels generated without a file equal Cole's on the whole
    train file (one RNG across the blocks)."""
    import aevlp.data.layout as layout

    monkeypatch.setattr(layout, "CHECK_BYTES", check_bytes)
    names = [f"c{k}" for k in range(20)]
    test = (np.random.RandomState(6).rand(50, 20) < 0.2).astype(np.float32)
    phases = {"train": ([f"{i}.jpg" for i in range(300)], labels), "val": ([f"t{i}.jpg" for i in range(50)], test)}
    layout.write_layout(tmp_path, "voc-like", names, tmp_path, phases, extra={"dataset": "table"})
    if not with_obs:
        (tmp_path / "formatted_train_labels_obs.npy").unlink()
    data = layout.load_dataset("table", tmp_path)
    tr, va = train_val_split(300, val_frac=0.2, seed=1200)
    whole_obs = cole_reference(labels)
    for split, rows in ((data.train, tr), (data.val, va)):
        assert split.labels.dtype == np.int8 and split.observed.dtype == np.int8
        assert np.array_equal(split.labels, labels[rows]) and np.array_equal(split.observed, whole_obs[rows])
        assert list(split.images) == [f"{i}.jpg" for i in rows]
    assert np.array_equal(data.test.labels, test)
    assert data.report["train_rows_without_positive"] == int((labels.sum(1) == 0).sum())
    assert data.report.get("train_observed_generated", False) is (not with_obs)
