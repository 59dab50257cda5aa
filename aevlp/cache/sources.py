"""Pseudo-label sources beside stage one's cache: a student's scores on the training rows (`aevlp refine`, GPR-TS),
with their provenance, one small HDF5 file each in `CACHE.sources/NAME.h5`.

A source is never written into the cache file itself: training runs keep the cache open for reading, and
HDF5 refuses a writer while any reader holds the file, so a second round could not start beside them. Each
source file is written once (a `SealedFile`: under its lock, to NAME.h5.partial, renamed when sealed) and held to
the cache's standard:

- NAME is a plain name (letters, digits, `.`, `_`, `-`), so `damp.student` can only name a file in
  `CACHE.sources/`;
- one SHA-256 seals the scores [N, C] (float16), the student's scores on the val split where stored, the image
  ids of both, the provenance (a JSON object: run, epoch, checkpoint hash, ...) and the fingerprint id of the
  cache the source belongs to; each is checked on every read, with the ids against the cache's own rows and
  the values finite and in [0, 1];
- where the provenance names a run whose best.pt is still there, the source stands only while that checkpoint
  is the one it was made from (a student retrained since is refused: its scores would be stale).

A checksum is not a signature: someone who edits a source and recomputes the hash is not stopped by it
(docs/trust.md). Sources made before this format (without the seal, or stored inside the cache) are refused
with the command that makes them again.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import h5py
import numpy as np

from aevlp.cache.reader import Cache
from aevlp.cache.schema import STR, fingerprint_id, sources_path
from aevlp.cache.sealed import SealedFile
from aevlp.errors import AevlpError

__all__ = ["FORMAT", "StoredScores", "store_source", "read_source", "source_path", "source_provenance",
           "check_source_name", "checkpoint_id"]

FORMAT = 2
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
REDO = "make them again with `aevlp refine RUN_DIR` (a GPR-TS run makes its own when it trains)"


def check_source_name(name: str) -> str:
    """A source name as `damp.student` gives it: a plain file name in CACHE.sources/ (no path, no `..`)."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise AevlpError(f"damp.student = {name!r} is not a source name: a plain name of a file in CACHE.sources/ "
                         "(letters, digits, '.', '_', '-'; no path)",
                         hint="name the source as `aevlp refine` stored it, e.g. damp.student = \"RUN-r1\"")
    return name


def source_path(cache_path: Path, name: str) -> Path:
    """Where source NAME of a cache lives: CACHE.sources/NAME.h5 beside it."""
    return sources_path(Path(cache_path)) / f"{check_source_name(name)}.h5"


def checkpoint_id(path: Path) -> str:
    """'sha256:' and the first 16 hex digits of a checkpoint file's hash (read in chunks)."""
    from aevlp.hashing import file_sha256

    return "sha256:" + file_sha256(path)[:16]


def _seal(cache_fp: str, provenance: str, ids: list[str], val_ids: list[str], scores,
          val: np.ndarray | None) -> str:
    """The checksum of a source; `scores`: its [N, C] array, or its row blocks in order (the same bytes)."""
    h = hashlib.sha256(f"aevlp-source-{FORMAT}\0{cache_fp}\0{provenance}\0".encode())
    h.update("\0".join(ids).encode() + b"\1" + "\0".join(val_ids).encode() + b"\1")
    for block in [scores] if isinstance(scores, np.ndarray) else scores:
        h.update(np.ascontiguousarray(block).tobytes())
    if val is not None:
        h.update(np.ascontiguousarray(val).tobytes())
    return h.hexdigest()


def store_source(cache: Cache, name: str, scores: np.ndarray, provenance: dict,
                 val_scores: np.ndarray | None = None, val_ids: list[str] | None = None) -> Path:
    """Write (or replace) source NAME of `cache`: scores [N, C] float16 with the cache's row ids, their provenance,
    and with `val_scores` [M, C] the student's scores on the dataset's val split (`val_ids`: its image ids; where E
    is unknown, the class priors are estimated from them: `aevlp.stage_two.priors`); all sealed by one checksum."""
    path = source_path(cache.path, name)
    values = np.ascontiguousarray(np.asarray(scores, dtype=np.float16))
    val = None if val_scores is None else np.ascontiguousarray(np.asarray(val_scores, dtype=np.float16))
    ids, vids = list(cache.image_ids()), list(val_ids or [])
    if val is not None and len(vids) != len(val):
        raise AevlpError(f"internal: {len(val)} val scores for {len(vids)} val image ids")
    prov, fp = json.dumps(provenance, sort_keys=True, default=str), fingerprint_id(cache.fingerprint)

    def create(f: h5py.File) -> None:
        f.create_dataset("scores", data=values)
        f.create_dataset("image_ids", data=np.asarray(ids, dtype=object), dtype=STR)
        if val is not None:
            f.create_dataset("val_scores", data=val)
            f.create_dataset("val_image_ids", data=np.asarray(vids, dtype=object), dtype=STR)
        f.attrs.update({"format": FORMAT, "provenance": prov, "cache_fingerprint": fp})

    # a SealedFile (locked, written to PATH.partial, renamed when sealed); a leftover partial is never resumed
    with SealedFile(path, {"cache": fp, "provenance": prov}, create=create, resume=lambda f: False) as sealed:
        return sealed.finish({"sha256": _seal(fp, prov, ids, vids, values, val)})


SOURCE_BLOCK_BYTES = 16 << 20  # a source's scores are checked and read this many bytes of rows at a time


class StoredScores:
    """A stored source's scores [N, C]: `scores[lo:hi]` reads those rows as float32 (memory bounded by a block of
    rows, not by N); `np.asarray(scores)` reads them all."""

    def __init__(self, path: Path, shape: tuple[int, int]):
        self.path, self.shape = Path(path), tuple(int(x) for x in shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        with h5py.File(self.path, "r") as f:
            return f["scores"][rows].astype(np.float32)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)


def _blocks(ds: h5py.Dataset):
    """The rows of a 2-D dataset, a block (SOURCE_BLOCK_BYTES) at a time."""
    step = max(1, SOURCE_BLOCK_BYTES // max(ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64)), 1))
    for lo in range(0, ds.shape[0], step):
        yield ds[lo:lo + step]


def _scores_ok(values: np.ndarray | None) -> bool:
    return values is None or (np.issubdtype(values.dtype, np.floating) and bool(np.all(np.isfinite(values)))
                              and values.min(initial=0) >= 0 and values.max(initial=0) <= 1)


def _read(path: Path, name: str) -> dict:
    """Everything a source file holds but its training scores (their shape, checksum-ready digest parts and
    whether every value is sound, read a block of rows at a time), each part checked for its type; AevlpError
    naming what is wrong."""
    def dataset(f, key, required=True):
        if key not in f:
            if required:
                raise AevlpError(f"{path}: no '{key}' in the source '{name}'", hint=REDO)
            return None
        if not isinstance(f[key], h5py.Dataset):
            raise AevlpError(f"{path}: '{key}' of the source '{name}' is not an array", hint=REDO)
        return f[key]

    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise AevlpError(f"{path}: the source '{name}' was stored by an earlier aevlp (unsealed)", hint=REDO)
            scores, val = dataset(f, "scores"), dataset(f, "val_scores", False)
            out = {"val": None if val is None else val[()],
                   "ids": [str(x) for x in f["image_ids"].asstr()[()]] if "image_ids" in f else None,
                   "val_ids": [str(x) for x in f["val_image_ids"].asstr()[()]] if "val_image_ids" in f else [],
                   "attrs": {k: f.attrs[k] for k in f.attrs}, "shape": scores.shape, "sound": True}
            if out["ids"] is not None and isinstance(out["attrs"].get("provenance"), str):
                sound = []  # one pass: each block is hashed and checked
                blocks = (sound.append(_scores_ok(b)) or b for b in (_blocks(scores) if scores.ndim == 2 else
                                                                     [scores[()]]))
                out["sha256"] = _seal(str(out["attrs"].get("cache_fingerprint")), out["attrs"]["provenance"],
                                      out["ids"], out["val_ids"], blocks, out["val"])
                out["sound"] = all(sound)
    except AevlpError:
        raise
    except (OSError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise AevlpError(f"{path}: the student scores '{name}' cannot be read ({type(e).__name__}: {e})",
                         hint=REDO) from None
    if out["ids"] is None:
        raise AevlpError(f"{path}: the source '{name}' does not record which images its rows are", hint=REDO)
    return out


def _provenance(text, path: Path, name: str) -> dict:
    try:
        prov = json.loads(text)
    except (TypeError, ValueError):
        prov = None
    if not isinstance(prov, dict):
        raise AevlpError(f"{path}: the provenance of the source '{name}' is not a JSON object", hint=REDO)
    return prov


def read_source(cache: Cache, name: str, with_val: bool = False):
    """(scores [N, C] (`StoredScores`: rows read as float32 when sliced), provenance) of a stored student source,
    and with `with_val` its val-split scores
    (float32, or None where not stored) and their image ids; refused, naming why, if absent, unsealed, altered,
    another cache's, for other rows, out of [0, 1], or made from a checkpoint its run no longer holds."""
    path = source_path(cache.path, name)
    if not path.exists():
        old = cache.f.get("sources")
        where = " (an earlier aevlp stored it inside the cache)" if old is not None and name in old else ""
        raise AevlpError(f"{cache.path} has no student scores '{name}' (no {path}){where}",
                         hint="make them with `aevlp refine RUN_DIR`")
    s = _read(path, name)
    a = s["attrs"]
    if a.get("cache_fingerprint") != fingerprint_id(cache.fingerprint):
        raise AevlpError(f"{path} holds the student scores of another cache (or of {cache.path} before it was "
                         "recomputed)", hint=REDO)
    if "sha256" not in s or a.get("sha256") != s["sha256"]:
        raise AevlpError(f"{path}: the student scores '{name}' differ from their checksum (edited after they were "
                         "stored)", hint=REDO)
    if s["ids"] != list(cache.image_ids()) or tuple(s["shape"]) != (len(cache), len(cache.classnames())):
        raise AevlpError(f"{path}: the rows of the source '{name}' are not the cache's images", hint=REDO)
    for key, sound in (("scores", s["sound"]), ("val", _scores_ok(s["val"]))):
        if not sound:
            raise AevlpError(f"{path}: the source '{name}' holds {key} outside [0, 1] or not finite", hint=REDO)
    prov = _provenance(a["provenance"], path, name)
    _check_fresh(prov, path, name)
    out = StoredScores(path, s["shape"]), prov
    if not with_val:
        return out
    return (*out, None if s["val"] is None else s["val"].astype(np.float32), s["val_ids"])


def _check_fresh(prov: dict, path: Path, name: str) -> None:
    """A source made from a run's best.pt stands only while that run still holds the same best.pt."""
    run, made = prov.get("run"), prov.get("checkpoint")
    best = Path(str(run)) / "best.pt" if isinstance(run, str) and run else None
    if best is not None and isinstance(made, str) and best.is_file() and checkpoint_id(best) != made:
        raise AevlpError(f"{path}: the source '{name}' was made from {best} before that run was trained again "
                         f"(its best.pt is no longer {made})",
                         hint=f"store the current student's scores: `aevlp refine {run}` (or retrain the run "
                              "that uses it)")


def source_provenance(cache: Cache, name: str) -> dict | None:
    """The provenance of source NAME where it is stored, sound and current; None otherwise (absent, unreadable,
    unsealed, altered or stale: the caller makes it again)."""
    try:
        return read_source(cache, name)[1]
    except AevlpError:
        return None
