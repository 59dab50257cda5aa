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

from aevlp.config import dump_config
from aevlp.pseudolabel import cache_path, plan_stage_one, run_pseudolabel
from aevlp.train import run_train

__all__ = ["StagePlan", "plan_pipeline", "run_pipeline", "run_dir_for", "fingerprint_id"]


@dataclass
class StagePlan:
    stage: str
    run: bool
    reason: str
    details: list[str] = field(default_factory=list)


def fingerprint_id(fp: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def run_dir_for(cfg: dict, name: str) -> Path:
    return Path(cfg["train"]["out"]) / name


def _stage_two(cfg: dict, run_dir: Path, cache_fp: dict, stage_one_runs: bool, force: bool) -> StagePlan:
    results, config = run_dir / "results.json", run_dir / "config.toml"
    if force:
        return StagePlan("train", True, "forced (--force-stage train)")
    if stage_one_runs:
        return StagePlan("train", True, "its cache is being recomputed")
    if not results.exists():
        return StagePlan("train", True, f"no results yet in {run_dir}")
    if not config.exists() or config.read_text() != dump_config(cfg):
        return StagePlan("train", True, f"{config} differs from the resolved pipeline",
                         _config_diff(config, cfg))
    if json.loads(results.read_text()).get("cache_fingerprint") != fingerprint_id(cache_fp):
        return StagePlan("train", True, "the cache changed since this run")
    return StagePlan("train", False, f"{results} is current")


def _config_diff(path: Path, cfg: dict) -> list[str]:
    from aevlp.config import tomllib

    if not path.exists():
        return []
    old = tomllib.loads(path.read_text())
    return [f"{s}.{k}: {old.get(s, {}).get(k)!r} -> {v!r}" for s, table in cfg.items() for k, v in table.items()
            if old.get(s, {}).get(k) != v]


def plan_pipeline(cfg: dict, name: str, *, force_stage: str | None = None, limit: int | None = None) -> list[StagePlan]:
    """The decision and its reason for each stage. Fills in cfg's cache path, as the run will record it."""
    return _plan(cfg, name, force_stage, limit)[0]


def _plan(cfg: dict, name: str, force_stage: str | None, limit: int | None) -> tuple[list[StagePlan], dict]:
    """The stage plans and stage one's own plan, which the run hands on instead of recomputing
    (loading the dataset and hashing the weights file again)."""
    cfg["cache"]["path"] = str(cache_path(cfg))
    p1 = plan_stage_one(cfg, limit)
    status, target = p1["status"], p1["target"]
    if force_stage == "pseudolabel":
        one = StagePlan("pseudolabel", True, "forced (--force-stage pseudolabel)")
    elif status == "up-to-date":
        one = StagePlan("pseudolabel", False, f"{target} matches the pipeline")
    elif status == "stale":
        one = StagePlan("pseudolabel", True, f"{target} was made with other settings", p1["diff"])
    elif status == "resume":
        one = StagePlan("pseudolabel", True, f"an unfinished run will be resumed ({target}.partial)")
    else:
        one = StagePlan("pseudolabel", True, f"no cache at {target}")
    two = _stage_two(cfg, run_dir_for(cfg, name), p1["fingerprint"], one.run, force_stage == "train")
    return [one, two], p1


def run_pipeline(cfg: dict, name: str, *, force_stage: str | None = None, limit: int | None = None,
                 progress: bool = True, echo=print) -> dict:
    """Run the stale stages; returns the training results (read back if stage two was up to date)."""
    (one, two), p1 = _plan(cfg, name, force_stage, limit)
    for plan in (one, two):
        echo(f"{plan.stage}: {'run' if plan.run else 'skip'} - {plan.reason}")
    if one.run:
        run_pseudolabel(cfg, force=True, limit=limit, progress=progress, plan=p1)
    run_dir = run_dir_for(cfg, name)
    if not two.run:
        return json.loads((run_dir / "results.json").read_text())
    results = run_train(cfg, pseudo=cfg["cache"]["path"], run_dir=run_dir, limit=limit, progress=progress)
    # the cache now carries exactly the planned fingerprint (computed or found up to date)
    results["cache_fingerprint"] = fingerprint_id(p1["fingerprint"])
    (run_dir / "results.json").write_text(json.dumps(results, indent=1))
    return results
