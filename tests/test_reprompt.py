"""Changing the text side (prompts, phrases, classes) re-derives the cache from stored embeddings:
no image decoded, no image encoder built, the numbers of a full recompute (to fp16 rounding)."""
import json
import shutil

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_photo_dataset, tiny_cfg, tiny_pipeline

from aevlp.cli import cli
from aevlp.config import load_config
from aevlp.stage_one.pseudolabel import plan_stage_one, run_pseudolabel

NEW_PROMPT = 'text.prompts=["a blurry picture of a {}."]'


def cfg_for(tiny_clip, root, out, *extra):
    return tiny_cfg(tiny_clip, root, out, "clip.batch_size=4", "views.rounds=3", 'cache.store_embeddings="all"', *extra)


@pytest.fixture(scope="module")
def made(tiny_clip, tmp_path_factory):
    d = tmp_path_factory.mktemp("reprompt")
    root = make_photo_dataset(d / "voc", n_train=20, n_test=6)
    run_pseudolabel(cfg_for(tiny_clip, root, d / "old.h5"), progress=False)
    full = d / "full.h5"  # the reference: a full recompute with the new prompt
    run_pseudolabel(cfg_for(tiny_clip, root, full, NEW_PROMPT), progress=False)
    return {"dir": d, "root": root, "clip": tiny_clip, "full": full}


def test_a_new_prompt_is_re_derived_without_images(made, tmp_path, monkeypatch):
    import aevlp.stage_one.clip as clip_mod
    import aevlp.stage_one.views as views_mod
    target = tmp_path / "c.h5"
    shutil.copy(made["dir"] / "old.h5", target)
    cfg = cfg_for(made["clip"], made["root"], target, NEW_PROMPT)
    plan = plan_stage_one(cfg)
    assert plan.status == "reprompt" and any(d.startswith("prompts:") for d in plan.diff)
    img_dir = made["root"] / "VOCdevkit/VOC2012/JPEGImages"
    hidden = tmp_path / "hidden"
    shutil.move(img_dir, hidden)  # no image can be opened

    def forbidden(*a, **k):
        raise AssertionError("no image encoder may be built or used")
    monkeypatch.setattr(clip_mod, "load_clip", forbidden)
    monkeypatch.setattr(views_mod, "decode", forbidden)
    try:
        s = run_pseudolabel(cfg, progress=False, plan=plan)
    finally:
        shutil.move(hidden, img_dir)
    assert s["status"] == "re-prompted"
    with h5py.File(target) as a, h5py.File(made["full"]) as b:
        assert json.loads(a.attrs["fingerprint"]) == json.loads(b.attrs["fingerprint"])
        assert np.allclose(a["sims"][:].astype(np.float32), b["sims"][:].astype(np.float32), atol=2e-3)
        assert np.allclose(a["scores"][:].astype(np.float32), b["scores"][:].astype(np.float32), atol=5e-3)
        assert (a["pseudo"][:] == b["pseudo"][:]).mean() > 0.99
        assert np.allclose(a["text_features"][:], b["text_features"][:], atol=1e-5)
        assert np.array_equal(a["embeddings"][:], b["embeddings"][:])
        info, full_info = json.loads(a.attrs["info"]), json.loads(b.attrs["info"])
    assert info.pop("reprompted") is True and info == full_info  # train reads [text] back from it: the new one
    assert info["stage_one"]["text"]["prompts"] == ["a blurry picture of a {}."]
    assert plan_stage_one(cfg).status == "up-to-date"


def test_dry_run_says_re_prompt_and_no_reprompt_forces_the_full_path(made, tmp_path):
    target = tmp_path / "c.h5"
    shutil.copy(made["dir"] / "old.h5", target)
    pipe = tiny_pipeline(tmp_path / "p.toml", made["clip"], made["root"], f'''batch_size = 4
[views]
grid = 2
rounds = 3
resize = "squash"
interpolation = "bilinear"
normalize = "imagenet"
[cache]
path = "{target}"
store_embeddings = "all"
''')
    r = CliRunner().invoke(cli, ["run", str(pipe), "--dry-run", "--set", NEW_PROMPT])
    assert "pseudolabel: would run - re-prompt from embeddings" in r.output and "prompts:" in r.output
    r = CliRunner().invoke(cli, ["run", str(pipe), "--dry-run", "--no-reprompt", "--set", NEW_PROMPT])
    assert "was made with other settings" in r.output
    r = CliRunner().invoke(cli, ["pseudolabel", "--config", str(pipe), "--no-reprompt", "--set", NEW_PROMPT,
                                 "--no-progress"])
    assert r.exit_code == 2 and "--force" in r.output


def test_the_image_side_still_forces_a_full_recompute(made, tmp_path):
    target = tmp_path / "c.h5"
    shutil.copy(made["dir"] / "old.h5", target)
    assert plan_stage_one(cfg_for(made["clip"], made["root"], target, "views.grid=3")).status == "stale"
    g = cfg_for(made["clip"], made["root"], tmp_path / "g.h5", 'cache.store_embeddings="global"')
    run_pseudolabel(g, progress=False)
    g2 = cfg_for(made["clip"], made["root"], tmp_path / "g.h5", 'cache.store_embeddings="global"', NEW_PROMPT)
    assert plan_stage_one(g2).status == "stale"  # without every view's embedding there is nothing to re-derive


def test_a_class_added_to_the_list_is_re_derived(tiny_clip, tmp_path):
    from PIL import Image
    photos = tmp_path / "photos"
    photos.mkdir()
    g = np.random.default_rng(0)
    rows = []
    for i in range(16):
        Image.fromarray((g.random((40, 48, 3)) * 255).astype(np.uint8)).save(photos / f"{i}.png")
        rows.append(f"{i}.png,{'cat|dog' if i % 2 else 'cat'},{'test' if i >= 12 else 'train'}")
    (tmp_path / "a.csv").write_text("image,labels,split\n" + "\n".join(rows) + "\n")
    rows[3] = rows[3].replace("cat|dog", "cat|dog|bird")
    (tmp_path / "b.csv").write_text("image,labels,split\n" + "\n".join(rows) + "\n")
    runner = CliRunner()
    assert runner.invoke(cli, ["data", "prepare", "table", "--csv", tmp_path / "a.csv", "--images", photos,
                               "--out", tmp_path / "d"]).exit_code == 0
    clip = [f'clip.config="{tiny_clip["config"]}"', f'clip.pretrained="{tiny_clip["pretrained"]}"']
    cfg = lambda: load_config(None, ['dataset.name="table"', f'dataset.data_root="{tmp_path / "d"}"',  # noqa: E731
                                     f'cache.path="{tmp_path / "c.h5"}"', 'clip.arch="tiny-clip"', *clip,
                                     "clip.workers=0", 'clip.precision="fp32"', "views.grid=2", "views.rounds=2",
                                     'cache.store_embeddings="all"', "damp.top_k=1"])
    run_pseudolabel(cfg(), progress=False)
    shutil.rmtree(tmp_path / "d")
    r = runner.invoke(cli, ["data", "prepare", "table", "--csv", tmp_path / "b.csv", "--images", photos, "--out",
                            tmp_path / "d"])
    assert r.exit_code == 0, r.output
    plan = plan_stage_one(cfg())
    assert plan.status == "reprompt" and any("num_classes: 2 -> 3" in d for d in plan.diff)
    assert run_pseudolabel(cfg(), progress=False)["status"] == "re-prompted"
    with h5py.File(tmp_path / "c.h5") as f:
        assert f["sims"].shape[-1] == 3 and f["classnames"].asstr()[:].tolist() == ["bird", "cat", "dog"]
        assert f["observed"].shape == (f["sims"].shape[1], 3)


def test_a_schema_1_cache_with_all_views_still_reads(made, tmp_path):
    """Schema 1 (before distinct views were stored once) kept "all" embeddings as [R, N, V, D] with no index
    and only the global view of val/test: such a file verifies, inspects, exports and yields its global
    embeddings; stage one calls it stale (the image side's format changed), not re-promptable."""
    from aevlp.cache import Cache
    old = tmp_path / "schema1.h5"
    shutil.copy(made["dir"] / "old.h5", old)
    with h5py.File(old, "r+") as f:
        slots, index = f["embeddings"][:], f["embedding_index"][:]  # [N, U, D], [N, R, V]
        rows = np.arange(len(index))[:, None, None]
        legacy = slots[rows, index].transpose(1, 0, 2, 3)  # [R, N, V, D], written out by hand
        for k in ("embeddings", "embedding_index", "val_labels", "test_labels"):
            if k in f:
                del f[k]
        f["embeddings"] = legacy
        for split in ("val", "test"):
            glob = f[f"{split}_embeddings"][:, 0]
            del f[f"{split}_embeddings"]
            f[f"{split}_embeddings"] = glob
        fp = json.loads(f.attrs["fingerprint"])
        fp["schema_version"] = f.attrs["schema_version"] = 1
        f.attrs["fingerprint"] = json.dumps(fp)
        del f.attrs["checksums"]  # schema 1 had none
    with Cache(old) as c:  # opening checks the file
        assert np.array_equal(c.global_embeddings(), legacy[:, :, 0])
        assert c.eval_embeddings("test", views=True).shape[1] == 1
    for args in (["verify", old], ["inspect", old], ["export", old, "--out", tmp_path / "e.csv"]):
        r = CliRunner().invoke(cli, ["cache", *map(str, args)])
        assert r.exit_code == 0 and r.exception is None, (args, r.output)
    assert len((tmp_path / "e.csv").read_text().splitlines()) == 1 + len(legacy[0])
    plan = plan_stage_one(cfg_for(made["clip"], made["root"], old))
    assert plan.status == "stale" and any(d.startswith("schema_version") for d in plan.diff)
