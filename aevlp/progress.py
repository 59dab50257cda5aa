"""Progress bars: tqdm's on a terminal; written to a file or a pipe (a log, CI, nohup), one plain line
every few percent instead of a carriage-return update per step. A leaf: imports nothing of aevlp."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm

__all__ = ["bar", "LOG_EVERY"]

LOG_EVERY = 0.05  # a line per 5 % of the work when the output is not a terminal


class _Lines:
    """A stream tqdm writes its status to, turned into whole lines (no carriage returns, no blank rewrites)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def bar(iterable=None, *, total: int | None = None, disable: bool = False, **kw) -> tqdm:
    """tqdm(iterable, total=..., **kw); on a stream that is not a terminal, at most a line per LOG_EVERY of
    `total` (or of len(iterable)), or one every 30 s when the size is unknown."""
    stream = sys.stderr
    if disable or (hasattr(stream, "isatty") and stream.isatty()):
        return tqdm(iterable, total=total, disable=disable, **kw)
    size = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
    kw.pop("dynamic_ncols", None)
    return tqdm(iterable, total=total, file=_Lines(stream), ncols=100, maxinterval=float("inf"),
                mininterval=0 if size else 30, miniters=max(1, int((size or 0) * LOG_EVERY)), **kw)
