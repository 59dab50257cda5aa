"""The lock of a file or folder aevlp writes (a cache, a student source, the image cache, a run folder)."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from aevlp.cache.schema import lock_path
from aevlp.errors import AevlpError

__all__ = ["CacheLock", "lock_owner", "owner_path"]


class CacheLock:
    """Exclusive lock of a file or folder being written (a cache, a run folder, the image cache): an OS lock
    (`filelock`) on TARGET.lock, which the OS drops when its process dies, so a lock is never stale and no two
    processes can both take one over; the writer's pid and host go in TARGET.lock.owner, for the message a
    second writer gets."""

    def __init__(self, target: Path):
        from filelock import FileLock

        self.path = lock_path(target)
        self.owner = owner_path(target)
        self.held = False
        self._lock = FileLock(str(self.path))

    def __enter__(self) -> CacheLock:
        from filelock import Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            other = _owner(self.owner)
            raise AevlpError(f"{self.path.with_suffix('')} is being written by pid {other.get('pid', '?')} on "
                             f"{other.get('host', 'this or another machine')}",
                             hint="wait for it to finish (the lock goes when its process ends)") from None
        self.owner.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        self.held = True
        return self

    def __exit__(self, *exc) -> None:
        if self.held:
            self.owner.unlink(missing_ok=True)
            self._lock.release()
            self.held = False


def owner_path(target: Path) -> Path:
    """TARGET.lock.owner: who holds the lock of TARGET (pid and host), while they hold it."""
    path = lock_path(Path(target))
    return path.with_name(path.name + ".owner")


def _owner(path: Path) -> dict:
    try:
        other = json.loads(path.read_text() or "{}")
        return other if isinstance(other, dict) else {}
    except (OSError, ValueError):
        return {}


def lock_owner(target: Path) -> dict | None:
    """{"pid", "host"} of a live process writing `target`, or None (no one holds its lock)."""
    from filelock import FileLock, Timeout

    path = lock_path(Path(target))
    if not path.exists():
        return None
    probe = FileLock(str(path))
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return _owner(owner_path(target)) or {"pid": "?", "host": "?"}
    probe.release()
    return None


