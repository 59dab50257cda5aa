"""Pseudo-label sources stored in a complete cache beside stage one's own: a student's scores on the
training rows (`aevlp refine`), with their provenance, under `sources/NAME`, each with its own checksum
(the cache's datasets and their checksums are untouched)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np

from aevlp.cache.reader import Cache
from aevlp.cache.writer import CacheLock
from aevlp.errors import AevlpError

__all__ = ["store_source", "read_source"]


def store_source(cache_path: Path, name: str, scores: np.ndarray, provenance: dict) -> None:
    """Write (or replace) `sources/NAME` in a complete cache, under its lock: scores [N, C] float16 and
    their provenance as JSON; the cache's own datasets and checksums are untouched."""
    with CacheLock(cache_path), h5py.File(cache_path, "a") as f:
        grp = f.require_group("sources")
        if name in grp:
            del grp[name]
        ds = grp.create_dataset(name, data=scores.astype(np.float16))
        ds.attrs["provenance"] = json.dumps(provenance, sort_keys=True)
        ds.attrs["sha256"] = hashlib.sha256(np.ascontiguousarray(ds[:]).tobytes()).hexdigest()
        f.flush()


def read_source(cache: Cache, name: str) -> tuple[np.ndarray, dict]:
    """(scores [N, C] float32, provenance) of a stored student source; refused if absent or altered."""
    grp = cache.f.get("sources")
    if grp is None or name not in grp:
        have = list(grp) if grp is not None else []
        raise AevlpError(f"{cache.path} holds no student scores '{name}'" + (f" (it has: {', '.join(have)})"
                                                                            if have else ""),
                         hint="make them with `aevlp refine RUN_DIR`")
    ds = grp[name]
    values = ds[:]
    if hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest() != ds.attrs.get("sha256"):
        raise AevlpError(f"{cache.path}: the student scores '{name}' differ from their checksum",
                         hint="make them again with `aevlp refine RUN_DIR`")
    return values.astype(np.float32), json.loads(ds.attrs.get("provenance", "{}"))
