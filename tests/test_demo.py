"""`aevlp demo --quick --seeds 2` end to end, as a new user runs it (CI runs this too), then the
commands a user tries next: train with no flag on the demo's cache, predict on a folder, `aevlp run`
on the demo's pipeline, a gallery.

The claims are those that held on every one of three seeds (0, 1, 2) of the quick demo on 2 CPU
cores, with margins below the smallest per-seed difference measured (docs/demo.md has the table):
GPR + DAMP above AN (measured +4.1 to +4.7) and above GPR on global-view pseudo-labels (+1.4 to
+4.6), GR above AN (+1.8 to +3.3), full labels above GPR + DAMP (+5.6 to +6.7), DAMP pseudo-labels
far above global-only ones in F1 (48 vs 23), and the linear probe on CLIP features tying (GPR + DAMP
+0.6 to +0.7 over AN) where end-to-end training separates the methods. GPR + DAMP over GR (+0.8 to
+2.6) is asserted only as "not below".
"""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import probabilities_by_hand

from aevlp.data.fashion import DEBIAN_DIR

pytestmark = pytest.mark.slow


def aevlp(*args, cwd):
    return subprocess.run([sys.executable, "-m", "aevlp", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    if not DEBIAN_DIR.is_dir():
        pytest.skip(f"Fashion-MNIST not installed at {DEBIAN_DIR} (`make data` installs it)")
    cwd = tmp_path_factory.mktemp("user")
    # as `make demo` does: the default --out (./demo) in the user's working directory
    r = aevlp("demo", "--quick", "--seeds", "2", "--no-progress", cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    out = cwd / "demo" / "quick"
    runs = pd.read_csv(out / "report" / "bench_runs.csv")
    return {"out": out, "proc": r, "cwd": cwd, "summary": json.loads((out / "report" / "demo.json").read_text()),
            "map": runs.pivot(index="seed", columns="method", values="test_map"),
            "f1": runs.pivot(index="seed", columns="method", values="pseudo_f1")}


def test_demo_prints_the_table_and_its_closing_lines(demo):
    out = demo["proc"].stdout
    assert "| method | test mAP |" in out and "GPR + DAMP pseudo-labels (AEVLP)" in out and " ± " in out
    assert "zero-shot teacher: CLIP, DAMP" in out and "linear probe on CLIP features" in out
    last = out.strip().splitlines()[-4:]
    assert last[0].startswith("report: ") and last[1].startswith("next:   open ") and "review/index.html" in last[1]
    assert last[2].startswith("next:   aevlp train --pseudo ") and last[3].startswith("next:   aevlp predict ")
    for f in ("bench.md", "bench.csv", "bench_runs.csv", "bench.png", "demo.json"):
        assert (demo["out"] / "report" / f).exists(), f
    assert sorted(demo["map"].index) == [0, 1] and demo["map"].notna().all().all()


def test_end_to_end_results_follow_the_method_on_every_seed(demo):
    m, f1 = demo["map"], demo["f1"]
    assert demo["summary"]["clip_zero_shot_accuracy"] > 50  # the toy CLIP learned something
    assert (m["gpr-damp"] - m["an"] > 2.0).all(), m
    assert (m["gpr-damp"] - m["gpr-global"]).mean() > 0.5, m
    assert (m["gr"] - m["an"]).mean() > 0.5, m
    assert (m["full-labels"] - m["gpr-damp"] > 3.0).all(), m
    assert (m["gpr-damp"] - m["gr"]).mean() > -0.5, m  # not below GR (above it on all three seeds measured)
    assert (f1["gpr-damp"] > f1["gpr-global"] + 15).all(), f1


def test_the_linear_probe_ties_where_end_to_end_separates(demo):
    m = demo["map"]
    probe_gap = (m["probe-gpr-damp"] - m["probe-an"]).mean()
    assert abs(probe_gap) < 1.5, m
    assert (m["gpr-damp"] - m["an"]).mean() > probe_gap + 2.0, m
    teacher = {r["method"]: r["test_map_mean"] for r in demo["summary"]["table"] if r["method"].startswith("zero")}
    assert teacher["zero-shot-damp"] > teacher["zero-shot-global"] + 10, teacher  # tiles find small items


def test_the_observed_only_world_keeps_what_aevlp_adds_switched_on(demo):
    """The same world as a user's single-tag data (one tag per training image, E unknown, no labelled val): the
    table is printed beside the full-label one, GPR-TS's per-class θ are its own (not all the global θ, as when E
    fell back to the observed labels' mean of 1), E is estimated from its student, and the best epoch is picked
    by the observed-only criterion."""
    out = demo["proc"].stdout
    assert "one tag per training image" in out and out.count("| method | test mAP |") == 2
    obs = demo["out"] / "observed-only"
    for seed in (0, 1):
        run = obs / "runs" / f"gpr-ts-best-s{seed}"
        theta = pd.read_csv(run / "class_thresholds.csv")
        assert (theta["threshold"] != 0.5).sum() >= 5, theta  # 0.5: the demo pipeline's global θ
        res = json.loads((run / "results.json").read_text())
        assert res["train_labels"] == "observed only" and res["val_labels"] == "observed"
        assert "student's scores on the held-out val rows" in res["expected_pos"]["source"]
        assert 1.8 < res["expected_pos"]["value"] < 3.2, res["expected_pos"]  # truth 2.5 (1-4 items, uniform)
        assert res["selection"]["criterion"] != "val"
    table = {r["method"]: r for r in demo["summary"]["observed_only"]["table"]}
    assert set(table) >= {"an", "gr", "gpr-damp", "gpr-ts-best"}


def test_train_with_no_flag_on_the_demo_cache(demo):
    cache = demo["out"] / "cache" / "fashion-mosaic.h5"
    r = aevlp("train", "--pseudo", cache, "--no-progress", "--run-dir", "mine", cwd=demo["cwd"])
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((demo["cwd"] / "mine" / "results.json").read_text())
    cfg = (demo["cwd"] / "mine" / "config.toml").read_text()
    assert res["backbone"] == "small-cnn" and 'image_size = 32' in cfg and "small-cnn.safetensors" in cfg
    assert res["loss"] == "gpr" and res["epochs_run"] == 6  # the demo's pipeline, as the cache recorded it
    assert res["test_map"] == pytest.approx(demo["map"].loc[0, "gpr-damp"], abs=1e-6)  # = the demo's own run


def test_predict_on_a_folder_prints_top_tags(demo):
    images = demo["out"] / "data" / "images" / "val"
    r = aevlp("predict", demo["out"] / "runs" / "gpr-damp-s0", images, cwd=demo["cwd"])  # the default --out
    assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_csv(demo["cwd"] / "out" / "preds.csv", keep_default_na=False)
    assert len(df) == len(list(images.rglob("*.png"))) == 400
    assert all(len(t.split("; ")) == 3 for t in df["top3"])
    first = df.iloc[0, 1:11].astype(float)  # top3 names the three most probable classes, in order
    assert [x.split(":")[0] for x in df["top3"][0].split("; ")] == list(first.sort_values(ascending=False).index[:3])
    probs = df.iloc[:, 1:11].to_numpy()
    some = [demo["cwd"] / p for p in df["path"][:4]]
    assert np.allclose(probs[:4], probabilities_by_hand(demo["out"] / "runs" / "gpr-damp-s0", some, 32), atol=1e-4)
    assert df["num_labels"].tolist() == (probs >= 0.5).sum(1).tolist()


def test_run_on_the_demo_pipeline_reuses_stage_one(demo):
    pipeline = demo["out"] / "demo.toml"
    assert (demo["cwd"] / demo["summary"]["pipeline"]).resolve() == pipeline.resolve()
    dry = aevlp("run", pipeline, "--dry-run", cwd=demo["cwd"])
    assert dry.returncode == 0 and "pseudolabel: up to date" in dry.stdout, dry.stdout + dry.stderr
    # the demo's own GPR + DAMP run is this pipeline's run: found, not trained again
    assert "train: up to date - an identical finished run exists" in dry.stdout and "gpr-damp-s0" in dry.stdout
    assert "downloads: none" in dry.stdout
    # pipelines/demo.toml names the demo's folders relatively (demo/clip, ...), as `aevlp run demo` after
    # `make demo` does; pointed at the quick demo's folders it is the same stage one
    rel = [f'{k}="demo/quick/{v}"' for k, v in (("dataset.data_root", "data"), ("clip.pretrained", "clip"),
                                                ("cache.path", "cache/fashion-mosaic.h5"),
                                                ("train.weights", "backbone/small-cnn.safetensors"))]
    dry = aevlp("run", "demo", "--dry-run", *[a for r in rel for a in ("--set", r)], "--set", "train.epochs=6",
                "--set", 'train.out="demo/quick/runs"', cwd=demo["cwd"])
    assert dry.returncode == 0 and "pseudolabel: up to date" in dry.stdout, dry.stdout + dry.stderr
    assert "an identical finished run exists" in dry.stdout, dry.stdout
    r = aevlp("run", pipeline, "--set", 'loss.name="an"', "--no-progress", cwd=demo["cwd"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "test mAP" in r.stdout and "skip" in r.stdout


def test_gallery_of_a_class(demo):
    from PIL import Image
    r = aevlp("cache", "gallery", demo["out"] / "cache" / "fashion-mosaic.h5", "--class", "sandal", "--out",
              "out/sandal.png", cwd=demo["cwd"])
    assert r.returncode == 0, r.stderr[-2000:]
    with Image.open(demo["cwd"] / "out" / "sandal.png") as im:
        assert im.width >= 600 and im.height >= 200
    listing = json.loads((demo["cwd"] / "out" / "sandal.json").read_text())
    from aevlp.cache import Cache
    from aevlp.config import config_for_cache
    from aevlp.stage_two.labeler import labeler_for
    # what a training run with the demo's pipeline selects
    with Cache(demo["out"] / "cache" / "fashion-mosaic.h5") as f:
        c, ids = f.classnames().index("sandal"), np.asarray(f.image_ids())
        z = labeler_for(f, config_for_cache(f)).for_epoch(1)
        new = (z[:, c] == 1) & (f.array("observed")[:, c] != 1) & ~f.f["bad"][:]  # pseudo-positives
        given, wrong = set(ids[new]), set(ids[new & (f.array("labels")[:, c] != 1)])
    shown = listing["panels"]["given the pseudo-label"]
    assert len(shown) == min(24, len(given)) > 0 and set(shown) <= given
    assert listing["totals"]["given the pseudo-label"] == len(given)  # the count is the class's, not the cap
    assert f"given the pseudo-label: {len(shown)} shown of {len(given)}" in r.stdout and "red box:" in r.stdout
    assert set(listing["panels"]["wrong (not in the ground truth)"]) <= wrong


def test_second_run_reuses_everything(demo):
    made = sorted(p for p in demo["out"].rglob("*") if p.suffix in (".h5", ".pt", ".safetensors", ".npy"))
    before = {p: p.stat().st_mtime_ns for p in made}
    r = aevlp("demo", "--quick", "--seeds", "2", "--no-progress", cwd=demo["cwd"])
    assert r.returncode == 0
    from aevlp.tools.demo import METHODS, OBSERVED_METHODS, PROBES
    assert r.stdout.count("train: skip") == 2 * (len(METHODS) + len(PROBES) + len(OBSERVED_METHODS)), r.stdout
    assert "reused" in r.stdout
    assert {p: p.stat().st_mtime_ns for p in before} == before  # no cache, model or dataset file rewritten


def test_your_own_images_walkthrough_offline(demo):
    """The README's "your own images" commands as written, on a CSV of 400 demo images, with the demo's CLIP
    and backbone: the small-cnn (at its own learning rate, not the ResNets') beats the zero-shot teacher on
    val. Measured on these images: 63.9 (table.toml's default, GPR-TS-best: its GPR-soft student kept) vs the
    teacher's 52.2 (Intel Xeon; 64.8 vs 54.2 on an AMD EPYC with two students)."""
    cwd, out = demo["cwd"], demo["out"]
    from aevlp.data.fashion import CLASSNAMES
    ids = np.load(out / "data" / "formatted_train_images.npy")[:400]
    labels = np.load(out / "data" / "formatted_train_labels.npy")[:400]
    rows = [{"image": i, "labels": "|".join(CLASSNAMES[c] for c in np.flatnonzero(y)),
             "split": "test" if k >= 300 else "train"} for k, (i, y) in enumerate(zip(ids, labels))]
    pd.DataFrame(rows).to_csv(cwd / "tags.csv", index=False)
    steps = [("data", "prepare", "table", "--csv", "tags.csv", "--images", out / "data" / "images", "--out",
              "data/mine"),
             ("pseudolabel", "--dataset", "table", "--data-root", "data/mine", "--pretrained", out / "clip",
              "--no-progress"),
             ("train", "--pseudo", "cache/table.h5", "--backbone", "small-cnn", "--weights",
              out / "backbone" / "small-cnn.safetensors", "--run-dir", "runs/mine", "--no-progress")]
    for step in steps:
        r = aevlp(*step, cwd=cwd)
        assert r.returncode == 0, (step, r.stdout[-1500:], r.stderr[-1500:])
    assert "training small-cnn: lr 0.0003 (small-cnn's default" in r.stdout
    res = json.loads((cwd / "runs" / "mine" / "results.json").read_text())
    assert res["dataset"] == "table" and res["backbone"] == "small-cnn" and res["epochs_run"] == 8
    import h5py

    from aevlp.metrics import mean_average_precision
    from aevlp.stage_one.teacher import zero_shot_scores
    with h5py.File(cwd / "cache" / "table.h5") as f:
        teacher = zero_shot_scores(f["val_embeddings"][:], f["text_features"][:],
                                   json.loads(f.attrs["selection"])["temperature"])
        val = f["val_labels"][:]
    best_teacher = max(mean_average_precision(s, val) for s in teacher.values())
    assert res["val_map"] > best_teacher + 2, (res["val_map"], best_teacher)
