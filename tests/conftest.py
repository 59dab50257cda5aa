import json
from pathlib import Path

import numpy as np
import pytest

TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                                              "head_width": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def invoke(*args):
    """The aevlp CLI in this process, arguments as strings (a click Result: exit_code, output)."""
    from click.testing import CliRunner

    from aevlp.cli import cli
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A random-init open_clip model saved as a user's local checkpoint + model config JSON."""
    import open_clip
    import torch

    d = tmp_path_factory.mktemp("clip")
    cfg = d / "tiny-clip.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    weights = d / "tiny.pt"
    torch.save(open_clip.create_model("tiny-clip").state_dict(), weights)
    return {"arch": "tiny-clip", "config": str(cfg), "pretrained": str(weights)}


def make_photo_dataset(root: Path, n_train: int = 20, n_test: int = 6, c: int = 20, seed: int = 0) -> Path:
    """VOC-layout dataset of real photos (scikit-image) at varied sizes, plus generated noise images."""
    from PIL import Image
    from skimage import data as sk

    photos = [sk.astronaut(), sk.chelsea(), sk.coffee(), sk.rocket(), np.stack([sk.camera()] * 3, -1)]
    img = root / "VOCdevkit" / "VOC2012" / "JPEGImages"
    img.mkdir(parents=True, exist_ok=True)
    rs = np.random.RandomState(seed)
    for phase, n in (("train", n_train), ("val", n_test)):
        names = []
        for i in range(n):
            name = f"{phase}{i:03d}.jpg"
            if i % 6 == 5:
                arr = (rs.rand(70 + i, 90, 3) * 255).astype(np.uint8)
                Image.fromarray(arr).save(img / name)
            else:
                Image.fromarray(photos[i % 5]).resize((96 + 5 * i, 72 + 3 * i)).save(img / name)
            names.append(name)
        y = (rs.rand(n, c) < 0.15).astype(np.float32)
        y[np.arange(n), rs.randint(0, c, n)] = 1
        np.save(root / f"formatted_{phase}_images.npy", np.array(names))
        np.save(root / f"formatted_{phase}_labels.npy", y)
    return root


@pytest.fixture
def photo_voc(tmp_path):
    return make_photo_dataset(tmp_path / "voc")


SMALL_CNN = ('train.backbone="small-cnn"', 'train.weights="none"', "train.image_size=32", "train.batch_size=8",
             "train.workers=0", "train.lr=1e-3")  # stage two in seconds on the test images


def tiny_cfg(clip: dict | str | Path, root: Path, cache: Path, *extra: str, pipeline: str | None = "voc") -> dict:
    """The one config builder of the tests: `pipeline` (voc, or None for the own-data defaults) on the test
    VOC data at `root`, the cache at `cache`, a tiny CLIP (the `tiny_clip` fixture, or an HF-layout folder)
    in fp32 with no workers, grid 2 and 2 rounds; `extra`: more `section.key=value` overrides."""
    if isinstance(clip, dict):
        model = [f'clip.arch="{clip["arch"]}"', f'clip.config="{clip["config"]}"',
                 f'clip.pretrained="{clip["pretrained"]}"']
    else:
        model = [f'clip.pretrained="{clip}"']
    from aevlp.config import load_config
    return load_config(pipeline, ['dataset.name="voc"', f'dataset.data_root="{root}"', f'cache.path="{cache}"', *model,
                                  "clip.workers=0", 'clip.precision="fp32"', "views.grid=2", "views.rounds=2", *extra])


def tiny_pipeline(path: Path, tiny_clip: dict, root: Path, rest: str) -> Path:
    """A pipeline file for the test VOC data and the tiny CLIP; `rest` holds the remaining TOML tables."""
    path.write_text(f'''[dataset]
name = "voc"
data_root = "{root}"
[clip]
arch = "tiny-clip"
config = "{tiny_clip['config']}"
pretrained = "{tiny_clip['pretrained']}"
precision = "fp32"
workers = 0
{rest}''')
    return path


def probabilities_by_hand(run_dir: Path, paths: list, size: int, flip: bool = False) -> np.ndarray:
    """A trained run's class probabilities for image files, computed without aevlp's input pipeline: PIL's
    bilinear resize, ImageNet normalisation in numpy, the best.pt weights in a freshly built model."""
    import torch
    from PIL import Image

    from aevlp.stage_two.models import build_model
    ckpt = torch.load(Path(run_dir) / "best.pt", map_location="cpu", weights_only=True)
    meta = ckpt["meta"]
    model = build_model(meta["backbone"], len(meta["classnames"]), weights="none")
    model.load_state_dict(ckpt["model"])
    model.eval()
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = np.stack([(np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)) / 255 - mean) / std
                  for p in paths]).transpose(0, 3, 1, 2)
    x = x[..., ::-1].copy() if flip else x
    with torch.no_grad():
        return torch.sigmoid(model(torch.as_tensor(x, dtype=torch.float32))).numpy()
