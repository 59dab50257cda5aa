"""The stage-one HDF5 cache: schema, fingerprint, atomic + resumable writes, locking, reading.

Schema (docs/cache.md): /sims [R,N,V,C] f16 raw cosine similarities (view 0 = global), /scores
[R,N,C] f16 DAMP score f and /pseudo [R,N,C] i8 under the defaults in attrs["selection"],
optional /embeddings, /done and /bad row masks, /image_ids, /classnames, /observed, /labels,
/text_features, /relation; attrs: fingerprint (JSON), schema_version, complete, versions, created.

Datasets are contiguous and allocated when the file is created, so later writes touch raw data
only: a kill -9 mid-write cannot corrupt HDF5 metadata, and rows are marked done only after their
data is flushed. Work happens in `<target>.partial`; the target appears only when complete.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from aevlp import __version__
from aevlp.errors import AevlpError

__all__ = ["SCHEMA_VERSION", "EMBEDDING_MODES", "ROW_DATASETS", "default_path", "dataset_hash", "fingerprint_diff",
           "fingerprint_id", "CacheLock", "CacheLayout", "CacheWriter", "Cache", "partial_path", "lock_path",
           "read_fingerprint"]

SCHEMA_VERSION = 1
STR = h5py.string_dtype("utf-8")
EMBEDDING_MODES = ("none", "global", "all")  # cache.store_embeddings: which image embeddings are kept
ROW_DATASETS = ("sims", "scores", "pseudo", "embeddings")  # [R, N, ...]: one slice per training row


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


class CacheLock:
    """Exclusive lock file next to the target, so two runs never write one cache.

    A lock left by a dead process on this host is taken over; any other live lock is an error.
    """

    def __init__(self, target: Path):
        self.path = lock_path(target)
        self.held = False

    def __enter__(self) -> CacheLock:
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    other = json.loads(self.path.read_text() or "{}")
                except (OSError, json.JSONDecodeError):
                    other = {}
                if other.get("host") == me["host"] and not _alive(other.get("pid", -1)):
                    self.path.unlink(missing_ok=True)  # stale: its writer is gone
                    continue
                raise AevlpError(f"{self.path.with_suffix('')} is being written by pid {other.get('pid')} on "
                                 f"{other.get('host')}",
                                 hint=f"wait for it; if that run is gone, delete {self.path}") from None
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self.held = True
            return self
        raise AevlpError(f"could not take the lock {self.path}")

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _early(f: h5py.File, name: str, shape: tuple, dtype) -> h5py.Dataset:
    """A contiguous dataset allocated (zero-filled) now, so later writes never touch metadata."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_ALLOC)
    return f.create_dataset(name, shape=shape, dtype=dtype, dcpl=dcpl)


def _versions() -> dict:
    import open_clip
    import torch
    import torchvision

    return {"aevlp": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "open_clip": open_clip.__version__, "h5py": h5py.__version__, "numpy": np.__version__}


@dataclass(frozen=True)
class CacheLayout:
    """The shapes a cache file is created with (docs/cache.md): rounds R, views V, classes C, embeddings."""

    rounds: int
    num_views: int
    embeddings: str = "none"  # one of EMBEDDING_MODES
    embed_dim: int = 0

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
        elif self.embeddings == "all":
            shapes["embeddings"] = ((r, n, v, d), np.float16)
        return shapes

    @classmethod
    def of_file(cls, f: h5py.File) -> CacheLayout:
        """The layout of an existing cache file (its embedding mode from the fingerprint)."""
        r, _, v, _ = f["sims"].shape
        mode = json.loads(f.attrs["fingerprint"]).get("store_embeddings", "none")
        dim = int(f["text_features"].shape[-1]) if mode != "none" else 0
        return cls(rounds=r, num_views=v, embeddings=mode, embed_dim=dim)


class CacheWriter:
    """Creates or resumes `<target>.partial`; `finish()` renames it onto the target atomically."""

    def __init__(self, target: Path, fingerprint: dict, layout: CacheLayout, *, image_ids: list[str],
                 classnames: list[str], observed: np.ndarray, labels: np.ndarray | None,
                 text_features: np.ndarray, relation: np.ndarray | None, selection: dict,
                 eval_ids: dict[str, list[str]] | None = None, info: dict | None = None,
                 clip_preprocess: dict | None = None):
        self.target, self.tmp = Path(target), partial_path(Path(target))
        self.fingerprint = fingerprint
        self.resumed = False
        if self.tmp.exists():
            try:
                old, _ = read_fingerprint(self.tmp)
            except AevlpError:
                old = None  # unreadable leftover (e.g. killed during creation): start over
            if old == fingerprint:
                self.f = h5py.File(self.tmp, "r+")
                self.resumed = True
                return
            self.tmp.unlink()
        self.target.parent.mkdir(parents=True, exist_ok=True)
        f = h5py.File(self.tmp, "w")
        try:
            n, c = observed.shape
            for name, (shape, dtype) in layout.row_shapes(n, c).items():
                _early(f, name, shape, dtype)
            for split, ids in (eval_ids or {}).items():  # global-view embeddings of val/test images
                _early(f, f"{split}_embeddings", (len(ids), layout.embed_dim), np.float16)
                f.create_dataset(f"{split}_image_ids", data=np.asarray(ids, dtype=object), dtype=STR)
            _early(f, "done", (n,), np.bool_)
            _early(f, "bad", (n,), np.bool_)
            f.create_dataset("image_ids", data=np.asarray(image_ids, dtype=object), dtype=STR)
            f.create_dataset("classnames", data=np.asarray(classnames, dtype=object), dtype=STR)
            f.create_dataset("observed", data=observed.astype(np.int8))
            if labels is not None:
                f.create_dataset("labels", data=labels.astype(np.int8))
            f.create_dataset("text_features", data=np.asarray(text_features, dtype=np.float32))
            if relation is not None:
                f.create_dataset("relation", data=np.asarray(relation, dtype=np.float32))
            f.attrs["fingerprint"] = json.dumps(fingerprint, sort_keys=True)
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["selection"] = json.dumps(selection, sort_keys=True)
            f.attrs["complete"] = False
            f.attrs["eval_done"] = not eval_ids
            f.attrs["info"] = json.dumps(info or {})  # where the data came from; not part of the fingerprint
            f.attrs["clip_preprocess"] = json.dumps(clip_preprocess or {})  # what every view got (docs/cache.md)
            f.attrs["versions"] = json.dumps(_versions())
            f.flush()
        except Exception:
            f.close()
            self.tmp.unlink(missing_ok=True)
            raise
        self.f = f

    @classmethod
    def like(cls, source: h5py.File, target: Path, fingerprint: dict, *, image_ids: list[str],
             observed: np.ndarray, labels: np.ndarray | None) -> CacheWriter:
        """A writer for `target` with `source`'s layout, text side, selection and eval splits, for the
        rows given (how shards are merged into one cache)."""
        eval_ids = {sp: list(source[f"{sp}_image_ids"].asstr()[:]) for sp in ("val", "test")
                    if f"{sp}_image_ids" in source}
        return cls(target, fingerprint, CacheLayout.of_file(source), image_ids=image_ids,
                   classnames=list(source["classnames"].asstr()[:]), observed=observed, labels=labels,
                   text_features=source["text_features"][:],
                   relation=source["relation"][:] if "relation" in source else None,
                   selection=json.loads(source.attrs["selection"]), eval_ids=eval_ids or None,
                   info=json.loads(source.attrs.get("info", "{}")),
                   clip_preprocess=json.loads(source.attrs.get("clip_preprocess", "{}")))

    def pending(self) -> np.ndarray:
        return np.flatnonzero(~self.f["done"][:])

    def write(self, start: int, sims: np.ndarray, scores: np.ndarray, pseudo: np.ndarray, bad: np.ndarray,
              embeddings: np.ndarray | None = None) -> None:
        """Rows [start, start+B): data first, flushed, then the done flags (so a crash re-does them)."""
        stop = start + sims.shape[1]
        try:
            self.f["sims"][:, start:stop] = sims.astype(np.float16)
            self.f["scores"][:, start:stop] = scores.astype(np.float16)
            self.f["pseudo"][:, start:stop] = pseudo.astype(np.int8)
            if embeddings is not None and "embeddings" in self.f:
                self.f["embeddings"][:, start:stop] = embeddings.astype(np.float16)
            self.f["bad"][start:stop] = bad
            self.f.flush()
            self.f["done"][start:stop] = True
            self.f.flush()
        except OSError as e:
            raise AevlpError(f"writing {self.tmp} failed: {e}",
                             hint="free disk space and re-run the same command: finished rows are kept, "
                                  "and any previous complete cache is untouched") from e

    def write_eval(self, split: str, embeddings: np.ndarray) -> None:
        self.f[f"{split}_embeddings"][:] = embeddings.astype(np.float16)
        self.f.flush()

    def finish(self, stats: dict | None = None) -> Path:
        if not self.f["done"][:].all():
            raise AevlpError(f"{self.tmp}: not every row is done")
        self.f.attrs["complete"] = True
        self.f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        if stats:
            self.f.attrs["summary"] = json.dumps(stats)
        self.f.close()
        os.replace(self.tmp, self.target)
        return self.target

    def close(self) -> None:
        if self.f.id.valid:
            self.f.flush()
            self.f.close()


class Cache:
    """Read access to a complete cache (stage two, cache tools); plain h5py works just as well."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            partial = partial_path(self.path)
            hint = (f"an unfinished run left {partial.name}: re-run `aevlp pseudolabel` to finish it"
                    if partial.exists() else "create it with `aevlp pseudolabel --dataset NAME --out PATH`")
            raise AevlpError(f"cache {self.path} not found", hint=hint)
        self.fingerprint, complete = read_fingerprint(self.path)
        if not complete:
            raise AevlpError(f"cache {self.path} is incomplete", hint="re-run `aevlp pseudolabel` to finish it")
        self.f = h5py.File(self.path, "r")
        self.selection = json.loads(self.f.attrs.get("selection", "{}"))

    @property
    def rounds(self) -> int:
        return self.f["sims"].shape[0]

    @property
    def num_views(self) -> int:
        return self.f["sims"].shape[2]

    def __len__(self) -> int:
        return self.f["sims"].shape[1]

    def array(self, name: str) -> np.ndarray:
        ds = self.f[name]
        return ds.asstr()[:] if ds.dtype.kind == "O" else ds[:]

    def image_ids(self) -> list[str]:
        return list(self.array("image_ids"))

    def classnames(self) -> list[str]:
        return list(self.array("classnames"))

    def sims(self, rnd: int) -> np.ndarray:
        """[N, V, C] float16 similarities of one augmentation round (view 0 = global)."""
        return self.f["sims"][rnd % self.rounds]

    @property
    def embedding_mode(self) -> str:
        """Which image embeddings the file keeps: none, global or all (cache.store_embeddings)."""
        return self.fingerprint.get("store_embeddings", "none")

    @property
    def embed_dim(self) -> int:
        return int(self.f["embeddings"].shape[-1]) if "embeddings" in self.f else 0

    def has_eval_embeddings(self) -> bool:
        return self.embedding_mode != "none" and "embeddings" in self.f and "test_embeddings" in self.f

    def global_embeddings(self, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """[R, N, D] float16 global-view embeddings of the training rows (view 0 when all views are kept)."""
        emb = self.f["embeddings"]
        return emb[:, rows, 0] if self.embedding_mode == "all" else emb[:, rows]

    def eval_embeddings(self, split: str) -> np.ndarray:
        """[N, D] float16 unflipped global-view embeddings of the val or test images."""
        return self.f[f"{split}_embeddings"][:]

    def check_matches(self, ids: list[str], observed: np.ndarray, classnames: list[str]) -> None:
        """Refuse a cache made for other images, labels or classes, saying which and how to fix it."""
        fix = "re-run stage one for this dataset (aevlp pseudolabel), or pass the matching --pseudo file"
        if self.classnames() != list(classnames):
            raise AevlpError(f"{self.path}: its {len(self.classnames())} classes differ from the dataset's "
                             f"{len(classnames)}", hint=fix)
        cids = self.image_ids()
        if cids != list(ids):
            if len(cids) < len(ids) and cids == list(ids[:len(cids)]):
                raise AevlpError(f"{self.path} covers only the first {len(cids)} of {len(ids)} training images",
                                 hint=f"it was made with --limit {len(cids)}: pass --limit {len(cids)} here too")
            first = next((i for i, (a, b) in enumerate(zip(cids, ids)) if a != b), min(len(cids), len(ids)))
            raise AevlpError(f"{self.path}: image ids differ from the dataset's train split "
                             f"({len(cids)} vs {len(ids)} rows; first difference at row {first})", hint=fix)
        if not np.array_equal(self.array("observed"), observed.astype(np.int8)):
            raise AevlpError(f"{self.path}: observed labels differ from the dataset's", hint=fix)

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
