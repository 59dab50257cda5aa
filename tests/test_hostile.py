"""Hostile and broken files: nothing executes, nothing corrupt is used, every bad input gets a clear error."""
import json
import os
import pickle

import h5py
import numpy as np
import pytest
import torch
from conftest import SMALL_CNN, invoke, make_photo_dataset, tiny_cfg

from aevlp.config import load_config
from aevlp.errors import AevlpError, ConfigError
from aevlp.pseudolabel import plan_stage_one, run_pseudolabel
from aevlp.train import run_train


class Payload:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.fixture(scope="module")
def world(tiny_clip, tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    root = make_photo_dataset(d / "voc", n_train=24, n_test=6)
    cache = d / "c.h5"
    cfg = cfg_for(tiny_clip, root, cache)
    run_pseudolabel(cfg, progress=False)
    run = d / "run"
    run_train(cfg, run_dir=run, progress=False)
    return {"dir": d, "root": root, "cache": cache, "clip": tiny_clip, "run": run}


def cfg_for(tiny_clip, root, cache, *extra):
    return tiny_cfg(tiny_clip, root, cache, 'cache.store_embeddings="global"', *SMALL_CNN, "train.epochs=2", *extra)


def crafted(path, marker):
    torch.save({"model": {}, "meta": Payload(marker)}, path)  # torch.save pickles the payload object
    return path


@pytest.mark.parametrize("target", ["best", "last", "dir"])
def test_crafted_checkpoints_are_refused_and_never_run(world, tmp_path, target):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text((world["run"] / "config.toml").read_text())
    marker = tmp_path / f"pwned-{target}"
    crafted(run / ("last.pt" if target == "last" else "best.pt"), marker)
    if target == "last":
        r = invoke("train", "--resume", run, "--no-progress")
    elif target == "dir":
        r = invoke("eval", run, "--dataset", "voc", "--data-root", world["root"])
    else:
        img = sorted((world["root"] / "VOCdevkit/VOC2012/JPEGImages").glob("*.jpg"))[0]
        r = invoke("predict", run / "best.pt", img, "--out", tmp_path / "p.csv")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "can load safely" in r.output and not marker.exists()


def test_crafted_weights_file_and_small_cnn_weights(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump(Payload(marker), f)
    from aevlp.models import build_model
    for backbone in ("resnet50", "small-cnn"):
        with pytest.raises(AevlpError, match="not a weights file aevlp can load safely"):
            build_model(backbone, 20, weights=str(evil))
    assert not marker.exists()
    good = tmp_path / "cnn.pt"
    torch.manual_seed(3)
    ref = build_model("small-cnn", 20, weights="none")
    torch.save(ref.state_dict(), good)  # a whole classifier's state dict: its backbone is loaded
    model = build_model("small-cnn", 20, weights=str(good))
    assert all(torch.equal(a, b) for a, b in zip(model.backbone.state_dict().values(),
                                                  ref.backbone.state_dict().values()))
    with pytest.raises(AevlpError, match="no ImageNet weights"):
        build_model("small-cnn", 20, weights="imagenet")
    with pytest.raises(AevlpError, match="clip-head has no backbone"):
        build_model("clip-head", 20, weights=str(good), embed_dim=32)


def test_crafted_clip_weights_are_refused_and_never_run(world, tmp_path):
    """CLIP weights — a file named with --clip, an HF-layout folder's .bin, and the text tower alone that
    re-prompting loads — never unpickle code: a payload as a raw pickle or inside a torch zip is refused."""
    import open_clip

    from aevlp.clip import load_clip, load_text_encoder
    from aevlp.clip_source import write_clip_folder
    from aevlp.specs import ClipSpec
    marker = tmp_path / "pwned"
    raw, zipped = tmp_path / "raw.pt", tmp_path / "zipped.pt"
    with open(raw, "wb") as f:
        pickle.dump(Payload(marker), f)
    torch.save({"visual.proj": Payload(marker)}, zipped)
    folder = write_clip_folder(tmp_path / "folder", json.loads(open(world["clip"]["config"]).read()),
                               open_clip.create_model("tiny-clip").state_dict())
    next(folder.glob("*.safetensors")).unlink()
    (folder / "open_clip_pytorch_model.bin").write_bytes(zipped.read_bytes())
    specs = [ClipSpec("tiny-clip", str(p), config=world["clip"]["config"], device="cpu", precision="fp32")
             for p in (raw, zipped)] + [ClipSpec("", str(folder), device="cpu", precision="fp32")]
    for spec in specs:
        for loader in (load_clip, load_text_encoder):
            with pytest.raises(AevlpError, match="not plain tensors"):
                loader(spec)
    assert not marker.exists()


def test_object_array_npy_is_refused_without_running(tmp_path):
    root = make_photo_dataset(tmp_path / "voc", n_train=6, n_test=3)
    marker = tmp_path / "pwned"
    np.save(root / "formatted_train_images.npy", np.array([Payload(marker)] * 6, dtype=object), allow_pickle=True)
    r = invoke("data", "info", "--dataset", "voc", "--data-root", root)
    assert r.exit_code == 2 and "does not unpickle" in r.output and not marker.exists()


def test_atomic_checkpoint_falls_back_to_the_previous_epoch(world, tmp_path, caplog):
    import shutil
    run = tmp_path / "run"
    cfg = cfg_for(world["clip"], world["root"], world["cache"], 'train.early_stop="none"', "train.epochs=3")
    run_train(cfg, run_dir=run, progress=False)
    full = json.loads((run / "results.json").read_text())
    assert (run / "last.prev.pt").exists()
    (run / "last.pt").write_bytes((run / "last.pt").read_bytes()[:1000])  # a kill during the save of epoch 3
    shutil.copy(run / "last.prev.pt", run / "epoch2.pt")
    (run / "results.json").unlink()
    r = run_train(cfg, run_dir=run, resume=True, progress=False)
    assert "resuming from the previous epoch" in caplog.text
    assert r["test_map"] == pytest.approx(full["test_map"])  # epoch 3 re-done from epoch 2: the same run


def damaged_copies(cache, tmp_path):
    data = cache.read_bytes()
    out = {}

    def copy(name, edit):
        p = tmp_path / f"{name}.h5"
        p.write_bytes(data)
        with h5py.File(p, "r+") as f:
            edit(f)
        out[name] = p
    copy("holes", lambda f: f["done"].__setitem__(slice(2, 4), False))
    copy("nan", lambda f: f["sims"].__setitem__((0, 0, 0, 0), np.nan))
    copy("allbad", lambda f: f["bad"].__setitem__(slice(None), True))
    copy("nodone", lambda f: f.__delitem__("done"))
    copy("noemb", lambda f: f.__delitem__("embeddings"))
    copy("grid", lambda f: f.attrs.__setitem__("fingerprint", json.dumps({**json.loads(f.attrs["fingerprint"]),
                                                                            "grid": 3})))
    return out


def test_damaged_caches_are_refused_by_train_and_not_up_to_date(world, tmp_path):
    for name, path in damaged_copies(world["cache"], tmp_path).items():
        cfg = cfg_for(world["clip"], world["root"], path)
        with pytest.raises(AevlpError, match="damaged|made with different settings") as e:
            run_train(cfg, run_dir=tmp_path / f"run-{name}", progress=False)
        if name != "grid":
            assert "damaged" in str(e.value), name
            assert plan_stage_one(cfg).status == "damaged", name
        r = invoke("cache", "verify", path)
        assert r.exit_code == 1 and "FAIL" in r.output and "Traceback" not in r.output, (name, r.output)
        r = invoke("cache", "inspect", path)
        assert r.exit_code == 2 and "Traceback" not in r.output, (name, r.output)


def test_flipped_bytes_are_found_by_the_checksums(world, tmp_path):
    p = tmp_path / "flip.h5"
    p.write_bytes(world["cache"].read_bytes())
    with h5py.File(p, "r+") as f:
        f["pseudo"][0, 1, 2] = 1 - f["pseudo"][0, 1, 2]  # plausible, finite: only the checksum sees it
    assert invoke("cache", "verify", world["cache"]).exit_code == 0
    r = invoke("cache", "verify", p)
    assert r.exit_code == 1 and "pseudo: content differs from the checksum" in r.output


def test_corrupt_partial_rows_are_recomputed_on_resume(world, tmp_path):
    from aevlp.cache import partial_path
    target = tmp_path / "r.h5"
    cfg = cfg_for(world["clip"], world["root"], target, "clip.batch_size=4")
    run_pseudolabel(cfg, progress=False)
    reference = {k: v[()] for k, v in h5py.File(target).items() if k in ("sims", "pseudo", "scores")}
    os.replace(target, partial_path(target))
    with h5py.File(partial_path(target), "r+") as f:
        f.attrs["complete"] = False
        f["sims"][:, 3] = np.nan  # marked done, but torn
        f["sims"][:, 5] = 0
        f["test_embeddings"][1] = 0
    s = run_pseudolabel(cfg, progress=False)
    assert s["status"] == "resumed" and s["computed_images"] == 8  # the two batches of 4 holding rows 3 and 5
    with h5py.File(target) as f:
        for k, v in reference.items():
            assert np.array_equal(f[k][()], v), k
        assert np.isfinite(f["test_embeddings"][:].astype(np.float32)).all() and (f["test_embeddings"][1] != 0).any()


def test_stale_images_and_labels_are_detected(world, tmp_path):
    import shutil

    from aevlp.run import plan_pipeline
    root = tmp_path / "voc"
    shutil.copytree(world["root"], root)
    cfg = cfg_for(world["clip"], root, tmp_path / "c.h5", f'train.out="{tmp_path / "runs"}"')
    from aevlp.run import run_pipeline
    run_pipeline(cfg, "t", progress=False, echo=lambda s: None)
    ids = np.load(root / "formatted_train_images.npy")
    img = root / "VOCdevkit/VOC2012/JPEGImages" / ids[0]
    img.write_bytes((root / "VOCdevkit/VOC2012/JPEGImages" / ids[1]).read_bytes())  # other pixels, same name
    one, two = plan_pipeline(cfg, "t").stages
    assert one.run and any("images_hash" in d for d in one.details)
    run_pipeline(cfg, "t", progress=False, echo=lambda s: None)
    labels = np.load(root / "formatted_val_labels.npy")
    labels[0, :] = 1 - labels[0, :]  # test labels changed, observed untouched
    np.save(root / "formatted_val_labels.npy", labels)
    one, two = plan_pipeline(cfg, "t").stages
    assert not one.run and two.run and "data" in two.reason


def test_train_refuses_stage_one_settings_that_contradict_the_cache(world, tmp_path):
    r = invoke("train", "--pseudo", world["cache"], "--run-dir", tmp_path / "r", "--no-progress",
               "--set", "views.grid=3")
    assert r.exit_code == 2 and "views.grid" in r.output and "cache" in r.output
    r = invoke("train", "--pseudo", world["cache"], "--run-dir", tmp_path / "r2", "--no-progress", "--epochs", "1",
               "--backbone", "small-cnn", "--weights", "none", "--image-size", "32")
    assert r.exit_code == 0, r.output
    rec = (tmp_path / "r2" / "config.toml").read_text()
    assert "grid = 2" in rec and "rounds = 2" in rec  # the run records the cache's real settings


def test_table_paths_duplicates_and_separators(tmp_path):
    from aevlp.data.table import prepare_table
    img = tmp_path / "photos"
    img.mkdir()
    from PIL import Image
    for n in ("a.jpg", "b.jpg", "c.jpg"):
        Image.new("RGB", (8, 8)).save(img / n)
    (tmp_path / "secret.jpg").write_bytes((img / "a.jpg").read_bytes())

    def csv(text):
        p = tmp_path / "t.csv"
        p.write_text(text)
        return p
    with pytest.raises(AevlpError, match="outside --images"):
        prepare_table(csv("image,labels,split\n../secret.jpg,cat,train\nb.jpg,dog,test\n"), img, tmp_path / "o")
    with pytest.raises(AevlpError, match="outside --images"):
        prepare_table(csv("image,labels,split\n/etc/hostname,cat,train\nb.jpg,dog,test\n"), img, tmp_path / "o")
    assert prepare_table(csv("image,labels,split\n../secret.jpg,cat,train\nb.jpg,dog,test\n"), img, tmp_path / "o",
                         allow_outside_images=True)["train_images"] == 1
    with pytest.raises(AevlpError, match="appears 2 times"):
        prepare_table(csv("image,labels,split\na.jpg,cat,train\na.jpg,dog,train\nb.jpg,dog,test\n"), img,
                      tmp_path / "o")
    with pytest.raises(AevlpError, match="contains ';' but the separator is"):
        prepare_table(csv("image,labels,split\na.jpg,cat; dog,train\nb.jpg,dog,test\n"), img, tmp_path / "o")
    with pytest.raises(AevlpError, match="contains ','"):
        prepare_table(csv('image,labels,split\na.jpg,"cat,dog",train\nb.jpg,dog,test\n'), img, tmp_path / "o")


def test_table_case_warning(tmp_path, caplog):
    from PIL import Image

    from aevlp.data.table import prepare_table
    img = tmp_path / "photos"
    img.mkdir()
    for n in ("a.jpg", "b.jpg"):
        Image.new("RGB", (8, 8)).save(img / n)
    (tmp_path / "t.csv").write_text("image,labels,split\na.jpg,Dog,train\nb.jpg,dog,test\n")
    prepare_table(tmp_path / "t.csv", img, tmp_path / "o")
    assert "differ only by case or spaces" in caplog.text


def test_data_info_lists_bad_images(tmp_path):
    root = make_photo_dataset(tmp_path / "voc", n_train=6, n_test=3)
    ids = np.load(root / "formatted_train_images.npy")
    jpg = root / "VOCdevkit/VOC2012/JPEGImages"
    (jpg / ids[0]).unlink()
    (jpg / ids[1]).write_bytes(b"")
    (jpg / ids[2]).write_bytes(b"not an image at all")
    r = invoke("data", "info", "--dataset", "voc", "--data-root", root)
    assert r.exit_code == 1
    for i, why in ((0, "missing"), (1, "empty file"), (2, "not a readable image")):
        assert f"{ids[i]}: {why}" in r.output


@pytest.mark.parametrize("override,message", [
    ("train.lr=-1", "train.lr = -1.0 is out of range"), ("train.lr=11", "train.lr"), ("loss.lam1=1.5", "loss.lam1"),
    ("loss.lam1=0.3", "below loss.lam2"), ("loss.reg=-0.1", "loss.reg"), ("loss.expected_pos=-1", "expected_pos"),
    ("train.lr_mult=0", "lr_mult"), ("train.patience=-1", "patience"), ("train.max_drop=-2", "max_drop"),
    ("train.batch_size=0", "batch_size"), ("clip.batch_size=0", "clip.batch_size"), ("damp.eta=-0.1", "damp.eta"),
    ("damp.threshold=1.5", "damp.threshold"), ("train.image_size=-4", "image_size"), ("train.workers=-2", "workers"),
    ("dataset.val_frac=1.0", "val_frac"), ('text.prompts=["a {} and a {}"]', "exactly one {}"),
    ("loss.beta=[1, 2]", "4 numbers"), ('loss.alpha=["a", 1, 2, 3]', "4 numbers"),
    ('train.device="gpu0"', "train.device"),
])
def test_range_checks(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("{", r"\{").replace("}", r"\}")):
        load_config("voc", [override])


def test_limit_and_threshold_messages():
    r = invoke("pseudolabel", "--dataset", "voc", "--data-root", ".", "--limit", "0")
    assert r.exit_code == 2 and "give a positive number, or drop --limit" in r.output
    r = invoke("predict", ".", ".", "--threshold", "1.5")
    assert r.exit_code == 2 and "1.5" in r.output
