"""Teacher–student rounds: a trained student's scores on its own training images, stored in the cache as
a pseudo-label source, fused with the teacher's DAMP score to select the next round's pseudo-labels.

Stage one is never re-run: the student predicts the training images (each with and without its
horizontal flip, averaged), its scores go beside the cache (`CACHE.sources/NAME.h5`) with their provenance
(run, epoch, checkpoint hash), and a new run trains with `damp.student = NAME`: at epoch e the labeler
selects from w·p_student + (1−w)·f_teacher(round (e−1) mod R) (`damp.student_weight` = w). `aevlp refine
RUN_DIR --rounds N` chains N such rounds, each resumable (a stored source is reused, an interrupted
run resumed).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from aevlp.cache import Cache
from aevlp.cache.sources import source_provenance, store_source
from aevlp.config import updated
from aevlp.errors import AevlpError

__all__ = ["student_scores", "refine", "trained_student", "taught"]


@torch.no_grad()
def student_scores(run_dir: Path, data, cache: Cache, keep: np.ndarray, n: int) -> np.ndarray:
    """[N, C] probabilities of a run's best.pt on the first n training rows (both flips averaged; rows
    stage one could not read stay 0)."""
    from aevlp.checkpoint import load_checkpoint
    from aevlp.evaluate import predict_scores
    from aevlp.imaging import ModelInput
    from aevlp.inputs import EmbeddingRows, ImageRows, make_loader

    model, meta = load_checkpoint(run_dir / "best.pt")
    out = np.zeros((n, len(meta["classnames"])), dtype=np.float32)
    cpu = torch.device("cpu")
    if meta["backbone"] == "clip-head":  # the cached global embedding of every round, averaged
        emb = cache.global_embeddings()[:, :n][:, keep].astype(np.float32)
        out[keep] = np.mean([predict_scores(model, make_loader(EmbeddingRows(e), 256, 0, cpu), cpu) for e in emb], 0)
        return out
    layout = ModelInput(meta["image_size"], channels_last=bool(meta.get("channels_last")))
    if layout.channels_last:
        model = model.to(memory_format=torch.channels_last)
    paths = [data.image_root / p for p in data.train.images[:n][keep]]
    loader = make_loader(ImageRows(paths, meta["image_size"]), 64, -1, cpu)
    both = [predict_scores(model, loader, cpu, prepare=lambda x, rows, f=f: layout(x, cpu, torch.full(
        (len(rows),), f, dtype=torch.bool))) for f in (False, True)]
    out[keep] = (both[0] + both[1]) / 2
    return out


def _checkpoint_id(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _store_student(cache: Cache, name: str, run_dir: Path, data, checkpoint: str, results: dict, **extra) -> Path:
    """Store the scores of run_dir's best.pt on every row of the cache as source NAME, with their provenance."""
    scores = student_scores(run_dir, data, cache, ~cache.f["bad"][:], len(cache))
    return store_source(cache, name, scores, {
        "run": str(run_dir.resolve()), "epoch": results["best_epoch"], "val_map": results["val_map"],
        "checkpoint": checkpoint, "flips": "both, averaged", **extra,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})


def _round(run_dir: Path, name: str, progress: bool, echo, overrides: tuple[str, ...] = ()) -> dict:
    """One teacher–student round from `run_dir`: store its student scores as `name`, train the next run."""
    from aevlp.config import tomllib
    from aevlp.specs import Specs
    from aevlp.train import run_train

    cfg = tomllib.loads((run_dir / "config.toml").read_text())
    specs = Specs.of(cfg)
    results = json.loads((run_dir / "results.json").read_text())
    nxt = run_dir.parent / name
    checkpoint = _checkpoint_id(run_dir / "best.pt")
    with Cache(specs.cache_path) as cache:
        stored = source_provenance(cache, name)
        if not stored or stored.get("checkpoint") != checkpoint:
            path = _store_student(cache, name, run_dir, specs.dataset.load(), checkpoint, results)
            echo(f"stored the student scores of {run_dir} (epoch {results['best_epoch']}) as {path}")
    new = updated(cfg, {"damp": {"student": name}})
    if overrides:  # the next round's own settings (e.g. a GR student teaching GPR: loss.name = "gpr")
        from aevlp.config import apply_overrides
        from aevlp.settings import check_section

        new = apply_overrides(new, overrides)
        for section, table in new.items():
            check_section(section, table)
    resume = (nxt / "last.pt").exists() and not (nxt / "results.json").exists()
    return run_train(new, run_dir=nxt, progress=progress, resume=resume, echo=echo)


def refine(run_dir: str | Path, rounds: int = 1, *, overrides: tuple[str, ...] = (), prefix: str | None = None,
           progress: bool = True, echo=print) -> list[dict]:
    """N teacher–student rounds from a finished run: RUN-r1, RUN-r2, ... beside it (each reused when done).
    `overrides`: `section.key=value` settings of the new rounds (the run's own otherwise); `prefix`: the new
    runs' names before -rN (the run's name otherwise)."""
    run_dir = Path(run_dir)
    if not (run_dir / "results.json").exists():
        raise AevlpError(f"{run_dir} has no finished run (results.json)",
                         hint="train it first (`aevlp train --resume RUN_DIR` finishes an interrupted one)")
    out, base = [], prefix or run_dir.name
    for r in range(1, rounds + 1):
        nxt = run_dir.parent / f"{base}-r{r}"
        if (nxt / "results.json").exists():
            echo(f"round {r}: {nxt} is done")
            out.append(json.loads((nxt / "results.json").read_text()))
        else:
            echo(f"round {r}: the student {run_dir} teaches {nxt}")
            out.append(_round(run_dir, nxt.name, progress, echo, overrides))
        run_dir = nxt
    return out


def taught(cfg: dict, run_dir: str | Path | None = None, **kwargs) -> dict:
    """`run_train`, with the student `damp.student_loss` asks for trained first (in RUN/student) and its stored
    scores fused with DAMP's; without it, `run_train` itself."""
    from aevlp import distributed
    from aevlp.recipe import as_trained, dated_run, wants_student
    from aevlp.train import run_train

    if not wants_student(cfg):
        return run_train(cfg, run_dir=run_dir, **kwargs)
    if distributed.env()[1] > 1:
        raise AevlpError("damp.student_loss trains its student in one process", hint="run it without torchrun")
    run = Path(run_dir) if run_dir is not None else dated_run(cfg)
    cache = kwargs.pop("cache", None)
    cfg = updated(cfg, {"cache": {"path": str(cache)}}) if cache is not None else cfg
    name = trained_student(as_trained(cfg), run, limit=kwargs.get("limit"), progress=kwargs.get("progress", True),
                           echo=kwargs.get("echo") or (lambda _: None))
    return run_train(cfg, run_dir=run, student=name, **kwargs)


def trained_student(cfg: dict, run: Path, *, limit: int | None = None, progress: bool = True, echo=print) -> str:
    """`damp.student_loss`: train (or reuse, or resume) a student with that method in RUN/student from the same
    cache and settings, store its scores beside the cache, and return the source's name (named by the student's
    checkpoint, so a run resumed or repeated finds it again)."""
    from aevlp.checkpoint import has_training_state
    from aevlp.config import recorded_config
    from aevlp.losses import LOSSES
    from aevlp.recipe import as_trained
    from aevlp.specs import Specs
    from aevlp.train import run_train

    method = LOSSES.canonical(cfg["damp"]["student_loss"])
    if LOSSES.get(method).uses_pseudo:
        raise AevlpError(f"damp.student_loss = {method}: the student is trained without pseudo-labels (gr, an, ...)",
                         hint="use damp.student_loss = \"gr\" (the gpr-ts method), or aevlp refine for more rounds")
    scfg = updated(cfg, {"loss": {"name": method}, "damp": {"student_loss": "", "student": ""}})
    student = run / "student"
    same = recorded_config(student / "config.toml") == as_trained(scfg)
    if not (same and (student / "results.json").exists()):
        resume = same and has_training_state(student)
        echo(f"student ({method}, damp.student_loss): {'resuming' if resume else 'training'} {student} first")
        run_train(scfg, run_dir=student, resume=resume, force=not resume, limit=limit, progress=progress, echo=echo)
    results = json.loads((student / "results.json").read_text())
    checkpoint = _checkpoint_id(student / "best.pt")
    name = f"student-{checkpoint[7:19]}"
    with Cache(Specs.of(cfg).cache_path) as cache:
        if source_provenance(cache, name) is None:  # every row of the cache, as the labeler reads them
            _store_student(cache, name, student, Specs.of(scfg).dataset.load(), checkpoint, results, method=method)
    echo(f"student: {method}, val mAP {results['val_map']:.2f}; its scores are fused with DAMP's (w = "
         f"{cfg['damp']['student_weight']:g})")
    return name
