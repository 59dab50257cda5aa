"""Stage one end to end on a tiny random-init CLIP and real photos: cache, fingerprint, resume, locks."""
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from conftest import tiny_cfg

from aevlp.cache import Cache, CacheLock, lock_path, partial_path
from aevlp.cache.lock import lock_owner
from aevlp.damp import aggregate, select
from aevlp.errors import AevlpError
from aevlp.stage_one.pseudolabel import run_pseudolabel


def cfg_for(tiny_clip, root, out, **over):
    return tiny_cfg(tiny_clip, root, out, "clip.batch_size=4", "views.rounds=3",
                    *(f"{k}={json.dumps(v)}" for k, v in over.items()))


def arrays(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][:] for k in f}, {k: f.attrs[k] for k in f.attrs if k not in ("created", "run_stats")}


def test_cache_contents(tiny_clip, photo_voc, tmp_path):
    out = tmp_path / "c.h5"
    s = run_pseudolabel(cfg_for(tiny_clip, photo_voc, out, **{"cache.store_embeddings": "global"}), progress=False)
    assert s["status"] == "computed" and s["images"] == 16 and s["bad_images"] == 0
    assert not partial_path(out).exists() and lock_owner(out) is None  # the lock is free (its file may stay)
    with Cache(out) as c:
        assert c.f["sims"].shape == (3, 16, 5, 20) and c.f["sims"].dtype == np.float16
        assert c.f["scores"].shape == (3, 16, 20) and c.f["pseudo"].dtype == np.int8
        assert c.f["embeddings"].shape == (3, 16, 32)
        assert c.f["val_embeddings"].shape == (4, 32) and c.f["test_embeddings"].shape == (6, 32)
        assert np.allclose(np.linalg.norm(c.f["test_embeddings"][:].astype(np.float32), axis=1), 1, atol=1e-2)
        assert c.array("test_image_ids").tolist() == np.load(photo_voc / "formatted_val_images.npy").tolist()
        assert c.f["done"][:].all() and not c.f["bad"][:].any()
        assert len(c.image_ids()) == 16 and len(c.classnames()) == 20
        fp = c.fingerprint
        assert fp["grid"] == 2 and fp["rounds"] == 3 and fp["clip_weights"].startswith("sha256:")
        sims = c.f["sims"][:].astype(np.float32)
        assert np.all(np.abs(sims) <= 1.0 + 1e-3)
        # global embedding · text features = the global view's similarity
        emb = c.f["embeddings"][:].astype(np.float32)
        t = c.f["text_features"][:]
        assert np.allclose(emb[1] @ t.T, sims[1, :, 0], atol=5e-3)
        # rounds differ only by flips: some view similarities change across rounds
        assert not np.array_equal(sims[0], sims[1])


def test_stored_damp_equals_recomputation_from_sims(tiny_clip, photo_voc, tmp_path):
    out = tmp_path / "c.h5"
    cfg = cfg_for(tiny_clip, photo_voc, out, **{"damp.temperature": 0.05, "damp.threshold": 0.06})
    run_pseudolabel(cfg, progress=False)
    with Cache(out) as c:
        obs = torch.as_tensor(c.array("observed"))
        sel = c.selection
        for r in range(c.rounds):
            sims = torch.as_tensor(c.sims(r).astype(np.float32))
            f, g = aggregate(sims[:, 0], sims[:, 1:], obs, temperature=sel["temperature"], eta=sel["eta"])
            z = select(f, g, top_k=sel["top_k"], threshold=sel["threshold"], negative_ratio=sel["negative_ratio"],
                       negatives=sel["negatives"], observed=obs)
            assert np.allclose(f.numpy(), c.f["scores"][r].astype(np.float32), atol=1e-3)
            assert np.array_equal(z.numpy(), c.f["pseudo"][r])
        assert (c.f["pseudo"][:] == 1).sum() > obs.sum() * c.rounds  # some pseudo positives beyond observed


def test_reuse_refusal_and_force(tiny_clip, photo_voc, tmp_path):
    out = tmp_path / "c.h5"

    def cfg(**over):  # no stored embeddings: a text-side change is refused here (re-derived with them: test_reprompt)
        return cfg_for(tiny_clip, photo_voc, out, **{"cache.store_embeddings": "none", **over})
    run_pseudolabel(cfg(), progress=False)
    mtime = out.stat().st_mtime_ns
    import aevlp.stage_one.pseudolabel as pl

    def no_clip(*a, **k):
        raise AssertionError("CLIP must not be loaded for an up-to-date cache")
    orig_load, pl.load_clip = pl.load_clip, no_clip
    try:
        assert run_pseudolabel(cfg(), progress=False)["status"] == "reused"
    finally:
        pl.load_clip = orig_load
    # selection parameters are not part of the fingerprint: no recomputation
    same = run_pseudolabel(cfg(**{"damp.threshold": 0.9}), progress=False)
    assert same["status"] == "reused"
    for key, value, field in [("views.grid", 3, "grid"), ("views.rounds", 2, "rounds"),
                              ("text.prompts", ["a picture of a {}."], "prompts"),
                              ("clip.precision", "bf16", "precision"),
                              ("views.normalize", "clip", "mean"), ("views.interpolation", "bicubic", "interpolation"),
                              ("views.resize", "shortest", "resize_mode"), ("text.gcn", False, "gcn")]:
        with pytest.raises(AevlpError, match=rf"different settings:[\s\S]*{field}:"):
            run_pseudolabel(cfg(**{key: value}), progress=False)
    with pytest.raises(AevlpError, match="num_images"):
        run_pseudolabel(cfg(), limit=5, progress=False)
    assert out.stat().st_mtime_ns == mtime  # refusals leave the complete cache untouched
    s = run_pseudolabel(cfg(**{"views.grid": 3}), force=True, progress=False)
    assert s["status"] == "computed"
    assert Cache(out).fingerprint["grid"] == 3


def test_other_weights_change_fingerprint(tiny_clip, photo_voc, tmp_path):
    import open_clip
    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    torch.save(open_clip.create_model("tiny-clip").state_dict(), other)
    out = tmp_path / "c.h5"
    run_pseudolabel(cfg_for(tiny_clip, photo_voc, out), progress=False)
    with pytest.raises(AevlpError, match="clip_weights"):
        run_pseudolabel(cfg_for(tiny_clip, photo_voc, out, **{"clip.pretrained": str(other)}), progress=False)


KILL_SCRIPT = r"""
import os, signal, sys
from aevlp.cache import CacheWriter
orig = CacheWriter.write
count = {"n": 0}
def write(self, *a, **k):
    orig(self, *a, **k)
    count["n"] += 1
    if count["n"] == int(os.environ["DIE_AFTER"]):
        os.kill(os.getpid(), signal.SIGKILL)
CacheWriter.write = write
from aevlp.cli import main
sys.argv = ["aevlp"] + sys.argv[1:]
main()
"""


def _cli_args(tiny_clip, root, out):
    return ["pseudolabel", "--dataset", "voc", "--data-root", str(root), "--out", str(out), "--clip", "tiny-clip",
            "--clip-config", tiny_clip["config"], "--pretrained", tiny_clip["pretrained"], "--grid", "2",
            "--rounds", "3", "--batch-size", "3", "--workers", "1", "--no-progress"]


@pytest.mark.slow
def test_resume_after_kill9_is_bit_identical(tiny_clip, photo_voc, tmp_path):
    ref = tmp_path / "ref.h5"
    env = dict(os.environ, DIE_AFTER="2")
    r = subprocess.run([sys.executable, "-m", "aevlp", *_cli_args(tiny_clip, photo_voc, ref)], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "killed.h5"
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    r = subprocess.run([sys.executable, str(script), *_cli_args(tiny_clip, photo_voc, out)], capture_output=True,
                       text=True, env=env)
    assert r.returncode == -9
    assert not out.exists() and partial_path(out).exists() and lock_path(out).exists()
    with h5py.File(partial_path(out), "r") as f:
        assert f["done"][:].sum() == 6  # two batches of three
    r = subprocess.run([sys.executable, "-m", "aevlp", *_cli_args(tiny_clip, photo_voc, out)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert "resumed" in r.stdout and "computed_images" in r.stdout
    a, attrs_a = arrays(ref)
    b, attrs_b = arrays(out)
    assert a.keys() == b.keys() and attrs_a == attrs_b
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert json.loads(h5py.File(out, "r").attrs["run_stats"])["computed_images"] == 10


def test_interrupt_keeps_progress(tiny_clip, photo_voc, tmp_path, monkeypatch):
    from aevlp import cache as cache_mod
    out = tmp_path / "c.h5"
    orig, calls = cache_mod.CacheWriter.write, []

    def flaky(self, *a, **k):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        orig(self, *a, **k)
    monkeypatch.setattr(cache_mod.CacheWriter, "write", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_pseudolabel(cfg_for(tiny_clip, photo_voc, out), progress=False)
    assert lock_owner(out) is None and partial_path(out).exists()
    monkeypatch.setattr(cache_mod.CacheWriter, "write", orig)
    s = run_pseudolabel(cfg_for(tiny_clip, photo_voc, out), progress=False)
    assert s["status"] == "resumed" and s["computed_images"] == 8


def test_lock_refuses_second_writer_and_takes_stale(tmp_path):
    from aevlp.cache.lock import lock_owner, owner_path
    target = tmp_path / "c.h5"
    with CacheLock(target):
        with pytest.raises(AevlpError, match=f"being written by pid {os.getpid()}"):
            CacheLock(target).__enter__()
        assert lock_owner(target)["pid"] == os.getpid()
    assert lock_owner(target) is None and not owner_path(target).exists()
    lock_path(target).write_text(json.dumps({"pid": 2 ** 22 + 12345, "host": os.uname().nodename}))  # a dead writer's
    with CacheLock(target):
        assert json.loads(owner_path(target).read_text())["pid"] == os.getpid()


TAKE_OVER = """
import json, sys, time
from pathlib import Path
from aevlp.cache import CacheLock
from aevlp.errors import AevlpError
target, start = Path(sys.argv[1]), float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
try:
    with CacheLock(target):
        print("held", flush=True)
        time.sleep(1.5)
except AevlpError:
    print("refused", flush=True)
"""


def test_two_processes_taking_over_a_dead_lock_together_cannot_both_hold_it(tmp_path):
    """A lock file and owner left by a dead writer, two processes after it at the same instant: one holds it, the
    other is refused (a lock file read and deleted by both, as before filelock, let both in)."""
    import time

    from aevlp.cache.lock import owner_path
    target = tmp_path / "c.h5"
    lock_path(target).write_text(json.dumps({"pid": 2 ** 22 + 7, "host": os.uname().nodename}))
    owner_path(target).write_text(json.dumps({"pid": 2 ** 22 + 7, "host": os.uname().nodename}))
    start = time.time() + 3
    procs = [subprocess.Popen([sys.executable, "-c", TAKE_OVER, str(target), str(start)], stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    said = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert said == ["held", "refused"], said


def test_bad_images(tiny_clip, photo_voc, tmp_path):
    img = photo_voc / "VOCdevkit/VOC2012/JPEGImages"
    ids = np.load(photo_voc / "formatted_train_images.npy")
    from aevlp.data import train_val_split
    first_train = ids[train_val_split(len(ids))[0][1]]
    (img / first_train).write_bytes((img / first_train).read_bytes()[:300])
    out = tmp_path / "c.h5"
    with pytest.raises(AevlpError, match=rf"1 unreadable image\(s\):[\s\S]*{first_train}"):
        run_pseudolabel(cfg_for(tiny_clip, photo_voc, out), progress=False)
    s = run_pseudolabel(cfg_for(tiny_clip, photo_voc, out, **{"cache.on_bad_image": "skip"}), progress=False)
    assert s["bad_images"] == 1
    with Cache(out) as c:
        assert c.f["bad"][:].tolist() == [False, True] + [False] * 14
        assert np.all(c.f["pseudo"][:, 1] == 0) and np.all(c.f["sims"][:, 1] == 0)


def test_missing_weights_and_offline_errors(tiny_clip, photo_voc, tmp_path, monkeypatch):
    with pytest.raises(AevlpError, match="weights file not found"):
        run_pseudolabel(cfg_for(tiny_clip, photo_voc, tmp_path / "c.h5", **{"clip.pretrained": "nope.safetensors"}))
    import open_clip

    from aevlp.specs import ClipSpec
    from aevlp.stage_one.clip import load_clip

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co'")
    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(AevlpError, match="could not fetch pretrained weights 'openai'") as e:
        load_clip(ClipSpec("ViT-B-32", "openai", device="cpu"))
    assert "clip.pretrained = PATH" in str(e.value)  # the API names the setting (a command, its flag)
    with pytest.raises(AevlpError, match="not a pretrained tag"):
        load_clip(ClipSpec("ViT-B-32", "made-up-tag", device="cpu"))
    with pytest.raises(AevlpError, match="unknown CLIP architecture"):
        load_clip(ClipSpec("ViT-Q-99", "", device="cpu"))


def test_clip_ls_cli():
    from click.testing import CliRunner

    from aevlp.cli import cli
    r = CliRunner().invoke(cli, ["clip", "ls", "--arch", "ViT-B-32", "--json"])
    assert r.exit_code == 0
    assert "openai" in json.loads(r.output)["ViT-B-32"]


def test_resize_on_device_matches_workers(tiny_clip, photo_voc, tmp_path):
    """The GPU path's crop/resize (here on the CPU device) gives the worker path's numbers."""
    a, b = tmp_path / "worker.h5", tmp_path / "device.h5"
    run_pseudolabel(cfg_for(tiny_clip, photo_voc, a), progress=False)
    run_pseudolabel(cfg_for(tiny_clip, photo_voc, b, **{"views.resize_on": "device"}), progress=False)
    with Cache(a) as ca, Cache(b) as cb:
        assert cb.fingerprint["resize_on"] == "device"
        assert np.array_equal(ca.f["pseudo"][:], cb.f["pseudo"][:])
        assert np.allclose(ca.f["sims"][:].astype(np.float32), cb.f["sims"][:].astype(np.float32), atol=2e-3)


def test_jpegs_decoded_where_clip_runs_match_the_workers(tiny_clip, photo_voc, tmp_path):
    """views.decode_on = device: the workers read bytes, the JPEGs are decoded (nvJPEG on a GPU; here libjpeg on
    the CPU device) and their views cut where CLIP runs: the workers' numbers. The fingerprint records the GPU
    decoder (it rounds differently on a GPU) and, with the workers, has no such key: caches made before it existed
    stay current (auto on a CPU is the workers)."""
    a, b = tmp_path / "worker.h5", tmp_path / "device.h5"
    run_pseudolabel(cfg_for(tiny_clip, photo_voc, a), progress=False)
    run_pseudolabel(cfg_for(tiny_clip, photo_voc, b, **{"views.decode_on": "device"}), progress=False)
    with Cache(a) as ca, Cache(b) as cb:
        assert "decode_on" not in ca.fingerprint and ca.fingerprint["resize_on"] == "worker"
        assert cb.fingerprint["decode_on"] == "device" and cb.fingerprint["resize_on"] == "device"
        assert np.array_equal(ca.f["pseudo"][:], cb.f["pseudo"][:])
        assert np.allclose(ca.f["sims"][:].astype(np.float32), cb.f["sims"][:].astype(np.float32), atol=2e-3)
    from aevlp.stage_one.pseudolabel import plan_stage_one
    plan = plan_stage_one(cfg_for(tiny_clip, photo_voc, a))
    assert plan.status == "up-to-date" and "views.resize_on = auto" in plan.placement


def test_profile_writes_the_steps_by_time(tiny_clip, photo_voc, tmp_path):
    """--profile: torch.profiler's table names stage one's steps (the main process's share among them)."""
    from conftest import invoke

    from aevlp.config import dump_config
    cfg = cfg_for(tiny_clip, photo_voc, tmp_path / "c.h5")
    (tmp_path / "p.toml").write_text(dump_config(cfg))
    r = invoke("pseudolabel", "--config", tmp_path / "p.toml", "--profile", tmp_path / "prof", "--no-progress")
    assert r.exit_code == 0, r.output
    assert "views cut and resized on the workers" in r.output and "profile:" in r.output
    table = (tmp_path / "prof.txt").read_text()
    for name in ("wait for workers", "encode", "DAMP", "write"):
        assert name in table, name
    assert (tmp_path / "prof.json").stat().st_size > 0


@pytest.mark.slow
def test_compiled_encoder_matches_eager(tiny_clip):
    from aevlp.specs import ClipSpec
    from aevlp.stage_one.clip import load_clip
    spec = ClipSpec("tiny-clip", tiny_clip["pretrained"], config=tiny_clip["config"], device="cpu", precision="fp32")
    eager = load_clip(spec)
    compiled = load_clip(ClipSpec(**{**spec.__dict__, "compile": True}))
    x = torch.randn(6, 3, 32, 32)
    assert eager.encoder is None and compiled.encoder is not None  # clip.compile switches to the compiled path
    assert torch.allclose(eager.encode_images(x), compiled.encode_images(x), atol=1e-4)


def test_all_views_stored_once_and_the_zero_shot_teacher(tiny_clip, photo_voc, tmp_path):
    from sklearn.metrics import average_precision_score
    g, a = tmp_path / "g.h5", tmp_path / "a.h5"
    run_pseudolabel(cfg_for(tiny_clip, photo_voc, g, **{"cache.store_embeddings": "global"}), progress=False)
    run_pseudolabel(cfg_for(tiny_clip, photo_voc, a, **{"cache.store_embeddings": "all"}), progress=False)
    with Cache(g) as cg, Cache(a) as ca:
        assert np.array_equal(cg.global_embeddings(), ca.global_embeddings())
        emb, idx = ca.f["embeddings"][:], ca.f["embedding_index"][:]
        assert emb.shape == (16, 10, 32) and idx.shape == (16, 3, 5)  # 2V distinct views, index [N, R, V]
        sims = ca.f["sims"][:].astype(np.float32)
        text = ca.f["text_features"][:]
        for r in range(3):
            per_view = np.einsum("nvd,cd->nvc", emb[np.arange(16)[:, None], idx[:, r]].astype(np.float32), text)
            assert np.allclose(per_view, sims[r], atol=3e-3)
        test_views = ca.eval_embeddings("test", views=True)
        assert test_views.shape == (6, 5, 32) and np.array_equal(test_views[:, 0], ca.eval_embeddings("test"))
        summary = json.loads(ca.f.attrs["summary"])
        labels, tau = ca.eval_labels("test"), ca.selection["temperature"]
    assert np.array_equal(labels, np.load(photo_voc / "formatted_val_labels.npy").astype(np.int8))
    logits = test_views[:, 0].astype(np.float64) @ text.T / tau
    soft = np.exp(logits - logits.max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)
    aps = [average_precision_score(labels[:, c], soft[:, c]) if labels[:, c].any() else 0.0 for c in range(20)]
    assert summary["zero_shot_global_map"] == pytest.approx(100 * np.mean(aps), abs=1e-3)
    assert "zero_shot_damp_map" in summary and "zero_shot_damp_map" not in json.loads(
        h5py.File(g).attrs["summary"])  # tiles of the test images exist only with "all"


def test_a_cache_the_disk_cannot_hold_is_refused_before_stage_one(tiny_clip, photo_voc, tmp_path, monkeypatch):
    """Refused before any image is encoded, naming the size (the per-row datasets' bytes, computed here: float16
    similarities [R, N, V, C], scores [R, N, C], int8 labels, the embeddings with their int16 index) and the
    settings that make it smaller."""
    import shutil
    from collections import namedtuple

    from conftest import invoke

    free = namedtuple("usage", "total used free")(10**9, 10**9 - 1000, 1000)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: free)
    out = tmp_path / "c.h5"
    r = invoke(*_cli_args(tiny_clip, photo_voc, out))
    from aevlp.data import load_dataset

    n, c, rounds, views = len(load_dataset("voc", photo_voc).train), 20, 3, 5  # grid 2: 1 + 4 views
    dim = 32  # the tiny CLIP's; every view's embedding stored once (2V distinct: rounds differ by flips)
    need = rounds * n * views * c * 2 + rounds * n * c * (2 + 1) + n * 2 * views * dim * 2 + n * rounds * views * 2
    assert r.exit_code != 0 and "Traceback" not in r.output, r.output
    assert f"needs about {need / 1e3:.0f} kB" in r.output and "has 1 kB free" in r.output
    assert "--store-embeddings none" in r.output and "--rounds" in r.output and "--grid" in r.output
    assert not out.exists() and not (tmp_path / "c.h5.partial").exists()
