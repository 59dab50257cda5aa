"""A training run folder (`RunFolder`): its files by name, one reader and one writer of its config.toml and
results.json, its lock, and the rules for replacing and resuming it.

- `claim(resume=..., force=...)`: the folder's lock (the caches' own: an OS lock on NAME.lock beside it, the
  writer's pid and host in NAME.lock.owner) refuses a second `aevlp train` into a folder being written; a
  finished folder (results.json) is replaced only with `force`, and an interrupted one only resumed, or started
  over with `force`. Replacing clears the old run's files first (its student folder, a run of its own, stays),
  so a replacement that is interrupted never leaves the old results beside the new settings.
- `resume_changes(cfg)`: what `--resume` may change (more epochs, the loader's worker count) and what it
  refuses (anything else: the run would no longer be the one its folder records); `check_record`: the same
  against last.pt's own record of the config and the cache it trained with.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from aevlp.cache.lock import CacheLock
from aevlp.errors import AevlpError, flag

__all__ = ["RunFolder", "RESUMABLE"]

RESUMABLE = ("train.epochs", "train.workers")  # honoured by --resume; every other setting must match the run's


class RunFolder:
    """One run directory. Its files: CONFIG (what ran), METRICS (one line per epoch), RESULTS (the test, once
    finished), BEST and LAST (checkpoints; LAST_PREVIOUS the one before; FUSED the fused model when a student
    was kept instead: `aevlp.stage_two.refine.kept_on_val`; TUNED the fine-tuned weights when best.pt is their
    WiSE-FT mix: `aevlp.stage_two.wise_ft`), PER_CLASS, THRESHOLDS, PSEUDO_PER_CLASS,
    SCORES (a folder: train.save_scores), STUDENT (a folder: the GPR-TS student's own run)."""

    CONFIG, METRICS, RESULTS = "config.toml", "metrics.jsonl", "results.json"
    BEST, LAST, LAST_PREVIOUS, FUSED, TUNED = "best.pt", "last.pt", "last.prev.pt", "fused.pt", "tuned.pt"
    PER_CLASS, THRESHOLDS, PSEUDO_PER_CLASS = "per_class_ap.csv", "class_thresholds.csv", "pseudo_per_class.csv"
    SCORES, STUDENT = "scores", "student"
    WRITTEN = (RESULTS, BEST, LAST, LAST_PREVIOUS, FUSED, TUNED, METRICS, PER_CLASS, THRESHOLDS, PSEUDO_PER_CLASS,
               CONFIG)

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # --- reading --------------------------------------------------------------------------------------------
    def config(self) -> dict | None:
        """config.toml as a full config (keys added to aevlp since take their defaults); None when unreadable."""
        from aevlp.config import recorded_config

        return recorded_config(self.path / self.CONFIG)

    def results(self) -> dict | None:
        """results.json, or None when the run has not finished (or the file cannot be read)."""
        try:
            out = json.loads((self.path / self.RESULTS).read_text())
        except (OSError, ValueError):
            return None
        return out if isinstance(out, dict) else None

    @property
    def finished(self) -> bool:
        return (self.path / self.RESULTS).exists()

    @property
    def has_training_state(self) -> bool:
        """Whether a finished epoch is saved (last.pt or its previous), so the run can be resumed."""
        from aevlp.stage_two.checkpoint import has_training_state

        return has_training_state(self.path)

    def state(self) -> str:
        """new (nothing), finished (results.json), interrupted (a saved epoch, no results) or started (config only)."""
        if self.finished:
            return "finished"
        if self.has_training_state:
            return "interrupted"
        return "started" if (self.path / self.CONFIG).exists() else "new"

    def summary(self) -> str | None:
        """'test mAP X, best epoch E' of a finished run, or None."""
        r = self.results()
        if r is None:
            return "results.json present" if self.finished else None
        try:
            return f"test mAP {float(r['test_map']):.2f}, best epoch {r.get('best_epoch')}"
        except (KeyError, TypeError, ValueError):
            return "results.json present"

    # --- writing --------------------------------------------------------------------------------------------
    def write_config(self, cfg: dict) -> Path:
        from aevlp.config import dump_config

        path = self.path / self.CONFIG
        path.write_text(dump_config(cfg))
        return path

    def write_results(self, results: dict) -> Path:
        path = self.path / self.RESULTS
        path.write_text(json.dumps(results, indent=1))
        return path

    def clear(self) -> None:
        """Remove what a training run wrote here (not its student folder, nor anything else put there)."""
        for name in self.WRITTEN:
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.path / self.SCORES, ignore_errors=True)

    # --- the rules ------------------------------------------------------------------------------------------
    def claim(self, *, resume: bool, force: bool, echo=print) -> CacheLock:
        """The held lock of the folder (release it with `.__exit__()`), after checking it may be written."""
        lock = CacheLock(self.path).__enter__()
        try:
            done = self.summary()
            if done and not resume and not force:
                raise AevlpError(f"{self.path} holds a finished run ({done})",
                                 hint=f"pass {flag('--force')} to replace it, or --run-dir OTHER to keep it")
            if done and force and not resume:
                echo(f"note: --force: replacing the finished run in {self.path} ({done})")
            elif self.has_training_state and not resume and not force:
                raise AevlpError(f"{self.path} holds an interrupted run (its last.pt)",
                                 hint=f"go on with `aevlp train --resume {self.path}`, or pass --force to start it "
                                      "over")
            if force and not resume:
                self.clear()
        except BaseException:
            lock.__exit__(None, None, None)
            raise
        return lock

    def resume_changes(self, cfg: dict) -> list[str]:
        """The settings a resume changes (each 'key: old -> new', all of them in RESUMABLE); any other difference
        from config.toml is refused."""
        from aevlp.config import changed_settings, load_config

        diff = changed_settings(load_config(self.path / self.CONFIG), cfg)
        refused = [f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items() if k not in RESUMABLE]
        if refused:
            raise AevlpError(f"--resume continues {self.path} as it was started; these settings differ from its "
                             "config.toml:" + "".join(f"\n    {line}" for line in refused),
                             hint=f"drop them to resume (only {', '.join(RESUMABLE)} can change), or start a new "
                                  "run with them: --run-dir OTHER")
        return [f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items()]

    def check_record(self, record: dict | None, cfg: dict, cache: str) -> None:
        """A resumed run goes on as its last.pt was trained: `record` (what last.pt recorded: the whole config and
        the cache path; None for runs made before it did) against the config it resumes with, every setting but
        the RESUMABLE ones, and the cache. A config.toml edited by hand, or another cache, is refused."""
        from aevlp.config import changed_settings

        if not record:
            return
        diff = [f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed_settings(record.get("config", {}), cfg).items()
                if k not in RESUMABLE and k != "cache.path"]
        if diff:
            raise AevlpError(f"{self.path}/{self.CONFIG} no longer says what its {self.LAST} was trained with "
                             "(edited since?):" + "".join(f"\n    {line}" for line in diff),
                             hint="restore those settings to resume, or start a new run: --run-dir OTHER")
        if record.get("cache") and Path(record["cache"]).resolve() != Path(cache).resolve():
            raise AevlpError(f"{self.path} was trained from the cache {record['cache']}, not {cache}",
                             hint="resume it from its own cache (config.toml's cache.path), or start a new run")
