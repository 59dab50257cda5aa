"""`aevlp run`: both stages of a pipeline, re-running only what is stale (like make).

Stage one is stale when its cache is missing, unfinished, or its fingerprint differs from what the
pipeline asks for (CLIP model, prompts, views, dataset) — never for a [damp], [loss] or [train]
change. Stage two is stale when its run directory has no results, or they were made from another
resolved config or another cache.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from aevlp.cache import fingerprint_id
from aevlp.config import changed_settings, recorded_config, updated
from aevlp.data import training_data_hash
from aevlp.errors import ConfigError
from aevlp.losses import LOSSES, check_labels_available
from aevlp.specs import Specs
from aevlp.stage_one.pseudolabel import StageOnePlan, plan_stage_one, run_pseudolabel
from aevlp.stage_two.models import BACKBONES, names_file, weights_to_download
from aevlp.stage_two.plan import as_trained
from aevlp.stage_two.refine import taught
from aevlp.stage_two.run_folder import RunFolder

__all__ = ["StagePlan", "PipelinePlan", "plan_pipeline", "run_pipeline", "run_dir_for"]


@dataclass
class StagePlan:
    stage: str
    run: bool
    reason: str
    details: list[str] = field(default_factory=list)
    run_dir: Path | None = None  # stage two: the run directory whose results stand (when not its own)
    resume: bool = False  # stage two: go on with an interrupted run of this very config


@dataclass
class PipelinePlan:
    """The decision for each stage, and stage one's own plan (handed on, not recomputed)."""

    stages: list[StagePlan]
    stage_one: StageOnePlan
    run_dir: Path
    cfg: dict  # the resolved config both stages run with (the cache path filled in)
    downloads: list[str] = field(default_factory=list)  # what the stages that run would fetch from the network


def run_dir_for(cfg: dict, name: str) -> Path:
    return Path(Specs.of(cfg).train.out) / name


def _config_diff(path: Path, cfg: dict) -> list[str]:
    return [f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed_settings(recorded_config(path) or {}, cfg).items()]


def same_config(path: Path, cfg: dict) -> bool:
    """Whether a run's config.toml records this resolved config (keys added since then at their defaults)."""
    return recorded_config(path) == cfg


def _stage_one(p1: StageOnePlan, force: bool) -> StagePlan:
    target = p1.target
    if force:
        return StagePlan("pseudolabel", True, "forced (--force-stage pseudolabel)")
    return {"up-to-date": StagePlan("pseudolabel", False, f"{target} matches the pipeline"),
            "reprompt": StagePlan("pseudolabel", True, "re-prompt from embeddings: only the text side changed "
                                                       "(no image is encoded)", p1.diff),
            "damaged": StagePlan("pseudolabel", True, f"{target} is damaged", p1.diff),
            "incomplete": StagePlan("pseudolabel", True, f"{target} is marked incomplete"),
            "stale": StagePlan("pseudolabel", True, f"{target} was made with other settings", p1.diff),
            "resume": StagePlan("pseudolabel", True, f"an unfinished run will be resumed ({target}.partial)"),
            }.get(p1.status, StagePlan("pseudolabel", True, f"no cache at {target}"))


def _stage_two(cfg: dict, run_dir: Path, cache_fp: dict, data_hash: str, stage_one_runs: bool,
               force: bool) -> StagePlan:
    folder = RunFolder(run_dir)
    results, config = folder / RunFolder.RESULTS, folder / RunFolder.CONFIG
    if force:
        return StagePlan("train", True, "forced (--force-stage train)")
    if stage_one_runs:
        return StagePlan("train", True, "its cache is being recomputed")
    if not results.exists():
        if folder.has_training_state and same_config(config, cfg):
            return StagePlan("train", True, f"an interrupted run will be resumed ({run_dir})", resume=True)
        twin = _identical_run(cfg, run_dir, cache_fp, data_hash)
        if twin is not None:
            return StagePlan("train", False, f"an identical finished run exists: {twin}", run_dir=twin)
        return StagePlan("train", True, f"no results yet in {run_dir}")
    if not same_config(config, cfg):
        return StagePlan("train", True, f"{config} differs from the resolved pipeline", _config_diff(config, cfg))
    why = _stale_results(results, cache_fp, data_hash)
    return StagePlan("train", True, why) if why else StagePlan("train", False, f"{results} is current")


def _stale_results(results: Path, cache_fp: dict, data_hash: str) -> str | None:
    done = json.loads(results.read_text())
    if done.get("cache_fingerprint") != fingerprint_id(cache_fp):
        return "the cache changed since this run"
    if done.get("data_hash") != data_hash:
        return "the data changed since this run (labels, splits or val/test images)"
    return None


def _identical_run(cfg: dict, run_dir: Path, cache_fp: dict, data_hash: str) -> Path | None:
    """A finished, current run beside `run_dir` (in train.out) made with this very config, whichever pipeline
    file and path spellings it came from: e.g. the demo's own GPR + DAMP run for `aevlp run demo`."""
    def same(config: Path) -> bool:
        other = recorded_config(config)
        return other is not None and _comparable(other) == _comparable(cfg)
    for config in sorted(run_dir.parent.glob(f"*/{RunFolder.CONFIG}")):
        d = RunFolder(config.parent)
        if d.path != run_dir and d.finished and same(config) and \
                not _stale_results(d / RunFolder.RESULTS, cache_fp, data_hash):
            return d.path
    return None


PATH_KEYS = (("dataset", "data_root"), ("dataset", "image_root"), ("cache", "path"), ("clip", "pretrained"),
             ("clip", "config"), ("text", "phrases"), ("text", "relation"), ("train", "weights"), ("train", "out"))


def _comparable(cfg: dict) -> dict:
    """A config as results depend on it: paths that exist made absolute, the pipeline file's name dropped."""
    out = {s: dict(t) for s, t in cfg.items() if s != "pipeline"}
    for section, key in PATH_KEYS:
        value = out.get(section, {}).get(key)
        if isinstance(value, str) and value and Path(value).exists():
            out[section][key] = str(Path(value).resolve())
    return out


def check_stage_two_choices(specs: Specs) -> None:
    """Refuse an unknown loss or backbone, or a missing weights file, before stage one runs (hours, on
    a real dataset), not when training starts after it (planning stage one runs nothing)."""
    LOSSES.canonical(specs.loss["name"])
    BACKBONES.canonical(specs.train.backbone)
    w = specs.train.weights
    if names_file(w) and not Path(w).is_file():
        raise ConfigError(f"train.weights = {w!r}: file not found",
                          hint="give an existing .pth/.safetensors file, or imagenet, default or none")


def plan_pipeline(cfg: dict, name: str, *, force_stage: str | None = None, limit: int | None = None,
                  reprompt: bool = True) -> PipelinePlan:
    """The decision and its reason for each stage, and the config they run with: `cfg` with its cache path
    filled in, as the run records it (`cfg` itself is not changed)."""
    specs = Specs.of(cfg)
    cfg = as_trained(updated(cfg, {"cache": {"path": str(specs.cache_path)}}))
    p1 = plan_stage_one(cfg, limit)  # stage one's own problems (data, CLIP) are reported first
    check_stage_two_choices(specs)
    check_labels_available(specs.loss["name"], specs.train.labels, p1.data.train_labels_known)
    if p1.status == "reprompt" and not reprompt:
        p1.status = "stale"
    one = _stage_one(p1, force_stage == "pseudolabel")
    run_dir = run_dir_for(cfg, name)
    if not one.run:  # a run records the stage-one settings its cache recorded: compare with those
        from aevlp.cache.reader import aligned_config, recorded_stage_one

        cfg = aligned_config(cfg, recorded_stage_one(p1.target), p1.target)
    data_hash = training_data_hash(p1.data, p1.specs.dataset.image_check)
    two = _stage_two(cfg, run_dir, p1.fingerprint, data_hash, one.run, force_stage == "train")
    downloads = _downloads(p1, Specs.of(cfg), one.run, two.run)
    return PipelinePlan([one, two], p1, run_dir, cfg, downloads)


def _downloads(p1: StageOnePlan, specs: Specs, one: bool, two: bool) -> list[str]:
    """What the stages that will run would download: CLIP weights not on this machine, ImageNet weights."""
    from aevlp.stage_one.clip_source import weights_available_locally

    out = []
    if one and p1.status != "reprompt" and not weights_available_locally(p1.clip.source):
        out.append(f"CLIP weights {p1.clip.source.name} '{p1.clip.source.pretrained}' (open_clip)")
    backbone = weights_to_download(specs.train.backbone, specs.train.weights) if two else None
    return out + ([backbone] if backbone else [])


def run_pipeline(cfg: dict, name: str, *, force_stage: str | None = None, limit: int | None = None,
                 progress: bool = True, echo=print, reprompt: bool = True, epoch_lines: bool = True) -> dict:
    """Run the stale stages; returns the training results (read back if stage two was up to date). An
    interrupted training run is resumed. `epoch_lines`: echo training's per-epoch summaries too."""
    plan = plan_pipeline(cfg, name, force_stage=force_stage, limit=limit, reprompt=reprompt)
    one, two = plan.stages
    for stage in plan.stages:
        echo(f"{stage.stage}: {'run' if stage.run else 'skip'} - {stage.reason}")
    if one.run:
        run_pseudolabel(plan.cfg, force=True, limit=limit, progress=progress, plan=plan.stage_one, reprompt=reprompt)
    if not two.run:
        return RunFolder(two.run_dir or plan.run_dir).results()
    return taught(plan.cfg, run_dir=plan.run_dir, limit=limit, progress=progress, resume=two.resume,
                     force=True, echo=echo if epoch_lines else None)  # the plan said why it re-trains
