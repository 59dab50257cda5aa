import numpy as np
import pytest
import torch

from aevlp.stage_one.views import (
    ViewBatches,
    ViewSpec,
    expand_views,
    render_views,
    tile_boxes,
    unique_slots,
    view_boxes,
)


@pytest.mark.parametrize("w,h,g", [(500, 375, 4), (97, 61, 3), (10, 10, 5), (224, 224, 1)])
def test_tile_geometry(w, h, g):
    boxes = tile_boxes(w, h, g)
    assert len(boxes) == g * g
    tw, th = w // g, h // g
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        assert (x1 - x0, y1 - y0) == (tw, th)
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert (x0, y0) == ((i % g) * tw, (i // g) * th)  # row-major: y outer, x inner
    area = torch.zeros(h, w)
    for x0, y0, x1, y1 in boxes:
        area[y0:y1, x0:x1] += 1
    assert area.max() == 1  # no overlap
    assert area.sum() == g * g * tw * th


def test_too_small_image():
    with pytest.raises(ValueError, match="too small"):
        tile_boxes(3, 10, 4)


def test_view_boxes_global_first_and_jitter_inside():
    spec = ViewSpec(grid=3, jitter=0.2, seed=1)
    b = view_boxes(90, 60, spec, row=4, rnd=0)
    assert b[0] == (0, 0, 90, 60) and len(b) == 10
    assert all(0 <= x0 < x1 <= 90 and 0 <= y0 < y1 <= 60 for x0, y0, x1, y1 in b)
    assert b != view_boxes(90, 60, spec, row=4, rnd=1)
    assert view_boxes(90, 60, ViewSpec(grid=3), 4, 0)[1:] == tile_boxes(90, 60, 3)


def test_render_views_content_and_flips():
    img = torch.arange(3 * 40 * 60, dtype=torch.int64).reshape(3, 40, 60).remainder(251).to(torch.uint8)
    spec = ViewSpec(grid=2, size=20, rounds=3, seed=0)
    u = unique_slots(spec)
    assert u == 2 * spec.num_views
    out = torch.zeros(u, 3, 20, 20, dtype=torch.uint8)
    idx = render_views(img, spec, row=7, out=out)
    assert idx.shape == (3, 5)
    views = expand_views(out.unsqueeze(0), idx.unsqueeze(0))[:, 0]  # [R, V, 3, S, S]
    spec1 = ViewSpec(grid=2, size=20, rounds=1, flip=False)
    plain = torch.zeros(5, 3, 20, 20, dtype=torch.uint8)
    render_views(img, spec1, row=7, out=plain)
    for r in range(3):
        for v in range(5):
            flipped = idx[r, v] % 2 == 1
            expect = plain[v].flip(-1) if flipped else plain[v]
            assert torch.equal(views[r, v], expect)
    # deterministic per (seed, row, round), independent of anything else
    out2 = torch.zeros_like(out)
    assert torch.equal(render_views(img, spec, row=7, out=out2), idx)
    assert not torch.equal(render_views(img, spec, row=8, out=out2), idx)


def test_batches_report_bad_images(tmp_path):
    from PIL import Image
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "ok.jpg")
    (tmp_path / "trunc.jpg").write_bytes((tmp_path / "ok.jpg").read_bytes()[:200])
    ds = ViewBatches([tmp_path / "ok.jpg", tmp_path / "trunc.jpg", tmp_path / "gone.jpg"], [[0, 1, 2]],
                     ViewSpec(grid=2, size=16, rounds=1))
    rows, slots, index, errors = ds[0]
    assert rows.tolist() == [0, 1, 2] and slots.shape == (3, 5, 3, 16, 16)
    assert [r for r, _ in errors] == [1, 2]
    assert "trunc.jpg" in errors[0][1] and "gone.jpg" in errors[1][1]
    assert slots[1].sum() == 0 and slots[0].float().mean() > 10


def test_normalize_stats():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    imagenet = ViewSpec(mean=(.485, .456, .406), std=(.229, .224, .225)).transform
    assert torch.allclose(imagenet.normalize(x)[0, :, 0, 0],
                          torch.tensor([(1 - .485) / .229, (1 - .456) / .224, (1 - .406) / .225]))
    half = ViewSpec(mean=(.5, .5, .5), std=(.5, .5, .5)).transform
    assert torch.allclose(half.normalize(torch.full((1, 3, 2, 2), 0, dtype=torch.uint8)), torch.tensor(-1.0))
    assert not torch.allclose(ViewSpec().transform.normalize(x), imagenet.normalize(x))


def test_view_spec_defaults_and_checks_are_the_declared_ones():
    from aevlp.errors import ConfigError
    from aevlp.settings import ViewsSpec
    spec, declared = ViewSpec(), ViewsSpec()
    assert (spec.grid, spec.rounds, spec.flip, spec.jitter, spec.seed) == \
        (declared.grid, declared.rounds, declared.flip, declared.jitter, declared.seed)
    # the places are resolved (aevlp.placement): a spec holds worker or device, never the setting's auto
    assert declared.resize_on == declared.decode_on == "auto" and spec.resize_on == spec.decode_on == "worker"
    with pytest.raises(ConfigError, match="aevlp.placement resolves auto"):
        ViewSpec(resize_on="auto")
    with pytest.raises(ConfigError, match=r"views.jitter = 0.7 is out of range: it must be in \[0, 0.5\]"):
        ViewSpec(jitter=0.7)
    with pytest.raises(ConfigError, match="views.grid = 0 is out of range"):
        ViewSpec(grid=0)


def test_auto_places_the_work_on_the_gpu_and_keeps_the_workers_on_a_cpu(tmp_path):
    """`auto` (aevlp.placement): the device on a CUDA GPU, and there the GPU's JPEG decoder when every image is a
    JPEG; the workers on a CPU, or where a file is not a JPEG; each with its reason."""
    from aevlp.placement import decode_place, resize_place
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert resize_place("auto", cpu).where == "worker" and resize_place("auto", gpu).where == "device"
    assert resize_place("device", cpu).where == "device"  # an explicit choice stands
    assert decode_place("auto", gpu, ["a.jpg", "b.JPEG"], "train.decode_on").where == "device"
    png = decode_place("auto", gpu, ["a.jpg", "b.png"], "train.decode_on")
    assert png.where == "worker" and "JPEG" in png.why
    assert decode_place("auto", cpu, ["a.jpg"], "views.decode_on") == \
        decode_place("auto", cpu, ["a.jpg"], "views.decode_on")  # deterministic
    assert "no GPU" in decode_place("auto", cpu, ["a.jpg"], "views.decode_on").why


def test_jpegs_decoded_where_clip_runs_give_the_workers_views(tmp_path):
    """views.decode_on = device: the workers only read the JPEG bytes, the views are decoded, cut and resized where
    CLIP runs (on a CPU libjpeg, as the workers': the same pixels); a PNG is decoded by the worker; a file that is
    not a JPEG inside comes back as a bad image with its reason, not a crash."""
    from PIL import Image

    from aevlp.stage_one.views import ViewBatches, render_on_device
    rs = np.random.RandomState(0)
    paths = []
    for i, ext in enumerate(("jpg", "png", "jpg")):
        p = tmp_path / f"im{i}.{ext}"
        Image.fromarray((rs.rand(50 + 7 * i, 64, 3) * 255).astype(np.uint8)).save(p)
        paths.append(p)
    (tmp_path / "fake.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    paths.append(tmp_path / "fake.jpg")
    spec = ViewSpec(grid=2, size=16, rounds=2, seed=3)
    rows, worker, index, errors = ViewBatches(paths[:3], [[0, 1, 2]], spec)[0]
    _, shipped, _, errs = ViewBatches(paths, [[0, 1, 2, 3]], spec, ship="encoded")[0]
    assert shipped[0].ndim == 1 and shipped[1].ndim == 3 and errs == []  # bytes for a JPEG, pixels for a PNG
    slots, idx, failed = render_on_device(shipped, torch.arange(4), spec, torch.device("cpu"))
    assert torch.equal(slots[:3], worker) and torch.equal(idx[:3], index)
    assert [r for r, _ in failed] == [3] and "JPEG" in failed[0][1] and slots[3].sum() == 0
