"""Where each step of the input pipelines runs: on the data-loading workers or on the device (the GPU).

`auto`, the default, picks per device what was measured fastest (docs/performance.md): on a CUDA GPU stage
one cuts and resizes its views there (`views.resize_on`) and decodes its JPEGs there (`views.decode_on`), and
stage two decodes its JPEGs with the GPU's decoder (`train.decode_on`: nvJPEG, about 6,500 images/s on an H200
against about 3,000 from the pre-resized image cache and a few hundred from CPU workers); on a CPU everything
stays on the workers. Where a place cannot be used (no GPU, files that are not JPEG) `auto` keeps the workers.
Each run says where its images are decoded and resized, and why. What is computed does not change with the
place beyond decoder rounding: the benchmark pipelines keep the official code's preprocessing either way.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["Place", "JPEG", "all_jpeg", "resize_place", "decode_place", "train_decode_place"]

JPEG = (".jpg", ".jpeg")


@dataclass(frozen=True)
class Place:
    """Where a step runs (worker | device) and why, in words."""

    where: str
    why: str


def all_jpeg(paths: Iterable[str | Path]) -> bool:
    """Whether every file is a JPEG by its name (what the GPU decoder reads)."""
    return all(Path(p).suffix.lower() in JPEG for p in paths)


def resize_place(setting: str, device: torch.device) -> Place:
    """Stage one's crops and resizes (`views.resize_on`)."""
    if setting != "auto":
        return Place(setting, f"views.resize_on = {setting}")
    if device.type == "cuda":
        return Place("device", "views.resize_on = auto: CLIP runs on the GPU")
    return Place("worker", f"views.resize_on = auto: CLIP runs on the {device.type}")


def decode_place(setting: str, device: torch.device, paths: Iterable[str | Path], key: str) -> Place:
    """Where JPEGs are decoded (`key`: views.decode_on or train.decode_on): `auto` is the GPU's decoder on a
    CUDA device when every image is a JPEG, else the workers."""
    if setting != "auto":
        return Place(setting, f"{key} = {setting}")
    if device.type != "cuda":
        return Place("worker", f"{key} = auto: no GPU ({device.type})")
    if not all_jpeg(paths):
        return Place("worker", f"{key} = auto: not every image is a JPEG (the GPU decodes JPEG only)")
    return Place("device", f"{key} = auto: JPEGs on a GPU (nvJPEG)")


def train_decode_place(t, data_root: str) -> Place:
    """Stage two's `train.decode_on` (`t`: the run's TrainSpec): `auto` resolved with its train.device and the
    image names of the dataset at `data_root` (read from its image lists, without loading the dataset); embedding
    backbones decode nothing."""
    from aevlp.device import resolve_device
    from aevlp.stage_two.models import BACKBONES

    if t.decode_on != "auto":
        return Place(t.decode_on, f"train.decode_on = {t.decode_on}")
    if BACKBONES.get(t.backbone).input == "embedding" or t.image_cache:
        return Place("worker", "train.decode_on = auto: " + ("the images come pre-resized from the image cache"
                                                             if t.image_cache else "the backbone reads embeddings"))
    return decode_place("auto", resolve_device(t.device, "train.device"), _image_names(data_root), "train.decode_on")


def _image_names(data_root: str) -> list[str]:
    """Every image name of a dataset folder (train and test lists); none when they cannot be read."""
    import numpy as np

    names: list[str] = []
    for phase in ("train", "val"):
        path = Path(data_root or ".") / f"formatted_{phase}_images.npy"
        try:
            names += [str(x) for x in np.load(path, allow_pickle=False)]
        except (OSError, ValueError):
            return ["unknown"]  # not readable here: not provably JPEG
    return names
