"""The stage-one cache's schema: where it lives, its layout, and how it is identified (fingerprints).

See docs/cache.md. Shapes: R rounds, N training rows, V views (view 0 = global), U distinct views
per row (each (tile, flip) encoded once), C classes, D embedding size.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from aevlp.errors import AevlpError

__all__ = ["SCHEMA_VERSION", "STR", "EMBEDDING_MODES", "default_path", "partial_path", "lock_path", "dataset_hash",
           "fingerprint_id", "fingerprint_diff", "read_fingerprint", "CacheLayout"]

SCHEMA_VERSION = 2  # 2: "all" embeddings stored once per distinct view + an index; eval labels stored
STR = h5py.string_dtype("utf-8")
EMBEDDING_MODES = ("none", "global", "all")  # cache.store_embeddings: which image embeddings are kept


def default_path(dataset: str) -> Path:
    """Where a dataset's cache goes when `cache.path` is empty: cache/DATASET.h5."""
    return Path("cache") / f"{dataset}.h5"


def partial_path(target: Path) -> Path:
    return target.with_name(target.name + ".partial")


def lock_path(target: Path) -> Path:
    return target.with_name(target.name + ".lock")


def dataset_hash(image_ids: Iterable[str], observed: np.ndarray) -> str:
    """Identity of the rows a cache describes: image ids in order + observed labels."""
    h = hashlib.sha256()
    for i in image_ids:
        h.update(str(i).encode())
        h.update(b"\0")
    h.update(np.ascontiguousarray(observed, dtype=np.int8).tobytes())
    return h.hexdigest()[:16]


def fingerprint_id(fp: dict) -> str:
    """A short hash of a fingerprint: what a training run records about the cache it read."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint_diff(old: dict, new: dict) -> list[str]:
    """Human-readable 'field: old -> new' lines for every differing fingerprint field."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in keys if old.get(k) != new.get(k)]


def read_fingerprint(path: Path) -> tuple[dict, bool]:
    """(fingerprint, complete) of a cache file; raises AevlpError if it is not an aevlp cache."""
    try:
        with h5py.File(path, "r") as f:
            return json.loads(f.attrs["fingerprint"]), bool(f.attrs.get("complete", False))
    except (OSError, KeyError, json.JSONDecodeError) as e:
        raise AevlpError(f"{path} is not a readable aevlp cache ({e})",
                         hint="delete it, or recompute with --force") from e


@dataclass(frozen=True)
class CacheLayout:
    """The shapes a cache file is created with (docs/cache.md).

    rounds R, views V, embedding mode and size D, and U: the distinct views per image that were
    encoded (2V when rounds differ only by flips, R·V with tile jitter, V with one round): "all"
    stores each of them once, with an index [N, R, V] into them. A schema-1 file's "all" embeddings are
    [R, N, V, D] with no index (unique_views 0); they are still read.
    """

    rounds: int
    num_views: int
    embeddings: str = "none"  # one of EMBEDDING_MODES
    embed_dim: int = 0
    unique_views: int = 0

    def __post_init__(self):
        if self.embeddings not in EMBEDDING_MODES:
            raise AevlpError(f"cache.store_embeddings must be one of {', '.join(EMBEDDING_MODES)}, "
                             f"got {self.embeddings!r}")

    def row_shapes(self, n: int, c: int) -> dict[str, tuple[tuple, type]]:
        """name -> (shape, dtype) of the per-row datasets for N rows and C classes."""
        r, v, d = self.rounds, self.num_views, self.embed_dim
        shapes = {"sims": ((r, n, v, c), np.float16), "scores": ((r, n, c), np.float16),
                  "pseudo": ((r, n, c), np.int8)}
        if self.embeddings == "global":
            shapes["embeddings"] = ((r, n, d), np.float16)
        elif self.indexed:
            shapes["embeddings"] = ((n, self.unique_views, d), np.float16)
            shapes["embedding_index"] = ((n, r, v), np.int16)
        elif self.embeddings == "all":  # schema 1
            shapes["embeddings"] = ((r, n, v, d), np.float16)
        return shapes

    @property
    def indexed(self) -> bool:
        """All views stored once per distinct view, with an index (schema 2)."""
        return self.embeddings == "all" and self.unique_views > 0

    def eval_shape(self, n: int) -> tuple:
        """Unflipped val/test embeddings: the global view [N, D], or every view [N, V, D] with "all"."""
        return (n, self.num_views, self.embed_dim) if self.embeddings == "all" else (n, self.embed_dim)

    def row_axis(self, name: str) -> int:
        """The axis of a per-row dataset that indexes rows: 1 for [R, N, ...], 0 for [N, ...]."""
        return 0 if name == "embedding_index" or (name == "embeddings" and self.indexed) else 1

    @classmethod
    def of_file(cls, f: h5py.File) -> CacheLayout:
        """The layout of an existing cache file (its embedding mode from the fingerprint)."""
        r, _, v, _ = f["sims"].shape
        mode = json.loads(f.attrs["fingerprint"]).get("store_embeddings", "none")
        dim = int(f["text_features"].shape[-1]) if mode != "none" else 0
        u = int(f["embeddings"].shape[1]) if mode == "all" and "embedding_index" in f else 0
        return cls(rounds=r, num_views=v, embeddings=mode, embed_dim=dim, unique_views=u)
