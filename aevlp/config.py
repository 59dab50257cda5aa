"""Configuration as data: built-in defaults ← a pipeline TOML ← `--set section.key=value` overrides.

Every key is known in advance, so a typo in a pipeline or on the command line is an error that
names the key and the closest valid one, not a silently ignored setting.
"""
from __future__ import annotations

import copy
import difflib
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import tomli_w

from aevlp.config_checks import check_ranges
from aevlp.data.observe import COLE_SEED
from aevlp.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["DEFAULTS", "load_config", "find_pipeline", "list_pipelines", "apply_overrides", "dump_config",
           "pipeline_dirs"]

DEFAULTS: dict[str, dict[str, Any]] = {
    "pipeline": {"name": ""},  # the pipeline file this config came from (recorded, so caches and runs know it)
    "dataset": {"name": "", "data_root": "", "image_root": "", "val_frac": 0.2, "split_seed": COLE_SEED,
                "image_check": "stat"},
    "clip": {"arch": "ViT-B-16", "pretrained": "openai", "config": "", "pretrained_cfg": "", "tokenizer": "",
             "device": "auto", "precision": "auto", "batch_size": 16, "workers": 1, "compile": False},
    "text": {"prompts": ["a photo of a {}."], "phrases": "", "gcn": True, "gcn_seed": 0, "sparse_topk": 20,
             "reweight_p": 0.2, "relation": "text"},
    "views": {"grid": 4, "rounds": 4, "size": 0, "resize": "checkpoint", "interpolation": "checkpoint",
              "normalize": "checkpoint", "flip": True, "jitter": 0.0, "seed": 0, "resize_on": "worker"},
    "damp": {"source": "damp", "temperature": 0.01, "eta": 0.3, "threshold": 0.5, "top_k": 3,
             "negative_ratio": 0.2, "mode": "paper"},
    "loss": {"name": "gpr", "beta": [0.0, 10.0, -2.0, -8.0], "alpha": [0.5, 2.0, 0.8, 0.5], "q2": 0.01, "q3": 1.0,
             "lam1": 0.7, "lam2": 0.5, "rho": 0.9, "reg": 0.001, "expected_pos": 0.0, "em_alpha": 0.1,
             "pl_weight": 0.7, "ls_coef": 0.1, "role_lr_mult": 10.0, "apl_beta": 0.02, "apl_warmup": 5,
             "apl_neg_proportion": 0.9, "ll_delta_rel": 0.2, "boost_alpha": 5.0, "vlpl_threshold": 0.3,
             "vlpl_temperature": 0.01},
    "train": {"backbone": "resnet50", "weights": "default", "labels": "observed", "epochs": 8, "batch_size": 16,
              "lr": 1e-5, "lr_mult": 10.0, "image_size": 0, "early_stop": "aevlp", "patience": 2,
              "max_drop": 2.0, "linear_init": 0, "seed": 0, "workers": -1, "device": "auto", "precision": "auto",
              "image_cache": False, "decode_on": "worker", "channels_last": "auto", "compile": False,
              "out": "runs"},
    "cache": {"path": "", "store_embeddings": "none", "on_bad_image": "fail"},
}

CHOICES = {
    ("clip", "precision"): ("auto", "fp32", "bf16", "fp16"),
    ("dataset", "image_check"): ("stat", "content", "none"),
    ("views", "resize"): ("checkpoint", "squash", "shortest", "longest", "crop"),
    ("views", "interpolation"): ("checkpoint", "bilinear", "bicubic", "nearest"),
    ("views", "normalize"): ("checkpoint", "clip", "imagenet"),
    ("views", "resize_on"): ("worker", "device"),
    ("train", "decode_on"): ("worker", "device"),
    ("train", "channels_last"): ("auto", "on", "off"),
    ("damp", "source"): ("damp", "global"),
    ("damp", "mode"): ("paper", "official"),
    ("train", "labels"): ("observed", "full"),
    ("train", "early_stop"): ("aevlp", "gr", "first-drop", "none"),
    ("train", "precision"): ("auto", "fp32", "bf16", "fp16"),
    ("cache", "store_embeddings"): ("none", "global", "all"),
    ("cache", "on_bad_image"): ("fail", "skip"),
}


def pipeline_dirs() -> list[Path]:
    """Where `--pipeline voc` is looked up: $AEVLP_PIPELINES, ./pipelines, then the source tree's."""
    dirs = [Path(p) for p in os.environ.get("AEVLP_PIPELINES", "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "pipelines", Path(__file__).resolve().parent.parent / "pipelines"]
    return dirs


def find_pipeline(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.suffix == ".toml" or len(path.parts) > 1:  # a path, not a name: no search
        raise ConfigError(f"pipeline file {path} not found")
    for d in pipeline_dirs():  # a name; a folder of the same name (e.g. the demo's output) is no pipeline
        cand = d / f"{name_or_path}.toml"
        if cand.is_file():
            return cand
    names, dirs = list_pipelines(), dict.fromkeys(str(d) for d in pipeline_dirs() if d.is_dir())
    raise ConfigError(f"no pipeline named '{name_or_path}'{_closest(name_or_path, names)}",
                      hint=f"pipelines: {', '.join(names) or 'none'} (in {', '.join(dirs)}); or pass a .toml path")


def list_pipelines() -> list[str]:
    """Pipeline names that `find_pipeline` resolves, each once (the first directory wins)."""
    return sorted({p.stem for d in pipeline_dirs() if d.is_dir() for p in d.glob("*.toml")})


def _closest(key: str, options: Iterable[str]) -> str:
    near = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean '{near[0]}'?)" if near else ""


def _check_type(section: str, key: str, value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, list):
        ok = isinstance(value, list)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{where}: {section}.{key} = {value!r} should be a {type(default).__name__}")
    choices = CHOICES.get((section, key))
    if choices and value not in choices:
        raise ConfigError(f"{where}: {section}.{key} = {value!r} is not one of {', '.join(choices)}")
    return value


def _merge(cfg: dict, data: dict, where: str) -> None:
    for section, table in data.items():
        if section not in DEFAULTS:
            raise ConfigError(f"{where}: unknown section [{section}]{_closest(section, DEFAULTS)}")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: [{section}] must be a table")
        for key, value in table.items():
            if key not in DEFAULTS[section]:
                raise ConfigError(f"{where}: unknown key {section}.{key}{_closest(key, DEFAULTS[section])}")
            cfg[section][key] = _check_type(section, key, value, DEFAULTS[section][key], where)


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string: --set clip.arch=ViT-L-14


def apply_overrides(cfg: dict, overrides: Iterable[str]) -> dict:
    """Apply `section.key=value` strings; values are TOML (numbers, true/false, [lists], strings)."""
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set {item!r}: expected section.key=value", hint="e.g. --set train.lr=1e-4")
        dotted, text = item.split("=", 1)
        section, key = dotted.strip().split(".", 1)
        _merge(cfg, {section: {key: _parse_value(text.strip())}}, "--set")
    return cfg


def load_config(pipeline: str | Path | None = None, overrides: Iterable[str] = (),
                **sections: dict) -> dict:
    """Resolve a full config; `sections` (e.g. dataset={"name": "voc"}) sit between file and --set."""
    cfg = copy.deepcopy(DEFAULTS)
    if pipeline:
        path = find_pipeline(str(pipeline))
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML ({e})") from e
        _merge(cfg, data, str(path))
        if not data.get("pipeline", {}).get("name"):
            cfg["pipeline"]["name"] = str(path.resolve())
    _merge(cfg, {k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in sections.items()}, "options")
    return check_ranges(apply_overrides(cfg, overrides))


def dump_config(cfg: dict) -> str:
    return tomli_w.dumps(cfg)
