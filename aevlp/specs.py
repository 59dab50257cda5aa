"""Typed, validated views of a resolved config: what each stage is given instead of a nested dict.

`config.load_config` resolves defaults ← pipeline ← flags ← --set into a plain dict (what a run
directory records as config.toml). `Specs.of(cfg)` turns that dict into frozen dataclasses once,
at the edge; the stages read fields (`specs.clip.batch_size`), never `cfg["clip"]["batch_size"]`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from aevlp.cache import default_path

__all__ = ["DatasetSpec", "ClipSpec", "TextSpec", "DampSpec", "CacheSpec", "TrainSpec", "Specs"]


def _build(cls, table: Mapping[str, Any]):
    """cls(**table) for the keys cls declares; lists become tuples so specs stay hashable."""
    return cls(**{f.name: tuple(v) if isinstance(v := table[f.name], list) else v for f in fields(cls)})


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    data_root: str
    image_root: str
    val_frac: float
    split_seed: int
    image_check: str = "stat"  # how images are identified in fingerprints: stat (size, mtime) | content | none

    def load(self):
        """The dataset, split as the benchmark does (`aevlp.data.load_dataset`)."""
        from aevlp.data import load_dataset
        from aevlp.errors import ConfigError

        if not self.data_root:
            raise ConfigError("no data root", hint="pass --data-root DIR (a folder in the SPML layout)")
        return load_dataset(self.name, self.data_root, image_root=self.image_root or None,
                            val_frac=self.val_frac, split_seed=self.split_seed)


@dataclass(frozen=True)
class ClipSpec:
    """A CLIP choice and how stage one runs it (defaults as `config.DEFAULTS`, for use from Python)."""

    arch: str = "ViT-B-16"
    pretrained: str = ""
    config: str = ""
    pretrained_cfg: str = ""
    tokenizer: str = ""
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 16
    workers: int = 1
    compile: bool = False


@dataclass(frozen=True)
class TextSpec:
    prompts: tuple[str, ...]
    phrases: str
    gcn: bool
    gcn_seed: int
    sparse_topk: int
    reweight_p: float
    relation: str


@dataclass(frozen=True)
class DampSpec:
    source: str
    temperature: float
    eta: float
    threshold: float
    top_k: int
    negative_ratio: float
    mode: str

    def selection(self) -> dict:
        """The keyword arguments of `aevlp.damp.pseudo_labels` (without `source`); stored in caches."""
        return {"temperature": self.temperature, "eta": self.eta, "top_k": self.top_k, "threshold": self.threshold,
                "negative_ratio": self.negative_ratio, "negatives": self.mode == "paper"}


@dataclass(frozen=True)
class CacheSpec:
    path: str
    store_embeddings: str
    on_bad_image: str


@dataclass(frozen=True)
class TrainSpec:
    backbone: str
    weights: str
    labels: str
    epochs: int
    batch_size: int
    lr: float
    lr_mult: float
    image_size: int
    early_stop: str
    patience: int
    max_drop: float
    linear_init: int
    seed: int
    workers: int  # DataLoader processes; -1: the machine's cores but one (at most 8)
    device: str
    precision: str
    out: str
    image_cache: bool = False  # read pre-resized uint8 images (aevlp.cache.images) instead of decoding JPEGs
    decode_on: str = "worker"  # worker | device (JPEGs decoded on the GPU by torchvision.io.decode_jpeg)
    channels_last: str = "auto"  # auto (= on) | on | off: the image backbone's memory format
    compile: bool = False  # torch.compile the model


@dataclass(frozen=True)
class Specs:
    """Every section of a resolved config, typed. `loss` stays a read-only mapping: each loss takes
    its own subset of the [loss] table (`aevlp.losses.build_loss`)."""

    dataset: DatasetSpec
    clip: ClipSpec
    text: TextSpec
    views: Mapping[str, Any]
    damp: DampSpec
    loss: Mapping[str, Any]
    train: TrainSpec
    cache: CacheSpec
    pipeline: str = ""  # the pipeline file the config came from, if any

    @classmethod
    def of(cls, cfg: Mapping[str, Mapping[str, Any]]) -> Specs:
        return cls(pipeline=cfg.get("pipeline", {}).get("name", ""),
                   dataset=_build(DatasetSpec, cfg["dataset"]), clip=_build(ClipSpec, cfg["clip"]),
                   text=_build(TextSpec, cfg["text"]), views=MappingProxyType(dict(cfg["views"])),
                   damp=_build(DampSpec, cfg["damp"]), loss=MappingProxyType(dict(cfg["loss"])),
                   train=_build(TrainSpec, cfg["train"]), cache=_build(CacheSpec, cfg["cache"]))

    @property
    def cache_path(self) -> Path:
        """The stage-one cache this config reads or writes (cache.path, or cache/DATASET.h5)."""
        return Path(self.cache.path) if self.cache.path else default_path(self.dataset.name)
