"""Pseudo-label sources beside stage one's cache: a student's scores on the training rows (`aevlp refine`),
with their provenance, one small HDF5 file each in `CACHE.sources/NAME.h5`.

A source is never written into the cache file itself: training runs keep the cache open for reading, and
HDF5 refuses a writer while any reader holds the file, so a second round could not start beside them. Each
source file is written once (to a temporary name, then renamed), holds the scores [N, C] float16, their
SHA-256, their provenance and the fingerprint id of the cache it belongs to; a source of another cache, or
one whose bytes changed, is refused. Sources stored inside the cache by earlier versions (`sources/NAME`)
are still read.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np

from aevlp.cache.reader import Cache
from aevlp.cache.schema import fingerprint_id, sources_path
from aevlp.errors import AevlpError

__all__ = ["store_source", "read_source", "source_path", "source_provenance"]


def source_path(cache_path: Path, name: str) -> Path:
    """Where source NAME of a cache lives: CACHE.sources/NAME.h5 beside it."""
    return sources_path(Path(cache_path)) / f"{name}.h5"


def store_source(cache: Cache, name: str, scores: np.ndarray, provenance: dict) -> Path:
    """Write (or replace) source NAME of `cache`: scores [N, C] float16, their provenance and checksum."""
    path = source_path(cache.path, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    values = np.ascontiguousarray(scores.astype(np.float16))
    with h5py.File(tmp, "w") as f:
        f.create_dataset("scores", data=values)
        f.attrs["provenance"] = json.dumps(provenance, sort_keys=True)
        f.attrs["sha256"] = hashlib.sha256(values).hexdigest()
        f.attrs["cache_fingerprint"] = fingerprint_id(cache.fingerprint)
    os.replace(tmp, path)
    return path


def _legacy(cache: Cache, name: str):
    grp = cache.f.get("sources")
    return grp[name] if grp is not None and name in grp else None


def source_provenance(cache: Cache, name: str) -> dict | None:
    """The provenance of source NAME, or None when the cache has no such source."""
    path = source_path(cache.path, name)
    try:
        if path.exists():
            with h5py.File(path, "r") as f:
                return json.loads(f.attrs.get("provenance", "{}"))
        old = _legacy(cache, name)
        return json.loads(old.attrs.get("provenance", "{}")) if old is not None else None
    except (OSError, ValueError):
        return None


def read_source(cache: Cache, name: str) -> tuple[np.ndarray, dict]:
    """(scores [N, C] float32, provenance) of a stored student source; refused if absent, altered or another
    cache's."""
    path = source_path(cache.path, name)
    redo = "make them again with `aevlp refine RUN_DIR`"
    try:
        if path.exists():
            with h5py.File(path, "r") as f:
                values, attrs = f["scores"][()], dict(f.attrs)
        elif (old := _legacy(cache, name)) is not None:
            values, attrs = old[()], {**old.attrs, "cache_fingerprint": fingerprint_id(cache.fingerprint)}
        else:
            raise AevlpError(f"{cache.path} has no student scores '{name}' (no {path})",
                             hint="make them with `aevlp refine RUN_DIR`")
    except (OSError, KeyError) as e:
        raise AevlpError(f"{path}: the student scores '{name}' cannot be read ({e})", hint=redo) from None
    if attrs.get("cache_fingerprint") != fingerprint_id(cache.fingerprint):
        raise AevlpError(f"{path} holds the student scores of another cache (or of {cache.path} before it was "
                         "recomputed)", hint=redo)
    if values.shape != (len(cache), len(cache.classnames())) or \
            hashlib.sha256(np.ascontiguousarray(values)).hexdigest() != attrs.get("sha256"):
        raise AevlpError(f"{path}: the student scores '{name}' differ from their checksum", hint=redo)
    return values.astype(np.float32), json.loads(attrs.get("provenance", "{}"))
