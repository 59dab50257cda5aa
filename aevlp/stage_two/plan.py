"""What a training run will do, decided before it does anything (stage one's `StageOnePlan` has the same role):
`plan_stage_two` turns a config and a cache (or a run folder to resume) into a frozen `StageTwoPlan`, and
`aevlp.stage_two.train.execute` only carries it out. `aevlp train --dry-run` prints it.

The plan holds the config exactly as the run records it in config.toml (the cache's own stage-one settings, the
official recipe where asked, the backbone's learning rate where `train.lr` is 0, the decoding place where
`train.decode_on` is auto) and, in words, where each decision came from: the learning rate, the device and
precision, where images are decoded, the student (stored scores, or trained first), E and the per-class
thresholds' rule, the model-selection criterion, the inputs and the run folder's state. This module (and
`aevlp.config`, and the CLI) are the only places that read the config dict; everything after it reads the typed
`Specs`.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aevlp.config import updated
from aevlp.errors import ConfigError, flag
from aevlp.placement import Place, train_decode_place
from aevlp.specs import Specs, TrainSpec
from aevlp.stage_two.priors import Expected

__all__ = ["Student", "Selection", "StageTwoPlan", "plan_stage_two", "as_trained", "lr_source", "recipe_line",
           "dated_run", "wants_student"]


def as_trained(cfg: dict) -> dict:
    """cfg as the run will train: with train.recipe = official the method's official [train] values
    (`aevlp.losses.recipes`), train.lr = 0 replaced by the backbone's own rate (`Backbone.lr`) and train.decode_on
    = auto by the place it resolves to (`aevlp.placement`). This is what a run records in its config.toml, and
    what `aevlp run` compares with it."""
    from aevlp.losses import LOSSES

    specs = Specs.of(cfg)
    t = specs.train
    if t.recipe == "official":
        cfg = updated(cfg, {"train": _official(cfg, LOSSES.canonical(specs.loss["name"]))})
        t = Specs.of(cfg).train
    elif t.recipe_as:
        raise ConfigError(f"{flag('train.recipe_as', t.recipe_as)} applies with {flag('train.recipe', 'official')} "
                          "only", hint=f"add {flag('train.recipe', 'official')}, or leave train.recipe_as out")
    if t.decode_on == "auto":
        cfg = updated(cfg, {"train": {"decode_on": train_decode_place(t, specs.dataset.data_root).where}})
    return cfg if t.lr else updated(cfg, {"train": {"lr": _rate(t.backbone, t.lr)}})


def _rate(backbone: str, lr: float) -> float:
    """The learning rate that runs: train.lr, or the backbone's own where it is 0."""
    from aevlp.stage_two.models import BACKBONES

    return lr or BACKBONES.get(backbone).lr


def _official(cfg: dict, method: str) -> dict:
    """The [train] values of `method`'s official recipe here: the dataset's own on a benchmark, else the one
    train.recipe_as names, carried over relative to that benchmark's pipeline (`recipes.carried_recipe`)."""
    from aevlp.config import find_pipeline, load_config
    from aevlp.data.registry import get_dataset
    from aevlp.losses import recipes

    t = Specs.of(cfg).train
    if not t.recipe_as:
        return recipes.official_recipe(method, get_dataset(Specs.of(cfg).dataset.name).name)
    here = _recipe_base(t.recipe_base) if t.recipe_base else \
        {"lr": _rate(t.backbone, t.lr), "batch_size": t.batch_size, "epochs": t.epochs}
    there = load_config(find_pipeline(recipes.PIPELINE_OF[t.recipe_as]))["train"]
    there = {**there, "lr": _rate(there["backbone"], there["lr"])}
    base = f"{here['lr']:g}/{here['batch_size']}/{here['epochs']}"  # recorded: applied again, nothing changes
    return {**recipes.carried_recipe(method, t.recipe_as, here, there), "recipe_base": base}


def _recipe_base(text: str) -> dict:
    """train.recipe_base "LR/BATCH/EPOCHS" as the values a carried recipe scales from."""
    try:
        lr, batch, epochs = text.split("/")
        return {"lr": float(lr), "batch_size": int(batch), "epochs": int(epochs)}
    except ValueError:
        raise ConfigError(f"train.recipe_base = {text!r} is not LR/BATCH/EPOCHS (e.g. 0.0003/32/8)",
                          hint="leave it out: a carried recipe (train.recipe_as) writes it") from None


def lr_source(cfg: dict) -> str:
    """Where the run's learning rate comes from, in words (before `as_trained` fills it in)."""
    specs = Specs.of(cfg)
    if specs.train.recipe == "official":
        on = f" on {specs.train.recipe_as}, relative to its pipeline" if specs.train.recipe_as else ""
        return f"the official recipe of {specs.loss['name']}{on}"
    return "train.lr" if specs.train.lr else f"{specs.train.backbone}'s default; --lr or train.lr to change it"


def recipe_line(t: TrainSpec, lr_source: str) -> str:
    """The run's first line: the backbone, the rates that run and where the rate came from, the recipe."""
    return (f"training {t.backbone}: lr {t.lr:g} ({lr_source}), head lr {t.lr * t.lr_mult:g}, {t.epochs} epochs, "
            f"batch {t.batch_size}, {t.optimizer}, {t.recipe} recipe")


def dated_run(cfg: dict) -> Path:
    """A new run folder: OUT/DATASET-METHOD-YYYYmmdd-HHMMSS."""
    from aevlp.data.registry import get_dataset

    specs = Specs.of(cfg)
    return Path(specs.train.out) / \
        f"{get_dataset(specs.dataset.name).name}-{specs.loss['name']}-{dt.datetime.now():%Y%m%d-%H%M%S}"


def wants_student(cfg: dict) -> bool:
    """Whether the run trains a student first (`damp.student_loss`): only for a method that selects from DAMP's
    scores or learns from them (gpr-soft; not one without pseudo-labels, nor one with its own selection, as VLPL),
    on observed labels."""
    from aevlp.losses import LOSSES

    specs = Specs.of(cfg)
    spec = LOSSES.get(specs.loss["name"])
    reads_teacher = (spec.uses_pseudo or spec.reads_scores) and spec.pseudo_labels is None
    return bool(specs.damp.student_loss) and reads_teacher and specs.train.labels != "full"


@dataclass(frozen=True)
class Student:
    """The scores fused with DAMP's before selection: none, a stored source (`damp.student`, `aevlp refine`), or
    a student trained first (`damp.student_loss`: into RUN/student; `name` once its scores are stored)."""

    kind: str = "none"  # none | stored | trained
    name: str = ""
    method: str = ""

    def describe(self, run_dir: Path) -> str:
        if self.kind == "stored":
            return f"the stored scores '{self.name}' (damp.student), fused with DAMP's"
        if self.kind == "trained":
            made = f" (its scores: '{self.name}')" if self.name else ""
            if self.method == "best":
                return (f"a GR, an EM and a GPR-soft student trained first into {run_dir}/student-*; the "
                        f"best on val{made} fused with DAMP's")
            return f"a {self.method} student trained first into {run_dir / 'student'}{made}, fused with DAMP's"
        return "none"


@dataclass(frozen=True)
class Selection:
    """How the run selects its pseudo-labels, decided from the cache and the data before training: E (expected
    positives per image) with its source, and each class's θ (None: one θ for every class) with the rule's table.
    `before_student`: a student is still to be trained (a dry run), and its fused scores will move θ."""

    expected: Expected
    thresholds: tuple[float, ...] | None
    table: object = None  # the rule's per-class table (aevlp.stage_two.thresholds), or None
    rule: str = ""
    before_student: bool = False

    def lines(self, global_theta: float) -> list[str]:
        e = self.expected
        lines = [f"expected positives per image E: {e.value:.3g} ({e.source})"]
        if self.thresholds is None:
            lines.append(f"per-class θ: one θ for every class ({global_theta:g})")
        else:
            theta = np.asarray(self.thresholds)
            on = theta[theta <= 1]
            lines.append(f"per-class θ ({self.rule}): " + (f"{on.min():.3g}–{on.max():.3g} over {len(on)} classes"
                                                            if len(on) else "no class")
                         + (f"; {int((theta > 1).sum())} class(es) without pseudo-positives (teacher unreliable)"
                            if (theta > 1).any() else ""))
        if self.before_student:
            lines.append("  (from the teacher alone: the student trained first moves them)")
        return lines


@dataclass(frozen=True)
class StageTwoPlan:
    """Everything a training run decides before it trains (module docstring)."""

    cfg: dict  # what config.toml records
    specs: Specs
    cache: Path
    run_dir: Path
    folder_state: str  # new | started | interrupted | finished (aevlp.stage_two.run_folder)
    resume: bool
    force: bool
    changes: tuple[str, ...]  # what a resume changes (RESUMABLE settings)
    lr_source: str
    decode: Place
    device: str
    precision: str
    student: Student
    selection: Selection
    data: object = None  # the dataset (aevlp.data.SPMLData), loaded once, checked against the cache
    limit: int | None = None
    explicit: tuple[str, ...] = ()  # the user's --set keys (a stage-one one contradicting the cache is refused)
    notes: tuple[str, ...] = field(default=())

    @property
    def t(self) -> TrainSpec:
        return self.specs.train

    def lines(self) -> list[str]:
        """The plan in words, one decision a line (`aevlp train --dry-run`)."""
        s, t = self.specs, self.specs.train
        what = {"new": "new", "started": "started, no epoch saved (starts over)", "finished": "finished",
                "interrupted": "interrupted (last.pt)"}[self.folder_state]
        return [f"run folder: {self.run_dir} ({what}{'; resumed' if self.resume else ''}"
                f"{'; replaced (--force)' if self.force and not self.resume and self.folder_state != 'new' else ''})",
                f"cache: {self.cache}", f"data: {s.dataset.name} at {s.dataset.data_root}"
                + (f", the first {self.limit} training images" if self.limit else ""),
                f"method: {s.loss['name']} on {t.labels} labels; {recipe_line(t, self.lr_source)}",
                f"device: {self.device} ({self.precision}); images: {self.decode.where} ({self.decode.why})",
                f"student: {self.student.describe(self.run_dir)}",
                f"pseudo-labels: damp.source = {s.damp.source}, min_auc {s.damp.min_auc:g}",
                *self.selection.lines(s.damp.threshold),
                f"model selection: train.select = {t.select} (auto: val with a fully labelled val split, else "
                "observed-auc)",
                *(f"resumed with: {c}" for c in self.changes), *self.notes]


def plan_stage_two(cfg: dict, *, cache: str | Path | None = None, run_dir: str | Path | None = None,
                   resume: bool = False, force: bool = False, limit: int | None = None,
                   explicit: tuple[str, ...] = (), student: str = "", dry: bool = False) -> StageTwoPlan:
    """The plan of a training run with `cfg` from `cache` (default: the config's cache.path, else
    cache/DATASET.h5) into `run_dir` (default: a new dated folder under train.out). `resume`: go on from the
    folder's last.pt (a folder whose first epoch never finished starts over); `explicit`: the --set keys (a
    stage-one setting among them that contradicts the cache is refused); `student`: the stored scores of the
    student `damp.student_loss` trained (`aevlp.stage_two.refine.taught` trains it first); `dry`: a plan to print
    only (`train --dry-run`), where that student is yet to be trained."""
    from aevlp.cache.reader import aligned_config, recorded_stage_one
    from aevlp.device import resolve_device, resolve_train_precision
    from aevlp.stage_two.run_folder import RunFolder

    if cache is not None:
        cfg = updated(cfg, {"cache": {"path": str(cache)}})
    specs = Specs.of(cfg)
    path = specs.cache_path
    if not path.exists():
        from aevlp.cache.reader import Cache

        Cache(path)  # the one message for a missing cache (what made it, what to run)
    notes = []
    if specs.train.labels == "full" and (specs.damp.student or specs.damp.student_loss):
        notes.append("note: train.labels = full: the student settings (damp.student / damp.student_loss) are not "
                     "used; every label is known")
    if wants_student(cfg) and not student and not dry:
        raise ConfigError("damp.student_loss needs its student trained first", hint="train with `aevlp train` or "
                          "`aevlp run` (aevlp.stage_two.refine.taught in Python)")
    lr_from = lr_source(cfg)
    full = as_trained(aligned_config(cfg, recorded_stage_one(path), path, explicit))
    t = Specs.of(full).train
    decode = train_decode_place(Specs.of(cfg).train, specs.dataset.data_root)
    folder = RunFolder(run_dir if run_dir is not None else dated_run(cfg))
    if resume and not folder.has_training_state:
        notes.append(f"note: {folder.path} holds no finished epoch (interrupted before the first ended): starting it "
                     "over")
        resume = False
    changes = tuple(folder.resume_changes(full)) if resume else ()
    device = resolve_device(t.device, "train.device")
    kind = "trained" if wants_student(cfg) and (student or dry) else "stored" if specs.damp.student else "none"
    if specs.train.labels == "full":
        kind = "none"
    fused = student or specs.damp.student if kind != "none" else ""
    data = Specs.of(full).dataset.load()
    return StageTwoPlan(cfg=full, specs=Specs.of(full), cache=path, run_dir=folder.path, folder_state=folder.state(),
                        resume=resume, force=force, changes=changes, lr_source=lr_from, decode=decode,
                        device=str(device), precision=resolve_train_precision(t.precision, device),
                        student=Student(kind, student or specs.damp.student, specs.damp.student_loss),
                        selection=_selection(full, path, data, limit, fused,
                                             before_student=kind == "trained" and not fused),
                        data=data, limit=limit, explicit=tuple(explicit), notes=tuple(notes))


def _selection(cfg: dict, cache: Path, data, limit: int | None, student: str, before_student: bool) -> Selection:
    """E and each class's θ for the run's training rows, as the labeler training builds selects with
    (`aevlp.stage_two.labeler.labeler_for`; `student`: the stored scores fused in, or none), once the cache is
    checked against the data (`data`: the loaded dataset)."""
    from aevlp.cache.reader import Cache
    from aevlp.stage_two.labeler import labeler_for

    specs = Specs.of(cfg)
    n = len(data.train) if limit is None else min(limit, len(data.train))
    cache_file = Cache(cache)
    try:
        cache_file.check_matches(list(data.train.images[:n]), data.train.observed[:n], data.classnames)
        labeler = labeler_for(cache_file, updated(cfg, {"damp": {"student": ""}}), data=data, student=student,
                              observed=data.train.observed[:n])
        theta = None if labeler.thresholds is None else tuple(float(t) for t in labeler.thresholds)
        return Selection(labeler.expected, theta, labeler.threshold_table, specs.damp.class_thresholds,
                         before_student)
    finally:
        cache_file.close()
