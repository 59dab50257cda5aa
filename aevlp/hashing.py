"""SHA-256 of a file, read in chunks (never the whole file in memory): weights, checkpoints, relation files,
image contents."""
from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["file_sha256"]


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """The file's SHA-256, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
