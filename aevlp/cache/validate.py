"""Checking a cache before it is used: schema version, structure against the fingerprint, dtypes, value
ranges, finiteness, the done mask and the content checksums written when the cache was finished.

`problems(f)` runs on every open (`train`, `eval`, `run`, `pseudolabel`'s up-to-date check, the cache
tools): everything but the stored image embeddings is read and checked against its SHA-256 (docs/trust.md
gives the cost: a fifth of a second at VOC's size), values and finiteness on a sample of rows.
`problems(f, thorough=True)` (`aevlp cache verify`) reads everything. Both return readable lines and
never raise on a damaged file.
"""
from __future__ import annotations

import hashlib
import json
import logging

import h5py
import numpy as np

from aevlp.cache.schema import COMPUTED, SCHEMA_VERSION, CacheLayout, parse_fingerprint

__all__ = ["problems", "computes_sims", "checksums", "sealed_names", "DATASET_DTYPES", "FINGERPRINT_KEY",
           "LAST_SCHEMA_WITHOUT_CHECKSUMS"]

log = logging.getLogger("aevlp")

REQUIRED = ("sims", "scores", "pseudo", "done", "bad", "image_ids", "classnames", "observed", "text_features")
DATASET_DTYPES = {"sims": "f", "scores": "f", "pseudo": "i", "done": "b", "bad": "b", "observed": "i",
                  "text_features": "f", "text_features_plain": "f", "relation": "f", "labels": "i",
                  "val_labels": "i", "test_labels": "i", "embeddings": "f", "embedding_index": "i",
                  "val_embeddings": "f", "test_embeddings": "f"}
EMBEDDINGS = ("embeddings", "val_embeddings", "test_embeddings")  # large: checksummed by `verify` only
RANGES = {"sims": (-1.01, 1.01), "scores": (-0.01, 1.01), "pseudo": (-1, 1), "observed": (-1, 1), "labels": (-1, 1),
          "val_labels": (-1, 1), "test_labels": (-1, 1)}  # cosines, probabilities, labels (float16 rounding allowed)
FINGERPRINT_KEY = "attrs:fingerprint"  # the fingerprint attribute's own checksum, beside the datasets'
SEALED_ATTRS = ("fingerprint", "info", "selection", "clip_preprocess", "summary")  # fixed at finish: checksummed
JSON_ATTRS = (*SEALED_ATTRS, "run_stats", "versions")  # each must read as a JSON table
LAST_SCHEMA_WITHOUT_CHECKSUMS = 1  # caches of schema 1 predate checksums; from schema 2 on they are required
SAMPLE_ROWS = 512
_warned: set[str] = set()


def _blocks(ds: h5py.Dataset, max_items: int = 1 << 24):
    """The dataset's values in C order, in blocks of at most about `max_items` (never all of a large one)."""
    if ds.ndim == 0 or ds.size <= max_items:
        yield ds[()]
        return
    per_row = int(np.prod(ds.shape[1:]))
    if per_row <= max_items or ds.ndim == 1:
        step = max(1, max_items // max(per_row, 1))
        for i in range(0, ds.shape[0], step):
            yield ds[i:i + step]
        return
    step = max(1, max_items // max(int(np.prod(ds.shape[2:])), 1))  # [R, N, ...]: rows within each first index
    for i in range(ds.shape[0]):
        for j in range(0, ds.shape[1], step):
            yield ds[i:i + 1, j:j + step]


def sealed_names(f: h5py.File) -> list[str]:
    """What a finished cache's checksums cover: every dataset (but the unwritten similarities, scores and labels of
    a cache that computes them), and the attributes fixed at creation."""
    skip = COMPUTED if computes_sims(f) else ()
    return [*sorted(k for k in f if isinstance(f[k], h5py.Dataset) and k not in skip),
            *(f"attrs:{a}" for a in SEALED_ATTRS if a in f.attrs)]


def computes_sims(f: h5py.File) -> bool:
    """Whether the file computes its similarities from its embeddings (`cache.sims = computed`)."""
    try:
        return parse_fingerprint(f).get("sims") == "computed"
    except (KeyError, ValueError, TypeError):
        return False


def checksums(f: h5py.File, names=None) -> dict[str, str]:
    """sha256 of each dataset's bytes in C order, and of each named attribute ("attrs:NAME")."""
    out = {}
    for name in names or sealed_names(f):
        if name.startswith("attrs:"):
            out[name] = hashlib.sha256(str(f.attrs.get(name[6:], "")).encode()).hexdigest()
            continue
        ds, h = f[name], hashlib.sha256()
        if ds.dtype.kind == "O" or ds.shape == ():
            h.update(json.dumps([str(x) for x in np.asarray(ds[()]).ravel()]).encode())
        else:
            for block in _blocks(ds):
                h.update(np.ascontiguousarray(block))  # the buffer itself: no copy
        out[name] = h.hexdigest()
    return out


def _header(f: h5py.File) -> tuple[dict | None, list[str]]:
    """(fingerprint, problems) from the attributes: a readable fingerprint table and a schema version this
    aevlp knows, the same in both places."""
    try:
        fp = parse_fingerprint(f)
    except (KeyError, ValueError, TypeError):
        return None, ["no readable aevlp fingerprint attribute"]
    version = f.attrs.get("schema_version", fp.get("schema_version"))
    try:
        version = int(version)
    except (TypeError, ValueError):
        return fp, [f"schema_version {version!r} is not a number"]
    if not 1 <= version <= SCHEMA_VERSION:
        return fp, [f"schema_version {version} is not one this aevlp reads (1-{SCHEMA_VERSION}): a newer aevlp made "
                    "it, or the attribute was edited"]
    if fp.get("schema_version", version) != version:
        return fp, [f"schema_version {version} differs from the fingerprint's {fp.get('schema_version')}"]
    for name in JSON_ATTRS:
        try:
            if name in f.attrs and not isinstance(json.loads(f.attrs[name]), dict):
                raise ValueError
        except (ValueError, TypeError):
            return fp, [f"the {name} attribute is not a readable JSON table"]
    return fp, []


def _expected_shapes(f: h5py.File, fp: dict) -> dict[str, tuple]:
    """The shape every dataset present must have, from sims [R, N, V, C] and the stored text features."""
    r, n, v, c = f["sims"].shape
    d = int(f["text_features"].shape[-1]) if f["text_features"].ndim == 2 else -1
    out = {"scores": (r, n, c), "pseudo": (r, n, c), "done": (n,), "bad": (n,), "image_ids": (n,),
           "classnames": (c,), "observed": (n, c), "labels": (n, c), "text_features": (c, d),
           "text_features_plain": (c, d), "relation": (c, c)}
    for split in ("val", "test"):
        if f"{split}_image_ids" in f:
            m = f[f"{split}_image_ids"].shape[0]
            out[f"{split}_labels"] = (m, c)
            mode = fp.get("store_embeddings", "none")
            indexed = mode == "all" and "embedding_index" in f  # schema 1 kept the global view only
            out[f"{split}_embeddings"] = (m, v, d) if indexed else (m, d)
    if "embeddings" in f and fp.get("store_embeddings") in ("global", "all"):
        layout = CacheLayout.of_file(f)
        out.update({k: s for k, (s, _) in layout.row_shapes(n, c).items() if k not in out})
    return out


def _structure(f: h5py.File, fp: dict) -> list[str]:
    missing = [k for k in REQUIRED if k not in f]
    if missing:
        return [f"missing datasets: {', '.join(missing)}"]
    out = [f"{k} has dtype {f[k].dtype}, expected {kind}" for k, kind in DATASET_DTYPES.items()
           if k in f and f[k].dtype.kind not in (kind, "u" if kind == "i" else kind)]
    if f["sims"].ndim != 4 or f["text_features"].ndim != 2:
        return out + [f"sims has shape {f['sims'].shape}, expected [rounds, images, views, classes]"]
    r, n, v, c = f["sims"].shape
    out += [f"{k} has shape {f[k].shape}, expected {s}" for k, s in _expected_shapes(f, fp).items()
            if k in f and f[k].shape != s]
    grid = fp.get("grid") or 0
    if (fp.get("rounds"), grid * grid + 1, fp.get("num_images"), fp.get("num_classes")) != (r, v, n, c):
        out.append(f"fingerprint (rounds {fp.get('rounds')}, grid {fp.get('grid')}, images {fp.get('num_images')}, "
                   f"classes {fp.get('num_classes')}) does not match sims {f['sims'].shape}")
    mode = fp.get("store_embeddings", "none")
    if mode != "none" and "embeddings" not in f:
        out.append(f"the fingerprint says store_embeddings = {mode}, but there are no embeddings")
    if fp.get("sims") == "computed" and (mode != "all" or "embedding_index" not in f):
        out.append("the fingerprint says the similarities are computed from every view's embedding, which the "
                   "file does not keep")
    return out


def _rows(n: int, thorough: bool) -> np.ndarray:
    return np.arange(n) if thorough or n <= SAMPLE_ROWS else np.unique(np.linspace(0, n - 1, SAMPLE_ROWS).astype(int))


def _row_axis(k: str, layout: CacheLayout) -> int:
    """1 for the per-round datasets [R, N, ...] (sims, scores, pseudo, unindexed embeddings), else 0."""
    return 1 if k in ("sims", "scores", "pseudo") or (k == "embeddings" and not layout.indexed) else 0


def _sample(ds: h5py.Dataset, k: str, layout: CacheLayout) -> list[np.ndarray]:
    """SAMPLE_ROWS rows of a per-image dataset, spread over it (every round of [R, N, ...] ones)."""
    if _row_axis(k, layout) == 0:
        return [ds[_rows(ds.shape[0], False)]]
    return [ds[r:r + 1, _rows(ds.shape[1], False)] for r in range(ds.shape[0])]


def _range(blocks) -> tuple[int, float, float]:
    """(NaN/inf count, min, max of the finite values) over blocks, in each block's own dtype."""
    bad, lo, hi = 0, np.inf, -np.inf
    for block in blocks:
        block = np.asarray(block)
        if block.dtype.kind == "f":
            ok = np.isfinite(block)
            bad += int(block.size - np.count_nonzero(ok))
            block = block[ok] if bad else block
        if block.size:
            lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    return bad, lo, hi


def _values(f: h5py.File, thorough: bool) -> list[str]:
    """NaN/inf and out-of-range values: every value (thorough), or on open the small datasets whole and the
    per-image ones on a sample of rows (their content is held to the checksums instead)."""
    layout, out = CacheLayout.of_file(f), []
    per_image = ("sims", "scores", "pseudo", "observed", "labels", *EMBEDDINGS)
    for k in ("sims", "scores", "pseudo", "observed", "labels", "val_labels", "test_labels", "text_features",
              "text_features_plain", "relation", *EMBEDDINGS):
        if k not in f or (k in COMPUTED and computes_sims(f)):
            continue
        ds = f[k]
        sampled = k in per_image and not thorough and ds.shape[_row_axis(k, layout)] > SAMPLE_ROWS
        bad, lo, hi = _range(_sample(ds, k, layout) if sampled else _blocks(ds))
        if bad:
            out.append(f"{k}: {bad} NaN/inf values{' (in the rows sampled)' if sampled else ''}")
        low, high = RANGES.get(k, (-np.inf, np.inf))
        if lo < low or hi > high:
            out.append(f"{k}: values from {lo:g} to {hi:g}, outside [{low:g}, {high:g}]")
    if "embedding_index" in f and "embeddings" in f and layout.indexed:
        idx = f["embedding_index"][()]
        if idx.size and (idx.min() < 0 or idx.max() >= layout.unique_views):
            out.append(f"embedding_index points outside the {layout.unique_views} stored views per image")
    return out


def _integrity(f: h5py.File, version: int, thorough: bool, where: str) -> list[str]:
    """The checksums written at finish: present (from schema 2 on), and matching what is read now."""
    raw = f.attrs.get("checksums")
    if not raw:
        if version <= LAST_SCHEMA_WITHOUT_CHECKSUMS:
            if where not in _warned:
                _warned.add(where)
                log.warning("%s: a schema-%d cache from before checksums existed: its content cannot be checked "
                            "(recompute it to get them)", where, version)
            return []
        return ["no checksums attribute: every cache since schema 2 has one, so it was deleted or the file altered"]
    try:
        stored = json.loads(raw)
        assert isinstance(stored, dict)
    except (ValueError, AssertionError):
        return ["the checksums attribute is not readable"]
    names = [k for k in stored if (thorough or k not in EMBEDDINGS) and (k in f or k.startswith("attrs:"))]
    gone = [k for k in stored if not k.startswith("attrs:") and k not in f]
    unsealed = ("sources", *(COMPUTED if computes_sims(f) else ()))  # an earlier aevlp's sources (refused when read);
    added = [k for k in f if k not in stored and k not in unsealed]  # a computing cache's unwritten similarities
    now = checksums(f, names)
    return [f"{k}: content differs from the checksum written when the cache was finished"
            for k in names if now.get(k) != stored[k]] + [f"{k}: checksummed at finish, now missing" for k in gone] + \
        [f"{k}: not in the cache when it was finished (added since)" for k in added]


def problems(f: h5py.File, *, thorough: bool = False) -> list[str]:
    """Readable problems of an open cache file (empty: it can be used)."""
    fp, out = _header(f)
    if out:
        return out
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
        out += _values(f, thorough)
        if f.attrs.get("complete", False):
            out += _integrity(f, int(f.attrs.get("schema_version", fp.get("schema_version", 1))), thorough, f.filename)
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:  # flipped bytes: HDF5 errors
        out = [f"cannot be read: {type(e).__name__}: {e}"]
    return out
