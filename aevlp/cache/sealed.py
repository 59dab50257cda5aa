"""One kind of file for everything aevlp writes to HDF5 and reads back as trusted: the stage-one cache, the student
sources beside it and stage two's image cache.

A `SealedFile` is written under TARGET's lock (`CacheLock`) into TARGET.partial, which carries the fingerprint of
what it will hold (`attrs["fingerprint"]`, JSON) and `complete = false`; `finish()` writes the file's seal (its
checksums), marks it complete and renames it onto TARGET in one step. So TARGET is absent or complete, never half
written, and an interrupted partial with the same fingerprint is resumed (a different one is started afresh).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import h5py

from aevlp.cache.lock import CacheLock
from aevlp.cache.schema import partial_path

__all__ = ["SealedFile", "is_current", "stored_fingerprint"]


def stored_fingerprint(f: h5py.File) -> dict | None:
    """The fingerprint a file was made with (None if it has none or it is unreadable)."""
    try:
        fp = json.loads(f.attrs.get("fingerprint", "null"))
    except (TypeError, ValueError):
        return None
    return fp if isinstance(fp, dict) else None


def is_current(target: Path, fingerprint: dict) -> bool:
    """TARGET exists, is complete and was made with `fingerprint`."""
    try:
        with h5py.File(target, "r") as f:
            return bool(f.attrs.get("complete", False)) and stored_fingerprint(f) == fingerprint
    except (OSError, RuntimeError):
        return False


class SealedFile:
    """TARGET.partial, open for writing under TARGET's lock (held until `finish()` or `close()`).

    `create(f)` fills a new file (datasets, attributes); `resume(f)` (optional) checks an unfinished one with the
    same fingerprint and says whether it can go on, else it is started afresh; `read_fingerprint(f)` reads a
    file's fingerprint where it is stored in its own way (the stage-one cache's). `resumed` says which happened."""

    def __init__(self, target: Path, fingerprint: dict, *, create: Callable[[h5py.File], None],
                 resume: Callable[[h5py.File], bool] | None = None,
                 read_fingerprint: Callable[[h5py.File], dict | None] = stored_fingerprint):
        self.target, self.tmp, self.fingerprint = Path(target), partial_path(Path(target)), fingerprint
        self.lock = CacheLock(self.target).__enter__()
        try:
            self.f, self.resumed = self._open(create, resume, read_fingerprint)
        except BaseException:
            self.lock.__exit__()
            raise

    def _open(self, create, resume, read_fingerprint) -> tuple[h5py.File, bool]:
        if self.tmp.exists():
            f = self._reopen(read_fingerprint)
            if f is not None and (resume is None or resume(f)):
                return f, True
            if f is not None:
                f.close()
            self.tmp.unlink(missing_ok=True)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        f = h5py.File(self.tmp, "w")
        try:
            create(f)
            f.attrs["fingerprint"] = json.dumps(self.fingerprint, sort_keys=True)
            f.attrs["complete"] = False
            f.flush()
        except BaseException:
            f.close()
            self.tmp.unlink(missing_ok=True)
            raise
        return f, False

    def _reopen(self, read_fingerprint) -> h5py.File | None:
        """The unfinished file, if it opens and was made with this fingerprint (a leftover killed while it was
        being created, or made for other settings, is not)."""
        try:
            f = h5py.File(self.tmp, "r+")
        except (OSError, RuntimeError):
            return None
        try:
            if read_fingerprint(f) == self.fingerprint:
                return f
        except Exception:  # damaged metadata: h5py raises many kinds
            pass
        f.close()
        return None

    def finish(self, seal: dict | None = None) -> Path:
        """Write `seal` (attributes: the checksums), mark the file complete, rename it onto TARGET, unlock."""
        for key, value in (seal or {}).items():
            self.f.attrs[key] = value
        self.f.attrs["complete"] = True
        self.f.close()
        os.replace(self.tmp, self.target)
        self.lock.__exit__()
        return self.target

    def close(self) -> None:
        """Leave the unfinished file (flushed) for the next run to resume, and unlock."""
        if self.f.id.valid:
            self.f.flush()
            self.f.close()
        self.lock.__exit__()

    def __enter__(self) -> SealedFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
