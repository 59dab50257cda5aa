"""Sharded stage one: one cache file per rank (or per `--shard K/W`), merged into one cache.

Shard k holds a contiguous block of whole batches, rendered with the global row numbers, so the
merged file equals a single-process run's bit for bit. Each shard is an ordinary resumable cache
(atomic rename, done mask, lock); a failed rank is re-run alone with `--shard K/W`. The merge
copies rows into one self-contained file (measured against an HDF5 virtual dataset in
docs/performance.md: the copy keeps caches portable and costs seconds), then deletes the shards.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from aevlp.cache import CacheLayout, CacheWriter, read_fingerprint, shard_fingerprint
from aevlp.errors import AevlpError

__all__ = ["shard_path", "shard_complete", "merge_shards"]

ROW_CHUNK = 4096


def shard_path(target: Path, k: int, w: int) -> Path:
    return target.with_name(f"{target.stem}.shard{k:03d}-of-{w:03d}{target.suffix}")


def shard_complete(target: Path, fp: dict, k: int, w: int, rows: tuple[int, int]) -> bool:
    path = shard_path(target, k, w)
    if not path.exists():
        return False
    try:
        old, complete = read_fingerprint(path)
    except AevlpError:
        return False
    return complete and old == shard_fingerprint(fp, k, w, rows)


def _copy_rows(shards: list[h5py.File], rows: list[tuple[int, int]], f: h5py.File, layout: CacheLayout) -> None:
    """Each shard's per-row datasets into its rows of `f`, in chunks; rows marked done after their data."""
    names = list(layout.row_shapes(1, 1))
    for s, (start, stop) in zip(shards, rows):
        for lo in range(0, stop - start, ROW_CHUNK):
            hi = min(lo + ROW_CHUNK, stop - start)
            for name in names:
                if layout.row_axis(name) == 0:
                    f[name][start + lo:start + hi] = s[name][lo:hi]
                else:
                    f[name][:, start + lo:start + hi] = s[name][:, lo:hi]
        f["bad"][start:stop] = s["bad"][:]
        f.flush()
        f["done"][start:stop] = True


def merge_shards(target: Path, fp: dict, w: int, rows: list[tuple[int, int]],
                 summary: Callable[[h5py.File], dict]) -> Path:
    """Copy the W complete shards into `target` (atomically), then delete them."""
    files = [shard_path(target, k, w) for k in range(w)]
    missing = [str(f) for k, f in enumerate(files) if not shard_complete(target, fp, k, w, rows[k])]
    if missing:
        raise AevlpError(f"cannot merge: shards not complete: {', '.join(missing)}",
                         hint="re-run the missing ones alone with --shard K/W")
    shards = [h5py.File(f, "r") for f in files]
    try:
        s0 = shards[0]
        writer = CacheWriter.like(
            s0, target, fp, image_ids=[i for s in shards for i in s["image_ids"].asstr()[:]],
            observed=np.concatenate([s["observed"][:] for s in shards]),
            labels=np.concatenate([s["labels"][:] for s in shards]) if "labels" in s0 else None)
        eval_splits = [sp for sp in ("val", "test") if f"{sp}_image_ids" in s0]
        with writer:
            _copy_rows(shards, rows, writer.f, CacheLayout.of_file(s0))
            for sp in eval_splits:
                writer.write_eval(sp, s0[f"{sp}_embeddings"][:])
            writer.f.attrs["eval_done"] = True
            writer.finish(summary(writer.f))
    finally:
        for s in shards:
            s.close()
    for f in files:
        f.unlink(missing_ok=True)
    return target
