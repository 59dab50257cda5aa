"""Any CLIP checkpoint, built as it was trained: tags, weights files, HF-layout folders, hf-hub names.

All offline: models are random-init; what is checked is the configuration actually built (QuickGELU),
the preprocessing the views get, the identity in the fingerprint, and clear errors.
"""
import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_CLIP, make_photo_dataset, tiny_cfg

from aevlp.cache.schema import fingerprint_diff
from aevlp.cli import cli
from aevlp.config import load_config
from aevlp.errors import AevlpError
from aevlp.imaging import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN
from aevlp.specs import ClipSpec
from aevlp.stage_one.clip import load_clip
from aevlp.stage_one.clip_source import resolve_clip, write_clip_folder
from aevlp.stage_one.pseudolabel import plan_stage_one, run_pseudolabel
from aevlp.stage_one.views import ViewSpec


def activations(model) -> set[str]:
    return {type(m).__name__ for m in model.modules() if "GELU" in type(m).__name__}


@pytest.mark.slow  # builds a full-size ViT-B-16
def test_openai_tag_builds_quickgelu_and_plain_arch_gelu():
    openai = load_clip(ClipSpec("ViT-B-16", "openai", device="cpu", precision="fp32"), load_weights=False)
    assert activations(openai.model) == {"QuickGELU"}
    assert openai.identity.preprocess.mean == CLIP_MEAN and openai.identity.preprocess.interpolation == "bicubic"
    plain = load_clip(ClipSpec("ViT-B-16", "", device="cpu", precision="fp32"), load_weights=False)
    assert activations(plain.model) == {"GELU"}


def test_siglip_statistics_and_resize_mode():
    s = resolve_clip("ViT-B-16-SigLIP", "webli")
    assert s.preprocess.mean == (0.5, 0.5, 0.5) and s.preprocess.std == (0.5, 0.5, 0.5)
    assert s.preprocess.resize_mode == "squash" and not s.quick_gelu
    assert s.tokenizer == "timm/ViT-B-16-SigLIP"
    views = ViewSpec.of(load_config(None)["views"], s.preprocess)  # own-data defaults follow the checkpoint
    assert views.mean == (0.5, 0.5, 0.5) and views.resize == "squash" and views.interpolation == "bicubic"
    bench = ViewSpec.of(load_config("voc")["views"], s.preprocess)  # the benchmark pipeline keeps parity
    assert bench.mean == IMAGENET_MEAN and bench.interpolation == "bilinear"


def test_siglip_tokenizer_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AevlpError, match="tokenizer timm/ViT-B-16-SigLIP") as e:
        load_clip(ClipSpec("ViT-B-16-SigLIP", "webli", device="cpu", precision="fp32"), load_weights=False)
    assert "clip.tokenizer" in str(e.value) and "huggingface-cli download timm/ViT-B-16-SigLIP" in str(e.value)


@pytest.mark.slow  # full-size models of each family
@pytest.mark.parametrize("arch,tag,act", [("RN50", "openai", "QuickGELU"),
                                          ("convnext_base", "laion400m_s13b_b51k", "GELU"),
                                          ("EVA02-B-16", "merged2b_s8b_b131k", "GELU"),
                                          ("coca_ViT-B-32", "laion2b_s13b_b90k", "GELU")])
def test_other_families_build_and_encode(arch, tag, act):
    if arch in ("convnext_base", "EVA02-B-16"):
        pytest.importorskip("timm", reason=f"{arch} needs timm")
    clip = load_clip(ClipSpec(arch, tag, device="cpu", precision="fp32"), load_weights=False)
    assert act in activations(clip.model)
    img = clip.encode_images(torch.randn(2, 3, clip.image_size, clip.image_size))
    txt = clip.encode_text(["cat", "dog"], ["a photo of a {}."])
    assert img.shape == (2, clip.embed_dim) and txt.shape == (2, clip.embed_dim)
    assert torch.allclose(img.norm(dim=-1), torch.ones(2), atol=1e-4)


def tiny_folder(path: Path, mean=(0.5, 0.5, 0.5), seed=0, **pre) -> Path:
    import open_clip

    from aevlp.stage_one.clip_source import register_model_config
    torch.manual_seed(seed)
    model = open_clip.create_model(register_model_config(TINY_CLIP, "tiny-folder-src"))
    return write_clip_folder(path, TINY_CLIP, model.state_dict(),
                             {"mean": list(mean), "std": list(mean), "interpolation": "bilinear",
                              "resize_mode": "squash", **pre})


@pytest.fixture(scope="module")
def folder_world(tmp_path_factory):
    d = tmp_path_factory.mktemp("folder")
    return {"root": make_photo_dataset(d / "voc", n_train=12, n_test=4), "folder": tiny_folder(d / "tiny-hf"),
            "dir": d}


def folder_cfg(world, folder, out, *extra):
    return tiny_cfg(folder, world["root"], out, *extra, pipeline=None)


def test_hf_folder_runs_stage_one_and_records_its_statistics(folder_world, tmp_path):
    out = tmp_path / "c.h5"
    s = run_pseudolabel(folder_cfg(folder_world, folder_world["folder"], out), progress=False)
    assert s["status"] == "computed"
    with h5py.File(out) as f:
        pre = json.loads(f.attrs["clip_preprocess"])
        fp = json.loads(f.attrs["fingerprint"])
    assert pre["mean"] == [0.5] * 3 and pre["std"] == [0.5] * 3 and pre["quick_gelu"] is False
    assert pre["resize_mode"] == "squash" and pre["interpolation"] == "bilinear" and pre["image_size"] == 32
    assert fp["mean"] == [0.5] * 3 and fp["clip_weights"].startswith("sha256:")
    # the same numbers as an independent encode of one view with those statistics
    clip = load_clip(ClipSpec("", str(folder_world["folder"]), device="cpu", precision="fp32"))
    from torchvision.transforms.functional import resize

    from aevlp.imaging import decode
    img = decode(folder_world["root"] / "VOCdevkit/VOC2012/JPEGImages" / fp_first_image(out))
    x = (resize(img, [32, 32], antialias=True).float() / 255 - 0.5) / 0.5  # squash, bilinear, mean = std = 0.5
    with h5py.File(out) as f:
        feats = torch.as_tensor(f["text_features"][:])
        flipped = f["sims"][0, 0, 0]
    sim = (clip.encode_images(x[None]) @ feats.T)[0].numpy()
    sim_flip = (clip.encode_images(x.flip(-1)[None]) @ feats.T)[0].numpy()
    assert min(np.abs(sim - flipped).max(), np.abs(sim_flip - flipped).max()) < 5e-3


def test_hf_folder_fingerprint_does_not_depend_on_where_the_folder_lies(folder_world, tmp_path, monkeypatch):
    """A folder named relatively, absolutely or copied elsewhere is the same model: its files identify it;
    a changed weights file is another model."""
    import shutil
    folder = folder_world["folder"]
    absolute = plan_stage_one(folder_cfg(folder_world, folder, tmp_path / "c.h5")).fingerprint
    monkeypatch.chdir(folder.parent)
    relative = plan_stage_one(folder_cfg(folder_world, folder.name, tmp_path / "c.h5")).fingerprint
    copy = shutil.copytree(folder, tmp_path / "elsewhere" / "renamed")
    copied = plan_stage_one(folder_cfg(folder_world, copy, tmp_path / "c.h5")).fingerprint
    assert fingerprint_diff(absolute, relative) == [] and fingerprint_diff(absolute, copied) == []
    weights = next(copy.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    changed = plan_stage_one(folder_cfg(folder_world, copy, tmp_path / "c.h5")).fingerprint
    assert [d.split(":")[0] for d in fingerprint_diff(absolute, changed)] == ["clip_weights"]


def fp_first_image(cache: Path) -> str:
    with h5py.File(cache) as f:
        return f["image_ids"].asstr()[0]


def test_hf_folder_by_cli_needs_no_clip_flag(folder_world, tmp_path):
    out = tmp_path / "cli.h5"
    r = CliRunner().invoke(cli, ["pseudolabel", "--dataset", "voc", "--data-root", str(folder_world["root"]),
                                 "--pretrained", str(folder_world["folder"]), "--out", str(out), "--grid", "2",
                                 "--rounds", "1", "--workers", "0", "--precision", "fp32", "--no-progress"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["cache", "inspect", str(out)])
    assert r.exit_code == 0 and "clip_preprocess" in r.output and "0.5" in r.output


def test_other_statistics_make_run_recompute_and_say_why(folder_world, tmp_path):
    pipe = tmp_path / "p.toml"
    other = tiny_folder(tmp_path / "tiny-hf-other-stats", mean=(0.4, 0.4, 0.4))
    pipe.write_text(f'''[dataset]
name = "voc"
data_root = "{folder_world["root"]}"
[clip]
pretrained = "{folder_world["folder"]}"
precision = "fp32"
workers = 0
[views]
grid = 2
rounds = 1
[cache]
path = "{tmp_path / 'c.h5'}"
store_embeddings = "global"
[train]
backbone = "clip-head"
epochs = 1
workers = 0
out = "{tmp_path / 'runs'}"
''')
    assert CliRunner().invoke(cli, ["run", str(pipe), "--no-progress"]).exit_code == 0
    r = CliRunner().invoke(cli, ["run", str(pipe), "--dry-run", "--set", f'clip.pretrained="{other}"'])
    assert r.exit_code == 0, r.output
    assert "pseudolabel: would run" in r.output and "mean: [0.5, 0.5, 0.5] -> [0.4, 0.4, 0.4]" in r.output
    # with the checkpoint's statistics overridden by the pipeline, only the weights differ
    r = CliRunner().invoke(cli, ["run", str(pipe), "--dry-run", "--set", 'views.normalize="clip"'])
    assert "pseudolabel: would run" in r.output and "mean:" in r.output


def test_weights_file_takes_a_tags_settings_or_warns_once(tmp_path, caplog):
    import open_clip

    from aevlp.stage_one import clip_source
    weights = tmp_path / "vitb32.safetensors"
    weights.write_bytes(b"not read by resolve")  # resolving hashes the file, nothing more
    s = resolve_clip("ViT-B-32", str(weights), pretrained_cfg="openai")
    assert s.kind == "file" and s.quick_gelu and s.preprocess.mean == CLIP_MEAN
    clip_source._warned.clear()
    with caplog.at_level(logging.WARNING, logger="aevlp"):
        plain = resolve_clip("ViT-B-32", str(weights))
        resolve_clip("ViT-B-32", str(weights))
    assert not plain.quick_gelu
    warnings = [r for r in caplog.records if "clip.pretrained_cfg = TAG" in r.getMessage()]  # (--pretrained-cfg TAG
    # where a command that has the flag prints it: tests/test_hints.py)
    assert len(warnings) == 1 and "openai" in warnings[0].getMessage()
    with pytest.raises(AevlpError, match="not a pretrained tag of ViT-B-32"):
        resolve_clip("ViT-B-32", str(weights), pretrained_cfg="webli")
    assert "openai" in [t for a, t in open_clip.list_pretrained() if a == "ViT-B-32"]


def test_hf_hub_name_through_the_hub_cache(tmp_path, monkeypatch):
    import huggingface_hub
    snap = tmp_path / "hub" / "models--me--tiny" / "snapshots" / "0123abcd"
    tiny_folder(snap)

    def fake_download(repo, filename, **kw):
        if repo != "me/tiny" or not (snap / filename).exists():
            raise FileNotFoundError(f"{repo}/{filename} not cached")
        return str(snap / filename)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    s = resolve_clip("", "hf-hub:me/tiny")
    assert s.kind == "hf-hub" and s.weights_id == "hf-hub:me/tiny@0123abcd" and s.preprocess.mean == (0.5,) * 3
    clip = load_clip(ClipSpec("hf-hub:me/tiny", "", device="cpu", precision="fp32"))
    assert clip.encode_images(torch.zeros(1, 3, 32, 32)).shape == (1, 32)
    with pytest.raises(AevlpError, match="could not fetch hf-hub:me/missing") as e:
        resolve_clip("", "hf-hub:me/missing")
    assert "huggingface-cli download me/missing" in str(e.value)


def test_clip_info_cli():
    r = CliRunner().invoke(cli, ["clip", "info", "ViT-B-16", "--pretrained", "openai", "--json"])
    info = json.loads(r.output)
    assert info["activation"] == "QuickGELU" and info["mean"] == list(CLIP_MEAN) and info["std"] == list(CLIP_STD)
    assert info["embed_dim"] == 512 and info["image_size"] == 224 and "weights_local" in info
    r = CliRunner().invoke(cli, ["clip", "info", "ViT-B-16-SigLIP", "--pretrained", "webli", "--json"])
    info = json.loads(r.output)
    assert info["mean"] == [0.5] * 3 and info["std"] == [0.5] * 3 and info["tokenizer"] == "timm/ViT-B-16-SigLIP"
    r = CliRunner().invoke(cli, ["clip", "info", "--pretrained", "/nonexistent/folder.pt"])
    assert r.exit_code == 2 and "not found" in r.output


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AevlpError, match="open_clip_config.json is missing"):
        resolve_clip("", str(tmp_path / "empty"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP}))
    with pytest.raises(AevlpError, match="no weights file"):
        resolve_clip("", str(bad))


def test_class_phrases_file_enters_the_fingerprint(folder_world, tmp_path):
    from aevlp.data.registry import builtin_classnames
    from aevlp.stage_one.text import read_phrases
    names = builtin_classnames("voc")
    csv = tmp_path / "phrases.csv"
    csv.write_text("classname,phrase\n" + "\n".join(f'{c},"a {c}, seen from afar"' for c in reversed(names)))
    assert read_phrases(csv, names)[0] == "a aeroplane, seen from afar"
    lines = tmp_path / "phrases.txt"
    lines.write_text("\n".join(f"the {c}" for c in names))
    assert read_phrases(lines, names)[19] == "the tvmonitor"
    lines_short = tmp_path / "short.txt"
    lines_short.write_text("one\ntwo\n")
    with pytest.raises(AevlpError, match="2 phrases for 20 classes"):
        read_phrases(lines_short, names)
    typo = tmp_path / "typo.csv"
    typo.write_text("aeroplan,a plane\n")
    with pytest.raises(AevlpError, match="did you mean 'aeroplane'"):
        read_phrases(typo, names)
    base = plan_stage_one(folder_cfg(folder_world, folder_world["folder"], tmp_path / "c.h5"))
    phr = plan_stage_one(folder_cfg(folder_world, folder_world["folder"], tmp_path / "c.h5",
                                    f'text.phrases="{lines}"'))
    assert base.fingerprint["phrases"][0] == "aeroplane" and phr.fingerprint["phrases"][0] == "the aeroplane"
