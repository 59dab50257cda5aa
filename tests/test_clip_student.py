"""The CLIP-initialised student (`train.backbone = "clip"`): the image tower of the cache's CLIP, its head CLIP's
zero-shot classifier before training, trained end to end, and rebuilt from its checkpoint with the CLIP's own
preprocessing. Real architectures at random init (ViT-B-16, RN50); the golden logit scale is CLIP's initial
1/0.07 (Radford et al.); the preprocessing the one stage one recorded in the cache."""
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import invoke, make_photo_dataset, tiny_cfg


@pytest.mark.parametrize("arch", ["ViT-B-16", "RN50"])
def test_the_head_is_the_zero_shot_classifier_and_one_step_trains_the_tower(arch):
    from aevlp.stage_two.clip_student import ClipStudent
    from aevlp.stage_two.models import build_model

    torch.manual_seed(0)
    text = np.random.default_rng(0).normal(size=(5, 1024 if arch == "RN50" else 512)).astype(np.float32)
    student = ClipStudent(clip={"arch": arch, "pretrained": ""}, weights_id="", preprocess={}, text=text)
    model = build_model("clip", 5, weights="default", clip=student)
    x = torch.randn(2, 3, 224, 224)
    model.eval()
    with torch.no_grad():
        emb = model.backbone.visual(x)
        t = torch.as_tensor(text)
        cosine = (emb / emb.norm(dim=-1, keepdim=True)) @ (t / t.norm(dim=-1, keepdim=True)).T
        expected = cosine / 0.07  # CLIP's logit scale at initialisation, exp(log(1 / 0.07))
        assert torch.allclose(model(x), expected, atol=1e-4)
    assert model(x).shape == (2, 5) and torch.count_nonzero(model.head.bias) == 0
    model.train()
    before = [p.detach().clone() for p in model.backbone.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), torch.eye(5)[:2])
    loss.backward()
    opt.step()
    after = list(model.backbone.parameters())
    assert all(p.requires_grad for p in after)  # the whole tower trains (RN50's zero-initialised last BN of each
    # block holds its branch still for one step, so not every tensor moves at once)
    assert not torch.equal(before[0], after[0]) and not torch.equal(before[-1], after[-1])  # the stem, the top


def test_weights_other_than_the_caches_clip_are_refused():
    from aevlp.errors import AevlpError
    from aevlp.stage_two.clip_student import ClipStudent
    from aevlp.stage_two.models import build_model

    student = ClipStudent(clip={"arch": "RN50", "pretrained": ""}, weights_id="", preprocess={})
    with pytest.raises(AevlpError, match="takes the weights of the CLIP that made the cache"):
        build_model("clip", 3, weights="imagenet", clip=student)


@pytest.fixture(scope="module")
def clip_run(tiny_clip, tmp_path_factory):
    from aevlp.stage_one.pseudolabel import run_pseudolabel
    from aevlp.stage_two.train import run_train

    d = tmp_path_factory.mktemp("clipstudent")
    root = make_photo_dataset(d / "voc", n_train=16, n_test=6)
    cfg = tiny_cfg(tiny_clip, root, d / "c.h5", 'train.backbone="clip"', 'train.weights="default"', "train.epochs=1",
                   "train.batch_size=8", "train.workers=0", "train.lr=1e-4")
    run_pseudolabel(cfg, progress=False)
    run_train(cfg, run_dir=d / "run", progress=False, echo=None)
    return {"run": d / "run", "root": root, "clip": tiny_clip, "cache": d / "c.h5"}


def test_a_clip_student_trains_and_predicts_with_its_checkpoints_preprocessing(clip_run, tmp_path):
    """predict's probabilities equal a computation by hand: PIL's bilinear resize to the CLIP's 32 px (not the
    pipeline's 448), the mean and std stage one recorded in the cache, open_clip's own tiny-clip tower loaded with
    the run's weights, the linear head."""
    import json

    import h5py
    import open_clip
    import pandas as pd
    from PIL import Image

    with h5py.File(clip_run["cache"], "r") as f:
        pre = json.loads(f.attrs["clip_preprocess"])
    mean, std = np.array(pre["mean"]), np.array(pre["std"])
    ckpt = torch.load(clip_run["run"] / "best.pt", map_location="cpu", weights_only=True)
    meta, state = ckpt["meta"], ckpt["model"]
    assert meta["image_size"] == 32 and np.allclose(meta["mean"], mean) and np.allclose(meta["std"], std)
    clip = open_clip.create_model("tiny-clip")
    clip.visual.load_state_dict({k[len("backbone.visual."):]: v for k, v in state.items()
                                 if k.startswith("backbone.visual.")})
    images = sorted((clip_run["root"] / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("val*.jpg"))
    x = np.stack([(np.asarray(Image.open(p).convert("RGB").resize((32, 32), Image.BILINEAR)) / 255 - mean) / std
                  for p in images]).transpose(0, 3, 1, 2)
    with torch.no_grad():
        emb = clip.visual.eval()(torch.as_tensor(x, dtype=torch.float32))
        emb = emb / emb.norm(dim=-1, keepdim=True)
        expected = torch.sigmoid(emb @ state["head.weight"].T + state["head.bias"]).numpy()
    r = invoke("predict", clip_run["run"], *images, "--device", "cpu", "--out", tmp_path / "p.csv")
    assert r.exit_code == 0, r.output
    got = pd.read_csv(tmp_path / "p.csv")
    cols = [c for c in got.columns if c in meta["classnames"]]
    assert len(cols) == len(meta["classnames"])
    np.testing.assert_allclose(got[meta["classnames"]].to_numpy(), expected, atol=2e-3)
    assert Path(clip_run["run"], "results.json").is_file()
