"""A training run folder has one writer, is never replaced unasked, and its config.toml says what ran.

- `claim(run, resume=..., force=...)`: a lock (the caches' own: a lock file beside the folder, naming the
  writer's pid and host; one left by a dead process is taken over) refuses a second `aevlp train` into a
  folder being written; a finished folder (results.json) is replaced only with `force`, and an interrupted
  one only resumed, or started over with `force`.
- `resume_changes(run, cfg)`: what `--resume` may change (more epochs, the loader's worker count) and
  what it refuses (anything else: the run would no longer be the one its folder records).
"""
from __future__ import annotations

import json
from pathlib import Path

from aevlp.cache.writer import CacheLock
from aevlp.checkpoint import has_training_state
from aevlp.errors import AevlpError

__all__ = ["claim", "resume_changes", "RESUMABLE"]

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
    except BaseException:
        lock.__exit__(None, None, None)
        raise
    return lock


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
