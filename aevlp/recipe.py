"""What a training run trains with, decided before it starts: the shared or official recipe and the
backbone's own learning rate (`as_trained`, what config.toml records), the run's first line, a new run's
folder name."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from aevlp.config import updated
from aevlp.losses import LOSSES
from aevlp.models import BACKBONES
from aevlp.specs import TrainSpec

__all__ = ["as_trained", "lr_source", "recipe_line", "dated_run", "wants_student"]


def as_trained(cfg: dict) -> dict:
    """cfg as the run will train: with train.recipe = official the method's official [train] values
    (`aevlp.losses.recipes`), train.lr = 0 replaced by the backbone's own rate (`Backbone.lr`) and train.decode_on
    = auto by the place it resolves to (`aevlp.placement`). This is what a run records in its config.toml, and
    what `aevlp run` compares with it."""
    if cfg["train"]["recipe"] == "official":
        from aevlp.data.registry import get_dataset
        from aevlp.losses.recipes import official_recipe

        recipe = official_recipe(LOSSES.canonical(cfg["loss"]["name"]), get_dataset(cfg["dataset"]["name"]).name)
        cfg = updated(cfg, {"train": recipe}) if recipe else cfg
    if cfg["train"]["decode_on"] == "auto":
        from aevlp.placement import train_decode_place

        cfg = updated(cfg, {"train": {"decode_on": train_decode_place(cfg).where}})
    if cfg["train"]["lr"]:
        return cfg
    return updated(cfg, {"train": {"lr": BACKBONES.get(cfg["train"]["backbone"]).lr}})


def lr_source(cfg: dict) -> str:
    """Where the run's learning rate comes from, in words (before `as_trained` fills it in)."""
    if cfg["train"]["recipe"] == "official":
        return f"the official recipe of {cfg['loss']['name']}"
    return "train.lr" if cfg["train"]["lr"] else f"{cfg['train']['backbone']}'s default; --lr or train.lr to change it"


def recipe_line(t: TrainSpec, lr_source: str) -> str:
    """The run's first line: the backbone, the rates that run and where the rate came from, the recipe."""
    return (f"training {t.backbone}: lr {t.lr:g} ({lr_source}), head lr {t.lr * t.lr_mult:g}, {t.epochs} epochs, "
            f"batch {t.batch_size}, {t.optimizer}, {t.recipe} recipe")


def dated_run(cfg: dict) -> Path:
    """A new run folder: OUT/DATASET-METHOD-YYYYmmdd-HHMMSS."""
    from aevlp.data.registry import get_dataset

    return Path(cfg["train"]["out"]) / \
        f"{get_dataset(cfg['dataset']['name']).name}-{cfg['loss']['name']}-{dt.datetime.now():%Y%m%d-%H%M%S}"


def wants_student(cfg: dict) -> bool:
    """Whether the run trains a student first (`damp.student_loss`): only for a method that selects from
    DAMP's scores (not one without pseudo-labels, nor one with its own selection, as VLPL)."""
    spec = LOSSES.get(cfg["loss"]["name"])
    return bool(cfg["damp"]["student_loss"]) and spec.uses_pseudo and spec.pseudo_labels is None and \
        cfg["train"]["labels"] != "full"
