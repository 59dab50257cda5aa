"""Own data as users really have it: an observed-only CSV (one known tag per training image, full tags
on the test rows) through `data prepare table`, stage one, train, bench and report — by the CLI."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import invoke
from PIL import Image

CLASSES = ["cat", "dog", "tree", "car", "boat"]


def ok(*args) -> str:
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(scope="module")
def own(tiny_clip, tmp_path_factory):
    d = tmp_path_factory.mktemp("own")
    photos = d / "photos"
    photos.mkdir()
    g = np.random.default_rng(0)
    rows = []
    for i in range(36):
        tags = list(g.choice(CLASSES, size=int(g.integers(1, 4)), replace=False))
        Image.fromarray(g.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(photos / f"p{i:02d}.jpg")
        split = "test" if i >= 26 else "val" if i >= 22 else "train"
        known = tags if split != "train" else tags[:1]  # a training row knows one tag, no more
        rows.append({"image": f"p{i:02d}.jpg", "labels": "|".join(known), "split": split})
    pd.DataFrame(rows).to_csv(d / "tags.csv", index=False)
    data = d / "data"
    ok("data", "prepare", "table", "--csv", d / "tags.csv", "--images", photos, "--out", data, "--observed-only")
    clip = ["--set", f'clip.arch="{tiny_clip["arch"]}"', "--set", f'clip.config="{tiny_clip["config"]}"',
            "--set", f'clip.pretrained="{tiny_clip["pretrained"]}"', "--set", 'clip.precision="fp32"',
            "--set", "clip.workers=0", "--set", "views.grid=2", "--set", "views.rounds=2",
            "--set", 'views.resize="squash"', "--set", 'views.normalize="clip"',
            "--set", 'views.interpolation="bilinear"', "--set", "views.size=32"]
    ok("pseudolabel", "--dataset", "table", "--data-root", data, "--config", "table", "--out", d / "c.h5",
       *clip, "--no-progress")
    return {"dir": d, "data": data, "cache": d / "c.h5", "clip": clip}


def test_no_full_training_labels_anywhere(own):
    meta = json.loads((own["data"] / "aevlp_dataset.json").read_text())
    assert meta["train_labels"] == "observed-only"
    labels = np.load(own["data"] / "formatted_train_labels.npy")
    obs = np.load(own["data"] / "formatted_train_labels_obs.npy")
    val = meta["val_rows"]  # the fully labelled val rows live in the train file (Cole's layout)
    train = np.setdiff1d(np.arange(len(labels)), val)
    assert sorted(val) == [22, 23, 24, 25] and len(train) == 22
    assert (labels[train].sum(1) == 1).all()  # only the known tag of each training row was written
    assert np.array_equal(labels[train], obs[train])  # and it is the observed label


def test_train_and_report_without_full_labels(own):
    run = own["dir"] / "runs" / "gpr"
    out = ok("train", "--pseudo", own["cache"], "--backbone", "clip-head", "--weights", "none", "--epochs", "3",
             "--workers", "0", "--lr", "1e-3", "--run-dir", run, "--no-progress")
    assert "test mAP" in out
    res = json.loads((run / "results.json").read_text())
    assert res["train_labels"] == "observed only" and "pseudo_f1" not in res
    assert {"CF1", "OF1", "micro_map", "precision@3"} <= set(res["test_metrics"])
    assert res["test_metrics"]["map"] == pytest.approx(res["test_map"])
    rep = own["dir"] / "report"
    ok("report", run, "--out", rep)
    table = pd.read_csv(rep / "results.csv")
    assert {"micro_map", "CF1", "OF1"} <= set(table.columns)
    row = table[np.isclose(table["test_map"].astype(float), res["test_map"])].iloc[0]
    assert row["CF1"] == pytest.approx(res["test_metrics"]["CF1"]) and row["OF1"] == pytest.approx(
        res["test_metrics"]["OF1"])
    assert table["method"].astype(str).str.contains("zero-shot teacher").any()
    r = invoke("train", "--pseudo", own["cache"], "--backbone", "clip-head", "--weights", "none", "--loss", "bce-full",
               "--labels", "full", "--run-dir", run.parent / "x")
    assert r.exit_code == 2 and "observed-only" in r.output  # needs full training labels: refused clearly


def test_run_refuses_a_full_label_method_before_stage_one(own, tmp_path):
    r = invoke("run", "table", "--data-root", own["data"], "--set", 'loss.name="iun"',
               "--set", f'cache.path="{tmp_path / "c.h5"}"', *own["clip"], "--no-progress")
    assert r.exit_code == 2 and "needs full training labels" in r.output, r.output
    assert not (tmp_path / "c.h5").exists() and not (tmp_path / "c.h5.partial").exists()


def test_bench_writes_mean_and_sd_over_seeds(own):
    out = own["dir"] / "bench"
    ok("bench", "table", "an", "gpr-damp", "--seeds", "0,1", "--data-root", own["data"], "--out", out,
       "--set", f'cache.path="{own["cache"]}"', *own["clip"], "--set", 'train.backbone="clip-head"',
       "--set", 'train.weights="none"', "--set", "train.epochs=2", "--set", "train.lr=1e-3",
       "--set", "train.workers=0", "--no-progress")
    runs = pd.read_csv(out / "bench_runs.csv")
    assert sorted(zip(runs["method"], runs["seed"])) == [("an", 0), ("an", 1), ("gpr-damp", 0), ("gpr-damp", 1)]
    table = pd.read_csv(out / "bench.csv").set_index("method")
    for m in ("an", "gpr-damp"):
        vals = runs.loc[runs["method"] == m, "test_map"].to_numpy()
        assert table.loc[m, "test_map_mean"] == pytest.approx(vals.mean())
        assert table.loc[m, "test_map_sd"] == pytest.approx(vals.std(ddof=1))
    assert "zero-shot-global" in table.index
    assert (out / "bench.png").stat().st_size > 5000 and "±" in (out / "bench.md").read_text()


def test_gpr_ts_trains_its_gr_student_first_and_learns_from_its_scores(own):
    out = own["dir"] / "bench-ts"
    ok("bench", "table", "gpr-ts", "--seeds", "0", "--data-root", own["data"], "--out", out,
       "--set", f'cache.path="{own["cache"]}"', *own["clip"], "--set", 'train.backbone="clip-head"',
       "--set", 'train.weights="none"', "--set", "train.epochs=2", "--set", "train.lr=1e-3",
       "--set", "train.workers=0", "--no-progress")
    runs = pd.read_csv(out / "bench_runs.csv")
    run = out / "runs" / "gpr-ts-s0"
    student = json.loads((run / "student" / "results.json").read_text())
    assert student["loss"] == "gr" and "student" not in student  # the student: GR, no pseudo-labels
    res = json.loads((run / "results.json").read_text())
    assert res["loss"] == "gpr" and res["student"]["run"] == str((run / "student").resolve())
    assert res["student"]["method"] == "gr" and res["student"]["epoch"] == student["best_epoch"]
    assert runs["run_dir"].tolist() == [str(run)] and runs["test_map"].iloc[0] == pytest.approx(res["test_map"])
    cfg = (run / "config.toml").read_text()
    assert 'student_loss = "gr"' in cfg and 'student = ""' in cfg  # config.toml: the settings as given
    r = invoke("bench", "table", "gpr-ts", "--seeds", "0", "--data-root", own["data"], "--out", out,
               "--set", f'cache.path="{own["cache"]}"', *own["clip"], "--set", 'train.backbone="clip-head"',
               "--set", 'train.weights="none"', "--set", "train.epochs=2", "--set", "train.lr=1e-3",
               "--set", "train.workers=0", "--no-progress")
    assert r.exit_code == 0 and "train: skip" in r.output  # a finished gpr-ts run (student included) is current


def test_the_best_student_is_the_one_of_higher_val_map_and_it_teaches(own):
    """damp.student_loss = best: a GR, an EM and a GPR-soft student train; the one of highest val mAP (read here
    from their own results; the first of gr, em, gpr-soft on a tie) is the student the run's scores came from."""
    out = own["dir"] / "bench-best"
    ok("bench", "table", "gpr-ts-best", "--seeds", "0", "--data-root", own["data"], "--out", out,
       "--set", f'cache.path="{own["cache"]}"', *own["clip"], "--set", 'train.backbone="clip-head"',
       "--set", 'train.weights="none"', "--set", "train.epochs=2", "--set", "train.lr=1e-3",
       "--set", "train.workers=0", "--no-progress")
    run = out / "runs" / "gpr-ts-best-s0"
    methods = ("gr", "em", "gpr-soft")
    val = {m: json.loads((run / f"student-{m}" / "results.json").read_text())["val_map"] for m in methods}
    assert {m: json.loads((run / f"student-{m}" / "results.json").read_text())["loss"] for m in val} == \
        {m: m for m in methods}
    better = next(m for m in methods if val[m] == max(val.values()))
    res = json.loads((run / "results.json").read_text())
    from aevlp.cache.sources import checkpoint_id
    from aevlp.stage_two.refine import run_selection
    from aevlp.stage_two.run_folder import RunFolder
    made = checkpoint_id(run / f"student-{better}" / RunFolder.BEST)  # the same weights as gpr-ts's GR student
    assert res["student"]["method"] == better and res["student"]["checkpoint"] == made  # share one stored source
    assert run_selection(run)[1] == f"student-{made[7:19]}"
    # the run's model: the better on val of the fused run and that student (kept_on_val)
    if res["kept"]["model"] == "fused":
        assert res["val_map"] >= val[better] and not (run / RunFolder.FUSED).exists()
    else:
        assert res["kept"]["model"] == f"student-{better}" and res["val_map"] == val[better]
        assert res["kept"]["other"]["val_map"] < val[better] and checkpoint_id(run / RunFolder.BEST) == made


def test_the_better_on_val_of_the_fused_run_and_its_student_is_the_runs_model(tmp_path):
    """kept_on_val, both ways: a student above the fused run on val takes the run's best.pt, per-class APs and
    figures (the fused model kept as fused.pt); one below leaves the run as it is."""
    from aevlp.stage_two.refine import kept_on_val
    from aevlp.stage_two.run_folder import RunFolder

    def run_with(student_val: float) -> tuple[Path, dict]:
        run = tmp_path / f"run{student_val}"
        for m, v in (("gr", student_val - 1), ("em", student_val)):
            (run / f"student-{m}").mkdir(parents=True)
            RunFolder(run / f"student-{m}").write_results({"val_map": v, "test_map": v - 2, "best_epoch": 3})
            (run / f"student-{m}" / "best.pt").write_bytes(m.encode())
            (run / f"student-{m}" / "per_class_ap.csv").write_text(f"class,ap\n{m},1\n")
        (run / "best.pt").write_bytes(b"fused")
        (run / "per_class_ap.csv").write_text("class,ap\nfused,1\n")
        fused = {"val_map": 80.0, "test_map": 79.0, "best_epoch": 6, "loss": "gpr"}
        RunFolder(run).write_results(fused)
        return run, fused

    run, fused = run_with(81.0)
    out = kept_on_val(run, fused, echo=lambda _: None)
    assert (out["val_map"], out["test_map"], out["best_epoch"], out["loss"]) == (81.0, 79.0, 3, "gpr")
    assert out["kept"]["model"] == "student-em" and out["kept"]["other"] == {"val_map": 80.0, "test_map": 79.0}
    assert (run / "best.pt").read_bytes() == b"em" and (run / "fused.pt").read_bytes() == b"fused"
    assert "em" in (run / "per_class_ap.csv").read_text() and RunFolder(run).results() == out
    assert kept_on_val(run, out, echo=lambda _: None) == out  # once decided, a second call changes nothing
    run, fused = run_with(80.0)  # a tie: the fused run stays
    out = kept_on_val(run, fused, echo=lambda _: None)
    assert out["kept"]["model"] == "fused" and out["val_map"] == 80.0 and (run / "best.pt").read_bytes() == b"fused"
    assert not (run / "fused.pt").exists()


def test_best_compares_runs_by_the_criterion_they_were_selected_by(tmp_path):
    """On observed-only data a run's val mAP is against the held-out rows' single tags, which ranks a model that
    finds the other positives last (here: GR's 46 against EM's 42); the students and the fused run are compared by
    the criterion each picked its epoch by (results.json's selection value: the observed AUC), as val mAP is with a
    labelled val split."""
    from aevlp.stage_two.refine import chosen_student, kept_on_val
    from aevlp.stage_two.run_folder import RunFolder

    def sel(v):
        return {"criterion": "observed-auc", "value": v}

    run = tmp_path / "run"
    for m, val_map, auc in (("gr", 46.0, 88.8), ("em", 42.0, 89.0), ("gpr-soft", 37.0, 87.7)):
        (run / f"student-{m}").mkdir(parents=True)
        RunFolder(run / f"student-{m}").write_results({"val_map": val_map, "test_map": 0, "selection": sel(auc)})
        (run / f"student-{m}" / "best.pt").write_bytes(m.encode())
        (run / f"student-{m}" / "per_class_ap.csv").write_text(f"class,ap\n{m},1\n")
    assert chosen_student(run, "best")[0] == "em"
    (run / "best.pt").write_bytes(b"fused")
    fused = {"val_map": 43.0, "test_map": 1, "selection": sel(88.9)}
    RunFolder(run).write_results(fused)
    out = kept_on_val(run, fused, echo=lambda _: None)
    assert out["kept"]["model"] == "student-em" and out["selection"] == sel(89.0) and out["val_map"] == 42.0
    assert "observed-auc 89.00 is above the fused run's 88.90" in out["kept"]["why"]
    assert (run / "best.pt").read_bytes() == b"em"


def test_gpr_soft_learns_from_damp_fused_with_a_student(own):
    """A student (`damp.student_loss`) fuses into GPR-soft's teacher as into a selection (bench gpr-ts-soft): the
    run records the student its calibrated targets came from, and keeps the better on val of itself and it."""
    from aevlp.stage_two.plan import wants_student
    out = own["dir"] / "bench-soft"
    ok("bench", "table", "gpr-ts-soft", "--seeds", "0", "--data-root", own["data"], "--out", out,
       "--set", f'cache.path="{own["cache"]}"', *own["clip"], "--set", 'train.backbone="clip-head"',
       "--set", 'train.weights="none"', "--set", "train.epochs=2", "--set", "train.lr=1e-3",
       "--set", "train.workers=0", "--no-progress")
    res = json.loads((out / "runs" / "gpr-ts-soft-s0" / "results.json").read_text())
    assert res["loss"] == "gpr-soft" and res["student"]["method"] in ("gr", "em", "gpr-soft") and "kept" in res
    from aevlp.config import load_config
    assert not wants_student(load_config("table", ['loss.name="gpr-soft"', 'damp.student_loss=""']))
