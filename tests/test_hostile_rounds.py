"""Nothing stale, nothing unchecked, nothing crashes (round two of the hostile probe): student sources held to the
cache's standard, refine rounds that are done only when they are current, resumes that go on as last.pt trained,
forged caches caught where the data allow it, and careless input refused in one line."""
import json
import shutil
import urllib.parse

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import SMALL_CNN, invoke, make_photo_dataset, tiny_cfg

from aevlp.cache import Cache
from aevlp.errors import AevlpError, ConfigError


@pytest.fixture(scope="module")
def world(tiny_clip, tmp_path_factory):
    """A cache with every view stored, a finished GR run (a student), its stored scores, and a pipeline file."""
    from aevlp.cache.sources import checkpoint_id, store_source
    from aevlp.config import dump_config
    from aevlp.stage_one.pseudolabel import run_pseudolabel
    from aevlp.stage_two.train import run_train

    d = tmp_path_factory.mktemp("rounds")
    root = make_photo_dataset(d / "voc", n_train=24, n_test=6)
    cache = d / "c.h5"
    cfg = tiny_cfg(tiny_clip, root, cache, 'cache.store_embeddings="all"', *SMALL_CNN, "train.epochs=1",
                   "damp.temperature=0.05")
    run_pseudolabel(cfg, progress=False)
    pipeline = d / "p.toml"
    pipeline.write_text(dump_config(cfg))
    run = d / "runs" / "gr"
    run_train(tiny_cfg(tiny_clip, root, cache, *SMALL_CNN, "train.epochs=1", 'loss.name="gr"'), run_dir=run,
              progress=False, echo=None)
    with Cache(cache) as c:
        val = c.dataset().val
        store_source(c, "stu", np.full((len(c), 20), 0.25), {"run": str(run), "checkpoint": checkpoint_id(
            run / "best.pt")}, val_scores=np.full((len(val), 20), 0.5), val_ids=list(val.images))
    return {"d": d, "root": root, "cache": cache, "pipeline": pipeline, "run": run, "clip": tiny_clip, "cfg": cfg}


def reseal(path, edit):
    """Edit a source file and recompute its seal, as someone who knows the format would (a checksum is not a
    signature: what the value and id checks still catch)."""
    from aevlp.cache.sources import _seal

    with h5py.File(path, "r+") as f:
        edit(f)
        a = f.attrs
        ids = [str(x) for x in f["image_ids"].asstr()[()]]
        vids = [str(x) for x in f["val_image_ids"].asstr()[()]] if "val_image_ids" in f else []
        a["sha256"] = _seal(str(a["cache_fingerprint"]), a["provenance"], ids, vids, f["scores"][()],
                            f["val_scores"][()] if "val_scores" in f else None)


def copy_source(world, name, edit=None, resealed=None):
    from aevlp.cache.sources import source_path

    src = source_path(world["cache"], "stu")
    dst = source_path(world["cache"], name)
    shutil.copy(src, dst)
    if edit is not None:
        with h5py.File(dst, "r+") as f:
            edit(f)
    if resealed is not None:
        reseal(dst, resealed)
    return name


def _set(key, value):
    def edit(f):
        data = f[key][()]
        data[(0,) * data.ndim] = value
        del f[key]
        f.create_dataset(key, data=data)
    return edit


SOURCE_CASES = {
    "scores edited": (dict(edit=_set("scores", 0.9)), "differ from their checksum"),
    "scores NaN, resealed": (dict(resealed=_set("scores", np.nan)), "outside \\[0, 1\\] or not finite"),
    "scores 5.0, resealed": (dict(resealed=_set("scores", 5.0)), "outside \\[0, 1\\] or not finite"),
    "scores -3.0, resealed": (dict(resealed=_set("scores", -3.0)), "outside \\[0, 1\\] or not finite"),
    "provenance edited": (dict(edit=lambda f: f.attrs.__setitem__("provenance", '{"run": "elsewhere"}')),
                          "checksum"),
    "provenance not JSON, resealed": (dict(resealed=lambda f: f.attrs.__setitem__("provenance", "{oops")),
                                      "not a JSON object"),
    "provenance a list, resealed": (dict(resealed=lambda f: f.attrs.__setitem__("provenance", "[1, 2]")),
                                    "not a JSON object"),
    "scores a group": (dict(edit=lambda f: (f.__delitem__("scores"), f.create_group("scores"))), "not an array"),
    "rows of other images, resealed": (dict(resealed=lambda f: f["image_ids"].__setitem__(0, "x.jpg")),
                                       "not the cache's images"),
    "another cache's fingerprint, resealed": (dict(resealed=lambda f: f.attrs.__setitem__("cache_fingerprint",
                                                                                           "0" * 16)),
                                              "another cache"),
    "unsealed (an earlier format)": (dict(edit=lambda f: f.attrs.__delitem__("format")), "earlier aevlp"),
}


@pytest.mark.parametrize("case", sorted(SOURCE_CASES))
def test_student_sources_are_held_to_the_caches_standard(world, case):
    from aevlp.cache.sources import read_source, source_provenance

    kw, message = SOURCE_CASES[case]
    name = copy_source(world, "case-" + "".join(c for c in case if c.isalnum())[:40], **kw)
    with Cache(world["cache"]) as c:
        with pytest.raises(AevlpError, match=message):
            read_source(c, name)
        assert source_provenance(c, name) is None  # so a GPR-TS run stores its student's scores again
    r = invoke("train", "--pseudo", world["cache"], "--config", world["pipeline"], "--set", f'damp.student="{name}"',
               "--run-dir", world["d"] / "r" / name, "--no-progress")
    assert r.exit_code != 0 and "Traceback" not in r.output, r.output
    assert "source" in r.output or "student" in r.output, r.output


def _set_last(key, value):
    def edit(f):
        data = f[key][()]
        data[-1, -1] = value
        del f[key]
        f.create_dataset(key, data=data)
    return edit


@pytest.mark.parametrize("edit, message", [(dict(edit=_set_last("scores", 0.9)), "differ from their checksum"),
                                           (dict(resealed=_set_last("scores", np.nan)), "not finite")])
def test_a_source_read_a_few_rows_at_a_time_is_checked_to_its_last_row(world, monkeypatch, edit, message):
    """The scores are hashed, checked and read a block of rows at a time (here three rows): what is read equals
    what was stored, and an edit in the last block is caught as one in the first is."""
    import aevlp.cache.sources as sources

    with h5py.File(sources.source_path(world["cache"], "stu"), "r") as f:
        stored, c = f["scores"][()], f["scores"].shape[1]
    monkeypatch.setattr(sources, "SOURCE_BLOCK_BYTES", 3 * c * stored.dtype.itemsize)
    with Cache(world["cache"]) as cache:
        scores = sources.read_source(cache, "stu")[0]
        assert np.array_equal(scores[5:9], stored[5:9].astype(np.float32))
        assert np.array_equal(np.asarray(scores), stored.astype(np.float32))
        name = copy_source(world, "last-" + message.split()[-1], **edit)
        with pytest.raises(AevlpError, match=message):
            sources.read_source(cache, name)


@pytest.mark.parametrize("name", ["../c", "/etc/passwd", "a/b", ".hidden", "x" * 200])
def test_a_source_name_is_a_plain_name_under_the_caches_sources(world, name):
    with pytest.raises(ConfigError, match="damp.student"):
        tiny_cfg(world["clip"], world["root"], world["cache"], f'damp.student="{name}"')


def test_a_source_from_a_student_trained_again_is_refused(world, tmp_path):
    """The provenance names the run's best.pt by hash: after the run is trained again, its old scores are stale."""
    from aevlp.cache.sources import checkpoint_id, read_source, store_source
    run = tmp_path / "student"
    shutil.copytree(world["run"], run)
    with Cache(world["cache"]) as c:
        store_source(c, "old", np.full((len(c), 20), 0.25), {"run": str(run), "checkpoint": checkpoint_id(
            run / "best.pt")})
        read_source(c, "old")
        (run / "best.pt").write_bytes((run / "best.pt").read_bytes() + b"\0")  # trained again
        with pytest.raises(AevlpError, match="trained again"):
            read_source(c, "old")


def test_refine_rounds_are_done_only_when_current(world, tmp_path):
    """A round is reused only while its teacher run holds the student it learned from and its settings are the
    ones asked for; --set is checked whether or not a round trains."""
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copytree(world["run"], runs / "gr")
    r = invoke("refine", runs / "gr", "--loss", "gpr", "--no-progress")
    assert r.exit_code == 0 and "teaches" in r.output, r.output
    r = invoke("refine", runs / "gr", "--loss", "gpr", "--no-progress")
    assert r.exit_code == 0 and "is done" in r.output, r.output
    r = invoke("refine", runs / "gr", "--loss", "gpr", "--set", "damp.threshold=7", "--no-progress")
    assert r.exit_code != 0 and "damp.threshold" in r.output and "Traceback" not in r.output, r.output
    r = invoke("refine", runs / "gr", "--loss", "gpr", "--set", "damp.threshold=0.2", "--no-progress")
    assert r.exit_code == 0 and "again: trained with other settings" in r.output, r.output
    r = invoke("refine", runs / "gr", "--loss", "gpr", "--set", "damp.threshold=0.2", "--set", "train.seed=0",
               "--no-progress")
    assert r.exit_code == 0 and "is done" in r.output, r.output
    # the teacher trained again (another seed); the round asks for the same settings as before (seed 0)
    r = invoke("train", "--pseudo", world["cache"], "--config", runs / "gr" / "config.toml", "--run-dir", runs / "gr",
               "--seed", "4", "--force", "--no-progress")
    assert r.exit_code == 0, r.output
    r = invoke("refine", runs / "gr", "--loss", "gpr", "--set", "damp.threshold=0.2", "--set", "train.seed=0",
               "--no-progress")
    assert r.exit_code == 0 and "earlier student" in r.output and "stored the student scores" in r.output, r.output


def test_a_gpr_ts_run_can_be_refined(world, tmp_path):
    """A round of a GPR-TS run (damp.student_loss = gr): the run's own best.pt teaches the next round, which keeps
    the run's per-class θ and has no student of its own to train."""
    run = tmp_path / "ts"
    r = invoke("train", "--pseudo", world["cache"], "--config", world["pipeline"], "--set", 'damp.student_loss="gr"',
               "--set", 'damp.class_thresholds="rate"', "--run-dir", run, "--no-progress")
    assert r.exit_code == 0, r.output
    r = invoke("refine", run, "--no-progress")
    assert r.exit_code == 0 and "round 1" in r.output, r.output
    cfg = (tmp_path / "ts-r1" / "config.toml").read_text()
    assert 'student = "ts-r1"' in cfg and 'student_loss = ""' in cfg and 'class_thresholds = "rate"' in cfg


def test_resume_goes_on_as_last_pt_trained(world, tmp_path):
    """--resume with another --pseudo is refused, and so is a config.toml edited by hand after the run started
    (last.pt records the whole config and the cache it trained with)."""
    run = tmp_path / "cut"
    shutil.copytree(world["run"], run)
    (run / "results.json").unlink()  # an interrupted run
    other = tmp_path / "other.h5"
    shutil.copy(world["cache"], other)
    r = invoke("train", "--resume", run, "--pseudo", other, "--no-progress")
    assert r.exit_code != 0 and "a resume goes on with its own cache" in r.output, r.output
    text = (run / "config.toml").read_text()
    (run / "config.toml").write_text(text.replace("threshold = 0.5", "threshold = 0.3", 1))
    r = invoke("train", "--resume", run, "--no-progress")
    assert r.exit_code != 0 and "damp.threshold" in r.output and "edited since" in r.output, r.output
    (run / "config.toml").write_text(text)
    r = invoke("train", "--resume", run, "--no-progress")
    assert r.exit_code == 0, r.output


def _copy(world, tmp_path, name, edit):
    p = tmp_path / f"{name}.h5"
    shutil.copy(world["cache"], p)
    with h5py.File(p, "r+") as f:
        edit(f)
    return p


def test_added_datasets_forged_summaries_and_rechecksummed_edits_are_caught(world, tmp_path):
    from aevlp.cache.validate import checksums, sealed_names
    extra = _copy(world, tmp_path, "extra", lambda f: f.create_dataset("extra", data=np.zeros(3)))
    r = invoke("cache", "verify", extra)
    assert r.exit_code == 1 and "extra: not in the cache when it was finished" in r.output, r.output
    with pytest.raises(AevlpError, match="added since"):
        Cache(extra)
    summary = _copy(world, tmp_path, "summary", lambda f: f.attrs.__setitem__("summary", json.dumps(
        {**json.loads(f.attrs["summary"]), "pseudo_precision": 99.9})))
    r = invoke("cache", "inspect", summary)
    assert r.exit_code != 0 and "99.9" not in r.output and "summary" in r.output, r.output

    def forged(f):  # pseudo-labels edited and every checksum recomputed: only re-deriving them finds it
        f["pseudo"][0, 0, 3] = 1 - f["pseudo"][0, 0, 3]
        f.attrs["checksums"] = json.dumps(checksums(f, sealed_names(f)))
    p = _copy(world, tmp_path, "forged", forged)
    r = invoke("cache", "verify", p)
    assert r.exit_code == 1 and "pseudo, round 0: differs" in r.output, r.output

    def other_labels(f):
        obs = f["observed"][()]
        obs[0] = np.roll(obs[0], 1)
        f["observed"][...] = obs
    p = _copy(world, tmp_path, "observed", other_labels)
    r = invoke("cache", "verify", p, "--data-root", world["root"])
    assert r.exit_code == 1 and "observed labels differ" in r.output, r.output
    assert invoke("cache", "verify", world["cache"], "--data-root", world["root"]).exit_code == 0


def test_flipped_metadata_bytes_never_give_a_traceback(world, tmp_path):
    data = world["cache"].read_bytes()
    for i, at in enumerate(range(0, 3000, 97)):
        p = tmp_path / f"flip{i}.h5"
        b = bytearray(data)
        b[at] ^= 0xFF
        p.write_bytes(bytes(b))
        for cmd in (("cache", "verify", p), ("cache", "inspect", p)):
            r = invoke(*cmd)
            assert "Traceback" not in r.output and (r.exception is None or isinstance(r.exception, SystemExit)), \
                (at, cmd, r.output, r.exception)


def test_careless_table_input_is_refused_naming_it(world, tmp_path):
    img = world["root"] / "VOCdevkit" / "VOC2012" / "JPEGImages"
    names = sorted(p.name for p in img.glob("train*.jpg"))
    csv = tmp_path / "t.csv"
    pd.DataFrame({"image": [names[0], f"./{names[0]}", *names[1:4]], "labels": ["a", "b", "a", "b", "a"],
                  "split": ["train"] * 4 + ["test"]}).to_csv(csv, index=False)
    r = invoke("data", "prepare", "table", "--csv", csv, "--images", img, "--out", tmp_path / "o")
    assert r.exit_code != 0 and f"image '{names[0]}' appears 2 times" in r.output, r.output
    ok = tmp_path / "ok.csv"
    pd.DataFrame({"image": names[:5], "labels": ["a", "b", "a", "", "a"],
                  "split": ["train"] * 4 + ["test"]}).to_csv(ok, index=False)
    r = invoke("data", "prepare", "table", "--csv", ok, "--images", img, "--out", tmp_path / "o", "--observed-only")
    assert r.exit_code != 0 and "line 5" in r.output and names[3] in r.output, r.output
    r = invoke("data", "prepare", "table", "--csv", ok, "--images", img, "--out", tmp_path / "o", "--sep", "")
    assert r.exit_code != 0 and "--sep" in r.output and "Traceback" not in r.output, r.output


@pytest.mark.parametrize("export,message", [
    ("[1, 2, 3]", "a list of tasks"),
    ('[{"data": "x.jpg", "annotations": []}]', "its data is not an object"),
    ('[{"data": {"aevlp_image": "x"}, "annotations": ["yes"]}]', "annotations are not a list of objects"),
    ('[{"data": {"aevlp_image": "x"}, "annotations": [{"result": "r"}]}]', "result is not a list"),
    ("[" * 100000 + "]" * 100000, "nested too deeply|not a Label Studio JSON export"),
])
def test_malformed_label_studio_exports_are_refused(export, message, tmp_path):
    from aevlp.data.reviewed import read_reviewed
    (tmp_path / "e.json").write_text(export)
    with pytest.raises(AevlpError, match=message):
        read_reviewed(tmp_path / "e.json", ["x"], ["a", "b"])


def test_an_image_reviewed_twice_with_other_choices_is_refused(tmp_path):
    from aevlp.data.reviewed import read_reviewed

    def task(choices):
        return {"data": {"aevlp_image": "x"}, "annotations": [{"result": [
            {"from_name": "labels", "to_name": "image", "type": "choices", "value": {"choices": choices}}]}]}
    (tmp_path / "e.json").write_text(json.dumps([task(["a"]), task(["b"])]))
    with pytest.raises(AevlpError, match="reviewed twice with different choices"):
        read_reviewed(tmp_path / "e.json", ["x"], ["a", "b"])
    (tmp_path / "s.json").write_text(json.dumps([task(["a"]), task(["a"])]))  # the same review twice: fine
    assert read_reviewed(tmp_path / "s.json", ["x"], ["a", "b"]).tolist() == [[1, -1]]


def test_a_thresholds_csv_with_a_class_twice_is_refused(tmp_path):
    from aevlp.stage_two.thresholds import read_thresholds
    (tmp_path / "t.csv").write_text("class,threshold\na,0.4\na,0.9\nb,0.5\n")
    with pytest.raises(ConfigError, match=r"listed more than once: \['a'\]"):
        read_thresholds(tmp_path / "t.csv", ["a", "b"])


@pytest.mark.parametrize("override,message", [
    ("train.image_size=1", "train.image_size"), ("train.seed=-1", "train.seed"),
    ("train.seed=100000000000000000000", "train.seed"), ("views.seed=-3", "views.seed"),
])
def test_numbers_that_would_fail_later_are_refused_now(override, message):
    from aevlp.config import load_config
    with pytest.raises(ConfigError, match=message):
        load_config("voc", [override])


def test_more_careless_commands_get_one_line(world, tmp_path):
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(world["pipeline"].read_bytes() + "\n# caf\xe9\n".encode("latin-1"))
    r = invoke("run", bad, "--dry-run")
    assert r.exit_code != 0 and "not UTF-8" in r.output, r.output
    r = invoke("train", "--pseudo", world["cache"], "--config", world["pipeline"], "--seed", "-1", "--no-progress")
    assert r.exit_code != 0 and "train.seed" in r.output and "Traceback" not in r.output, r.output
    img = sorted((world["root"] / "VOCdevkit/VOC2012/JPEGImages").glob("*.jpg"))[0]
    r = invoke("predict", world["run"], img, "--threshold", "nan", "--out", tmp_path / "p.csv")
    assert r.exit_code != 0 and "nan" in r.output, r.output
    r = invoke("train", "--pseudo", world["cache"], "--config", world["pipeline"], "--set", 'clip.arch="ViT-B-16"',
               "--run-dir", tmp_path / "x", "--no-progress")
    assert r.exit_code != 0 and "contradicts the cache" in r.output, r.output
    r = invoke("train", "--pseudo", world["cache"], "--config", world["pipeline"], "--labels", "full", "--set",
               'damp.student="stu"', "--run-dir", tmp_path / "y", "--dry-run")
    assert r.exit_code == 0 and "train.labels = full" in r.output and "not used" in r.output, r.output


def test_ctrl_c_in_bench_demo_and_review_says_what_was_kept(world, monkeypatch, tmp_path):
    import aevlp.tools.bench
    import aevlp.tools.demo
    import aevlp.tools.review

    def stop(*a, **k):
        raise KeyboardInterrupt
    for mod, name in ((aevlp.tools.bench, "run_bench"), (aevlp.tools.demo, "run_demo"),
                      (aevlp.tools.review, "write_review")):
        monkeypatch.setattr(mod, name, stop)
    for args in (("bench", world["pipeline"], "gr"), ("demo", "--out", tmp_path / "d"),
                 ("review", world["cache"], "--out", tmp_path / "rv")):
        r = invoke(*args)
        assert r.exit_code == 130 and "interrupted:" in r.output and "Traceback" not in r.output, (args, r.output)


def test_label_studio_links_encode_any_image_name(tmp_path):
    from pathlib import Path

    from aevlp.cache.interchange import export_label_studio
    ids = ["a&b #1%.jpg", "sub dir/ü?.jpg"]
    rows = [(ids, np.array([[1, 0], [0, 1]], dtype=np.int8), np.full((2, 2), 0.5, np.float32), np.zeros(2, bool))]
    tasks = json.loads(export_label_studio(rows, ["cat", "dog"], Path(tmp_path) / "t.json", "v").read_text())
    for t, i in zip(tasks, ids):
        assert urllib.parse.parse_qs(t["data"]["image"].split("?", 1)[1])["d"] == [i]
