"""Datasets known by name, so `--dataset nus` and `--dataset nuswide` mean the same thing."""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources

from aevlp.errors import DataError
from aevlp.registry import Registry

__all__ = ["DatasetInfo", "DATASETS", "register_dataset", "get_dataset", "known_datasets", "builtin_classnames"]


@dataclass(frozen=True)
class DatasetInfo:
    """What aevlp needs to know about a dataset before reading its files."""

    name: str
    description: str
    num_classes: int | None  # None: read from the data directory's aevlp_dataset.json
    expected_pos: float | None  # mean positives per image, for the EPR regulariser (Cole et al.)
    image_root: str = "."  # Cole's default image folder, relative to the data root
    aliases: tuple[str, ...] = field(default=())


DATASETS: Registry[DatasetInfo] = Registry("dataset", error=DataError)


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    return DATASETS.register(info.name, info, aliases=info.aliases)


def get_dataset(name: str) -> DatasetInfo:
    """A dataset by name or alias; unknown names list the known ones (and 'table' for your own CSV)."""
    try:
        return DATASETS.get(name)
    except DataError as e:
        raise DataError(e.message, hint=f"known datasets: {', '.join(known_datasets())} (use 'table' for your "
                                        "own CSV, see `aevlp data prepare table --help`)") from None


def known_datasets() -> list[str]:
    return sorted(DATASETS.names())


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
