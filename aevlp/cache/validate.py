"""Checking a cache before it is used: schema, shapes against the fingerprint, dtypes, the done mask,
finite values and (thoroughly) the content checksums written when the cache was finished.

`problems(f)` is cheap (structure, and finiteness on a sample of rows): stage two, `aevlp run` and
`aevlp pseudolabel` run it on open. `problems(f, thorough=True)` reads everything (`aevlp cache
verify`). Both return readable lines and never raise on a damaged file.
"""
from __future__ import annotations

import hashlib
import json

import h5py
import numpy as np

from aevlp.cache.schema import CacheLayout

__all__ = ["problems", "checksums", "DATASET_DTYPES"]

REQUIRED = ("sims", "scores", "pseudo", "done", "bad", "image_ids", "classnames", "observed", "text_features")
DATASET_DTYPES = {"sims": "f", "scores": "f", "pseudo": "i", "done": "b", "bad": "b", "observed": "i",
                  "text_features": "f", "embeddings": "f", "embedding_index": "i"}
SAMPLE_ROWS = 512


def checksums(f: h5py.File, names=None) -> dict[str, str]:
    """sha256 of each dataset's bytes (row chunks of the first axis), for `cache verify`."""
    out = {}
    for name in names or sorted(k for k in f if isinstance(f[k], h5py.Dataset)):
        ds, h = f[name], hashlib.sha256()
        if ds.dtype.kind == "O" or ds.shape == ():
            h.update(json.dumps([str(x) for x in np.asarray(ds[()]).ravel()]).encode())
        else:
            for i in range(0, ds.shape[0], 4096):
                h.update(np.ascontiguousarray(ds[i:i + 4096]).tobytes())
        out[name] = h.hexdigest()
    return out


def _structure(f: h5py.File, fp: dict) -> list[str]:
    missing = [k for k in REQUIRED if k not in f]
    if missing:
        return [f"missing datasets: {', '.join(missing)}"]
    out = [f"{k} has dtype {f[k].dtype}, expected {kind}" for k, kind in DATASET_DTYPES.items()
           if k in f and f[k].dtype.kind not in (kind, "u" if kind == "i" else kind) and
           not (kind == "b" and f[k].dtype.kind == "b")]
    if f["sims"].ndim != 4:
        return out + [f"sims has shape {f['sims'].shape}, expected [rounds, images, views, classes]"]
    r, n, v, c = f["sims"].shape
    expect = {"scores": (r, n, c), "pseudo": (r, n, c), "done": (n,), "bad": (n,), "image_ids": (n,),
              "classnames": (c,), "observed": (n, c)}
    out += [f"{k} has shape {f[k].shape}, expected {s}" for k, s in expect.items() if f[k].shape != s]
    grid = fp.get("grid") or 0
    if (fp.get("rounds"), grid * grid + 1, fp.get("num_images"), fp.get("num_classes")) != (r, v, n, c):
        out.append(f"fingerprint (rounds {fp.get('rounds')}, grid {fp.get('grid')}, images {fp.get('num_images')}, "
                   f"classes {fp.get('num_classes')}) does not match sims {f['sims'].shape}")
    mode = fp.get("store_embeddings", "none")
    if mode != "none" and "embeddings" not in f:
        out.append(f"the fingerprint says store_embeddings = {mode}, but there are no embeddings")
    return out


def _finite(f: h5py.File, thorough: bool) -> list[str]:
    """NaN/inf values: in every row (thorough) or a sample of rows (the cheap check on open)."""
    n = f["sims"].shape[1]
    rows = np.arange(n) if thorough or n <= SAMPLE_ROWS else np.unique(np.linspace(0, n - 1, SAMPLE_ROWS).astype(int))
    layout = CacheLayout.of_file(f)
    out = []
    for k in ("sims", "scores", "embeddings", "val_embeddings", "test_embeddings"):
        if k not in f:
            continue
        ds = f[k]
        if k.endswith("_embeddings"):
            values = ds[:]
        elif layout.row_axis(k) == 0:
            values = ds[rows]
        else:
            values = np.concatenate([ds[r:r + 1, rows] for r in range(ds.shape[0])])
        bad = int((~np.isfinite(values.astype(np.float32))).sum())
        if bad:
            out.append(f"{k}: {bad} NaN/inf values{'' if thorough else ' (in the rows sampled)'}")
    return out


def problems(f: h5py.File, *, thorough: bool = False) -> list[str]:
    """Readable problems of an open cache file (empty: it can be used)."""
    try:
        fp = json.loads(f.attrs["fingerprint"])
        if not isinstance(fp, dict):
            raise ValueError("not a table")
    except (KeyError, ValueError, TypeError):
        return ["no readable aevlp fingerprint attribute"]
    try:
        out = _structure(f, fp)
        if out:
            return out
        if f.attrs.get("complete", False):
            undone = int((~f["done"][:].astype(bool)).sum())
            if undone:
                out.append(f"{undone} of {f['done'].shape[0]} rows not done, though the cache is marked complete")
        if f["bad"][:].astype(bool).all():
            out.append("every row is marked unreadable (bad): nothing to train on")
        out += _finite(f, thorough)
        if thorough and f.attrs.get("checksums"):
            stored = json.loads(f.attrs["checksums"])
            now = checksums(f, [k for k in stored if k in f])
            out += [f"{k}: content differs from the checksum written when the cache was finished"
                    for k in stored if now.get(k) != stored[k]]
    except (OSError, KeyError, ValueError, TypeError) as e:  # flipped bytes surface as HDF5 read errors
        out = [f"cannot be read: {type(e).__name__}: {e}"]
    return out
