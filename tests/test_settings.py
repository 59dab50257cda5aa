"""Every setting is declared once (aevlp/settings.py): the defaults, the checks, the specs and the docs'
key tables all come from that declaration, and its "does not change the cache" marks are true."""
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_cfg

from aevlp import config, settings
from aevlp.config import load_config
from aevlp.errors import ConfigError
from aevlp.settings import SECTIONS, DampSpec, declared, key
from aevlp.settings_docs import TABLES_BEGIN, TABLES_END, key_tables
from aevlp.specs import Specs
from aevlp.stage_one.pseudolabel import plan_stage_one

ROOT = Path(__file__).resolve().parent.parent


def test_the_key_tables_in_the_docs_are_current():
    text = (ROOT / "pipelines" / "README.md").read_text()
    between = text.split(TABLES_BEGIN, 1)[1].split(TABLES_END, 1)[0]
    assert between.strip() == key_tables().strip(), "pipelines/README.md is stale: run `make docs`"
    for section, cls in SECTIONS.items():
        for name in declared(cls):
            assert section == "pipeline" or f"| `{name}` |" in between, f"{section}.{name}"


def test_a_key_declared_once_is_in_the_defaults_the_checks_the_specs_and_the_docs(monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class Extended(DampSpec):
        smoothing: float = key(0.25, "a test knob", check=settings.between(0, 0.5))

    monkeypatch.setitem(SECTIONS, "damp", Extended)
    assert config.DEFAULTS["damp"]["smoothing"] == 0.25 and settings.defaults()["damp"]["smoothing"] == 0.25
    cfg = load_config("voc", ["damp.smoothing=0.5"])
    assert cfg["damp"]["smoothing"] == 0.5 and Specs.of(cfg).damp.smoothing == 0.5
    with pytest.raises(ConfigError, match=r"damp.smoothing = 0.7 is out of range: it must be in \[0, 0.5\]"):
        load_config("voc", ["damp.smoothing=0.7"])
    with pytest.raises(ConfigError, match="did you mean 'smoothing'"):
        load_config("voc", ["damp.smothing=0.1"])
    with pytest.raises(ConfigError, match="should be a float"):
        load_config("voc", ['damp.smoothing="much"'])
    with pytest.raises(ConfigError, match="damp.smoothing"):
        Extended(smoothing=2.0)  # a spec built in Python is held to the same declaration
    assert "| `smoothing` | `0.25` | in [0, 0.5] | a test knob |" in key_tables()


def test_cross_key_rules_and_finite_values():
    with pytest.raises(ConfigError, match="lam1 must be >= lam2"):
        load_config("voc", ["loss.lam1=0.3"])
    with pytest.raises(ConfigError, match="linear_init = 8 must be below train.epochs = 8"):
        load_config("voc", ["train.linear_init=8"])
    for bad in ("damp.temperature=inf", "loss.beta=[0.0, 1e400, 0.0, 0.0]", "train.lr=nan"):
        with pytest.raises(ConfigError):
            load_config("voc", [bad])


def test_specs_keep_the_mapping_access_of_old():
    specs = Specs.of(load_config("voc"))
    assert specs.views["grid"] == specs.views.grid == 4 and specs.loss["beta"] == (0.0, 2.0, -2.0, -2.0)
    with pytest.raises(KeyError):
        specs.views["nope"]


# An other value for each stage-one key; a key missing here (and from EXEMPT) fails the test below.
OTHER = {
    "dataset": {"val_frac": 0.3, "split_seed": 7, 'image_check': '"content"'},
    "clip": {"device": '"cpu"', "precision": '"bf16"', "batch_size": 3, "workers": 2, "compile": "true"},
    "text": {"prompts": '["a blurry photo of a {}."]', "gcn": "false", "gcn_seed": 1, "sparse_topk": 5,
             "reweight_p": 0.3},
    "views": {"grid": 3, "rounds": 3, "size": 48, "resize": '"shortest"', "interpolation": '"bicubic"',
              "normalize": '"clip"', "flip": "false", "jitter": 0.1, "seed": 1, "resize_on": '"device"',
              "decode_on": '"device"'},
    "cache": {"path": '"elsewhere.h5"', "store_embeddings": '"none"', "on_bad_image": '"skip"', "sims": '"computed"'},
}
EXEMPT = {"dataset.name": "another dataset needs other data", "clip.arch": "another model (test_stage_one)",
          "clip.config": "another model (test_stage_one)", "clip.tokenizer": "needs a tokenizer folder",
          "clip.pretrained_cfg": "needs a tag of the architecture (test_clip)"}


def test_the_keys_marked_as_not_changing_the_cache_are_exactly_those(tiny_clip, photo_voc, tmp_path):
    other_weights = tmp_path / "other.pt"
    import open_clip
    import torch
    torch.manual_seed(1)
    torch.save(open_clip.create_model(tiny_clip["arch"]).state_dict(), other_weights)
    copy = tmp_path / "copy"
    shutil.copytree(photo_voc, copy)
    phrases = tmp_path / "phrases.txt"
    phrases.write_text("\n".join(f"a kind of {c}" for c in range(20)))
    np.save(tmp_path / "rel.npy", np.eye(20, dtype=np.float32))
    files = {"dataset": {"data_root": f'"{copy}"', "image_root": f'"{photo_voc / "VOCdevkit/VOC2012/JPEGImages"}"'},
             "clip": {"pretrained": f'"{other_weights}"'},
             "text": {"phrases": f'"{phrases}"', "relation": f'"{tmp_path / "rel.npy"}"'}}
    base = plan_stage_one(tiny_cfg(tiny_clip, photo_voc, tmp_path / "c.h5")).fingerprint
    tried = set()
    for section in ("dataset", "clip", "text", "views", "cache"):
        for name, value in {**OTHER[section], **files.get(section, {})}.items():
            fp = plan_stage_one(tiny_cfg(tiny_clip, photo_voc, tmp_path / "c.h5", f"{section}.{name}={value}"))
            changed = fp.fingerprint != base
            assert changed == declared(SECTIONS[section])[name].metadata["cache"], \
                f"{section}.{name}={value} {'changed' if changed else 'did not change'} the fingerprint"
            tried.add(f"{section}.{name}")
    every = {f"{s}.{n}" for s in ("dataset", "clip", "text", "views", "cache") for n in declared(SECTIONS[s])}
    assert every - tried == set(EXEMPT), json.dumps(sorted(every - tried - set(EXEMPT)))


def test_a_config_dumps_as_run_folders_written_before_recorded_it():
    """`aevlp run` compares a run's config.toml with the resolved pipeline as text: sections and keys keep
    the order every earlier version wrote."""
    cfg = load_config("voc")
    assert list(cfg) == ["pipeline", "dataset", "clip", "text", "views", "damp", "loss", "train", "cache"]
    assert list(cfg["views"])[:10] == ["grid", "rounds", "size", "resize", "interpolation", "normalize", "flip",
                                       "jitter", "seed", "resize_on"]  # keys added since come after
    assert list(cfg["train"])[:6] == ["backbone", "weights", "labels", "epochs", "batch_size", "lr"]
