"""Configuration as data: built-in defaults ← a pipeline TOML ← `--set section.key=value` overrides.

Every key is declared in `aevlp.settings` (its default, allowed values and doc), so a typo in a
pipeline or on the command line is an error that names the key and the closest valid one, and a
value out of range names what is allowed, before any stage starts.
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

from aevlp.errors import ConfigError
from aevlp.settings import SECTIONS, check_section, check_value, declared, defaults  # DEFAULTS: see __getattr__

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["load_config", "defaults", "find_pipeline", "list_pipelines", "apply_overrides", "updated", "dump_config",
           "pipeline_dirs", "tomllib", "config_for_cache"]



def __getattr__(name: str):
    if name == "DEFAULTS":  # derived at each use, so a key declared later (a plug-in, a test) is in it
        return defaults()
    raise AttributeError(f"module 'aevlp.config' has no attribute {name!r}")


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


def _merge(cfg: dict, data: dict, where: str) -> None:
    for section, table in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"{where}: unknown section [{section}]{_closest(section, SECTIONS)}")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: [{section}] must be a table")
        keys = declared(SECTIONS[section])
        for key, value in table.items():
            if key not in keys:
                raise ConfigError(f"{where}: unknown key {section}.{key}{_closest(key, keys)}")
            try:
                value = check_value(SECTIONS[section], key, value)
            except ConfigError as e:
                raise ConfigError(f"{where}: {e.message}", hint=e.hint) from None
            cfg[section][key] = list(value) if isinstance(value, tuple) else value


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
    cfg = defaults()
    if pipeline:
        path = find_pipeline(str(pipeline))
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML ({e})") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})",
                              hint="save the pipeline file as UTF-8 (TOML is UTF-8)") from None
        _merge(cfg, data, str(path))
        if not data.get("pipeline", {}).get("name"):
            cfg["pipeline"]["name"] = str(path.resolve())
    _merge(cfg, {k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in sections.items()}, "options")
    apply_overrides(cfg, overrides)
    for section, table in cfg.items():
        check_section(section, table)
    return cfg


def config_for_cache(cache, config: str | Path | None = None, overrides: Iterable[str] = (), **sections: dict) -> dict:
    """The config a cache's pseudo-labels are read with: `config` (a pipeline), else the pipeline the cache was
    made with where it is still there, else the defaults; the cache's dataset, data and image roots and path;
    then `sections` (flags) and `overrides` (--set). What train, review, `cache thresholds` and the exports
    select with, so each shows what the others use. `cache`: an open `aevlp.cache.Cache`."""
    pipeline = config or cache.pipeline_file()
    info = cache.info
    base: dict[str, dict] = {"dataset": {"name": cache.fingerprint.get("dataset"), "data_root": info.get("data_root"),
                                         "image_root": info.get("image_root") or None},
                             "cache": {"path": str(cache.path)}}
    for section, table in sections.items():
        base.setdefault(section, {}).update({k: v for k, v in table.items() if v is not None})
    return load_config(find_pipeline(str(pipeline)) if pipeline else None, overrides, **base)


def updated(cfg: dict, changes: dict[str, dict[str, Any]]) -> dict:
    """A new resolved config: `cfg` with `changes` ({section: {key: value}}) checked and applied; `cfg`
    itself is never edited (it may already be recorded, or compared with a run's config.toml)."""
    out = copy.deepcopy(cfg)
    _merge(out, changes, "internal")
    for section in changes:
        check_section(section, out[section])
    return out


def changed_settings(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """{"section.key": (old value, new value)} for every setting that differs (a side without it: None)."""
    def flat(cfg: dict) -> dict[str, Any]:
        return {f"{s}.{k}": v for s, table in cfg.items() if isinstance(table, dict) for k, v in table.items()}
    a, b = flat(old), flat(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def dump_config(cfg: dict) -> str:
    return tomli_w.dumps(cfg)


def recorded_config(path: str | Path) -> dict | None:
    """A run's config.toml as a full config: a key added to aevlp after the run was made takes its default,
    so a run stays current across versions that only add settings. None when the file cannot be read."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    cfg = defaults()
    for section, table in data.items():
        if isinstance(table, dict):
            cfg.setdefault(section, {}).update(table)
    return cfg
