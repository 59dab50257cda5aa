"""The demo's toy world: fashion-mosaic generation and the toy CLIP, on synthetic idx files."""
import gzip
import json

import numpy as np
import pytest
from PIL import Image

from aevlp.data import load_dataset
from aevlp.data.fashion import CLASSNAMES, load_fashion_mnist, prepare_fashion_mosaic
from aevlp.errors import DataError

TRAIN_VALUE = lambda c: 10 * (c + 1)  # noqa: E731  every pixel of a train item of class c
TEST_VALUE = lambda c: 10 * (c + 1) + 5  # noqa: E731


def write_idx(path, arr):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fm(tmp_path):
    raw = tmp_path / "fm"
    raw.mkdir()
    for n, value, stem in ((300, TRAIN_VALUE, "train"), (100, TEST_VALUE, "t10k")):
        labels = np.arange(n) % 10
        images = np.stack([np.full((28, 28), value(c)) for c in labels])
        write_idx(raw / f"{stem}-images-idx3-ubyte.gz", images)
        write_idx(raw / f"{stem}-labels-idx1-ubyte.gz", labels)
    return raw


def test_mosaic_labels_are_the_union_of_items(fake_fm, tmp_path):
    out = tmp_path / "mosaic"
    s = prepare_fashion_mosaic(out, raw=fake_fm, n_train=60, n_test=20, seed=3)
    assert s["status"] == "created"
    d = load_dataset("fashion-mosaic", out)
    assert d.classnames == CLASSNAMES and len(d.train) + len(d.val) == 60 and len(d.test) == 20
    for split, value in ((d.train, TRAIN_VALUE), (d.test, TEST_VALUE)):
        for path, y in zip(split.images, split.labels):
            img = np.asarray(Image.open(d.image_root / path))
            assert img.shape == (64, 64, 3)
            present = {int(v) for v in np.unique(img[..., 0])} - {0}
            assert present == {value(c) for c in np.flatnonzero(y)}  # union of items, from the right split
            assert 1 <= y.sum() <= 4
    assert np.all(d.train.observed.sum(1) == 1)
    assert prepare_fashion_mosaic(out, raw=fake_fm, n_train=60, n_test=20, seed=3)["status"] == "reused"
    assert prepare_fashion_mosaic(out, raw=fake_fm, n_train=60, n_test=20, seed=4)["status"] == "created"


def test_mosaic_items_stay_in_their_cells(fake_fm, tmp_path):
    out = tmp_path / "m"
    prepare_fashion_mosaic(out, raw=fake_fm, n_train=30, n_test=10)
    d = load_dataset("fashion-mosaic", out)
    for path in d.train.images:
        img = np.asarray(Image.open(d.image_root / path))[..., 0]
        for cy in (0, 32):
            for cx in (0, 32):
                cell = img[cy:cy + 32, cx:cx + 32]
                assert len(set(np.unique(cell)) - {0}) <= 1  # at most one item per cell


def test_missing_fashion_mnist_lists_options(tmp_path, monkeypatch):
    import aevlp.data.fashion as fashion
    monkeypatch.setattr(fashion, "DEBIAN_DIR", tmp_path / "none")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as e:
        load_fashion_mnist(tmp_path / "empty")
    assert "--raw DIR" in str(e.value)


def test_bad_idx_file(fake_fm):
    (fake_fm / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x09\x01" + b"\x00" * 8))
    with pytest.raises(DataError, match="not an idx file"):
        load_fashion_mnist(fake_fm)


def test_toy_clip_trains_saves_and_is_reused(fake_fm, tmp_path, tiny_clip):
    from aevlp.stage_one.clip import load_clip
    from aevlp.tools.toyclip import pretrain_toy_clip
    fm = load_fashion_mnist(fake_fm)
    r = pretrain_toy_clip(fm, tmp_path / "clip", CLASSNAMES, steps=3, batch_size=16, progress=False)
    assert r["status"] == "trained"
    assert json.loads((tmp_path / "clip" / "meta.json").read_text())["params"]["steps"] == 3
    again = pretrain_toy_clip(lambda: pytest.fail("must not load data when reusing"), tmp_path / "clip", CLASSNAMES,
                              steps=3, batch_size=16, progress=False)
    assert again["status"] == "reused" and again["zero_shot_accuracy"] == r["zero_shot_accuracy"]
    from aevlp.specs import ClipSpec
    clip = load_clip(ClipSpec("", r["folder"], device="cpu", precision="fp32"))  # an HF-layout folder alone
    assert clip.image_size == 32 and clip.weights_id.startswith("sha256:")
    assert clip.identity.preprocess.interpolation == "bilinear" and clip.identity.preprocess.resize_mode == "squash"
    # the reported zero-shot accuracy, recomputed through stage one's loader from the saved files:
    # each 28-px test item centred in a 32-px frame, CLIP-normalised, against "a photo of a {}."
    import torch

    from aevlp.imaging import CLIP_MEAN, CLIP_STD
    items, labels = fm["test"]
    frames = np.zeros((len(items), 3, 32, 32), np.float32)
    frames[:, :, 2:30, 2:30] = items[:, None] / 255.0
    frames = (frames - np.array(CLIP_MEAN, np.float32)[:, None, None]) / np.array(CLIP_STD, np.float32)[:, None, None]
    text = torch.nn.functional.normalize(clip.encode_text(CLASSNAMES, ["a photo of a {}."]), dim=-1)
    pred = (clip.encode_images(torch.as_tensor(frames)) @ text.T).argmax(1).numpy()
    assert r["zero_shot_accuracy"] == pytest.approx(100.0 * (pred == labels).mean(), abs=1.0)
