"""One labeler for every view of the labels: each export format, the gallery, the review site and `aevlp cache
thresholds` say exactly what a training run with the same settings (per-class θ, a stored student fused in)
selects, round by round (epoch e reads round (e − 1) mod R)."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SMALL_CNN, invoke, make_photo_dataset, tiny_cfg

from aevlp.cache import Cache

R = 2


@pytest.fixture(scope="module")
def world(tiny_clip, tmp_path_factory):
    """A cache with every view stored, a student source with its val scores, and the labels training selects
    with per-class θ (rate) and that student fused in, for each round (from train's own set-up)."""
    from aevlp.cache.sources import store_source
    from aevlp.config import dump_config, updated
    from aevlp.stage_one.pseudolabel import run_pseudolabel
    from aevlp.stage_two.plan import plan_stage_two
    from aevlp.stage_two.train import _setup

    d = tmp_path_factory.mktemp("labeler")
    root = make_photo_dataset(d / "voc", n_train=30, n_test=8)
    cache = d / "c.h5"
    cfg = tiny_cfg(tiny_clip, root, cache, 'cache.store_embeddings="all"', "damp.temperature=0.05", *SMALL_CNN,
                   "train.epochs=1")
    run_pseudolabel(cfg, progress=False)
    g = np.random.default_rng(0)
    with Cache(cache) as c:
        val = c.dataset().val
        store_source(c, "stu", g.random((len(c), 20)), {"run": "synthetic", "val_rows": len(val)},
                     val_scores=g.random((len(val), 20)), val_ids=list(val.images))
    cfg = updated(cfg, {"damp": {"student": "stu", "class_thresholds": "rate", "threshold": 0.06,
                                 "student_weight": 0.1}})
    pipeline = d / "p.toml"
    pipeline.write_text(dump_config(cfg))
    r = _setup(plan_stage_two(cfg, run_dir=d / "run"), d / "run")
    trained = {rnd: r.labeler.for_epoch(rnd + 1) for rnd in range(R)}
    theta = r.labeler.thresholds.copy()
    r.cache.close()
    with Cache(cache) as c:
        ids, names, obs, bad = c.image_ids(), c.classnames(), c.array("observed"), c.f["bad"][:].astype(bool)
    assert any((trained[0][:, k] == 1).sum() for k in range(20)) and (theta != 0.06).any()  # a real selection
    assert not np.array_equal(trained[0], trained[1])  # the rounds differ (flips)
    return {"d": d, "cache": cache, "pipeline": pipeline, "trained": trained, "theta": theta, "ids": ids,
            "names": names, "observed": obs, "bad": bad}


def export(world, fmt, rnd, out):
    r = invoke("cache", "export", world["cache"], "--config", world["pipeline"], "--round", rnd, "--format", fmt,
               "--out", out)
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.parametrize("fmt", ["csv", "parquet", "npz"])
def test_a_table_export_equals_what_training_selects(world, tmp_path, fmt):
    pytest.importorskip("pyarrow") if fmt == "parquet" else None
    for rnd in range(R):
        out = export(world, fmt, rnd, tmp_path / f"r{rnd}.{fmt}")
        if fmt == "npz":
            z = np.load(out)["pseudo"]
            prov = json.loads(str(np.load(out)["provenance"]))
        else:
            df = pd.read_csv(out) if fmt == "csv" else pd.read_parquet(out)
            assert list(df["image"]) == world["ids"]
            z = df[[f"pseudo:{n}" for n in world["names"]]].to_numpy()
            prov = json.loads(Path(f"{out}.provenance.json").read_text())
        assert np.array_equal(z, world["trained"][rnd]), (fmt, rnd)
        assert prov["round"] == rnd and prov["student"]["run"] == "synthetic"
        assert np.allclose(prov["class_thresholds"], world["theta"], atol=1e-6)


def test_label_studio_and_fiftyone_show_the_positives_training_uses(world, tmp_path):
    for rnd in range(R):
        z = world["trained"][rnd]
        tasks = json.loads(export(world, "label-studio", rnd, tmp_path / f"ls{rnd}" / "tasks.json").read_text())
        readable = [i for i in range(len(z)) if not world["bad"][i]]
        assert [t["data"]["aevlp_image"] for t in tasks] == [world["ids"][i] for i in readable]
        for t, i in zip(tasks, readable):
            assert t["predictions"][0]["result"][0]["value"]["choices"] == \
                [n for n, v in zip(world["names"], z[i]) if v == 1]
        fo = json.loads((export(world, "fiftyone", rnd, tmp_path / f"fo{rnd}") / "labels.json").read_text())["labels"]
        by_name = {Path(p).name: sorted(x["label"] for x in v) for p, v in fo.items()}
        for i in readable:
            assert by_name[Path(world["ids"][i]).name] == sorted(n for n, v in zip(world["names"], z[i]) if v == 1)
        assert json.loads((tmp_path / f"fo{rnd}" / "provenance.json").read_text())["round"] == rnd


def test_the_gallery_and_the_thresholds_table_count_what_training_selects(world, tmp_path):
    z, obs, bad, names = world["trained"][1], world["observed"], world["bad"], world["names"]
    k = int(np.argmax(((z == 1) & (obs != 1)).sum(0)))
    r = invoke("cache", "gallery", world["cache"], "--config", world["pipeline"], "--round", 1, "--class", names[k],
               "--out", tmp_path / "g.png")
    assert r.exit_code == 0, r.output
    listing = json.loads((tmp_path / "g.json").read_text())
    assert listing["totals"]["given the pseudo-label"] == int(((z[:, k] == 1) & (obs[:, k] != 1) & ~bad).sum())
    r = invoke("cache", "thresholds", world["cache"], "--config", world["pipeline"], "--out", tmp_path / "t.csv")
    assert r.exit_code == 0, r.output
    assert np.allclose(pd.read_csv(tmp_path / "t.csv")["threshold"], world["theta"], atol=1e-6)


def test_the_review_site_marks_the_negatives_and_thetas_training_uses(world, tmp_path):
    import base64

    from aevlp.config import load_config
    from aevlp.tools.review import write_review

    write_review(world["cache"], tmp_path / "site", cfg=load_config(world["pipeline"]), per_class=4, progress=False)
    for k in (0, 7):
        text = (tmp_path / "site" / "data" / f"class-{k:03d}.js").read_text()
        raw = json.loads(text.split(f"window.AEVLP_CLASSES[{k}] = ", 1)[1].rstrip().rstrip(";"))
        neg = np.frombuffer(base64.b64decode(raw["neg"]), dtype=np.uint8)
        assert np.array_equal(neg.astype(bool), world["trained"][0][:, k] == -1)
        assert raw["theta"] == pytest.approx(min(world["theta"][k], 1.01))


def test_a_review_without_a_config_reads_the_caches_own_pipeline(world, tmp_path):
    from aevlp.tools.review import write_review

    page = write_review(world["cache"], tmp_path / "site", per_class=4, progress=False)  # once a crash: Specs.of(None)
    assert page.exists()


def test_the_dry_run_shows_the_E_and_thetas_training_selects_with(world):
    """`train --dry-run` prints the plan's E and per-class θ: those a labeler built afresh from the cache finds."""
    from aevlp.config import load_config
    from aevlp.stage_two.labeler import labeler_for

    r = invoke("train", "--config", world["pipeline"], "--pseudo", world["cache"], "--dry-run")
    assert r.exit_code == 0, r.output
    with Cache(world["cache"]) as c:
        fresh = labeler_for(c, load_config(str(world["pipeline"])), student="stu")
        theta, e = fresh.thresholds, fresh.expected
    on = theta[theta <= 1]
    assert np.allclose(theta, world["theta"], atol=1e-6)  # what training selected with
    assert f"per-class θ (rate): {on.min():.3g}–{on.max():.3g} over {len(on)} classes" in r.output
    assert f"expected positives per image E: {e.value:.3g} ({e.source})" in r.output


def test_selection_in_blocks_of_rows_equals_the_whole_rounds(world, monkeypatch):
    """The labeler and `cache verify` read a block of rows at a time (memory bounded by a block, not by N): with
    blocks of one row, every round's labels, the averaged scores and θ are those of one block."""
    import torch

    import aevlp.cache.reader as reader
    from aevlp.cache.admin import verify_cache
    from aevlp.config import load_config
    from aevlp.damp import pseudo_labels
    from aevlp.stage_two.labeler import labeler_for

    cfg = load_config(str(world["pipeline"]))
    with Cache(world["cache"]) as c:
        whole = labeler_for(c, cfg, student="stu")
        scores = whole.scores().array()
        assert len(c.row_blocks()) == 1
        _, _, v, k = c.f["sims"].shape
        monkeypatch.setattr(reader, "BLOCK_BYTES", 4 * v * k)  # the smallest block: one row's float32 similarities
        assert len(c.row_blocks()) == len(c)
        blocked = labeler_for(c, cfg, student="stu")
        for rnd in range(R):
            assert np.array_equal(blocked.for_epoch(rnd + 1), world["trained"][rnd])
        assert np.allclose(blocked.scores().array(), scores, atol=1e-6)
        assert np.allclose(blocked.thresholds, world["theta"])
        # the DAMP reference on a whole round without a student: the same labels as the blocked selection
        plain = labeler_for(c, load_config(str(world["pipeline"]), ['damp.student=""', 'damp.class_thresholds=""']))
        sel = {k: v for k, v in plain.damp.selection().items()}
        ref = pseudo_labels(torch.as_tensor(c.sims(0).astype(np.float32)), torch.as_tensor(c.array("observed")),
                            **sel)[1].numpy()
        assert np.array_equal(plain.for_epoch(1), ref)
    assert verify_cache(world["cache"]) == []  # the re-derivation of stored scores and labels, in blocks
