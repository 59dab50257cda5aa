"""Writing a stage-one cache: a lock per target, `<target>.partial`, flushed rows before done flags.

Datasets are contiguous and allocated when the file is created, so later writes touch raw data
only: a kill -9 mid-write cannot corrupt HDF5 metadata, and rows are marked done only after their
data is flushed. Work happens in `<target>.partial`; the target appears only when complete.
"""
from __future__ import annotations

import datetime as _dt
import json
import shutil
from pathlib import Path

import h5py
import numpy as np

from aevlp import __version__
from aevlp.cache.schema import SCHEMA_VERSION, STR, CacheLayout, partial_path
from aevlp.cache.sealed import SealedFile
from aevlp.cache.validate import checksums, sealed_names
from aevlp.errors import AevlpError, flag

__all__ = ["CacheWriter", "check_disk"]


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


def _resumable(f: h5py.File, layout: CacheLayout, nc: tuple[int, int]) -> bool:
    """Whether an unfinished cache can be resumed: a wrong structure means start over; rows marked done whose data
    is not finite or all zero (a torn write) are done again."""
    try:
        shapes = layout.row_shapes(*nc)
        if any(k not in f or f[k].shape != s for k, (s, _) in shapes.items()) or \
                any(k not in f or f[k].shape != (nc[0],) for k in ("done", "bad")):
            return False
        done, bad = f["done"][:].astype(bool), f["bad"][:].astype(bool)
        for start in range(0, nc[0], 1024):  # the similarities, or where they are computed the embeddings
            if layout.sims == "stored":
                x, axes = f["sims"][:, start:start + 1024].astype(np.float32), (0, 2, 3)
            else:
                x, axes = f["embeddings"][start:start + 1024].astype(np.float32), (1, 2)
            zero = (x == 0).all(axis=axes) & ~bad[start:start + 1024]
            torn = ~np.isfinite(x).all(axis=axes) | zero
            done[start:start + 1024] &= ~torn
        f["done"][:] = done
        for split in ("val", "test"):
            if f.attrs.get("eval_done", False) and f"{split}_embeddings" in f:
                e = f[f"{split}_embeddings"][:].astype(np.float32)
                if len(e) and (not np.isfinite(e).all() or (e == 0).all(axis=tuple(range(1, e.ndim))).any()):
                    f.attrs["eval_done"] = False
        f.flush()
    except (OSError, KeyError, ValueError):
        return False
    return True


RUN_STATS = ("computed_images", "seconds", "images_per_s")  # how the run that finished the cache went: not sealed


def check_disk(target: Path, need: int) -> None:
    """Refuse a cache of `need` bytes that the disk under `target` cannot hold (a partial file's bytes count as
    free: it is resumed in place), before anything is computed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = partial_path(target)
    have = shutil.disk_usage(target.parent).free + (part.stat().st_size if part.exists() else 0)
    if need > have:
        raise AevlpError(f"{target}: this cache needs about {_size(need)} and {target.parent} has {_size(have)} free",
                         hint=f"free space, put the cache elsewhere ({flag('cache.path', 'FILE')}), or make it "
                              f"smaller: {flag('cache.store_embeddings', 'none')} (no image embeddings), fewer "
                              f"{flag('views.rounds')} or a smaller {flag('views.grid')} (the similarities grow "
                              "with rounds x views x classes)")


def _size(b: int) -> str:
    return f"{b / 1e9:.1f} GB" if b >= 1e9 else f"{b / 1e6:.1f} MB" if b >= 1e6 else f"{b / 1e3:.0f} kB"


class CacheWriter:
    """Creates or resumes the cache `<target>.partial` (a `SealedFile`: under the target's lock); `finish()` seals
    it and renames it onto the target atomically.

    A context manager: leaving the block without `finish()` (an error, Ctrl-C) flushes and closes the
    partial file, so its finished rows are kept for the next run to resume."""

    def __init__(self, target: Path, fingerprint: dict, layout: CacheLayout, *, image_ids: list[str],
                 classnames: list[str], observed: np.ndarray, labels: np.ndarray | None,
                 text_features: np.ndarray, relation: np.ndarray | None, selection: dict,
                 eval_ids: dict[str, list[str]] | None = None, eval_labels: dict[str, np.ndarray] | None = None,
                 info: dict | None = None, clip_preprocess: dict | None = None,
                 text_features_plain: np.ndarray | None = None):
        self.target, self.tmp = Path(target), partial_path(Path(target))
        self.fingerprint, self.layout = fingerprint, layout

        def create(f: h5py.File) -> None:
            n, c = observed.shape
            for name, (shape, dtype) in layout.row_shapes(n, c).items():
                _early(f, name, shape, dtype)
            if layout.sims == "computed":  # never written: they give the shapes and take no space
                r, v, rows = layout.rounds, layout.num_views, min(n, 64) or 1
                f.create_dataset("sims", (r, n, v, c), np.float16, chunks=(1, rows, v, c))
                f.create_dataset("scores", (r, n, c), np.float16, chunks=(1, rows, c))
                f.create_dataset("pseudo", (r, n, c), np.int8, chunks=(1, rows, c))
            for split, ids in (eval_ids or {}).items():  # unflipped embeddings of the val/test images
                _early(f, f"{split}_embeddings", layout.eval_shape(len(ids)), np.float16)
                f.create_dataset(f"{split}_image_ids", data=np.asarray(ids, dtype=object), dtype=STR)
                if eval_labels and split in eval_labels:
                    f.create_dataset(f"{split}_labels", data=np.asarray(eval_labels[split], dtype=np.int8))
            _early(f, "done", (n,), np.bool_)
            _early(f, "bad", (n,), np.bool_)
            f.create_dataset("image_ids", data=np.asarray(image_ids, dtype=object), dtype=STR)
            f.create_dataset("classnames", data=np.asarray(classnames, dtype=object), dtype=STR)
            f.create_dataset("observed", data=observed.astype(np.int8))
            if labels is not None:
                f.create_dataset("labels", data=labels.astype(np.int8))
            f.create_dataset("text_features", data=np.asarray(text_features, dtype=np.float32))
            if text_features_plain is not None:  # the prompts' features before the GCN (VLPL's pseudo-labels)
                f.create_dataset("text_features_plain", data=np.asarray(text_features_plain, dtype=np.float32))
            if relation is not None:
                f.create_dataset("relation", data=np.asarray(relation, dtype=np.float32))
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["selection"] = json.dumps(selection, sort_keys=True)
            f.attrs["eval_done"] = not eval_ids
            f.attrs["info"] = json.dumps(info or {})  # where the data came from; not part of the fingerprint
            f.attrs["clip_preprocess"] = json.dumps(clip_preprocess or {})  # what every view got (docs/cache.md)
            f.attrs["versions"] = json.dumps(_versions())

        self.file = SealedFile(self.target, fingerprint, create=create,
                               resume=lambda f: _resumable(f, layout, observed.shape))
        self.f, self.resumed = self.file.f, self.file.resumed

    @classmethod
    def like(cls, source: h5py.File, target: Path, fingerprint: dict, *, image_ids: list[str],
             observed: np.ndarray, labels: np.ndarray | None) -> CacheWriter:
        """A writer for `target` with `source`'s layout, text side, selection and eval splits, for the
        rows given (how shards are merged into one cache)."""
        eval_ids = {sp: list(source[f"{sp}_image_ids"].asstr()[:]) for sp in ("val", "test")
                    if f"{sp}_image_ids" in source}
        eval_labels = {sp: source[f"{sp}_labels"][:] for sp in eval_ids if f"{sp}_labels" in source}
        return cls(target, fingerprint, CacheLayout.of_file(source), image_ids=image_ids,
                   classnames=list(source["classnames"].asstr()[:]), observed=observed, labels=labels,
                   text_features=source["text_features"][:],
                   text_features_plain=source["text_features_plain"][:] if "text_features_plain" in source else None,
                   relation=source["relation"][:] if "relation" in source else None,
                   selection=json.loads(source.attrs["selection"]), eval_ids=eval_ids or None,
                   eval_labels=eval_labels or None,
                   info=json.loads(source.attrs.get("info", "{}")),
                   clip_preprocess=json.loads(source.attrs.get("clip_preprocess", "{}")))

    def pending(self) -> np.ndarray:
        return np.flatnonzero(~self.f["done"][:])

    def write(self, start: int, sims: np.ndarray, scores: np.ndarray, pseudo: np.ndarray, bad: np.ndarray,
              embeddings: np.ndarray | None = None, embedding_index: np.ndarray | None = None) -> None:
        """Rows [start, start+B): data first, flushed, then the done flags (so a crash re-does them).

        `embeddings`: [R, B, D] (global) or [B, U, D] with `embedding_index` [B, R, V] (all)."""
        stop = start + sims.shape[1]
        try:
            if self.layout.sims == "stored":  # (a computing cache computes all three when read)
                self.f["sims"][:, start:stop] = sims.astype(np.float16)
                self.f["scores"][:, start:stop] = scores.astype(np.float16)
                self.f["pseudo"][:, start:stop] = pseudo.astype(np.int8)
            if embeddings is not None and "embeddings" in self.f:
                if embedding_index is not None:
                    self.f["embeddings"][start:stop] = embeddings.astype(np.float16)
                    self.f["embedding_index"][start:stop] = embedding_index.astype(np.int16)
                else:
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
        if stats:  # the summary (`cache inspect`, the bench's teacher row) sealed with the rest; how this run went
            run = {k: stats[k] for k in RUN_STATS if k in stats}  # (seconds, images computed) beside it, unsealed
            self.f.attrs["summary"] = json.dumps({k: v for k, v in stats.items() if k not in RUN_STATS})
            self.f.attrs["run_stats"] = json.dumps(run)
        return self.file.finish({"checksums": json.dumps(checksums(self.f, sealed_names(self.f))),  # docs/trust.md
                                 "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


