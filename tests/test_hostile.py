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
from aevlp.stage_one.pseudolabel import plan_stage_one, run_pseudolabel
from aevlp.stage_two.train import run_train


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
    from aevlp.stage_two.models import build_model
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

    from aevlp.specs import ClipSpec
    from aevlp.stage_one.clip import load_clip, load_text_encoder
    from aevlp.stage_one.clip_source import write_clip_folder
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

    from aevlp.tools.run import plan_pipeline
    root = tmp_path / "voc"
    shutil.copytree(world["root"], root)
    cfg = cfg_for(world["clip"], root, tmp_path / "c.h5", f'train.out="{tmp_path / "runs"}"')
    from aevlp.tools.run import run_pipeline
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


# --- Nothing mixed, nothing stale, nothing unverified: the run folder, resumes, caches (docs/trust.md) ---

def finished_run(world, tmp_path, name="r", *extra):
    r = invoke("train", "--pseudo", world["cache"], "--run-dir", tmp_path / name, "--no-progress", "--epochs", "2",
               "--backbone", "small-cnn", "--weights", "none", "--image-size", "32", "--workers", "0", *extra)
    assert r.exit_code == 0, r.output
    return tmp_path / name


def test_a_run_folder_has_one_writer_and_is_not_overwritten_unasked(world, tmp_path):
    run = finished_run(world, tmp_path)
    before = [(run / f).read_text() for f in ("results.json", "config.toml", "metrics.jsonl")]
    r = invoke("train", "--pseudo", world["cache"], "--run-dir", run, "--no-progress", "--lr", "0.5")
    assert r.exit_code == 2 and "holds a finished run" in r.output and "--force" in r.output
    assert [(run / f).read_text() for f in ("results.json", "config.toml", "metrics.jsonl")] == before
    from aevlp.cache import CacheLock
    with CacheLock(run):  # a live writer (this process) holds the folder
        r = invoke("train", "--pseudo", world["cache"], "--run-dir", run, "--no-progress", "--force")
    assert r.exit_code == 2 and f"being written by pid {os.getpid()}" in r.output  # a live writer: refused
    r = invoke("train", "--pseudo", world["cache"], "--run-dir", run, "--no-progress", "--force", "--epochs", "1",
               "--backbone", "small-cnn", "--weights", "none", "--image-size", "32", "--workers", "0")
    assert r.exit_code == 0 and "replacing the finished run" in r.output, r.output
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1 and "epochs = 1" in \
        (run / "config.toml").read_text()  # config.toml, metrics and results all from the one run
    from aevlp.cache.lock import lock_owner
    assert lock_owner(run) is None  # released


def test_resume_refuses_other_settings_and_honours_more_epochs(world, tmp_path):
    run = finished_run(world, tmp_path)
    recorded = (run / "config.toml").read_text()
    for args, what in ((("--set", "train.lr=0.5"), "train.lr: 1e-05 -> 0.5"), (("--lr", "0.5"), "train.lr"),
                       (("--set", "damp.threshold=0.2"), "damp.threshold")):
        r = invoke("train", "--resume", run, "--no-progress", *args)
        assert r.exit_code == 2 and what in r.output and "--run-dir OTHER" in r.output, r.output
        assert (run / "config.toml").read_text() == recorded
    r = invoke("train", "--resume", run, "--no-progress", "--epochs", "1")
    assert r.exit_code == 2 and "already finished 2 epochs" in r.output
    r = invoke("train", "--resume", run, "--no-progress", "--epochs", "3")
    assert r.exit_code == 0 and "resumed with: train.epochs: 2 -> 3" in r.output, r.output
    assert "epochs = 3" in (run / "config.toml").read_text()
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def edited_cache(world, tmp_path, name, edit):
    p = tmp_path / f"{name}.h5"
    p.write_bytes(world["cache"].read_bytes())
    with h5py.File(p, "r+") as f:
        edit(f)
    return p


def _set_attr(key, value):
    return lambda f: f.attrs.__setitem__(key, value)


def _fingerprint(**changes):
    return lambda f: f.attrs.__setitem__("fingerprint", json.dumps({**json.loads(f.attrs["fingerprint"]), **changes}))


def _replace(name, make):
    def edit(f):
        data = make(f[name][()])
        del f[name]
        f.create_dataset(name, data=data)
    return edit


def _poke(name, index, value):
    return lambda f: f[name].__setitem__(index, value)


TAMPERED = {  # the row 3 and row 6: each is FAIL in verify and refused by train and pseudolabel
    "bad mask edited": (_poke("bad", 3, True), "bad: content differs"),
    "sims edited": (_poke("sims", (0, 1, 1, 1), 0.25), "sims: content differs"),
    "checksums deleted": (lambda f: f.attrs.__delitem__("checksums"), "no checksums attribute"),
    "classnames changed": (_replace("classnames", lambda a: np.array([b"kitten", *a[1:]], dtype=object)),
                           "classnames: content differs"),
    "labels byte-flipped": (_poke("labels", (0, 0), 1), "labels"),
    "labels reshaped": (_replace("labels", lambda a: a[:5].astype(np.int8)), "labels has shape (5, 20)"),
    "test_labels zeroed": (_replace("test_labels", np.zeros_like), "test_labels: content differs"),
    "NaN text features": (_poke("text_features", (0, 0), np.nan), "text_features: 1 NaN/inf"),
    "NaN relation": (_poke("relation", (1, 1), np.nan), "relation: 1 NaN/inf"),
    "sims 60000": (_poke("sims", (0, 0, 0, 0), 60000), "sims: values from"),
    "schema 99": (_set_attr("schema_version", 99), "schema_version 99 is not one this aevlp reads"),
    "clip_weights edited": (_fingerprint(clip_weights="sha256:0000"), "attrs:fingerprint: content differs"),
    "embeddings cut to 10 rows": (_replace("embeddings", lambda a: a[:, :10]), "embeddings has shape"),
    "embedding width cut": (_replace("embeddings", lambda a: a[..., :16]), "embeddings has shape"),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_a_tampered_cache_fails_verify_and_is_refused_by_train_and_pseudolabel(world, tmp_path, case):
    edit, message = TAMPERED[case]
    path = edited_cache(world, tmp_path, "c", edit)
    r = invoke("cache", "verify", path)
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output, r.output
    cfg = cfg_for(world["clip"], world["root"], path)
    with pytest.raises(AevlpError, match="damaged|not one this aevlp reads|made with different settings"):
        run_train(cfg, run_dir=tmp_path / "run", progress=False)
    if case != "clip_weights edited":  # an edited fingerprint reads as another cache's: stale, so recomputed
        assert plan_stage_one(cfg).status == "damaged", case
    r = invoke("train", "--pseudo", path, "--run-dir", tmp_path / "run2", "--no-progress")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output


def test_a_sound_cache_verifies_ok_and_the_checksums_cover_every_dataset(world):
    r = invoke("cache", "verify", world["cache"], "--data-root", world["root"])
    assert r.exit_code == 0 and "OK" in r.output, r.output
    with h5py.File(world["cache"]) as f:
        stored = json.loads(f.attrs["checksums"])
        assert set(stored) == {k for k in f if isinstance(f[k], h5py.Dataset)} | {
            "attrs:fingerprint", "attrs:info", "attrs:selection", "attrs:clip_preprocess", "attrs:summary"}


def test_verify_names_class_names_that_differ_from_the_data(world, tmp_path):
    import shutil
    root = tmp_path / "voc"
    shutil.copytree(world["root"], root)
    (root / "aevlp_dataset.json").write_text(json.dumps({"dataset": "voc", "classnames": [f"c{i}" for i in range(20)]}))
    r = invoke("cache", "verify", world["cache"], "--data-root", root)
    assert r.exit_code == 1 and "classnames differ from" in r.output and "only in the dataset: c0" in r.output


def test_damaged_bytes_and_odd_fingerprints_are_clean_errors(world, tmp_path):
    data = bytearray(world["cache"].read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = os.urandom(64)
    (tmp_path / "noise.h5").write_bytes(bytes(data))
    r = invoke("cache", "verify", tmp_path / "noise.h5")
    assert r.exit_code == 1 and "FAIL" in r.output and "Traceback" not in r.output, r.output
    folder = tmp_path / "ls"
    folder.mkdir()
    edited_cache(world, folder, "listfp", _set_attr("fingerprint", json.dumps([1, 2])))
    r = invoke("cache", "ls", folder)
    assert r.exit_code == 0 and "(unreadable)" in r.output and "Traceback" not in r.output, r.output


def test_stale_images_are_refused_by_train(world, tmp_path):
    import shutil

    from PIL import Image
    root = tmp_path / "voc"
    shutil.copytree(world["root"], root)
    cfg = cfg_for(world["clip"], root, tmp_path / "c.h5")
    run_pseudolabel(cfg, progress=False)
    ids = np.load(root / "formatted_train_images.npy")
    Image.new("RGB", (50, 40)).save(root / "VOCdevkit/VOC2012/JPEGImages" / ids[0])  # replaced, another size
    with pytest.raises(AevlpError, match="images under .* changed since stage one") as e:
        run_train(cfg, run_dir=tmp_path / "run", progress=False)
    assert "--force" in e.value.hint


def test_duplicate_image_ids_are_refused_with_their_names(tmp_path):
    root = make_photo_dataset(tmp_path / "voc", n_train=6, n_test=3)
    ids = np.load(root / "formatted_train_images.npy")
    ids[4] = ids[1]
    np.save(root / "formatted_train_images.npy", ids)
    r = invoke("data", "info", "--dataset", "voc", "--data-root", root)
    assert r.exit_code == 2 and f"{ids[1]} (2x)" in r.output and "more than once" in r.output, r.output
    r = invoke("run", "voc", "--data-root", root, "--dry-run")
    assert r.exit_code == 2 and "more than once" in r.output, r.output


@pytest.mark.parametrize("override,message", [
    ("damp.temperature=inf", "must be a finite number"), ("loss.beta=[1e308, 2.0, -2.0, -2.0]", "[-1000, 1000]"),
    ("views.grid=1000", "views.grid = 1000 is out of range"), ("loss.alpha=[0.5, nan, 0.8, 0.5]", "4 numbers"),
])
def test_unbounded_numbers_are_refused(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config("voc", [override])


def test_views_that_would_not_fit_in_memory_are_refused_with_the_estimate(world, tmp_path):
    cfg = cfg_for(world["clip"], world["root"], tmp_path / "big.h5", "views.grid=64", "clip.batch_size=4096")
    with pytest.raises(ConfigError, match=r"would need about [\d.]+ GiB") as e:
        plan_stage_one(cfg)
    assert "clip.batch_size" in e.value.hint


def test_reprompting_works_where_the_images_are_absent(tiny_clip, tmp_path, caplog):
    import shutil
    root = make_photo_dataset(tmp_path / "voc", n_train=8, n_test=3)
    cache = tmp_path / "all.h5"
    cfg = tiny_cfg(tiny_clip, root, cache, 'cache.store_embeddings="all"')
    run_pseudolabel(cfg, progress=False)
    shutil.rmtree(root / "VOCdevkit")  # the cache copied to a machine without the images
    new = load_config(None, []) | {k: dict(v) for k, v in cfg.items()}
    new["text"]["prompts"] = ["a blurry photo of a {}."]
    assert plan_stage_one(new).status == "reprompt"
    assert run_pseudolabel(new, progress=False)["status"] == "re-prompted"
    assert "could not be checked" in caplog.text
