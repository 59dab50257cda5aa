"""`aevlp run` decisions, cache tools, report, and config handling."""
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import invoke, make_photo_dataset, tiny_pipeline

from aevlp.config import load_config
from aevlp.errors import ConfigError


@pytest.fixture(scope="module")
def world(tiny_clip, tmp_path_factory):
    d = tmp_path_factory.mktemp("orch")
    root = make_photo_dataset(d / "voc", n_train=24, n_test=6)
    pipe = tiny_pipeline(d / "tiny.toml", tiny_clip, root, f'''[views]
grid = 2
rounds = 2
[cache]
path = "{d / 'cache' / 'tiny.h5'}"
store_embeddings = "global"
[train]
backbone = "clip-head"
epochs = 2
workers = 0
lr = 1e-3
out = "{d / 'runs'}"
''')
    return {"dir": d, "pipe": pipe, "root": root, "cache": d / "cache" / "tiny.h5"}


@pytest.fixture(scope="module")
def ran(world):
    """The pipeline run once; the tests below read or compare against it."""
    r = invoke("run", world["pipe"], "--no-progress")
    assert r.exit_code == 0, r.output
    return world


def test_dry_run_then_run_then_nothing_to_do(world, tmp_path, monkeypatch):
    own = ["--set", f'cache.path="{tmp_path / "c.h5"}"', "--set", f'train.out="{tmp_path / "runs"}"']
    r = invoke("run", world["pipe"], "--dry-run", *own)
    assert r.exit_code == 0, r.output
    assert "pseudolabel: would run - no cache" in r.output and "train: would run" in r.output
    assert not (tmp_path / "c.h5").exists()  # a dry run does nothing
    r = invoke("run", world["pipe"], "--no-progress", *own)
    assert r.exit_code == 0, r.output
    assert "test mAP" in r.output
    import aevlp.stage_one.pseudolabel as pl
    import aevlp.tools.run as run_mod

    def forbidden(*a, **k):
        raise AssertionError("nothing should run")
    monkeypatch.setattr(pl, "load_clip", forbidden)
    monkeypatch.setattr(run_mod, "taught", forbidden)
    r = invoke("run", world["pipe"], "--no-progress", *own)
    assert r.exit_code == 0, r.output
    assert "pseudolabel: skip" in r.output and "train: skip" in r.output


@pytest.mark.parametrize("override,stage_one_runs,field", [
    ("damp.threshold=0.3", False, "damp.threshold"),
    ('damp.mode="official"', False, "damp.mode"),
    ('loss.name="gr"', False, "loss.name"),
    ("views.grid=3", True, "grid: 2 -> 3"),
    ("views.rounds=3", True, "rounds: 2 -> 3"),
    ('text.prompts=["a picture of a {}."]', True, "prompts"),
    ('clip.precision="bf16"', True, "precision"),
])
def test_dry_run_decisions(ran, override, stage_one_runs, field):
    world = ran
    r = invoke("run", world["pipe"], "--dry-run", "--set", override)
    assert r.exit_code == 0, r.output
    first = r.output.splitlines()[0]
    assert first.startswith("pseudolabel: would run" if stage_one_runs else "pseudolabel: up to date"), r.output
    assert "train: would run" in r.output and field in r.output


@pytest.mark.parametrize("override,message", [
    ('loss.name="gpt"', "unknown loss 'gpt' (did you mean 'gpr'?)"),
    ('train.backbone="resnet5"', "unknown backbone 'resnet5' (did you mean 'resnet50'?)"),
    ('train.weights="no/such.pth"', "train.weights = 'no/such.pth': file not found"),
])
def test_stage_two_choices_are_refused_before_stage_one(world, tmp_path, monkeypatch, override, message):
    import aevlp.stage_one.pseudolabel as pl

    def forbidden(*a, **k):
        raise AssertionError("stage one must not start")
    monkeypatch.setattr(pl, "load_clip", forbidden)
    for extra in (["--dry-run"], ["--no-progress"]):
        r = invoke("run", world["pipe"], *extra, "--set", override, "--set", f'cache.path="{tmp_path / "c.h5"}"')
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "c.h5").exists() and not (tmp_path / "c.h5.partial").exists()


def test_force_stage(ran):
    world = ran
    r = invoke("run", world["pipe"], "--dry-run", "--force-stage", "train")
    assert "pseudolabel: up to date" in r.output and "train: would run - forced" in r.output


def test_cache_verify_good_truncated_nan(ran, tmp_path):
    world = ran
    assert invoke("cache", "verify", world["cache"]).exit_code == 0
    data = world["cache"].read_bytes()
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(data[: len(data) // 2])
    r = invoke("cache", "verify", trunc)
    assert r.exit_code == 1 and "FAIL" in r.output
    nan = tmp_path / "nan.h5"
    nan.write_bytes(data)
    with h5py.File(nan, "r+") as f:
        f["sims"][0, 3, 1, 2] = np.nan
    r = invoke("cache", "verify", nan)
    assert r.exit_code == 1 and "sims: 1 NaN/inf" in r.output
    undone = tmp_path / "undone.h5"
    undone.write_bytes(data)
    with h5py.File(undone, "r+") as f:
        f["done"][5] = False
    r = invoke("cache", "verify", undone)
    assert r.exit_code == 1 and "1 of 19 rows not done" in r.output


def test_cache_ls_and_inspect(ran):
    world = ran
    r = invoke("cache", "ls", world["cache"].parent)
    assert r.exit_code == 0 and "tiny.h5" in r.output and "tiny-clip" in r.output
    r = invoke("cache", "inspect", world["cache"])
    assert r.exit_code == 0 and "fingerprint:" in r.output and "precision" in r.output and "aeroplane" in r.output


def test_cache_clean_asks_and_keeps_wanted(ran, tmp_path):
    world = ran
    folder = world["cache"].parent
    orphan = folder / "old.h5"
    orphan.write_bytes(world["cache"].read_bytes())
    partial = folder / "gone.h5.partial"
    partial.write_bytes(b"x")
    sources = folder / "old.h5.sources"  # a student's scores of the cache that goes
    sources.mkdir()
    (sources / "student-x.h5").write_bytes(b"x")
    kept = world["cache"].with_name(world["cache"].name + ".sources")
    kept.mkdir(exist_ok=True)
    r = invoke("cache", "clean", folder, "--stale-for", world["pipe"])
    assert r.exit_code == 0 and "pass --yes" in r.output
    assert orphan.exists() and partial.exists()  # never without --yes
    r = invoke("cache", "clean", folder, "--stale-for", world["pipe"], "--yes")
    # and the wanted cache's lock file, which no process holds (locks are OS locks; their files stay behind)
    assert r.exit_code == 0 and "deleted 4 files" in r.output and "lock no running process holds" in r.output, \
        r.output
    assert not orphan.exists() and not partial.exists() and not sources.exists()
    assert world["cache"].exists() and kept.exists()  # the wanted cache and its sources stay
    partial.write_bytes(b"x")
    r = invoke("cache", "clean", folder, "--yes")  # without --stale-for: only unfinished files
    assert "deleted 1 files" in r.output and world["cache"].exists()


def test_report(ran, tmp_path):
    world = ran
    runs = world["dir"] / "runs"
    r = invoke("run", world["pipe"], "--no-progress", "--set", 'loss.name="an"',
               "--set", f'train.out="{tmp_path / "an"}"')
    assert r.exit_code == 0, r.output
    out = tmp_path / "rep"
    r = invoke("report", runs / "tiny", tmp_path / "an" / "tiny", "--out", out)
    assert r.exit_code == 0, r.output
    for f in ("results.md", "results.csv", "per_class_ap.png", "pseudo_labels.png", "curves.png"):
        assert (out / f).stat().st_size > 0, f
    assert (out / "per_class_ap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "results.md").read_text()
    assert "gpr + DAMP" in md and "| an |" in md
    tm = {json.loads((d / "results.json").read_text())["test_map"] for d in (runs / "tiny", tmp_path / "an" / "tiny")}
    assert all(f"{v:.2f}" in md for v in tm)
    assert invoke("report", tmp_path, "--out", out).exit_code == 2  # not a run directory


def test_report_skips_unfinished_runs_and_tells_runs_apart(ran, tmp_path, monkeypatch):
    import shutil
    runs = ran["dir"] / "runs"
    twin = tmp_path / "again" / "tiny"  # a second run of the same method, its cache spelled relatively
    shutil.copytree(runs / "tiny", twin)
    res = json.loads((twin / "results.json").read_text())
    monkeypatch.chdir(Path(res["cache"]).parent)
    res["cache"] = Path(res["cache"]).name
    (twin / "results.json").write_text(json.dumps(res))
    cut = tmp_path / "cut"  # interrupted before it finished
    cut.mkdir()
    shutil.copy(runs / "tiny" / "config.toml", cut)
    r = invoke("report", runs / "tiny", twin, cut, "--out", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    assert f"{cut}: not finished" in r.output and f"aevlp train --resume {cut}" in r.output
    md = (tmp_path / "rep" / "results.md").read_text()
    assert md.count("zero-shot teacher (CLIP, global view)") == 1  # one cache, however its runs spelled it
    assert "runs/tiny" in md and "again/tiny" in md
    best = json.loads((runs / "tiny" / "results.json").read_text())["best_epoch"]
    assert f"| {best} | runs/tiny |" in md  # epochs as integers, not 4.00
    from aevlp.tools.report import collect_runs, compared_pair
    ours, base = compared_pair(collect_runs([runs / "tiny", twin]))
    assert base is None  # two runs of one method: nothing else to compare with


def test_config_errors_and_overrides():
    with pytest.raises(ConfigError, match="did you mean 'threshold'"):
        load_config("voc", ["damp.treshold=0.2"])
    with pytest.raises(ConfigError, match="unknown section"):
        load_config("voc", ["dmp.threshold=0.2"])
    with pytest.raises(ConfigError, match="should be a float"):
        load_config("voc", ['damp.threshold="high"'])
    with pytest.raises(ConfigError, match="not one of"):
        load_config("voc", ['damp.mode="strict"'])
    cfg = load_config("cub", ["clip.arch=ViT-L-14", "damp.top_k=5", "text.gcn=false"])
    assert cfg["clip"]["arch"] == "ViT-L-14" and cfg["damp"]["top_k"] == 5 and cfg["text"]["gcn"] is False
    assert cfg["damp"]["threshold"] == 0.005 and cfg["views"]["grid"] == 5  # from pipelines/cub.toml
    with pytest.raises(ConfigError, match="no pipeline named"):
        load_config("imagenet")


def test_cli_quality():
    r = invoke("--help")
    for cmd in ("data", "pseudolabel", "train", "eval", "predict", "run", "cache", "report", "clip"):
        assert cmd in r.output
    for cmd in (["run"], ["cache", "clean"], ["report"], ["train"], ["pseudolabel"]):
        r = invoke(*cmd, "--help")
        assert r.exit_code == 0 and "Example" in r.output, cmd
    r = invoke("run", "nonexistent-pipeline")
    assert r.exit_code == 2 and "error: no pipeline named" in r.output and "Traceback" not in r.output


def test_pipeline_name_is_not_shadowed_by_a_folder(tmp_path, monkeypatch):
    """`make demo` creates ./demo/ (its output); `demo` must still name pipelines/demo.toml."""
    from aevlp.config import find_pipeline
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    (tmp_path / "voc").mkdir()
    assert find_pipeline("demo").name == "demo.toml" and find_pipeline("voc").name == "voc.toml"
    with pytest.raises(ConfigError, match="not found"):
        find_pipeline("missing/thing.toml")


def test_run_plans_stage_one_once(world, tmp_path, monkeypatch):
    """Planning loads the dataset and hashes the weights: `aevlp run` does it once and hands it on."""
    import aevlp.stage_one.pseudolabel as pl
    import aevlp.tools.run as run_mod
    calls = []
    orig = pl.plan_stage_one

    def counting(*a, **k):
        calls.append(1)
        return orig(*a, **k)
    monkeypatch.setattr(pl, "plan_stage_one", counting)
    monkeypatch.setattr(run_mod, "plan_stage_one", counting)
    r = invoke("run", world["pipe"], "--no-progress", "--set", "views.rounds=3",
               "--set", f'cache.path="{tmp_path / "r3.h5"}"', "--set", f'train.out="{tmp_path / "runs"}"')
    assert r.exit_code == 0, r.output
    assert "pseudolabel: run" in r.output and "train: run" in r.output
    assert len(calls) == 1
    # and the recorded cache identity is the file's
    from aevlp.cache import fingerprint_id, read_fingerprint
    res = json.loads((tmp_path / "runs" / "tiny" / "results.json").read_text())
    assert res["cache_fingerprint"] == fingerprint_id(read_fingerprint(tmp_path / "r3.h5")[0])


def test_every_bench_preset_is_a_valid_pipeline_whatever_the_pipelines_defaults():
    """Each preset resolves against the benchmark and own-data pipelines (a typo in a key or value fails
    here), and is what its name says there: AEVLP as published has one θ and no student even where
    table.toml's defaults are GPR-TS (its student chosen by val); the -ts presets train a student that needs no
    pseudo-labels."""
    from aevlp.losses import LOSSES
    from aevlp.stage_two.plan import wants_student
    from aevlp.tools.bench import PRESETS, method_overrides
    for pipeline in ("voc", "table"):
        for name in PRESETS:
            cfg = load_config(pipeline, method_overrides(name)[1])
            assert LOSSES.get(cfg["loss"]["name"])
            student = cfg["damp"]["student_loss"]
            assert wants_student(cfg) == name.startswith("gpr-ts"), (pipeline, name)
            from aevlp.stage_two.refine import BEST_OF
            for one in (BEST_OF if student == "best" else [student] if student else []):
                assert not LOSSES.get(one).uses_pseudo, (name, one)
        gpr = load_config(pipeline, method_overrides("gpr-damp")[1])["damp"]
        assert gpr["class_thresholds"] == "" and gpr["student_loss"] == ""
    assert load_config("table", method_overrides("gpr-ts-em")[1])["damp"]["student_loss"] == "em"


def test_bench_help_names_every_preset():
    from aevlp.cli import cli
    from aevlp.tools.bench import PRESETS

    text = " ".join(cli.commands["bench"].help.split())
    assert all(name in text for name in PRESETS), [n for n in PRESETS if n not in text]
