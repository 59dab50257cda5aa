"""Datasets known by name, so `--dataset nus` and `--dataset nuswide` mean the same thing."""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources

from aevlp.errors import DataError

__all__ = ["DatasetInfo", "register_dataset", "get_dataset", "known_datasets", "builtin_classnames"]


@dataclass(frozen=True)
class DatasetInfo:
    """What aevlp needs to know about a dataset before reading its files."""

    name: str
    description: str
    num_classes: int | None  # None: read from the data directory's aevlp_dataset.json
    expected_pos: float | None  # mean positives per image, for the EPR regulariser (Cole et al.)
    image_root: str = "."  # Cole's default image folder, relative to the data root
    aliases: tuple[str, ...] = field(default=())


_REGISTRY: dict[str, DatasetInfo] = {}
_ALIASES: dict[str, str] = {}


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    for key in (info.name, *info.aliases):
        _ALIASES[key.lower()] = info.name
    _REGISTRY[info.name] = info
    return info


def get_dataset(name: str) -> DatasetInfo:
    key = _ALIASES.get(name.lower())
    if key is None:
        raise DataError(f"unknown dataset '{name}'",
                        hint=f"known datasets: {', '.join(known_datasets())} "
                             "(use 'table' for your own CSV, see `aevlp data prepare table --help`)")
    return _REGISTRY[key]


def known_datasets() -> list[str]:
    return sorted(_REGISTRY)


def builtin_classnames(name: str) -> list[str]:
    """Class names shipped with aevlp, in the column order of the formatted label files."""
    text = resources.files("aevlp.data").joinpath("classnames", f"{name}.txt").read_text()
    return [line for line in text.splitlines() if line.strip()]


register_dataset(DatasetInfo("voc", "PASCAL VOC 2012 (20 classes)", 20, 1.5,
                             "VOCdevkit/VOC2012/JPEGImages", aliases=("pascal", "voc2012")))
register_dataset(DatasetInfo("coco", "MS-COCO 2014 (80 classes)", 80, 2.9, ".", aliases=("coco2014",)))
register_dataset(DatasetInfo("nuswide", "NUS-WIDE, Cole et al.'s re-crawled subset (81 concepts)", 81, 1.9,
                             "Flickr", aliases=("nus", "nus-wide")))
register_dataset(DatasetInfo("cub", "CUB-200-2011 binary attributes (312)", 312, 31.4,
                             "CUB_200_2011/images", aliases=("cub200", "cub-200-2011")))
register_dataset(DatasetInfo("table", "your own data from a CSV (see docs/datasets.md)", None, None,
                             ".", aliases=("csv", "custom")))
register_dataset(DatasetInfo("fashion-mosaic", "2x2 mosaics of Fashion-MNIST items (10 classes; the demo)", 10, 2.5,
                             "images", aliases=("fashion", "mosaic")))
