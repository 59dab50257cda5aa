"""`cache.sims = computed`: a cache that keeps every view's embedding and computes the similarities from them when
read. It holds no similarity, selects the same pseudo-labels as a cache that stores them, re-prompts, verifies,
resumes and merges like one; `auto` picks it where it is the smaller file."""
import shutil

import h5py
import numpy as np
import pytest
from conftest import invoke, make_photo_dataset, tiny_cfg

from aevlp.cache import Cache
from aevlp.cache.admin import inspect_cache, verify_cache
from aevlp.cache.reader import default_labels
from aevlp.config import load_config
from aevlp.errors import ConfigError
from aevlp.stage_one.pseudolabel import plan_stage_one, run_pseudolabel
from aevlp.stage_two.labeler import labeler_for

NEW_PROMPT = 'text.prompts=["a blurry picture of a {}."]'


def cfg_for(tiny_clip, root, out, *extra, pipeline="voc"):
    return tiny_cfg(tiny_clip, root, out, "views.rounds=3", 'cache.store_embeddings="all"', *extra, pipeline=pipeline)


@pytest.fixture(scope="module")
def made(tiny_clip, tmp_path_factory):
    d = tmp_path_factory.mktemp("layout")
    root = make_photo_dataset(d / "voc", n_train=24, n_test=6)
    for name, sims in (("stored", "stored"), ("computed", "computed")):
        run_pseudolabel(cfg_for(tiny_clip, root, d / f"{name}.h5", f'cache.sims="{sims}"'), progress=False)
    return {"d": d, "root": root, "clip": tiny_clip}


def labels(path, rounds=3):
    with Cache(path) as c:
        lab = labeler_for(c, load_config("voc", [f'dataset.data_root="{c.info["data_root"]}"']))
        return [lab.for_epoch(e) for e in range(1, rounds + 1)]


def test_the_computed_cache_holds_no_similarity_and_gives_those_its_embeddings_give(made):
    stored, computed = made["d"] / "stored.h5", made["d"] / "computed.h5"
    with h5py.File(stored, "r") as a, h5py.File(computed, "r") as b:
        for name in ("sims", "scores", "pseudo"):  # computed when read: unwritten, no space
            assert b[name].shape == a[name].shape and b[name].id.get_storage_size() == 0, name
        assert a["sims"].id.get_storage_size() == a["sims"].size * 2
        assert np.array_equal(a["embeddings"][()], b["embeddings"][()])  # the same images, model and views
        emb, idx, text = b["embeddings"][()], b["embedding_index"][()], b["text_features"][()]
    sizes = {p: p.stat().st_size for p in (stored, computed)}
    with h5py.File(computed, "r") as b:
        kept = sum(b[k].id.get_storage_size() for k in b if k not in ("sims", "scores", "pseudo"))
    assert sizes[computed] < sizes[stored] and sizes[computed] < kept + 64 * 1024  # the rest: metadata
    with Cache(computed) as c:
        for r in range(3):  # by hand: float32 products of the float16 embeddings, each view's slot, rounded once
            want = np.einsum("nvd,cd->nvc", emb[np.arange(len(emb))[:, None], idx[:, r]].astype(np.float32),
                             text.astype(np.float32))
            got = c.sims(r).astype(np.float32)
            assert np.abs(got - want).max() < 1e-3 and c.sims_rows(r, 3, 7).tobytes() == c.sims(r)[3:7].tobytes()
        # the readable defaults (DAMP under the stored selection) are computed too: those the stored cache keeps
        for r in range(3):
            assert np.array_equal(default_labels(c.f, r), h5py.File(stored, "r")["pseudo"][r])
    assert verify_cache(computed) == []
    (fa, ta), (fb, tb) = inspect_cache(stored), inspect_cache(computed)
    assert ta.equals(tb) and fa["summary"] == fb["summary"]  # per-class counts, P/R, the cache's summary


def test_the_computed_and_the_stored_cache_select_the_same_labels(made, tmp_path):
    """Fresh: they differ only where the float16 rounding of the embeddings moves a similarity across a choice
    (none in this world). Re-prompted, both compute their similarities from the same float16 embeddings with the
    same function, so the labels are bit-identical."""
    fresh_s, fresh_c = labels(made["d"] / "stored.h5"), labels(made["d"] / "computed.h5")
    differ = sum(int((a != b).sum()) for a, b in zip(fresh_s, fresh_c))
    assert differ <= 0.002 * sum(a.size for a in fresh_s), differ
    for name in ("stored", "computed"):
        shutil.copy(made["d"] / f"{name}.h5", tmp_path / f"{name}.h5")
        s = run_pseudolabel(cfg_for(made["clip"], made["root"], tmp_path / f"{name}.h5", f'cache.sims="{name}"',
                                    NEW_PROMPT), progress=False)
        assert s["status"] == "re-prompted", s
    with Cache(tmp_path / "stored.h5") as a, Cache(tmp_path / "computed.h5") as b:
        assert b.computed and not a.computed
        for r in range(3):
            assert a.sims(r).tobytes() == b.sims(r).tobytes()
    assert all(np.array_equal(a, b) for a, b in zip(labels(tmp_path / "stored.h5"), labels(tmp_path / "computed.h5")))
    assert verify_cache(tmp_path / "computed.h5") == []


def test_auto_computes_where_that_file_is_smaller_and_computed_needs_every_embedding(made, tmp_path):
    root, clip = made["root"], made["clip"]
    assert plan_stage_one(cfg_for(clip, root, tmp_path / "v.h5", "views.rounds=4")).sims == "stored"  # voc.toml's
    # own data (no benchmark pipeline): auto. The tiny CLIP's D = 32; grid 2: V = 5, U = 2V = 10 (rounds differ
    # by flips); C = 20
    small = plan_stage_one(cfg_for(clip, root, tmp_path / "a.h5", "views.rounds=2", "views.grid=2",
                                   pipeline=None))  # R·V·C 200 < U·D 320
    big = plan_stage_one(cfg_for(clip, root, tmp_path / "b.h5", "views.rounds=4", "views.grid=2",
                                 pipeline=None))  # 400 > 320
    assert (small.sims, big.sims) == ("stored", "computed")
    assert "sims" not in small.fingerprint and big.fingerprint["sims"] == "computed"
    assert plan_stage_one(cfg_for(clip, root, tmp_path / "c.h5", "views.rounds=4", "views.grid=2",
                                  'cache.store_embeddings="global"', pipeline=None)).sims == "stored"
    with pytest.raises(ConfigError, match="cache.sims = computed.*every view's embedding"):
        plan_stage_one(cfg_for(clip, root, tmp_path / "d.h5", 'cache.sims="computed"',
                               'cache.store_embeddings="global"'))
    r = invoke("pseudolabel", "--dataset", "voc", "--data-root", root, "--out", tmp_path / "e.h5", "--clip",
               clip["arch"], "--clip-config", clip["config"], "--pretrained", clip["pretrained"],
               "--store-embeddings", "global", "--set", 'cache.sims="computed"')
    assert r.exit_code != 0 and "Traceback" not in r.output and "--store-embeddings all" in r.output, r.output


def test_a_computed_cache_that_lost_its_embeddings_is_damaged(made, tmp_path):
    path = tmp_path / "c.h5"
    shutil.copy(made["d"] / "computed.h5", path)
    with h5py.File(path, "r+") as f:
        f["embeddings"][0, 0, 0] = f["embeddings"][0, 0, 0] + np.float16(0.5)
    found = verify_cache(path)
    assert any("embeddings" in line for line in found), found


def test_training_reads_a_computed_cache(made, tmp_path):
    from conftest import SMALL_CNN

    cfg = tiny_cfg(made["clip"], made["root"], made["d"] / "computed.h5", "views.rounds=3",
                   'cache.store_embeddings="all"', 'cache.sims="computed"', *SMALL_CNN, "train.epochs=1")
    from aevlp.stage_two.train import run_train

    res = run_train(cfg, run_dir=tmp_path / "run", progress=False, echo=None)
    assert 0 <= res["test_map"] <= 100


@pytest.fixture
def block_budget():
    from aevlp.cache import reader

    before = reader.BLOCK_BYTES
    yield reader
    reader.BLOCK_BYTES = before


@pytest.mark.parametrize("name", ["stored", "computed"])
def test_a_block_smaller_than_one_row_is_refused_and_any_block_exports_the_same(made, tmp_path, block_budget, name):
    path = made["d"] / f"{name}.h5"
    with h5py.File(path, "r") as f:
        _, n, v, c = f["sims"].shape
        u, d = f["embeddings"].shape[1:]
    row = 4 * v * c  # one row's similarities as float32
    if name == "computed":  # and what computing them holds: the embeddings as float16 and float32, times each class
        row += 2 * u * d + 4 * u * d + 4 * u * c
    outs = {}
    for mb in (64, row / 2**20):  # the default (one block) and one row a block
        out = tmp_path / f"{mb}.csv"
        r = invoke("--block-mb", mb, "cache", "export", path, "--format", "csv", "--out", out)
        assert r.exit_code == 0, r.output
        outs[mb] = out.read_text()
    assert len(outs) == 2 and len(set(outs.values())) == 1 and len(outs[64].splitlines()) == n + 1
    with h5py.File(path, "r") as f:
        assert block_budget.row_blocks(f) == [(i, i + 1) for i in range(n)]  # the CLI left one row a block
    r = invoke("--block-mb", (row - 1) / 2**20, "cache", "export", path, "--out", tmp_path / "x.csv")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert f"{row / 2**20:.3g} MB" in r.output and f"{v} views x {c} classes" in r.output
    assert "--block-mb" in r.output and not (tmp_path / "x.csv").exists()
    r = invoke("--block-mb", "-3", "cache", "ls")
    assert r.exit_code == 2 and "must be a number of MB > 0" in r.output, r.output
