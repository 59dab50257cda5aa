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
import shutil
from pathlib import Path

import numpy as np
import torch

from aevlp.cache import Cache
from aevlp.cache.sources import checkpoint_id, source_provenance, store_source
from aevlp.config import updated
from aevlp.device import Inference, inference
from aevlp.errors import AevlpError
from aevlp.registry import did_you_mean

__all__ = ["student_scores", "student_val_scores", "refine", "trained_student", "taught", "run_selection",
           "student_folders", "chosen_student", "kept_on_val", "val_score", "BEST_OF"]


@torch.no_grad()
def student_scores(run_dir: Path, data, cache: Cache, keep: np.ndarray, n: int,
                   infer: Inference | None = None) -> np.ndarray:
    """[N, C] probabilities of a run's best.pt on the first n training rows (both flips averaged; rows
    stage one could not read stay 0), on `infer`'s device (`aevlp.device.inference`: the GPU when there is one)."""
    from aevlp.stage_two.checkpoint import load_checkpoint

    infer = infer or inference()
    model, meta = load_checkpoint(run_dir / "best.pt")
    out = np.zeros((n, len(meta["classnames"])), dtype=np.float32)
    if meta["backbone"] == "clip-head":  # the cached global embedding of every round, averaged
        emb = cache.global_embeddings()[:, :n][:, keep].astype(np.float32)
        out[keep] = np.mean([_embedded(model, e, infer) for e in emb], 0)
        return out
    out[keep] = _both_flips(model, meta, [data.image_root / p for p in data.train.images[:n][keep]], infer)
    return out


@torch.no_grad()
def student_val_scores(run_dir: Path, data, cache: Cache, infer: Inference | None = None) -> np.ndarray | None:
    """[M, C] probabilities of a run's best.pt on the dataset's val split (both flips averaged; a clip-head
    model: the cached val embeddings), or None where a clip-head model has no stored val embeddings."""
    from aevlp.stage_two.checkpoint import load_checkpoint

    infer = infer or inference()
    model, meta = load_checkpoint(run_dir / "best.pt")
    if meta["backbone"] == "clip-head":
        return _embedded(model, cache.eval_embeddings("val").astype(np.float32), infer) \
            if cache.has_eval_embeddings() else None
    return _both_flips(model, meta, [data.image_root / p for p in data.val.images], infer)


def _embedded(model, emb: np.ndarray, infer: Inference) -> np.ndarray:
    from aevlp.stage_two.evaluate import predict_scores
    from aevlp.stage_two.inputs import EmbeddingRows, make_loader

    model = model.to(infer.device)
    loader = make_loader(EmbeddingRows(emb), max(256, infer.batch_size), 0, infer.device)
    return predict_scores(model, loader, infer.device, infer.precision)


def _both_flips(model, meta: dict, paths: list[Path], infer: Inference) -> np.ndarray:
    """[M, C] a checkpoint's probabilities on image files, the mean of each image and its horizontal flip."""
    from aevlp.stage_two.evaluate import predict_scores
    from aevlp.stage_two.inputs import ImageRows, input_layout, make_loader

    dev = infer.device
    layout = input_layout(meta, bool(meta.get("channels_last")))
    model = model.to(dev)
    if layout.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = make_loader(ImageRows(paths, meta["image_size"]), infer.batch_size, -1, dev)
    both = [predict_scores(model, loader, dev, infer.precision, prepare=lambda x, rows, f=f: layout(
        x, dev, torch.full((len(rows),), f, dtype=torch.bool))) for f in (False, True)]
    return (both[0] + both[1]) / 2


def _source_name(checkpoint: str) -> str:
    """The stored source of a `damp.student_loss` student: named by its checkpoint, so it is found again."""
    return f"student-{checkpoint[7:19]}"


def run_selection(run_dir: str | Path) -> tuple[dict, str]:
    """(config, student source) a finished training run selected its pseudo-labels with: its config.toml, and the
    stored scores of its student (`damp.student_loss`: RUN/student's) or `damp.student`."""
    from aevlp.specs import Specs
    from aevlp.stage_two.run_folder import RunFolder

    run_dir = Path(run_dir)
    cfg = RunFolder(run_dir).config()
    if cfg is None:
        raise AevlpError(f"{run_dir} has no readable config.toml: not a training run folder",
                         hint="pass a folder `aevlp train` wrote (it holds config.toml and results.json)")
    damp = Specs.of(cfg).damp
    if damp.student_loss:
        best = chosen_student(run_dir, damp.student_loss)[1] / RunFolder.BEST
        if not best.exists():
            raise AevlpError(f"{run_dir} trains with a student (damp.student_loss = {damp.student_loss}) "
                             f"but {best} is missing", hint="train the run first (`aevlp train --resume RUN`)")
        return cfg, _source_name(checkpoint_id(best))
    return cfg, damp.student


def _store_student(cache: Cache, name: str, run_dir: Path, data, checkpoint: str, results: dict,
                   device: str = "auto", **extra) -> Path:
    """Store the scores of run_dir's best.pt on every row of the cache as source NAME, with their provenance;
    scored on `device` (the training run's train.device) by the one inference rule."""
    infer = inference(device)
    scores = student_scores(run_dir, data, cache, ~cache.f["bad"][:], len(cache), infer)
    val = student_val_scores(run_dir, data, cache, infer)
    return store_source(cache, name, scores, {
        "run": str(run_dir.resolve()), "epoch": results["best_epoch"], "val_map": results["val_map"],
        "checkpoint": checkpoint, "flips": "both, averaged", "val_rows": 0 if val is None else len(val), **extra,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}, val_scores=val,
        val_ids=None if val is None else list(data.val.images))


def _round_config(run_dir: Path, name: str, overrides: tuple[str, ...]) -> dict:
    """The next round's resolved config: the run's own (its config.toml), its student the source `name` (a GPR-TS
    run's own student stays in its past: the run itself teaches now), then `overrides` (each checked)."""
    from aevlp.config import apply_overrides
    from aevlp.settings import check_section
    from aevlp.stage_two.run_folder import RunFolder

    cfg = RunFolder(run_dir).config()
    if cfg is None:
        raise AevlpError(f"{run_dir} has no readable config.toml: not a training run folder",
                         hint="refine a folder `aevlp train` wrote")
    new = updated(cfg, {"damp": {"student": name, "student_loss": ""}})
    new = apply_overrides(new, overrides)  # the next round's own settings (e.g. a GR student teaching GPR)
    for section, table in new.items():
        check_section(section, table)
    return new


def _round_done(nxt: Path, cfg: dict, checkpoint: str) -> str | None:
    """Why round folder `nxt` cannot stand for this round (None: it is done): no results, other settings, or a
    student that is not the teacher run's current best.pt."""
    from aevlp.stage_two.plan import as_trained
    from aevlp.stage_two.run_folder import RunFolder

    folder = RunFolder(nxt)
    results = folder.results()
    if results is None:
        return "not trained yet"
    if folder.config() != as_trained(cfg):
        return "trained with other settings"
    made = (results.get("student") or {}).get("checkpoint")
    return None if made == checkpoint else "trained from an earlier student (its teacher run was trained again)"


def _round(run_dir: Path, nxt: Path, cfg: dict, checkpoint: str, progress: bool, echo, device: str | None,
           force: bool) -> dict:
    """One teacher–student round from `run_dir`: store its student scores as `nxt.name`, train `nxt`."""
    from aevlp.specs import Specs
    from aevlp.stage_two.run_folder import RunFolder
    from aevlp.stage_two.train import run_train

    specs = Specs.of(cfg)
    results = RunFolder(run_dir).results()
    with Cache(specs.cache_path) as cache:
        stored = source_provenance(cache, nxt.name)
        if not stored or stored.get("checkpoint") != checkpoint:
            path = _store_student(cache, nxt.name, run_dir, specs.dataset.load(), checkpoint, results,
                                  device or specs.train.device)
            echo(f"stored the student scores of {run_dir} (epoch {results['best_epoch']}) as {path}")
    resume = not force and RunFolder(nxt).state() == "interrupted"
    return run_train(cfg, run_dir=nxt, progress=progress, resume=resume, force=force, echo=echo)


def refine(run_dir: str | Path, rounds: int = 1, *, overrides: tuple[str, ...] = (), prefix: str | None = None,
           progress: bool = True, echo=print, device: str | None = None, until_worse: bool = True) -> list[dict]:
    """Up to N teacher–student rounds from a finished run: RUN-r1, RUN-r2, ... beside it. A round is reused only
    when its folder was trained with these settings from the student its teacher run holds now; otherwise it is
    trained again (an interrupted one resumed). With `until_worse` the rounds stop at the first one whose val mAP
    is not above its teacher's (that round is kept and reported). `overrides`: `section.key=value` settings of the
    new rounds (the run's own otherwise; checked whether or not a round trains); `prefix`: the new runs' names
    before -rN (the run's name otherwise). Each result gains `round_gain` (val mAP over its teacher's) and
    `round_seconds` (its training time)."""
    from aevlp.stage_two.run_folder import RunFolder

    run_dir = Path(run_dir)
    if not RunFolder(run_dir).finished:
        raise AevlpError(f"{run_dir} has no finished run (results.json)",
                         hint="train it first (`aevlp train --resume RUN_DIR` finishes an interrupted one)")
    out, base = [], prefix or run_dir.name
    for r in range(1, rounds + 1):
        nxt = run_dir.parent / f"{base}-r{r}"
        cfg = _round_config(run_dir, nxt.name, overrides)
        checkpoint = checkpoint_id(run_dir / "best.pt")
        why = _round_done(nxt, cfg, checkpoint)
        if why is None:
            echo(f"round {r}: {nxt} is done")
            out.append(RunFolder(nxt).results())
        else:
            stale = why != "not trained yet"
            echo(f"round {r}: the student {run_dir} teaches {nxt}" + (f" (again: {why})" if stale else ""))
            out.append(_round(run_dir, nxt, cfg, checkpoint, progress, echo, device, force=stale))
        gain = out[-1]["val_map"] - RunFolder(run_dir).results()["val_map"]
        out[-1] = {**out[-1], "round_gain": gain, "round_seconds": _training_seconds(nxt)}
        run_dir = nxt
        if until_worse and gain <= 0 and r < rounds:
            echo(f"round {r} did not improve val mAP on its teacher ({gain:+.2f}): no more rounds "
                 f"(--all-rounds runs all {rounds})")
            break
    return out


def _training_seconds(run_dir: Path) -> float:
    """A run's training time: the last epoch's `seconds` in metrics.jsonl (0 when it has none)."""
    import json

    from aevlp.stage_two.run_folder import RunFolder

    path = run_dir / RunFolder.METRICS
    lines = path.read_text().splitlines() if path.exists() else []
    return float(json.loads(lines[-1]).get("seconds", 0.0)) if lines else 0.0


def taught(cfg: dict, run_dir: str | Path | None = None, **kwargs) -> dict:
    """`run_train`, with the student `damp.student_loss` asks for trained first (in RUN/student) and its stored
    scores fused with DAMP's; without it, `run_train` itself."""
    from aevlp import distributed
    from aevlp.stage_two.plan import as_trained, dated_run, wants_student
    from aevlp.stage_two.train import run_train

    if not wants_student(cfg):
        return run_train(cfg, run_dir=run_dir, **kwargs)
    if distributed.env()[1] > 1:
        raise AevlpError("damp.student_loss trains its student in one process", hint="run it without torchrun")
    run = Path(run_dir) if run_dir is not None else dated_run(cfg)
    cache = kwargs.pop("cache", None)
    cfg = updated(cfg, {"cache": {"path": str(cache)}}) if cache is not None else cfg
    echo = kwargs.get("echo") or (lambda _: None)
    name = trained_student(as_trained(cfg), run, limit=kwargs.get("limit"), progress=kwargs.get("progress", True),
                           echo=echo)
    fused = run_train(cfg, run_dir=run, student=name, **kwargs)
    from aevlp.specs import Specs

    return kept_on_val(run, fused, echo) if Specs.of(cfg).damp.student_loss == "best" else fused


def kept_on_val(run: Path, fused: dict, echo=print) -> dict:
    """`damp.student_loss = "best"`: the run's model is the better on val of the fused run and the student that
    taught it (the fused one on a tie), by the runs' own model-selection criterion (`val_score`). When it is the
    student, its best.pt and per-class APs take the run's file names (the fused model moves to FUSED) and
    results.json takes its val/test figures; `kept` says which model the run is, why, and what the other scored."""
    from aevlp.stage_two.run_folder import RunFolder

    if "kept" in fused:
        return fused
    method, folder = chosen_student(run, "best")
    student, rf = RunFolder(folder).results(), RunFolder(run)
    shown = ("val_map", "test_map", "selection")
    if student is None or val_score(student) <= val_score(fused):
        other = None if student is None else {k: student[k] for k in shown if k in student}
        kept = {"model": "fused", "why": f"its {_criterion(fused)} at least its student's",
                "student": f"student-{method}", "other": other}
        out = {**fused, "kept": kept}
    else:
        (rf / RunFolder.BEST).replace(rf / RunFolder.FUSED)
        shutil.copyfile(folder / RunFolder.BEST, rf / RunFolder.BEST)
        shutil.copyfile(folder / RunFolder.PER_CLASS, rf / RunFolder.PER_CLASS)
        figures = {k: student[k] for k in ("val_map", "test_map", "test_metrics", "best_epoch", "selection")
                   if k in student}
        kept = {"model": f"student-{method}", "why": f"its {_criterion(student)} {val_score(student):.2f} is above "
                f"the fused run's {val_score(fused):.2f}", "other": {k: fused[k] for k in shown if k in fused}}
        out = {**fused, **figures, "kept": kept}
        echo(f"kept: the {method} student ({kept['why']}); the fused model is {rf / RunFolder.FUSED}")
    rf.write_results(out)
    return out


def val_score(results: dict) -> float:
    """What a finished run maximised on val to pick its epoch (results.json's selection value: the val mAP with a
    fully labelled val split; on observed-only data the held-out rows' observed AUC, since their mAP against single
    tags ranks methods that find the other positives last); the val mAP for runs that do not record it."""
    return float((results.get("selection") or {}).get("value", results["val_map"]))


def _criterion(results: dict) -> str:
    name = (results.get("selection") or {}).get("criterion", "val")
    return "val mAP" if name in ("val", "last") else f"val {name}"


BEST_OF = ("gr", "em", "gpr-soft")  # damp.student_loss = "best": all trained, the best on val teaches


def student_folders(run: Path, student_loss: str) -> dict[str, Path]:
    """method -> the folder its student trains in: RUN/student, or with `best` RUN/student-METHOD for each of
    BEST_OF."""
    from aevlp.stage_two.run_folder import RunFolder

    if student_loss == "best":
        return {m: run / f"{RunFolder.STUDENT}-{m}" for m in BEST_OF}
    return {student_loss: run / RunFolder.STUDENT}


def chosen_student(run: Path, student_loss: str) -> tuple[str, Path]:
    """(method, folder) of the student that teaches: the only one, or with `best` the finished one of higher
    `val_score` (the first on a tie)."""
    from aevlp.stage_two.run_folder import RunFolder

    folders = student_folders(run, student_loss)
    results = {m: RunFolder(p).results() for m, p in folders.items()}
    method = max(folders, key=lambda m: val_score(results[m]) if results[m] else float("-inf"))
    return method, folders[method]


def trained_student(cfg: dict, run: Path, *, limit: int | None = None, progress: bool = True, echo=print) -> str:
    """`damp.student_loss`: train (or reuse, or resume) a student with that method in RUN/student from the same
    cache and settings (`best`: a GR, an EM and a GPR-soft student, the best on val teaches), store its scores
    beside the cache, and return the source's name (named by the student's checkpoint, so a run resumed or
    repeated finds it again)."""
    from aevlp.specs import Specs
    from aevlp.stage_two.run_folder import RunFolder

    specs = Specs.of(cfg)
    folders = student_folders(run, specs.damp.student_loss)
    for method, folder in folders.items():
        _train_student(cfg, method, folder, limit=limit, progress=progress, echo=echo)
    method, student = chosen_student(run, specs.damp.student_loss)
    folder = RunFolder(student)
    results = folder.results()
    if len(folders) > 1:
        echo(f"students (damp.student_loss = best), {_criterion(results)}: " + ", ".join(
            f"{m} {val_score(RunFolder(p).results()):.2f}" for m, p in folders.items()) + f"; the {method} student "
            "teaches")
    checkpoint = checkpoint_id(folder / RunFolder.BEST)
    name = _source_name(checkpoint)
    with Cache(specs.cache_path) as cache:
        stored = source_provenance(cache, name)
        if stored is None or "val_rows" not in stored:  # every row of the cache (and the val split), as read
            sp = Specs.of(_student_config(cfg, method))
            _store_student(cache, name, student, sp.dataset.load(), checkpoint, results, sp.train.device, method=method)
    echo(f"student: {method}, val mAP {results['val_map']:.2f}; its scores are fused with DAMP's (w = "
         f"{specs.damp.student_weight:g})")
    return name


def _student_config(cfg: dict, method: str) -> dict:
    return updated(cfg, {"loss": {"name": method}, "damp": {"student_loss": "", "student": ""}})


def _train_student(cfg: dict, method: str, student: Path, *, limit, progress: bool, echo) -> None:
    """Train, resume or reuse the `method` student in folder `student`."""
    from aevlp.losses import LOSSES
    from aevlp.stage_two.plan import as_trained
    from aevlp.stage_two.run_folder import RunFolder
    from aevlp.stage_two.train import run_train

    if method not in LOSSES:
        raise AevlpError(f"damp.student_loss = {method}: not a method{did_you_mean(method, [*LOSSES.names(), 'best'])}",
                         hint='use damp.student_loss = "gr" (the gpr-ts method), "em", or "best" (GR, EM and '
                              'GPR-soft students; the best on val teaches)')
    method = LOSSES.canonical(method)
    if LOSSES.get(method).uses_pseudo:
        raise AevlpError(f"damp.student_loss = {method}: the student is trained without pseudo-labels (gr, an, ...)",
                         hint="use damp.student_loss = \"gr\" (the gpr-ts method), or aevlp refine for more rounds")
    scfg = _student_config(cfg, method)
    folder = RunFolder(student)
    same = folder.config() == as_trained(scfg)
    if not (same and folder.finished):
        resume = same and folder.has_training_state
        echo(f"student ({method}, damp.student_loss): {'resuming' if resume else 'training'} {student} first")
        run_train(scfg, run_dir=student, resume=resume, force=not resume, limit=limit, progress=progress, echo=echo)
