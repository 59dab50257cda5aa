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


@pytest.mark.parametrize("arch,depths", [
    # BEiT's count by hand: ViT-B-16 has 12 blocks; the patch and position embeddings lie below block 0
    ("ViT-B-16", {"conv1.weight": 13, "class_embedding": 13, "positional_embedding": 13, "ln_pre.weight": 13,
                  "transformer.resblocks.0.attn.in_proj_weight": 12, "transformer.resblocks.11.mlp.c_fc.weight": 1,
                  "ln_post.weight": 0, "proj": 0}),
    # RN50: the stem, layer1-layer4, the attention pool on top
    ("RN50", {"conv1.weight": 5, "bn3.weight": 5, "layer1.0.conv1.weight": 4, "layer4.2.bn3.bias": 1,
              "attnpool.c_proj.weight": 0})])
def test_layer_decay_gives_each_layer_lr_times_decay_to_the_layers_above(arch, depths):
    """train.layer_decay: every parameter of the tower sits in the group of its depth; after one Adam step (whose
    first update is lr times the sign of the gradient, up to eps) each moved by that group's lr, lr × decay^k."""
    from aevlp.stage_two.clip_student import ClipStudent, decayed_groups, layers_above
    from aevlp.stage_two.models import build_model

    torch.manual_seed(0)
    width = 1024 if arch == "RN50" else 512
    text = np.random.default_rng(0).normal(size=(3, width)).astype(np.float32)
    model = build_model("clip", 3, weights="default", clip=ClipStudent(
        clip={"arch": arch, "pretrained": ""}, weights_id="", preprocess={}, text=text))
    above = layers_above(model.backbone.visual)
    assert {k: above[k] for k in depths} == depths
    assert len(above) == len(list(model.backbone.visual.parameters()))
    groups = decayed_groups(model.backbone, 1e-3, 0.5)
    assert [g["lr"] for g in groups] == pytest.approx([1e-3 * 0.5 ** k for k in sorted(set(above.values()))])
    before = {n: p.detach().clone() for n, p in model.backbone.visual.named_parameters()}
    opt = torch.optim.Adam(groups)
    model.train()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(torch.randn(2, 3, 224, 224)), torch.eye(3)[:2])
    loss.backward()
    opt.step()
    checked = set()
    for name, p in model.backbone.visual.named_parameters():
        top = p.grad.abs().flatten().argmax()  # an entry whose gradient is far above Adam's eps (1e-8)
        if p.grad.abs().flatten()[top] > 1e-5:
            moved = (p.detach() - before[name]).abs().flatten()[top].item()
            assert moved == pytest.approx(1e-3 * 0.5 ** above[name], rel=0.05), name  # float32 rounding: a few %
            checked.add(above[name])
    assert checked == set(above.values())  # every depth (RN50's zero-initialised BNs hold some tensors still)


def test_layer_decay_and_wise_ft_are_refused_off_the_clip_backbone():
    from aevlp.config import load_config
    from aevlp.errors import ConfigError

    with pytest.raises(ConfigError, match='train.layer_decay = 0.7 and train.wise_ft = False need train.backbone = '
                                          '"clip"'):
        load_config("table", ["train.layer_decay=0.7", 'train.backbone="small-cnn"'])
    with pytest.raises(ConfigError, match="train.wise_ft = True need"):
        load_config("table", ["train.wise_ft=true"])  # table.toml's resnet50
    assert load_config("table", ["train.layer_decay=0.7", 'train.backbone="clip"'])["train"]["layer_decay"] == 0.7


def test_a_clip_run_with_layer_decay_trains_with_those_groups(clip_run, tmp_path):
    """One epoch of the tiny CLIP student with train.layer_decay = 0.5: the run's optimiser (last.pt) holds the
    top of the tower at lr, the head at lr × lr_mult, and one group per lower depth at lr × 0.5^k."""
    from aevlp.config import load_config
    from aevlp.stage_two.train import run_train

    cfg = load_config(clip_run["run"] / "config.toml", ["train.layer_decay=0.5"])
    res = run_train(cfg, run_dir=tmp_path / "run", progress=False, echo=None)
    assert np.isfinite(res["test_map"])
    groups = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=False)["optimizer"]
    lrs = sorted((g["lr"] for g in groups["param_groups"]), reverse=True)
    blocks = 1  # the tiny CLIP's transformer blocks (tests/conftest.py)
    assert lrs == pytest.approx([1e-4 * 10, *(1e-4 * 0.5 ** k for k in range(blocks + 2))])


def test_mixed_is_the_weight_space_ensemble():
    from aevlp.stage_two.wise_ft import mixed

    initial = {"w": torch.tensor([0.0, 2.0]), "n": torch.tensor(3)}
    tuned = {"w": torch.tensor([4.0, -2.0]), "n": torch.tensor(7)}
    m = mixed(initial, tuned, 0.25)
    assert torch.allclose(m["w"], torch.tensor([1.0, 1.0])) and int(m["n"]) == 7  # 0.75·initial + 0.25·tuned


def test_a_clip_run_with_wise_ft_keeps_the_mix_of_best_val(clip_run, tmp_path):
    """train.wise_ft: best.pt is (1 − α)·initial + α·tuned (tuned.pt) for the α of highest val mAP; α = 1 scores
    exactly the tuned epoch's own val mAP (metrics.jsonl); results.json reports the mix's val."""
    import json

    from aevlp.config import load_config
    from aevlp.stage_two.clip_student import ClipStudent
    from aevlp.stage_two.models import build_model
    from aevlp.stage_two.train import run_train
    from aevlp.stage_two.wise_ft import WISE_ALPHAS

    cfg = load_config(clip_run["run"] / "config.toml", ["train.wise_ft=true", "train.epochs=2"])
    res = run_train(cfg, run_dir=tmp_path / "run", progress=False, echo=None)
    wise, run = res["wise_ft"], tmp_path / "run"
    assert set(wise["by_alpha"]) == {str(a) for a in WISE_ALPHAS}
    best_val = max(wise["by_alpha"].values())
    assert wise["by_alpha"][str(wise["alpha"])] == best_val and res["val_map"] == pytest.approx(best_val, abs=1e-4)
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert wise["by_alpha"]["1.0"] == pytest.approx(max(e["val_map"] for e in epochs), abs=1e-4)
    from aevlp.cache import Cache

    tuned = torch.load(run / "tuned.pt", map_location="cpu", weights_only=False)["model"]
    best = torch.load(run / "best.pt", map_location="cpu", weights_only=False)["model"]
    torch.manual_seed(0)  # the run's seed: its initial weights (the CLIP tower, the zero-shot head), rebuilt here
    with Cache(clip_run["cache"]) as cache:
        initial = build_model("clip", tuned["head.weight"].shape[0], weights="default",
                              clip=ClipStudent.of_cache(cache)).state_dict()
    a = wise["alpha"]
    for k, v in tuned.items():
        if v.is_floating_point():
            torch.testing.assert_close(best[k], (1 - a) * initial[k] + a * v, rtol=1e-5, atol=1e-6)


def test_wise_ft_resumed_for_more_epochs_mixes_the_new_tuned_weights(clip_run, tmp_path):
    """A finished train.wise_ft run resumed for another epoch: the epoch's best.pt (train.select = last: every epoch
    is the best) replaces tuned.pt, and best.pt is mixed from it, not from the first run's tuned weights."""
    from aevlp.config import load_config
    from aevlp.stage_two.train import run_train

    over = ["train.wise_ft=true", 'train.select="last"']
    run_train(load_config(clip_run["run"] / "config.toml", [*over, "train.epochs=2"]), run_dir=tmp_path / "run",
              progress=False, echo=None)
    first = torch.load(tmp_path / "run" / "tuned.pt", map_location="cpu", weights_only=False)["model"]
    res = run_train(load_config(clip_run["run"] / "config.toml", [*over, "train.epochs=3"]), run_dir=tmp_path / "run",
                    resume=True, progress=False, echo=None)
    assert res["epochs_run"] == 3 and res["best_epoch"] == 3
    tuned = torch.load(tmp_path / "run" / "tuned.pt", map_location="cpu", weights_only=False)["model"]
    last = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=False)["model"]
    assert all(torch.equal(tuned[k], last[k]) for k in last)  # the third epoch's weights
    assert not all(torch.equal(tuned[k], first[k]) for k in first)
    best = torch.load(tmp_path / "run" / "best.pt", map_location="cpu", weights_only=False)
    assert best["wise"]["alpha"] == res["wise_ft"]["alpha"]
