"""A training run folder has one writer, is never replaced unasked, and its config.toml says what ran.

- `claim(run, resume=..., force=...)`: a lock (the caches' own: a lock file beside the folder, naming the
  writer's pid and host; one left by a dead process is taken over) refuses a second `aevlp train` into a
  folder being written; a finished folder (results.json) is replaced only with `force`, and an interrupted
  one only resumed, or started over with `force`. Replacing clears the old run's files first (its student
  folder, a run of its own, stays), so a replacement that is interrupted never leaves the old results
  beside the new settings.
- `resume_changes(run, cfg)`: what `--resume` may change (more epochs, the loader's worker count) and
  what it refuses (anything else: the run would no longer be the one its folder records).
"""
from __future__ import annotations

import json
from pathlib import Path

from aevlp.cache.writer import CacheLock
from aevlp.checkpoint import has_training_state
from aevlp.errors import AevlpError

__all__ = ["claim", "resume_changes", "check_record", "RESUMABLE"]

RESUMABLE = ("train.epochs", "train.workers")  # honoured by --resume; every other setting must match the run's


def _finished(run: Path) -> str | None:
    """'test mAP X at epoch E' of a finished run folder, or None."""
    try:
        r = json.loads((run / "results.json").read_text())
        return f"test mAP {float(r['test_map']):.2f}, best epoch {r.get('best_epoch')}"
    except (OSError, ValueError, KeyError, TypeError):
        return "results.json present" if (run / "results.json").exists() else None


def claim(run: Path, *, resume: bool, force: bool, echo=print) -> CacheLock:
    """The held lock of `run` (release it with `.__exit__()`), after checking it may be written."""
    lock = CacheLock(run).__enter__()
    try:
        done = _finished(run)
        if done and not resume and not force:
            raise AevlpError(f"{run} holds a finished run ({done})",
                             hint="pass --force to replace it, or --run-dir OTHER to keep it")
        if done and force and not resume:
            echo(f"note: --force: replacing the finished run in {run} ({done})")
        elif has_training_state(run) and not resume and not force:
            raise AevlpError(f"{run} holds an interrupted run (its last.pt)",
                             hint=f"go on with `aevlp train --resume {run}`, or pass --force to start it over")
        if force and not resume:
            clear(run)
    except BaseException:
        lock.__exit__(None, None, None)
        raise
    return lock


RUN_FILES = ("results.json", "best.pt", "last.pt", "last.prev.pt", "metrics.jsonl", "per_class_ap.csv",
             "class_thresholds.csv", "pseudo_per_class.csv", "config.toml")


def clear(run: Path) -> None:
    """Remove what a training run wrote into `run` (not its student folder, nor anything else put there)."""
    import shutil

    for name in RUN_FILES:
        (run / name).unlink(missing_ok=True)
    shutil.rmtree(run / "scores", ignore_errors=True)


def check_record(run: Path, record: dict | None, cfg: dict, cache: str) -> None:
    """A resumed run goes on as its last.pt was trained: `record` (what last.pt recorded: the whole config and
    the cache path; None for runs made before it did) against the config it resumes with, every setting but
    the RESUMABLE ones, and the cache. A config.toml edited by hand, or another cache, is refused."""
    from aevlp.config import changed_settings

    if not record:
        return
    diff = [f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed_settings(record.get("config", {}), cfg).items()
            if k not in RESUMABLE and k != "cache.path"]
    if diff:
        raise AevlpError(f"{run}/config.toml no longer says what its last.pt was trained with (edited since?):"
                         + "".join(f"\n    {line}" for line in diff),
                         hint="restore those settings to resume, or start a new run: --run-dir OTHER")
    if record.get("cache") and Path(record["cache"]).resolve() != Path(cache).resolve():
        raise AevlpError(f"{run} was trained from the cache {record['cache']}, not {cache}",
                         hint="resume it from its own cache (config.toml's cache.path), or start a new run")


def resume_changes(run: Path, cfg: dict) -> list[str]:
    """The settings a resume changes (each 'key: old -> new', all of them in RESUMABLE); any other
    difference from RUN/config.toml is refused."""
    from aevlp.config import changed_settings, load_config

    diff = changed_settings(load_config(run / "config.toml"), cfg)
    refused = [f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items() if k not in RESUMABLE]
    if refused:
        raise AevlpError(f"--resume continues {run} as it was started; these settings differ from its config.toml:"
                         + "".join(f"\n    {line}" for line in refused),
                         hint=f"drop them to resume (only {', '.join(RESUMABLE)} can change), or start a new run "
                              "with them: --run-dir OTHER")
    return [f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items()]
