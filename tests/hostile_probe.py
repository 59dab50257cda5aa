"""A probe of hostile and careless inputs, as a careful user would try them (not collected by pytest: run it).

Builds a mini VOC (24 training images) and a tiny random CLIP, a cache and a finished run, then tries
each case through the CLI in this process and sorts the outcome:

  REFUSED    a bad input refused with a clean error (exit != 0, no traceback)
  OK         a legitimate input accepted (and, where the case says so, the output names what happened), or
             damage in data the command does not read left alone
  SILENT     a bad input accepted without a word (a bug)
  TRACEBACK  an uncaught exception (a bug)
  WRONG      a legitimate input refused (a bug)

    python tests/hostile_probe.py --out probe.csv      # about 6 minutes on 2 cores
    python tests/hostile_probe.py --quick              # a sample of every group (CI runs it: tests/test_probe.py)

tests/test_hostile.py holds the cases that matter most as unit tests; docs/trust.md says what is checked where.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import TINY_CLIP, invoke, make_photo_dataset  # noqa: E402

from aevlp.cache import CacheLock  # noqa: E402

TRAIN = ("--no-progress", "--epochs", "1", "--backbone", "small-cnn", "--weights", "none", "--image-size", "32",
         "--workers", "0", "--batch-size", "8")


class World:
    def __init__(self, d: Path):
        import open_clip
        import torch

        self.d = d
        cfg = d / "tiny-clip.json"
        cfg.write_text(json.dumps(TINY_CLIP))
        open_clip.add_model_config(cfg)
        torch.manual_seed(0)
        torch.save(open_clip.create_model("tiny-clip").state_dict(), d / "tiny.pt")
        self.root = make_photo_dataset(d / "voc", n_train=24, n_test=6)
        self.cache = d / "cache" / "c.h5"
        self.pipeline = d / "p.toml"
        self.pipeline.write_text(f'''[dataset]\nname = "voc"\ndata_root = "{self.root}"\nval_frac = 0.25
[clip]\narch = "tiny-clip"\nconfig = "{cfg}"\npretrained = "{d / 'tiny.pt'}"\nprecision = "fp32"\nworkers = 0
[views]\ngrid = 2\nrounds = 2\n[cache]\npath = "{self.cache}"\nstore_embeddings = "all"
[train]\nbackbone = "small-cnn"\nweights = "none"\nimage_size = 32\nworkers = 0\nepochs = 1\nbatch_size = 8
out = "{d / 'runs'}"\n''')
        assert invoke("pseudolabel", "--config", self.pipeline, "--no-progress").exit_code == 0
        self.run = d / "run"
        r = invoke("train", "--pseudo", self.cache, "--config", self.pipeline, "--run-dir", self.run, *TRAIN)
        assert r.exit_code == 0, r.output
        self.locks: list = []
        self.source = self._student()

    def _student(self) -> str:
        """A student source beside the cache, as `aevlp refine` stores it (the finished run's scores)."""
        r = invoke("refine", self.run, "--no-progress")
        assert r.exit_code == 0, r.output
        return "run-r1"

    def copy(self, name: str, edit) -> Path:
        p = self.d / "copies" / f"{name}.h5"
        p.parent.mkdir(exist_ok=True)
        shutil.copy(self.cache, p)
        with h5py.File(p, "r+") as f:
            edit(f)
        return p

    def data(self, name: str, edit) -> Path:
        root = self.d / "data" / name
        shutil.copytree(self.root, root)
        edit(root)
        return root

    def rundir(self, name: str, edit) -> Path:
        run = self.d / "runs-copied" / name
        shutil.copytree(self.run, run)
        edit(run)
        return run


def outcome(r, expect: str) -> str:
    exc = r.exception
    if (exc is not None and not isinstance(exc, SystemExit)) or "Traceback" in r.output:
        return "TRACEBACK"
    if expect == "refuse":
        return "REFUSED" if r.exit_code != 0 else "SILENT"
    if expect == "either":  # the damage lies in data this command does not read; finding it anyway is fine too
        return "REFUSED" if r.exit_code != 0 else "OK"
    want = expect.split(":", 1)[1] if ":" in expect else ""
    if r.exit_code != 0:
        return "WRONG"
    return "OK" if want.lower() in r.output.lower() else "SILENT"


# --- the cases -------------------------------------------------------------------------------------------

def _attr(k, v):
    return lambda f: f.attrs.__setitem__(k, v)


def _delattr(k):
    return lambda f: f.attrs.__delitem__(k)


def _fp(**ch):
    return lambda f: f.attrs.__setitem__("fingerprint", json.dumps({**json.loads(f.attrs["fingerprint"]), **ch}))


def _poke(k, i, v):
    return lambda f: f[k].__setitem__(i, v)


def _replace(k, make, dtype=None):
    def edit(f):
        data = make(f[k][()])
        del f[k]
        f.create_dataset(k, data=data, dtype=dtype)
    return edit


def _delete(k):
    return lambda f: f.__delitem__(k)


S = h5py.string_dtype()
TAMPERS = {
    "checksums deleted": _delattr("checksums"), "checksums garbage": _attr("checksums", "{not json"),
    "checksums a list": _attr("checksums", "[1, 2]"), "fingerprint deleted": _delattr("fingerprint"),
    "fingerprint not JSON": _attr("fingerprint", "{"), "fingerprint a list": _attr("fingerprint", "[1]"),
    "clip_weights edited": _fp(clip_weights="sha256:00"), "grid edited": _fp(grid=3),
    "schema 99": _attr("schema_version", 99), "schema 0": _attr("schema_version", 0),
    "schema text": _attr("schema_version", "two"), "complete false": _attr("complete", False),
    "classnames renamed": _replace("classnames", lambda a: np.array(["kitten", *a[1:].astype(str)], dtype=object), S),
    "classnames cut": _replace("classnames", lambda a: a[:19].astype(str).astype(object), S),
    "labels flipped": _poke("labels", (0, 0), 1), "labels reshaped": _replace("labels", lambda a: a[:5]),
    "labels value 7": _poke("labels", (1, 1), 7), "test_labels zeroed": _replace("test_labels", np.zeros_like),
    "val_labels flipped": _poke("val_labels", (0, 2), 1), "observed flipped": _poke("observed", (0, 3), 1),
    "text_features NaN": _poke("text_features", (0, 0), np.nan), "relation NaN": _poke("relation", (1, 1), np.nan),
    "text_features_plain inf": _poke("text_features_plain", (0, 0), np.inf),
    "sims 60000": _poke("sims", (0, 0, 0, 0), 60000), "sims NaN": _poke("sims", (1, 2, 1, 3), np.nan),
    "sims nudged": _poke("sims", (0, 1, 1, 1), 0.123), "sims float64": _replace("sims", lambda a: a.astype(np.float64)),
    "sims a view less": _replace("sims", lambda a: a[:, :, :4]), "scores 2.0": _poke("scores", (0, 0, 0), 2.0),
    "pseudo 5": _poke("pseudo", (0, 0, 0), 5), "pseudo flipped": _poke("pseudo", (0, 1, 2), 1),
    "bad row set": _poke("bad", 3, True), "every row bad": _replace("bad", np.ones_like),
    "done hole": _poke("done", 2, False), "done deleted": _delete("done"), "sims deleted": _delete("sims"),
    "relation deleted": _delete("relation"), "text_features_plain deleted": _delete("text_features_plain"),
    "embeddings NaN": _poke("embeddings", (0, 0, 0), np.nan),
    "embeddings 10 rows": _replace("embeddings", lambda a: a[:10]),
    "embeddings width 16": _replace("embeddings", lambda a: a[..., :16]),
    "embedding_index out of range": _poke("embedding_index", (0, 0, 0), 999),
    "val_embeddings zeroed": _replace("val_embeddings", np.zeros_like),
    "test_embeddings zeroed": _replace("test_embeddings", np.zeros_like),
    "image_ids renamed": _replace("image_ids", lambda a: np.array(["x.jpg", *a[1:].astype(str)], dtype=object), S),
    "info garbage": _attr("info", "{oops"), "selection garbage": _attr("selection", "[["),
}


def cache_cases(w: World):
    for name, edit in TAMPERS.items():
        p = w.copy(name.replace(" ", "_"), edit)
        yield f"cache: {name}: cache verify", ("cache", "verify", p), "refuse"
        unread = name.endswith("embeddings zeroed")  # read (and then checked) by clip-head training and review
        yield f"cache: {name}: train", ("train", "--pseudo", p, "--config", w.pipeline, "--run-dir",
                                        w.d / "r" / name.replace(" ", "_"), *TRAIN), "ok:" if unread else "refuse"
        yield f"cache: {name}: cache inspect", ("cache", "inspect", p), "ok:" if unread else "refuse"
        yield f"cache: {name}: run --dry-run", ("run", w.pipeline, "--dry-run", "--set", f'cache.path="{p}"'), \
            "ok:pseudolabel: up to date" if unread else "ok:pseudolabel: would run"
    p = w.d / "copies" / "val_embeddings_zeroed.h5"
    yield "cache: val_embeddings zeroed: clip-head train", ("train", "--pseudo", p, "--config", w.pipeline,
                                                            "--run-dir", w.d / "r" / "ch", "--no-progress",
                                                            "--epochs", "1", "--backbone", "clip-head"), "refuse"
    yield "cache: test_embeddings zeroed: review", ("review", w.d / "copies" / "test_embeddings_zeroed.h5", "--out",
                                                    w.d / "rv"), "refuse"
    yield "cache: sound: verify", ("cache", "verify", w.cache, "--data-root", w.root), "ok:OK"
    yield "cache: sound: run --dry-run", ("run", w.pipeline, "--dry-run"), "ok:pseudolabel: up to date"


def _noise(p: Path, dataset: str):
    """64 random bytes written into one dataset's bytes in the file (below HDF5, as a bad disk would)."""
    with h5py.File(p, "r") as f:
        at = f[dataset].id.get_offset() + 16
    data = bytearray(p.read_bytes())
    data[at:at + 64] = os.urandom(64)
    p.write_bytes(bytes(data))


def file_cases(w: World):
    odd = w.d / "odd"
    odd.mkdir()
    (odd / "empty.h5").write_bytes(b"")
    (odd / "text.h5").write_text("hello")
    shutil.copy(w.cache, odd / "half.h5")
    (odd / "half.h5").write_bytes((odd / "half.h5").read_bytes()[:20000])
    for name in ("sims", "val_embeddings"):
        shutil.copy(w.cache, odd / f"noise-{name}.h5")
        _noise(odd / f"noise-{name}.h5", name)
    with h5py.File(odd / "bare.h5", "w") as f:
        f["x"] = np.zeros(3)
    w.copy("listfp", _attr("fingerprint", "[1]"))
    shutil.copy(w.d / "copies" / "listfp.h5", odd / "listfp.h5")
    for name in ("empty", "text", "half", "noise-sims", "noise-val_embeddings", "bare", "listfp"):
        unread = name == "noise-val_embeddings"  # only verify and clip-head read them (on open: NaN/inf if any)
        for cmd in (("cache", "verify"), ("cache", "inspect"), ("review",)):
            args = (*cmd, odd / f"{name}.h5") + (("--out", w.d / "review" / name) if cmd == ("review",) else ())
            expect = "either" if unread and cmd != ("cache", "verify") else "refuse"
            yield f"file: {name}.h5: {' '.join(cmd)}", args, expect
        yield f"file: {name}.h5: train", ("train", "--pseudo", odd / f"{name}.h5", "--config", w.pipeline,
                                          "--run-dir", w.d / "r" / f"odd-{name}", *TRAIN), \
            "either" if unread else "refuse"
    yield "file: noise-val_embeddings.h5: clip-head train", (
        "train", "--pseudo", odd / "noise-val_embeddings.h5", "--config", w.pipeline, "--run-dir", w.d / "r" / "nch",
        "--no-progress", "--epochs", "1", "--backbone", "clip-head"), "refuse"
    yield "file: cache ls of odd files", ("cache", "ls", odd), "ok:(unreadable)"
    yield "file: cache ls of a missing folder", ("cache", "ls", w.d / "nowhere"), "refuse"
    yield "file: cache thresholds on noise", ("cache", "thresholds", odd / "noise-sims.h5"), "refuse"
    yield "file: cache export on text", ("cache", "export", odd / "text.h5", "--out", w.d / "x.csv"), "refuse"


def config_cases(w: World):
    bad = ["damp.temperature=inf", "damp.temperature=nan", "damp.temperature=0", "damp.temperature=-1",
           "loss.beta=[1e308, 2.0, -2.0, -2.0]", "loss.beta=[nan, 2.0, -2.0, -2.0]", "loss.beta=[1, 2, 3]",
           'loss.beta="high"', "loss.alpha=[0.5, 0, 0.8, 0.5]", "loss.alpha=[0.5, 2, 0.8, -1]",
           "views.grid=1000", "views.grid=0", "views.grid=-2", "views.rounds=0", "views.rounds=100000",
           "views.jitter=0.9", "views.size=100000", "clip.batch_size=0", "clip.batch_size=-5", "clip.workers=-3",
           "train.batch_size=0", "train.epochs=0", "train.epochs=-1", "train.lr=-1", "train.lr=inf",
           "train.lr_mult=0", "damp.threshold=2", "damp.threshold=-0.5", "damp.top_k=0", "damp.eta=-1",
           "damp.negative_ratio=1", "damp.min_auc=3", "damp.student_weight=2", "dataset.val_frac=1.5",
           "dataset.val_frac=-0.1", 'clip.device="tpu"', 'train.device="gpu0"', 'train.precision="fp8"',
           "train.image_size=-1", "train.image_size=100000", 'views.resize="stretch"', 'damp.mode="loose"',
           'loss.name="gpr2"', 'train.backbone="resnet5"', "train.linear_init=5", "trian.epochs=2",
           "damp.treshold=0.4", "views=3", 'text.prompts=["no placeholder"]', "text.prompts=[]",
           "loss.lam1=0.1", "train.patience=-1", "loss.q2=0", 'cache.store_embeddings="some"',
           "clip.batch_size=4096", "views.grid=64"]
    for o in bad:
        args = ("run", w.pipeline, "--dry-run", "--set", o)
        if o in ("clip.batch_size=4096", "views.grid=64"):  # together: views that cannot fit in memory
            args = ("run", w.pipeline, "--dry-run", "--set", "clip.batch_size=4096", "--set", "views.grid=64")
        yield f"config: --set {o}", args, "refuse"
    yield "config: --set ok value", ("run", w.pipeline, "--dry-run", "--set", "damp.threshold=0.4"), \
        "ok:train: would run"
    yield "config: missing pipeline file", ("run", w.d / "nope.toml", "--dry-run"), "refuse"
    broken = w.d / "broken.toml"
    broken.write_text("[dataset\nname = 'voc'")
    yield "config: invalid TOML", ("run", broken, "--dry-run"), "refuse"
    unknown = w.d / "unknown.toml"
    unknown.write_text(w.pipeline.read_text() + "\n[extras]\nfoo = 1\n")
    yield "config: unknown section", ("run", unknown, "--dry-run"), "refuse"


def _dup(root):
    ids = np.load(root / "formatted_train_images.npy")
    ids[3] = ids[1]
    np.save(root / "formatted_train_images.npy", ids)


def _obj(root):
    np.save(root / "formatted_train_images.npy", np.array([{"a": 1}] * 24, dtype=object), allow_pickle=True)


def _replace_image(root):
    from PIL import Image

    ids = np.load(root / "formatted_train_images.npy")
    Image.new("RGB", (50, 40)).save(root / "VOCdevkit/VOC2012/JPEGImages" / ids[0])


DATA_EDITS = {
    "duplicate id": (_dup, "refuse"),
    "object-array ids": (_obj, "refuse"),
    "labels wrong rows": (lambda r: np.save(r / "formatted_train_labels.npy", np.zeros((5, 20))), "refuse"),
    "labels wrong columns": (lambda r: np.save(r / "formatted_train_labels.npy", np.zeros((24, 7))), "refuse"),
    "labels value 2": (lambda r: np.save(r / "formatted_train_labels.npy", np.full((24, 20), 2.0)), "refuse"),
    "labels NaN": (lambda r: np.save(r / "formatted_train_labels.npy", np.full((24, 20), np.nan)), "refuse"),
    "labels missing": (lambda r: (r / "formatted_train_labels.npy").unlink(), "refuse"),
    "ids missing": (lambda r: (r / "formatted_train_images.npy").unlink(), "refuse"),
    "ids 2-D": (lambda r: np.save(r / "formatted_train_images.npy", np.array([["a"] * 2] * 24)), "refuse"),
    "ids empty": (lambda r: (np.save(r / "formatted_train_images.npy", np.array([], dtype=str)),
                             np.save(r / "formatted_train_labels.npy", np.zeros((0, 20)))), "refuse"),
    "observed shape": (lambda r: np.save(r / "formatted_train_labels_obs.npy", np.zeros((3, 20))), "refuse"),
    "observed value 3": (lambda r: np.save(r / "formatted_train_labels_obs.npy", np.full((24, 20), 3)), "refuse"),
    "labels not npy": (lambda r: (r / "formatted_train_labels.npy").write_text("1,0,1"), "refuse"),
    "meta wrong dataset": (lambda r: (r / "aevlp_dataset.json").write_text('{"dataset": "coco"}'), "refuse"),
    "meta not JSON": (lambda r: (r / "aevlp_dataset.json").write_text("{"), "refuse"),
    "meta 3 classnames": (lambda r: (r / "aevlp_dataset.json").write_text('{"classnames": ["a", "b", "c"]}'),
                          "refuse"),
    "image replaced": (_replace_image, "refuse"),
}


def data_cases(w: World):
    for name, (edit, expect) in DATA_EDITS.items():
        root = w.data(name.replace(" ", "_"), edit)
        yield f"data: {name}: data info", ("data", "info", "--dataset", "voc", "--data-root", root), \
            "ok:" if name == "image replaced" else expect
        yield f"data: {name}: train", ("train", "--pseudo", w.cache, "--config", w.pipeline, "--data-root", root,
                                       "--run-dir", w.d / "r" / f"data-{name.replace(' ', '_')}", *TRAIN), expect
        if name != "image replaced":
            yield f"data: {name}: run --dry-run", ("run", w.pipeline, "--dry-run", "--set",
                                                   f'dataset.data_root="{root}"'), expect
    yield "data: missing root", ("data", "info", "--dataset", "voc", "--data-root", w.d / "nowhere"), "refuse"
    yield "data: unknown dataset", ("data", "info", "--dataset", "vocc", "--data-root", w.root), "refuse"
    yield "data: images checked", ("data", "info", "--dataset", "voc", "--data-root", w.root, "--check-images"), "ok:"


def run_folder_cases(w: World):
    cache, p = w.cache, w.pipeline
    again = ("train", "--pseudo", cache, "--config", p, *TRAIN)
    yield "run: into a finished folder", (*again, "--run-dir", w.rundir("fin", lambda r: None)), "refuse"
    yield "run: into a finished folder with --force", (*again, "--run-dir", w.rundir("fin2", lambda r: None),
                                                       "--force"), "ok:replacing the finished run"

    held = w.rundir("lock", lambda r: None)
    w.locks.append(CacheLock(held).__enter__())  # a live writer holds it (an OS lock: this process's)
    yield "run: into a folder being written", (*again, "--run-dir", held, "--force"), "refuse"

    def stale_lock(r):
        (r.parent / f"{r.name}.lock").write_text(json.dumps({"pid": 2 ** 22 + 7, "host": socket.gethostname()}))
    yield "run: stale lock taken over", (*again, "--run-dir", w.rundir("stale", stale_lock), "--force"), "ok:"

    def interrupted(r):
        (r / "results.json").unlink()
    yield "run: into an interrupted folder", (*again, "--run-dir", w.rundir("int", interrupted)), "refuse"
    for args, expect in ((("--set", "train.lr=0.5"), "refuse"), (("--lr", "0.5"), "refuse"),
                         (("--batch-size", "4"), "refuse"), (("--set", "damp.threshold=0.2"), "refuse"),
                         (("--loss", "an"), "refuse"), (("--seed", "3"), "refuse"),
                         (("--epochs", "2"), "ok:resumed with: train.epochs"), (("--workers", "0"), "ok:"),
                         ((), "ok:")):
        run = w.rundir(f"res{len(list((w.d / 'runs-copied').iterdir()))}", interrupted)
        yield f"run: --resume {' '.join(args) or '(as it was)'}", ("train", "--resume", run, "--no-progress", *args), \
            expect
    yield "run: --resume a missing folder", ("train", "--resume", w.d / "nowhere", "--no-progress"), "refuse"
    yield "run: --resume without config.toml", ("train", "--resume", w.rundir(
        "nocfg", lambda r: (r / "config.toml").unlink()), "--no-progress"), "refuse"
    yield "run: --resume with a garbled config.toml", ("train", "--resume", w.rundir(
        "badcfg", lambda r: (r / "config.toml").write_text("[train\n")), "--no-progress"), "refuse"
    yield "run: --resume with last.pt truncated", ("train", "--resume", w.rundir(
        "trunc", lambda r: ((r / "last.pt").write_bytes((r / "last.pt").read_bytes()[:100]),
                            (r / "results.json").unlink())), "--no-progress"), "refuse"
    yield "run: eval a folder without best.pt", ("eval", w.rundir("nobest", lambda r: (r / "best.pt").unlink())), \
        "refuse"
    yield "run: eval with best.pt garbage", ("eval", w.rundir("badbest", lambda r: (r / "best.pt").write_text("x"))), \
        "refuse"
    yield "run: eval the run", ("eval", w.run), "ok:mAP"
    yield "run: report an empty folder", ("report", w.d / "empty-runs", "--out", w.d / "rep"), "refuse"
    yield "run: refine an unfinished run", ("refine", w.rundir("unref", interrupted), "--no-progress"), "refuse"
    yield "run: predict with a garbage checkpoint", ("predict", w.rundir("pbad", lambda r: (r / "best.pt").write_text(
        "x")), w.root / "VOCdevkit/VOC2012/JPEGImages"), "refuse"


def _source_copy(w: World, name: str, edit) -> str:
    """A copy of the run's stored student source, edited (the seal recomputed where `edit` says so)."""
    from aevlp.cache.sources import _seal, source_path

    dst = source_path(w.cache, name)
    shutil.copy(source_path(w.cache, w.source), dst)
    with h5py.File(dst, "r+") as f:
        reseal = edit(f)
        if reseal:
            a = f.attrs
            ids = [str(x) for x in f["image_ids"].asstr()[()]]
            vids = [str(x) for x in f["val_image_ids"].asstr()[()]] if "val_image_ids" in f else []
            a["sha256"] = _seal(str(a["cache_fingerprint"]), a["provenance"], ids, vids, f["scores"][()],
                                f["val_scores"][()] if "val_scores" in f else None)
    return name


def _scores(value):
    def edit(f):
        s = f["scores"][()]
        s[0, 0] = value
        del f["scores"]
        f.create_dataset("scores", data=s)
        return True
    return edit


def _swap_rows(f):
    s = f["scores"][()]
    s[[0, 1]] = s[[1, 0]]
    del f["scores"]
    f.create_dataset("scores", data=s)
    return False


SOURCE_EDITS = {
    "scores NaN": _scores(np.nan), "scores 5.0": _scores(5.0), "scores -3.0": _scores(-3.0),
    "rows swapped": _swap_rows, "provenance edited": lambda f: f.attrs.__setitem__("provenance", '{"epoch": 9}'),
    "provenance not JSON": lambda f: f.attrs.__setitem__("provenance", "{x") or True,
    "provenance a list": lambda f: f.attrs.__setitem__("provenance", "[1]") or True,
    "scores a group": lambda f: (f.__delitem__("scores"), f.create_group("scores")) and False,
    "fingerprint of another cache": lambda f: f.attrs.__setitem__("cache_fingerprint", "0" * 16) or True,
    "row ids of other images": lambda f: f["image_ids"].__setitem__(0, "other.jpg") or True,
}


def source_cases(w: World):
    train = ("train", "--pseudo", w.cache, "--config", w.pipeline, *TRAIN)
    for name, edit in SOURCE_EDITS.items():
        src = _source_copy(w, "probe-" + "".join(c for c in name if c.isalnum()), edit)
        yield f"source: {name}: train", (*train, "--set", f'damp.student="{src}"', "--run-dir", w.d / "r" / src), \
            "refuse"
    for name in ("../run-r1", "/etc/passwd", "sub/run-r1"):
        yield f"source: damp.student = {name}", (*train, "--set", f'damp.student="{name}"', "--run-dir",
                                                 w.d / "r" / "srcname"), "refuse"
    yield "source: sound: train", (*train, "--set", f'damp.student="{w.source}"', "--run-dir", w.d / "r" / "src"), \
        "ok:"


def rounds_cases(w: World):
    runs = w.d / "rounds"
    runs.mkdir(exist_ok=True)
    shutil.copytree(w.run, runs / "run")
    yield "rounds: refine", ("refine", runs / "run", "--no-progress"), "ok:teaches"
    yield "rounds: refine again: done", ("refine", runs / "run", "--no-progress"), "ok:is done"
    yield "rounds: refine --set damp.threshold=7", ("refine", runs / "run", "--set", "damp.threshold=7",
                                                    "--no-progress"), "refuse"
    yield "rounds: the teacher trained again, then refine", (
        "train", "--pseudo", w.cache, "--config", runs / "run" / "config.toml", "--run-dir", runs / "run", "--seed",
        "3", "--force", "--no-progress"), "ok:"
    yield "rounds: refine after that", ("refine", runs / "run", "--set", "train.seed=0", "--no-progress"), \
        "ok:earlier student"
    cut = w.rundir("cut", lambda r: (r / "results.json").unlink())
    other = w.d / "other.h5"
    shutil.copy(w.cache, other)
    yield "rounds: --resume --pseudo OTHER", ("train", "--resume", cut, "--pseudo", other, "--no-progress"), "refuse"
    edited = w.rundir("edited", lambda r: ((r / "results.json").unlink(), (r / "config.toml").write_text(
        (r / "config.toml").read_text().replace("threshold = 0.5", "threshold = 0.3", 1))))
    yield "rounds: --resume after config.toml edited", ("train", "--resume", edited, "--no-progress"), "refuse"
    yield "rounds: --labels full with a student (noted: every label is known)", (
        "train", "--pseudo", w.cache, "--config", w.pipeline, "--labels", "full", "--set", f'damp.student="{w.source}"',
        "--run-dir", w.d / "r" / "full"), "ok:the student settings"
    yield "rounds: --set clip.arch contradicting the cache", (
        "train", "--pseudo", w.cache, "--config", w.pipeline, "--set", 'clip.arch="ViT-B-16"', "--run-dir",
        w.d / "r" / "arch"), "refuse"


def _csv(w: World, name: str, rows: list[dict]) -> Path:
    import pandas as pd

    p = w.d / "csv" / f"{name}.csv"
    p.parent.mkdir(exist_ok=True)
    pd.DataFrame(rows).to_csv(p, index=False)
    return p


def prepare_cases(w: World):
    img = w.root / "VOCdevkit/VOC2012/JPEGImages"
    names = sorted(p.name for p in img.glob("train*.jpg"))
    prep = ("data", "prepare", "table", "--images", img, "--out", w.d / "prep")
    rows = [{"image": n, "labels": "cat" if i % 2 else "dog", "split": "test" if i > 5 else "train"}
            for i, n in enumerate(names[:8])]
    dup = _csv(w, "dup", [*rows, {"image": f"./{names[0]}", "labels": "cat", "split": "test"}])
    yield "prepare: a.png and ./a.png", (*prep, "--csv", dup), "refuse"
    untagged = _csv(w, "untagged", [{**r, "labels": ""} if i == 2 else r for i, r in enumerate(rows)])
    yield "prepare: --observed-only with an untagged training row", (*prep, "--csv", untagged, "--observed-only"), \
        "refuse"
    good = _csv(w, "good", rows)
    yield "prepare: --sep ''", (*prep, "--csv", good, "--sep", ""), "refuse"
    for name, text in (("numbers", "[1, 2]"), ("data a string", '[{"data": "x", "annotations": []}]'),
                       ("annotation a string", f'[{{"data": {{"aevlp_image": "{names[0]}"}}, "annotations": ["a"]}}]'),
                       ("deep", "[" * 100000 + "]" * 100000)):
        p = w.d / "csv" / f"review-{name.replace(' ', '-')}.json"
        p.write_text(text)
        yield f"prepare: --reviewed {name}", (*prep, "--csv", good, "--reviewed", p), "refuse"

    def task(choices):
        return {"data": {"aevlp_image": names[0]}, "annotations": [{"result": [
            {"from_name": "labels", "to_name": "image", "type": "choices", "value": {"choices": choices}}]}]}
    twice = w.d / "csv" / "review-twice.json"
    twice.write_text(json.dumps([task(["cat"]), task(["dog"])]))
    yield "prepare: --reviewed an image twice, other choices", (*prep, "--csv", good, "--reviewed", twice), "refuse"
    thresholds = w.d / "csv" / "theta.csv"
    with h5py.File(w.cache, "r") as f:
        classes = [c.decode() for c in f["classnames"][:]]
    thresholds.write_text("class,threshold\n" + "".join(f"{c},0.5\n" for c in classes) + f"{classes[0]},0.9\n")
    yield "prepare: a thresholds CSV with a class twice", (
        "train", "--pseudo", w.cache, "--config", w.pipeline, "--set", f'damp.class_thresholds="{thresholds}"',
        "--run-dir", w.d / "r" / "theta", *TRAIN), "refuse"


def misc_cases(w: World):
    for o in ("train.image_size=1", "train.seed=-1", "train.seed=100000000000000000000"):
        yield f"misc: --set {o}", ("run", w.pipeline, "--dry-run", "--set", o), "refuse"
    yield "misc: --seed -1", ("train", "--pseudo", w.cache, "--config", w.pipeline, "--seed", "-1", "--run-dir",
                              w.d / "r" / "seed"), "refuse"
    latin = w.d / "latin1.toml"
    latin.write_bytes(w.pipeline.read_bytes() + "\n# caf\xe9\n".encode("latin-1"))
    yield "misc: a pipeline that is not UTF-8", ("run", latin, "--dry-run"), "refuse"
    yield "misc: predict --threshold nan", ("predict", w.run, w.root / "VOCdevkit/VOC2012/JPEGImages",
                                            "--threshold", "nan", "--out", w.d / "p.csv"), "refuse"
    odd = w.d / "odd-meta"
    odd.mkdir(exist_ok=True)
    data = w.cache.read_bytes()
    for at in (1164, 1261, 2037):  # HDF5 object headers and heaps: h5py raises RuntimeError there
        p = odd / f"flip{at}.h5"
        b = bytearray(data)
        b[at] ^= 0xFF
        p.write_bytes(bytes(b))
        yield f"misc: a metadata byte flipped at {at}: cache verify", ("cache", "verify", p), "either"
        yield f"misc: a metadata byte flipped at {at}: cache inspect", ("cache", "inspect", p), "either"
    extra = w.copy("extra-dataset", lambda f: f.create_dataset("extra", data=np.zeros(3)))
    yield "misc: a dataset added to a cache: cache verify", ("cache", "verify", extra), "refuse"
    yield "misc: a dataset added to a cache: train", ("train", "--pseudo", extra, "--config", w.pipeline, "--run-dir",
                                                      w.d / "r" / "extra", *TRAIN), "refuse"
    forged = w.copy("summary-forged", lambda f: f.attrs.__setitem__("summary", json.dumps({"pseudo_precision": 99.9})))
    yield "misc: a forged summary: cache inspect", ("cache", "inspect", forged), "refuse"

    def rechecksummed(f):
        from aevlp.cache.validate import checksums, sealed_names
        f["pseudo"][0, 0, 3] = 1 - f["pseudo"][0, 0, 3]
        f.attrs["checksums"] = json.dumps(checksums(f, sealed_names(f)))
    yield "misc: pseudo edited, checksums recomputed: cache verify", (
        "cache", "verify", w.copy("rechecksummed", rechecksummed)), "refuse"


GROUPS = {"cache": lambda w: cache_cases(w), "file": lambda w: file_cases(w), "config": lambda w: config_cases(w),
          "data": lambda w: data_cases(w), "run": lambda w: run_folder_cases(w), "source": lambda w: source_cases(w),
          "rounds": lambda w: rounds_cases(w), "prepare": lambda w: prepare_cases(w), "misc": lambda w: misc_cases(w)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="write every case's outcome to this CSV")
    ap.add_argument("--quick", action="store_true", help="every group, a sample of its cases (every third of the "
                                                         "cache tampers and data edits): a few minutes")
    ap.add_argument("--json", default=None, help="write the counts and the bad cases here")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        w = World(Path(tmp))
        (w.d / "empty-runs").mkdir()
        for gname, group in GROUPS.items():
            for i, (name, argv, expect) in enumerate(group(w)):
                if args.quick and gname in ("cache", "data") and i % 3:
                    continue
                r = invoke(*argv)
                got = outcome(r, expect)
                last = (r.output.strip().splitlines() or [""])[-1][:140] if got != "TRACEBACK" else repr(r.exception)
                rows.append({"case": name, "expected": expect.split(":")[0], "outcome": got, "says": last})
                if got in ("SILENT", "TRACEBACK", "WRONG"):
                    print(f"{got:9s} {name}: {last}", flush=True)
        for lock in w.locks:
            lock.__exit__(None, None, None)
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("REFUSED", "OK", "SILENT", "TRACEBACK", "WRONG")}
    print(f"{len(rows)} cases: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"cases": len(rows), "counts": counts, "bad": [
            r for r in rows if r["outcome"] in ("SILENT", "TRACEBACK", "WRONG")]}, indent=1))
    if args.out:
        with open(args.out, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
