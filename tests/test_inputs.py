"""Stage-two inputs: the fast paths (uint8 shipping, pre-resized image cache, JPEG decode by
torchvision.io.decode_jpeg, workers) give the model the same tensors, and a short run the same metrics."""
import json

import numpy as np
import pytest
import torch
from conftest import make_photo_dataset
from PIL import Image
from test_stage_two import base_cfg

from aevlp.data import load_dataset
from aevlp.imaging import load_uint8, to_model_input
from aevlp.stage_one.pseudolabel import run_pseudolabel
from aevlp.stage_two.image_cache import CachedImages, ensure_image_cache, image_cache_path
from aevlp.stage_two.inputs import ImageRows, flips, make_loader
from aevlp.stage_two.train import run_train

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def world(tiny_clip, tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    root = make_photo_dataset(d / "voc", n_train=30, n_test=8)
    cache = d / "voc.h5"
    run_pseudolabel(base_cfg(tiny_clip, root, cache), progress=False)
    return {"root": root, "cache": cache, "clip": tiny_clip, "data": load_dataset("voc", str(root))}


def _reference_batch(paths, rows, size, flip):
    """Independently: PIL decode, PIL bilinear resize, ImageNet normalisation in numpy, numpy flip."""
    out = []
    for p, f in zip(paths, flip):
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float64) / 255
        a = ((a - MEAN) / STD).transpose(2, 0, 1)
        out.append(a[:, :, ::-1] if f else a)
    return np.stack(out)


def test_first_batch_same_on_every_path(world):
    data, size, seed, epoch = world["data"], 40, 3, 2
    paths = [data.image_root / p for p in data.train.images]
    ensure_image_cache(data, size, image_cache_path(world["cache"], "voc", size), progress=False)
    cached = CachedImages(image_cache_path(world["cache"], "voc", size), "train")
    batches = {}
    for name, ds, workers in (("decode", ImageRows(paths, size), 0), ("workers", ImageRows(paths, size), 2),
                              ("cache", ImageRows(paths, size, images=cached), 0),
                              ("jpeg", ImageRows(paths, size, encoded=True), 0)):
        loader = make_loader(ds, 8, workers, torch.device("cpu"), shuffle_seed=seed)
        loader.batch_sampler.set_epoch(epoch)
        x, rows = next(iter(loader))
        batches[name] = (rows, to_model_input(x, torch.device("cpu"), flips(seed, epoch, rows), size=size))
    rows = batches["decode"][0]
    assert all(torch.equal(r, rows) for r, _ in batches.values())  # the seeded order is the same
    assert len(set(rows.tolist())) == 8
    flip = flips(seed, epoch, rows)
    assert flip.tolist() == [np.random.default_rng([seed, epoch, int(r)]).random() < 0.5 for r in rows]
    assert 0 < flip.sum() < 8  # both kinds occur in this batch, so the flip is really tested
    base = batches["decode"][1]
    for name in ("workers", "cache"):
        assert torch.equal(batches[name][1], base), name
    one_level = 1 / 255 / min(STD)  # one uint8 step after normalisation
    ref = _reference_batch([paths[i] for i in rows], rows, size, flip)  # the official loaders' pixels
    assert np.abs(base.numpy() - ref).max() < 1e-5
    jpeg = batches["jpeg"][1] - base  # torchvision's decode_jpeg and tensor resize: within uint8 rounding
    assert jpeg.abs().max() <= 2 * one_level + 1e-6 and jpeg.abs().mean() < 0.5 * one_level


def test_image_cache_is_reused_and_rebuilt_when_images_change(world, tmp_path):
    root = make_photo_dataset(tmp_path / "voc", n_train=12, n_test=4)
    data = load_dataset("voc", str(root))
    path = image_cache_path(tmp_path / "c.h5", "voc", 24)
    ensure_image_cache(data, 24, path, progress=False)
    first = CachedImages(path, "test")[1].copy()
    assert np.array_equal(first, load_uint8(data.image_root / data.test.images[1], 24).numpy())
    stamp = path.stat().st_mtime_ns
    ensure_image_cache(data, 24, path, progress=False)
    assert path.stat().st_mtime_ns == stamp  # current: untouched
    target = data.image_root / data.test.images[1]
    Image.new("RGB", (50, 40), (200, 10, 10)).save(target)
    ensure_image_cache(data, 24, path, progress=False)
    assert np.array_equal(CachedImages(path, "test")[1], load_uint8(target, 24).numpy())


def test_interrupted_image_cache_build_goes_on(world, tmp_path, monkeypatch):
    import aevlp.stage_two.image_cache as ic
    data, path = world["data"], image_cache_path(tmp_path / "c.h5", "voc", 16)
    monkeypatch.setattr(ic, "BLOCK", 4)
    calls = {"n": 0}
    orig = ic.np.stack

    def stop_at_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return orig(*a, **k)
    monkeypatch.setattr(ic.np, "stack", stop_at_third)
    with pytest.raises(KeyboardInterrupt):
        ensure_image_cache(data, 16, path, progress=False)
    monkeypatch.setattr(ic.np, "stack", orig)
    import h5py

    from aevlp.cache import partial_path
    assert not path.exists()  # only a finished image cache has its name
    with h5py.File(partial_path(path), "r") as f:
        assert f["train"].attrs["rows_done"] == 8 and not f.attrs["complete"]
        assert json.loads(f.attrs["fingerprint"])["size"] == 16
    ensure_image_cache(data, 16, path, progress=False)
    assert path.exists() and not partial_path(path).exists()
    got = CachedImages(path, "train")
    assert all(np.array_equal(got[i], load_uint8(data.image_root / data.train.images[i], 16).numpy())
               for i in (0, 7, 8, len(data.train) - 1))


def test_short_run_equal_metrics_on_every_path(world, tmp_path):
    def run(name, *extra):
        cfg = base_cfg(world["clip"], world["root"], world["cache"], 'train.early_stop="none"', "train.epochs=2",
                       *extra)
        r = run_train(cfg, cache=world["cache"], run_dir=tmp_path / name, progress=False)
        return r, [json.loads(x)["loss"] for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    base, base_losses = run("base")
    for name, extra in (("cached", ["train.image_cache=true"]), ("workers", ["train.workers=2"])):
        r, losses = run(name, *extra)
        assert losses == pytest.approx(base_losses, abs=1e-6), name
        assert r["test_map"] == pytest.approx(base["test_map"], abs=1e-6), name
    assert (world["cache"].parent / "images" / "voc-32px.h5").exists()


def test_device_decode_is_refused_clearly_on_cpu(world, tmp_path):
    from aevlp.errors import ConfigError
    cfg = base_cfg(world["clip"], world["root"], world["cache"], 'train.decode_on="device"', 'train.device="cpu"')
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        run_train(cfg, cache=world["cache"], run_dir=tmp_path / "x", progress=False)
