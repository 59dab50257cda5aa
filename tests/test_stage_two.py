"""Stage two end to end on a tiny cache: run directory, determinism, resume, refusals, every loss."""
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import SMALL_CNN, make_photo_dataset, probabilities_by_hand, tiny_cfg

from aevlp.cli import cli
from aevlp.errors import AevlpError
from aevlp.losses import LOSSES
from aevlp.stage_one.pseudolabel import run_pseudolabel
from aevlp.stage_two.train import run_train


@pytest.fixture(scope="module")
def setup(tiny_clip, tmp_path_factory):
    d = tmp_path_factory.mktemp("s2")
    root = make_photo_dataset(d / "voc", n_train=30, n_test=8)
    cache = d / "voc.h5"
    cfg = base_cfg(tiny_clip, root, cache)
    run_pseudolabel(cfg, progress=False)
    return {"root": root, "cache": cache, "clip": tiny_clip, "dir": d}


def base_cfg(tiny_clip, root, cache, *extra):
    return tiny_cfg(tiny_clip, root, cache, 'cache.store_embeddings="global"', *SMALL_CNN, "train.epochs=3",
                    "damp.threshold=0.06", "damp.temperature=0.05", *extra)


def train(setup, tmp_path, *extra, **kw):
    cfg = base_cfg(setup["clip"], setup["root"], setup["cache"], *extra)
    return run_train(cfg, cache=setup["cache"], run_dir=tmp_path / kw.pop("name", "run"), progress=False, **kw)


def history(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_run_directory_is_complete_and_consistent(setup, tmp_path):
    r = train(setup, tmp_path, 'train.early_stop="none"')
    run = tmp_path / "run"
    for f in ("config.toml", "metrics.jsonl", "results.json", "per_class_ap.csv", "best.pt", "last.pt"):
        assert (run / f).exists(), f
    h = history(run)
    assert [x["epoch"] for x in h] == [1, 2, 3] and r["epochs_run"] == 3
    assert r["val_map"] == max(x["val_map"] for x in h)
    assert r["best_epoch"] == 1 + int(np.argmax([x["val_map"] for x in h]))
    assert [x["round"] for x in h] == [0, 1, 0]  # epoch e reads round (e-1) mod R
    assert h[0]["w"] == 0.0 and h[2]["mu"] == pytest.approx(0.8)  # GR schedules, voc beta
    assert all(np.isfinite(x["loss"]) and 0 <= x["pseudo_precision"] <= 100 for x in h)
    table = pd.read_csv(run / "per_class_ap.csv")
    assert len(table) == 20 and table["ap"].mean() == pytest.approx(r["test_map"])
    saved = json.loads((run / "results.json").read_text())
    assert saved["test_map"] == r["test_map"] and saved["train_images"] == 24
    assert "[damp]" in (run / "config.toml").read_text()


def test_same_seed_same_metrics(setup, tmp_path):
    a = train(setup, tmp_path, name="a")
    b = train(setup, tmp_path, name="b")
    ha, hb = history(tmp_path / "a"), history(tmp_path / "b")
    assert [x["loss"] for x in ha] == [x["loss"] for x in hb]
    assert a["test_map"] == b["test_map"]
    c = train(setup, tmp_path, "train.seed=1", name="c")
    assert [x["loss"] for x in history(tmp_path / "c")] != [x["loss"] for x in ha]
    assert c["run_dir"].endswith("c")


def train_interrupted_in_epoch_2(setup, tmp_path, monkeypatch, *extra, name):
    """Train until the second epoch's evaluation raises KeyboardInterrupt (as a ^C would)."""
    from aevlp.stage_two.model_selection import ModelSelection
    calls = {"n": 0}
    orig = ModelSelection.measures

    def crash_in_epoch_2(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return orig(*a, **k)
    with monkeypatch.context() as m:
        m.setattr(ModelSelection, "measures", crash_in_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            train(setup, tmp_path, *extra, name=name)
    assert len(history(tmp_path / name)) == 1


def same_history(a, b):
    strip = lambda h: [{k: v for k, v in x.items() if k != "seconds"} for x in h]  # noqa: E731
    return strip(history(a)) == strip(history(b))


def test_resume_equals_uninterrupted(setup, tmp_path, monkeypatch):
    full = train(setup, tmp_path, 'train.early_stop="none"', name="full")
    train_interrupted_in_epoch_2(setup, tmp_path, monkeypatch, 'train.early_stop="none"', name="cut")
    resumed = train(setup, tmp_path, 'train.early_stop="none"', name="cut", resume=True)
    assert same_history(tmp_path / "cut", tmp_path / "full")
    assert resumed["test_map"] == full["test_map"]


def test_a_replacement_cut_short_leaves_no_old_results(setup, tmp_path, monkeypatch):
    """--force clears the finished run before training its replacement: interrupted, the folder holds the new
    run's first epoch (resumable), never the old results.json or best.pt beside the new config.toml."""
    train(setup, tmp_path, 'train.early_stop="none"', name="x")
    old_best = (tmp_path / "x" / "best.pt").read_bytes()
    from aevlp.stage_two.model_selection import ModelSelection
    real, calls = ModelSelection.measures, {"n": 0}

    def crash_in_epoch_2(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)
    with monkeypatch.context() as m:
        m.setattr(ModelSelection, "measures", crash_in_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            train(setup, tmp_path, 'train.early_stop="none"', "train.seed=5", name="x", force=True)
    run = tmp_path / "x"
    assert not (run / "results.json").exists() and (run / "best.pt").read_bytes() != old_best
    assert len(history(run)) == 1 and "seed = 5" in (run / "config.toml").read_text()


def test_resume_needs_no_backbone_weights(setup, tmp_path, monkeypatch):
    """A resumed run's checkpoint holds every weight: the pretrained file it started from (or ImageNet's
    download) is not needed again — an offline resume of a run whose weights file is gone matches the
    uninterrupted run."""
    import torch

    from aevlp.stage_two.models import build_model
    torch.manual_seed(7)
    weights = tmp_path / "backbone.pt"
    torch.save(build_model("small-cnn", 20).state_dict(), weights)
    use = (f'train.weights="{weights}"', 'train.early_stop="none"')
    full = train(setup, tmp_path, *use, name="full")
    train_interrupted_in_epoch_2(setup, tmp_path, monkeypatch, *use, name="cut")
    weights.unlink()
    with pytest.raises(AevlpError, match="not found"):
        train(setup, tmp_path, *use, name="fresh")  # a new run needs it
    resumed = train(setup, tmp_path, *use, name="cut", resume=True)
    assert same_history(tmp_path / "cut", tmp_path / "full")
    assert resumed["test_map"] == full["test_map"]


def test_early_stopping_rules():
    from types import SimpleNamespace as NS

    from aevlp.stage_two.stopping import should_stop
    t = dict(early_stop="aevlp", patience=2, max_drop=2.0)
    st = lambda best, cur, counter: {"best_val": best, "counter": counter, "history": [{"val_map": cur}]}  # noqa
    assert should_stop(st(50, 47.9, 1), NS(**t)) and should_stop(st(50, 49.5, 2), NS(**t))
    assert not should_stop(st(50, 49, 1), NS(**t))
    assert not should_stop(st(50, 49.5, 5), NS(**dict(t, early_stop="gr")))
    assert should_stop(st(50, 47, 1), NS(**dict(t, early_stop="gr")))
    assert not should_stop(st(50, 10, 9), NS(**dict(t, early_stop="none")))


def test_refuses_mismatched_cache(setup, tmp_path):
    other = make_photo_dataset(tmp_path / "other", n_train=30, n_test=8, seed=3)  # same images, other labels
    with pytest.raises(AevlpError, match="observed labels differ"):
        run_train(base_cfg(setup["clip"], other, setup["cache"]), cache=setup["cache"], run_dir=tmp_path / "x",
                  progress=False)
    renamed = make_photo_dataset(tmp_path / "renamed", n_train=30, n_test=8)
    meta = {"dataset": "voc", "classnames": [f"c{i}" for i in range(20)], "image_root": "VOCdevkit/VOC2012/JPEGImages"}
    (renamed / "aevlp_dataset.json").write_text(json.dumps(meta))
    with pytest.raises(AevlpError, match="classes differ.*only in the cache: aeroplane, bicycle.*only in the dataset: "
                                         "c0, c1"):
        run_train(base_cfg(setup["clip"], renamed, setup["cache"]), cache=setup["cache"], run_dir=tmp_path / "y",
                  progress=False)
    from aevlp.cache.reader import class_difference
    assert class_difference(["a", "b", "c"], ["a", "c", "b"]) == \
        "the same 3 names in another order (first at position 2: 'b' in the cache, 'c' in the dataset)"
    cfg = base_cfg(setup["clip"], setup["root"], setup["cache"])
    with pytest.raises(AevlpError, match="image ids differ"):
        run_train(cfg, cache=setup["cache"], run_dir=tmp_path / "z", progress=False, limit=10)
    small = tmp_path / "small.h5"
    run_pseudolabel(base_cfg(setup["clip"], setup["root"], small), limit=10, progress=False)
    with pytest.raises(AevlpError, match="covers only the first 10 of 24") as e:
        run_train(cfg, cache=small, run_dir=tmp_path / "w", progress=False)
    assert "--limit 10" in str(e.value)
    assert run_train(cfg, cache=small, run_dir=tmp_path / "w", progress=False, limit=10)["train_images"] == 10


@pytest.mark.parametrize("loss", list(LOSSES))
def test_every_loss_trains_on_clip_head(setup, tmp_path, loss):
    import torch

    from aevlp.cache import Cache
    from aevlp.metrics import mean_average_precision
    from aevlp.stage_two.checkpoint import load_checkpoint
    from aevlp.stage_two.models import build_model
    if LOSSES[loss].needs_spatial:  # BoostLU needs class activation maps: refused clearly on clip-head
        with pytest.raises(AevlpError, match="convolutional feature map"):
            train(setup, tmp_path, f'loss.name="{loss}"', 'train.backbone="clip-head"')
        return
    r = train(setup, tmp_path, f'loss.name="{loss}"', 'train.backbone="clip-head"', "train.epochs=2",
              'train.early_stop="none"')
    run = tmp_path / "run"
    assert all(np.isfinite(x["loss"]) for x in history(run))
    model, meta = load_checkpoint(run / "best.pt")
    assert meta["loss"] == loss and meta["backbone"] == "clip-head"
    # results.json's test mAP is best.pt's on the stored test embeddings, recomputed here
    with Cache(setup["cache"]) as c:
        emb = torch.as_tensor(c.eval_embeddings("test").astype(np.float32))
    with torch.no_grad():
        probs = torch.sigmoid(model(emb)).numpy()
    truth = np.load(setup["root"] / "formatted_val_labels.npy")
    assert mean_average_precision(probs, truth) == pytest.approx(r["test_map"], abs=1e-4)
    torch.manual_seed(0)  # train.seed: the head's initialisation; training moved it
    assert not torch.allclose(build_model("clip-head", 20, embed_dim=32).head.weight, model.head.weight)
    assert ("pseudo_f1" in r) == LOSSES[loss].uses_pseudo


def test_full_labels_and_global_source(setup, tmp_path):
    r = train(setup, tmp_path, 'train.labels="full"', 'loss.name="bce-full"', 'train.backbone="clip-head"',
              "train.lr=1e-2", "train.epochs=4", 'train.early_stop="none"')
    assert r["labels"] == "full" and r["test_map"] > 0
    g = train(setup, tmp_path, 'damp.source="global"', 'train.backbone="clip-head"', "damp.threshold=0.06",
              name="g")
    train(setup, tmp_path, 'train.backbone="clip-head"', name="d")
    assert g["damp_source"] == "global"
    assert history(tmp_path / "g")[0]["pseudo_f1"] != history(tmp_path / "d")[0]["pseudo_f1"]


def test_cli_train_eval_predict(setup, tmp_path):
    run = tmp_path / "cli"
    res = CliRunner().invoke(cli, ["train", "--pseudo", str(setup["cache"]), "--backbone", "small-cnn",
                                   "--weights", "none", "--image-size", "32", "--epochs", "1", "--workers", "0",
                                   "--run-dir", str(run), "--no-progress", "--set", "train.lr=1e-3"])
    assert res.exit_code == 0, res.output
    assert "test mAP" in res.output
    # the dataset and data root come from the cache
    assert json.loads((run / "results.json").read_text())["dataset"] == "voc"
    test_map = f"test mAP {json.loads((run / 'results.json').read_text())['test_map']:.2f}"
    res = CliRunner().invoke(cli, ["eval", str(run), "--dataset", "voc", "--data-root", str(setup["root"])])
    assert res.exit_code == 0 and test_map in res.output, res.output
    res = CliRunner().invoke(cli, ["eval", str(run / "best.pt")])  # the run's dataset, from its config.toml
    assert res.exit_code == 0 and test_map in res.output, res.output
    (tmp_path / "alone").mkdir()
    (tmp_path / "alone" / "best.pt").write_bytes((run / "best.pt").read_bytes())
    res = CliRunner().invoke(cli, ["eval", str(tmp_path / "alone" / "best.pt")])
    assert res.exit_code == 2 and "--dataset NAME --data-root DIR" in res.output and "Traceback" not in res.output
    imgs = sorted((setup["root"] / "VOCdevkit/VOC2012/JPEGImages").glob("val*.jpg"))[:3]
    out = tmp_path / "preds.csv"
    res = CliRunner().invoke(cli, ["predict", str(run / "best.pt"), *map(str, imgs), "--out", str(out),
                                   "--threshold", "0.3"])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out, keep_default_na=False)
    assert list(df.columns[:2]) == ["path", "aeroplane"] and len(df) == 3 and df.shape[1] == 1 + 20 + 3
    assert all(len(t.split("; ")) == 3 for t in df["top3"])
    probs = df.iloc[:, 1:21].to_numpy()
    assert np.allclose(probs, probabilities_by_hand(run, imgs, 32), atol=1e-4)
    assert df["num_labels"].tolist() == (probs >= 0.3).sum(1).tolist()
    res = CliRunner().invoke(cli, ["train", "--pseudo", str(tmp_path / "missing.h5")])
    assert res.exit_code == 2 and "not found" in res.output


def test_the_callers_config_is_never_edited(setup, tmp_path):
    import copy

    from aevlp.config import tomllib
    from aevlp.tools.run import plan_pipeline
    cfg = base_cfg(setup["clip"], setup["root"], setup["cache"], "train.epochs=1")
    cfg["cache"]["path"] = ""  # the cache given apart, as `aevlp train --pseudo` does
    before = copy.deepcopy(cfg)
    run_train(cfg, cache=setup["cache"], run_dir=tmp_path / "run", progress=False)
    assert cfg == before
    recorded = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
    assert recorded["cache"]["path"] == str(setup["cache"])  # the run's own config says what it read
    plan = plan_pipeline(cfg, "x")
    assert cfg == before and plan.cfg["cache"]["path"] == "cache/voc.h5"


def test_the_learning_rate_is_the_backbones_unless_given(setup, tmp_path):
    from aevlp.config import load_config, tomllib
    from aevlp.stage_two.plan import as_trained
    assert load_config("table")["train"]["lr"] == 0  # own data: the backbone's own rate
    assert as_trained(load_config("table"))["train"]["lr"] == 1e-5  # ResNet-50: the papers'
    assert as_trained(load_config("voc"))["train"]["lr"] == 1e-5  # a benchmark states its own
    args = ["train", "--pseudo", str(setup["cache"]), "--backbone", "small-cnn", "--weights", "none", "--epochs", "1",
            "--image-size", "32", "--workers", "0", "--set", "train.lr=0"]
    r = CliRunner().invoke(cli, [*args, "--run-dir", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert "training small-cnn: lr 0.0003 (small-cnn's default; --lr or train.lr to change it)" in r.output
    assert tomllib.loads((tmp_path / "a" / "config.toml").read_text())["train"]["lr"] == 3e-4  # what ran
    r = CliRunner().invoke(cli, [*args[:-2], "--lr", "1e-4", "--run-dir", str(tmp_path / "b")])
    assert r.exit_code == 0 and "lr 0.0001 (train.lr)" in r.output, r.output
    assert tomllib.loads((tmp_path / "b" / "config.toml").read_text())["train"]["lr"] == 1e-4


@pytest.mark.parametrize("stop_at", [1, 2])
def test_ctrl_c_names_the_run_folder_and_resume_goes_on_or_starts_over(setup, tmp_path, monkeypatch, stop_at):
    import aevlp.stage_two.train as train_mod
    real = train_mod._train_epoch

    def interrupt(r, epoch, progress):
        if epoch == stop_at:
            raise KeyboardInterrupt
        return real(r, epoch, progress)
    monkeypatch.setattr(train_mod, "_train_epoch", interrupt)
    run = tmp_path / "run"
    args = ["train", "--pseudo", str(setup["cache"]), "--backbone", "small-cnn", "--weights", "none", "--epochs", "2",
            "--image-size", "32", "--workers", "0", "--no-progress"]
    r = CliRunner().invoke(cli, [*args, "--run-dir", str(run)])
    assert r.exit_code == 130 and "RUN_DIR" not in r.output and f"--resume {run}" in r.output, r.output
    if stop_at == 1:
        assert f"nothing was saved in {run}" in r.output and "starts it over" in r.output
    else:
        assert f"1 finished epoch(s) are saved in {run}" in r.output
    monkeypatch.setattr(train_mod, "_train_epoch", real)
    r = CliRunner().invoke(cli, ["train", "--resume", str(run), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert ("starting it over" in r.output) == (stop_at == 1)
    assert "epoch 2:" in r.output and ("epoch 1:" in r.output) == (stop_at == 1)  # summaries despite --no-progress
    assert [x["epoch"] for x in history(run)] == [1, 2]


@pytest.mark.parametrize("loss", ["mime", "smile"])
def test_mime_and_smile_bring_their_head_and_resume_bit_identically(setup, tmp_path, monkeypatch, loss):
    """Their heads sample (a Gaussian latent, a Beta label value) and drop out: a resumed run restores
    torch's random state with the model and matches the uninterrupted one exactly."""
    from aevlp.stage_two.evaluate import evaluate_checkpoint
    from aevlp.stage_two.heads import HEADS
    use = (f'loss.name="{loss}"', 'train.early_stop="none"', "loss.mime_warmup=1", "loss.mime_theta=0.5")
    full = train(setup, tmp_path, *use, name="full")
    train_interrupted_in_epoch_2(setup, tmp_path, monkeypatch, *use, name="cut")
    resumed = train(setup, tmp_path, *use, name="cut", resume=True)
    assert same_history(tmp_path / "cut", tmp_path / "full") and resumed["test_map"] == full["test_map"]
    if loss == "mime":  # predictions above θ joined the positives after each epoch, and stayed
        added = [x["mime_added_positives"] for x in history(tmp_path / "full")]
        assert added == sorted(added) and added[-1] > 0
    report, _ = evaluate_checkpoint(tmp_path / "full", "voc", setup["root"])  # best.pt rebuilds the head
    assert report["map"] == pytest.approx(full["test_map"], abs=1e-6)
    import torch
    meta = torch.load(tmp_path / "full" / "best.pt", weights_only=True)["meta"]
    assert meta["head"]["kind"] == loss and isinstance(HEADS[loss](**{k: v for k, v in meta["head"].items()
                                                                     if k != "kind"}), torch.nn.Module)


def test_linear_init_lr_is_the_heads_while_the_backbone_is_frozen(setup, tmp_path, monkeypatch):
    import torch
    use = ("train.linear_init=1", "train.linear_init_lr=0.05", 'train.early_stop="none"', "train.epochs=2")
    train_interrupted_in_epoch_2(setup, tmp_path, monkeypatch, *use, name="run")
    groups = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert groups[1]["lr"] == 0.05 and groups[0]["lr"] == 1e-3  # after epoch 1: the linear phase's head lr
    train(setup, tmp_path, *use, name="run", resume=True)
    groups = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert groups[1]["lr"] == pytest.approx(1e-3 * 10)  # then lr x lr_mult


def test_vlpl_pseudo_labels_use_the_plain_text_features(setup):
    """VLPL scores the global view against the prompts' own features (no GCN), computed here by hand."""
    import torch

    from aevlp.cache import Cache
    from aevlp.specs import Specs
    from aevlp.stage_two.labeler import PseudoLabeler
    cfg = base_cfg(setup["clip"], setup["root"], setup["cache"])
    damp = LOSSES.get("vlpl").pseudo_labels(Specs.of(cfg).damp, cfg["loss"])
    with Cache(setup["cache"]) as c:
        observed = c.array("observed")
        z = PseudoLabeler(c, damp, observed).for_epoch(2)  # round 1
        emb, plain, refined = c.global_embeddings()[1].astype(np.float32), c.plain_text_features(), \
            c.f["text_features"][:]
    assert not np.allclose(plain, refined)  # the GCN changed the refined ones
    s = torch.softmax(torch.as_tensor((emb @ plain.T).astype(np.float16).astype(np.float32)) / 0.01, -1).numpy()
    assert np.array_equal(z, np.where(observed == 1, 1, (s > 0.3).astype(np.int8)))


def test_refine_stores_the_students_scores_and_trains_the_next_round(setup, tmp_path):
    import shutil

    import h5py
    cache = tmp_path / "c.h5"
    shutil.copy(setup["cache"], cache)
    first = run_train(base_cfg(setup["clip"], setup["root"], cache, "train.epochs=2"), run_dir=tmp_path / "base",
                      progress=False)
    assert "student" not in first
    r = CliRunner().invoke(cli, ["refine", str(tmp_path / "base"), "--no-progress"])
    assert r.exit_code == 0 and "round 1: test mAP" in r.output, r.output
    res = json.loads((tmp_path / "base-r1" / "results.json").read_text())
    assert res["student"]["run"] == str((tmp_path / "base").resolve())
    assert res["student"]["epoch"] == first["best_epoch"]
    from aevlp.data import load_dataset
    data = load_dataset("voc", setup["root"])
    with h5py.File(cache.with_name(cache.name + ".sources") / "base-r1.h5") as f:
        stored = f["scores"][:].astype(np.float32)
    with h5py.File(cache) as f:
        keep = ~f["bad"][:]
    paths = [data.image_root / p for p in data.train.images[keep]]
    both = (probabilities_by_hand(tmp_path / "base", paths, 32) +
            probabilities_by_hand(tmp_path / "base", paths, 32, flip=True)) / 2
    assert np.allclose(stored[keep], both, atol=1e-3)  # both flips averaged (stored as float16)
    r = CliRunner().invoke(cli, ["refine", str(tmp_path / "base"), "--no-progress"])
    assert r.exit_code == 0 and "round 1: " in r.output and "is done" in r.output  # reused, not trained again
    from aevlp.cache import Cache
    from aevlp.specs import Specs
    from aevlp.stage_two.labeler import PseudoLabeler
    cfg = base_cfg(setup["clip"], setup["root"], cache, 'damp.student="base-r1"', "damp.student_weight=1.0",
                   "damp.negative_ratio=0")
    with Cache(cache) as c:
        z = PseudoLabeler(c, Specs.of(cfg).damp, c.array("observed")).for_epoch(1)
        obs = c.array("observed")
    top = np.argsort(-stored, 1)[:, :3]  # w = 1: the student's own scores alone pick the pseudo-positives
    expect = np.zeros_like(obs)
    for i in range(len(obs)):
        expect[i, [k for k in top[i] if stored[i, k] >= 0.06]] = 1
    assert np.array_equal(z, np.where(obs == 1, 1, expect))
    source = cache.with_name(cache.name + ".sources") / "base-r1.h5"
    with h5py.File(source, "r+") as f:
        f["scores"][0, 0] = 0.99  # altered after it was stored
    with Cache(cache) as c, pytest.raises(AevlpError, match="differ from their checksum"):
        PseudoLabeler(c, Specs.of(cfg).damp, c.array("observed"))
    other = tmp_path / "other.h5"
    shutil.copy(cache, other)
    with h5py.File(other, "r+") as f:  # another cache: a student's scores belong to the cache they were made for
        f.attrs["fingerprint"] = json.dumps({**json.loads(f.attrs["fingerprint"]), "gcn_seed": 7})
    shutil.copytree(source.parent, other.with_name(other.name + ".sources"))
    with Cache(other, check=False) as c, pytest.raises(AevlpError, match="another cache"):
        PseudoLabeler(c, Specs.of(cfg).damp, c.array("observed"))


def test_fine_tuning_starts_from_the_best_linear_epoch_and_is_what_is_tested(setup, tmp_path):
    """Cole et al.'s linear_init: the best linear epoch's weights and label estimate start the fine-tuning, and
    the tested epoch is one of the fine-tuning's."""
    lines = []
    r = train(setup, tmp_path, 'loss.name="role"', "train.linear_init=2", "train.linear_init_lr=0.01",
              'train.early_stop="none"', "train.epochs=3", echo=lines.append)
    hist = history(tmp_path / "run")
    best_linear = max(hist[:2], key=lambda x: x["val_map"])
    assert any(f"fine-tuning from the best linear epoch ({best_linear['epoch']}," in x for x in lines), lines
    assert r["best_epoch"] == 3 and [x["epoch"] for x in hist] == [1, 2, 3]


@pytest.mark.parametrize("until_worse", [True, False])
def test_refine_rounds_stop_at_the_first_that_does_not_improve_val(setup, tmp_path, monkeypatch, until_worse):
    """Each round is reported with its val gain over its teacher and its training time; with until_worse (the
    CLI's default) no round follows one whose val mAP is not above its teacher's."""
    import shutil

    import aevlp.stage_two.refine as refine_mod
    from aevlp.stage_two.run_folder import RunFolder
    base = tmp_path / "base"
    run_train(base_cfg(setup["clip"], setup["root"], setup["cache"], "train.epochs=1"), run_dir=base, progress=False)
    teacher_val = RunFolder(base).results()["val_map"]
    vals = iter([teacher_val - 0.5, teacher_val + 1.0, teacher_val + 2.0])

    def fake_round(run_dir, nxt, cfg, checkpoint, progress, echo, device, force=False):
        nxt.mkdir(exist_ok=True)
        for name in ("best.pt", "config.toml"):
            shutil.copy(run_dir / name, nxt / name)
        (nxt / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "seconds": 12.5}) + "\n")
        res = {"val_map": next(vals), "test_map": 50.0, "run_dir": str(nxt)}
        RunFolder(nxt).write_results(res)
        return res

    monkeypatch.setattr(refine_mod, "_round", fake_round)
    monkeypatch.setattr(refine_mod, "_round_done", lambda nxt, cfg, checkpoint: "not trained yet")
    lines = []
    out = refine_mod.refine(base, 3, echo=lines.append, progress=False, until_worse=until_worse)
    assert out[0]["round_gain"] == pytest.approx(-0.5) and out[0]["round_seconds"] == 12.5
    if until_worse:
        assert len(out) == 1 and any("round 1 did not improve val mAP" in x and "-0.50" in x for x in lines), lines
    else:
        assert [round(x["round_gain"], 6) for x in out] == [-0.5, 1.5, 1.0]
