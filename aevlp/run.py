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
from aevlp.config import dump_config, tomllib, updated
from aevlp.data import training_data_hash
from aevlp.errors import ConfigError
from aevlp.losses import LOSSES, check_labels_available
from aevlp.models import BACKBONES, names_file
from aevlp.pseudolabel import StageOnePlan, plan_stage_one, run_pseudolabel
from aevlp.specs import Specs
from aevlp.train import run_train

__all__ = ["StagePlan", "PipelinePlan", "plan_pipeline", "run_pipeline", "run_dir_for"]


@dataclass
class StagePlan:
    stage: str
    run: bool
    reason: str
    details: list[str] = field(default_factory=list)


@dataclass
class PipelinePlan:
    """The decision for each stage, and stage one's own plan (handed on, not recomputed)."""

    stages: list[StagePlan]
    stage_one: StageOnePlan
    run_dir: Path
    cfg: dict  # the resolved config both stages run with (the cache path filled in)


def run_dir_for(cfg: dict, name: str) -> Path:
    return Path(cfg["train"]["out"]) / name


def _config_diff(path: Path, cfg: dict) -> list[str]:
    if not path.exists():
        return []
    old = tomllib.loads(path.read_text())
    return [f"{s}.{k}: {old.get(s, {}).get(k)!r} -> {v!r}" for s, table in cfg.items() for k, v in table.items()
            if old.get(s, {}).get(k) != v]


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
    results, config = run_dir / "results.json", run_dir / "config.toml"
    if force:
        return StagePlan("train", True, "forced (--force-stage train)")
    if stage_one_runs:
        return StagePlan("train", True, "its cache is being recomputed")
    if not results.exists():
        return StagePlan("train", True, f"no results yet in {run_dir}")
    if not config.exists() or config.read_text() != dump_config(cfg):
        return StagePlan("train", True, f"{config} differs from the resolved pipeline", _config_diff(config, cfg))
    done = json.loads(results.read_text())
    if done.get("cache_fingerprint") != fingerprint_id(cache_fp):
        return StagePlan("train", True, "the cache changed since this run")
    if done.get("data_hash") != data_hash:
        return StagePlan("train", True, "the data changed since this run (labels, splits or val/test images)")
    return StagePlan("train", False, f"{results} is current")


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
    cfg = updated(cfg, {"cache": {"path": str(specs.cache_path)}})
    p1 = plan_stage_one(cfg, limit)  # stage one's own problems (data, CLIP) are reported first
    check_stage_two_choices(specs)
    check_labels_available(specs.loss["name"], specs.train.labels, p1.data.train_labels_known)
    if p1.status == "reprompt" and not reprompt:
        p1.status = "stale"
    one = _stage_one(p1, force_stage == "pseudolabel")
    run_dir = run_dir_for(cfg, name)
    data_hash = training_data_hash(p1.data, p1.specs.dataset.image_check)
    two = _stage_two(cfg, run_dir, p1.fingerprint, data_hash, one.run, force_stage == "train")
    return PipelinePlan([one, two], p1, run_dir, cfg)


def run_pipeline(cfg: dict, name: str, *, force_stage: str | None = None, limit: int | None = None,
                 progress: bool = True, echo=print, reprompt: bool = True) -> dict:
    """Run the stale stages; returns the training results (read back if stage two was up to date)."""
    plan = plan_pipeline(cfg, name, force_stage=force_stage, limit=limit, reprompt=reprompt)
    one, two = plan.stages
    for stage in plan.stages:
        echo(f"{stage.stage}: {'run' if stage.run else 'skip'} - {stage.reason}")
    if one.run:
        run_pseudolabel(plan.cfg, force=True, limit=limit, progress=progress, plan=plan.stage_one, reprompt=reprompt)
    if not two.run:
        return json.loads((plan.run_dir / "results.json").read_text())
    return run_train(plan.cfg, run_dir=plan.run_dir, limit=limit, progress=progress)
