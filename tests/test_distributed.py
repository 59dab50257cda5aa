"""torchrun paths on CPU (gloo, 2 processes): sharded stage one, failed-rank recovery, DDP training."""
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import make_photo_dataset

from aevlp.distributed import parse_shard, shard_rows
from aevlp.errors import ConfigError
from aevlp.stage_one.shards import shard_path

pytestmark = pytest.mark.slow


def test_shard_rows_are_whole_batches_and_cover_everything():
    for n, bs, w in [(100, 8, 3), (7, 4, 4), (64, 16, 2), (5, 16, 2)]:
        rows = [shard_rows(n, bs, k, w) for k in range(w)]
        assert rows[0][0] == 0 and rows[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
        assert all(start % bs == 0 for start, _ in rows)
    assert parse_shard("2/8") == (2, 8)
    for bad in ("8/8", "x", "1-2"):
        with pytest.raises(ConfigError):
            parse_shard(bad)


@pytest.fixture(scope="module")
def world(tiny_clip, tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    root = make_photo_dataset(d / "voc", n_train=30, n_test=8)
    return {"dir": d, "root": root, "clip": tiny_clip}


def stage_one_args(w, out):
    c = w["clip"]
    return ["pseudolabel", "--dataset", "voc", "--data-root", str(w["root"]), "--out", str(out), "--clip", "tiny-clip",
            "--clip-config", c["config"], "--pretrained", c["pretrained"], "--grid", "2", "--rounds", "3",
            "--batch-size", "3", "--workers", "0", "--precision", "fp32", "--store-embeddings", "global",
            "--no-progress"]


def torchrun(*args, env=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "aevlp", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env or dict(os.environ, OMP_NUM_THREADS="1"),
                          timeout=600)


def aevlp(*args, script=None, env=None):
    cmd = [sys.executable, str(script)] if script else [sys.executable, "-m", "aevlp"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=env, timeout=600)


def contents(path):
    with h5py.File(path, "r") as f:
        data = {k: f[k][:] for k in f}
        # not compared: when it was made, and how the run that made it went (its seconds, images computed)
        attrs = {k: f.attrs[k] for k in f.attrs if k not in ("created", "summary", "run_stats")}
    return data, attrs


def assert_same_cache(a, b):
    da, aa = contents(a)
    db, ab = contents(b)
    assert da.keys() == db.keys() and aa == ab
    for k in da:
        assert np.array_equal(da[k], db[k]), k


@pytest.fixture(scope="module")
def single(world):
    out = world["dir"] / "single.h5"
    r = aevlp(*stage_one_args(world, out))
    assert r.returncode == 0, r.stderr
    return out


def test_torchrun_stage_one_equals_single_process(world, single):
    out = world["dir"] / "ddp.h5"
    r = torchrun(*stage_one_args(world, out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert out.exists() and not shard_path(out, 0, 2).exists() and not shard_path(out, 1, 2).exists()
    assert_same_cache(single, out)


KILL = r"""
import os, signal, sys
from aevlp.cache import CacheWriter
orig = CacheWriter.write
def write(self, *a, **k):
    orig(self, *a, **k)
    os.kill(os.getpid(), signal.SIGKILL)  # die after the first batch of this shard
CacheWriter.write = write
from aevlp.cli import main
sys.argv = ["aevlp"] + sys.argv[1:]
main()
"""


def test_killed_rank_rerun_alone_completes_the_cache(world, single, tmp_path):
    out = tmp_path / "shards.h5"
    script = tmp_path / "kill.py"
    script.write_text(KILL)
    r = aevlp(*stage_one_args(world, out), "--shard", "1/2", script=script)
    assert r.returncode == -9  # rank 1 died mid-run
    r = aevlp(*stage_one_args(world, out), "--shard", "0/2")
    assert r.returncode == 0 and "still missing shards [1]" in r.stdout, r.stdout + r.stderr
    assert shard_path(out, 0, 2).exists() and not out.exists()
    r = aevlp(*stage_one_args(world, out), "--shard", "1/2")  # the failed rank, re-run alone: resumes, merges
    assert r.returncode == 0 and "merged" in r.stdout, r.stdout + r.stderr
    assert not shard_path(out, 0, 2).exists() and not shard_path(out, 1, 2).exists()
    assert_same_cache(single, out)


def test_ddp_training_matches_single_process(world, single, tmp_path):
    """Two ranks see each global batch one process sees, so with a loss that is a mean over entries (GPR
    without its batch-level regulariser) DDP's averaged gradient is the single-process one: the same run,
    up to the order of float sums."""
    args = ["train", "--pseudo", str(single), "--backbone", "clip-head", "--epochs", "4", "--batch-size", "8",
            "--workers", "0", "--no-progress", "--set", "train.lr=1e-3", "--set", 'train.early_stop="none"',
            "--set", "loss.reg=0"]
    r1 = aevlp(*args, "--run-dir", str(tmp_path / "one"))
    assert r1.returncode == 0, r1.stderr
    r2 = torchrun(*args, "--run-dir", str(tmp_path / "two"))
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert r2.stdout.count("test mAP") == 1  # printed once, by rank 0
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    h = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in h] == [1, 2, 3, 4] and all(np.isfinite(x["loss"]) for x in h)
    h1 = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [x["loss"] for x in h] == pytest.approx([x["loss"] for x in h1], rel=1e-4)
    assert [x["val_map"] for x in h] == pytest.approx([x["val_map"] for x in h1], abs=0.01)
    assert two["test_map"] == pytest.approx(one["test_map"], abs=0.01)
