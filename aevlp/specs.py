"""Typed, validated views of a resolved config: what each stage is given instead of a nested dict.

`config.load_config` resolves defaults ← pipeline ← flags ← --set into a plain dict (what a run
directory records as config.toml). `Specs.of(cfg)` turns that dict into the frozen section
dataclasses declared in `aevlp.settings` once, at the edge; the stages read fields
(`specs.clip.batch_size`), never the dict's nested keys.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from aevlp.cache import default_path
from aevlp.settings import (
    SECTIONS,
    CacheSpec,
    ClipSpec,
    DampSpec,
    DatasetSpec,
    LossParams,
    TextSpec,
    TrainSpec,
    ViewsSpec,
)

__all__ = ["DatasetSpec", "ClipSpec", "TextSpec", "ViewsSpec", "DampSpec", "LossParams", "CacheSpec", "TrainSpec",
           "Specs"]


@dataclass(frozen=True)
class Specs:
    """Every section of a resolved config, typed (`aevlp.settings` declares them). `loss` is also kept as
    a read-only mapping: each loss takes its own subset of the [loss] table (`aevlp.losses.build_method`)."""

    dataset: DatasetSpec
    clip: ClipSpec
    text: TextSpec
    views: ViewsSpec
    damp: DampSpec
    loss_params: LossParams
    train: TrainSpec
    cache: CacheSpec
    pipeline: str = ""  # the pipeline file the config came from, if any

    @classmethod
    def of(cls, cfg: Mapping[str, Mapping[str, Any]]) -> Specs:
        """Each section built (and so checked) by its declaration in `aevlp.settings.SECTIONS`."""
        built = {name: SECTIONS[name](**cfg.get(name, {})) for name in SECTIONS}
        return cls(pipeline=built.pop("pipeline").name, loss_params=built.pop("loss"), **built)

    @property
    def loss(self) -> Mapping[str, Any]:
        """The [loss] table as a read-only mapping (lists as tuples)."""
        return MappingProxyType(asdict(self.loss_params))

    @property
    def cache_path(self) -> Path:
        """The stage-one cache this config reads or writes (cache.path, or cache/DATASET.h5)."""
        return Path(self.cache.path) if self.cache.path else default_path(self.dataset.name)
