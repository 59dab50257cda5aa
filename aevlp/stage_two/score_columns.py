"""Scores [N, C] read class by class, kept in a temporary file so that memory does not grow with N.

The threshold rules, the class-prior estimators, `aevlp cache thresholds` and the review site read a score
matrix one class (one column) at a time, while the labeler computes it a block of rows at a time (a row's
softmax needs all its classes). `ScoreColumns` is the matrix between the two: rows are written as they are
computed, stored class-major in an unnamed temporary file (in TMPDIR: 4·N·C bytes for float32, removed when
closed or collected), and each class's column is read back on its own. Only a column (N numbers) or a block
of rows is ever in memory. Small matrices (and tests) can stay in memory: `ScoreColumns.of(array)`.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

__all__ = ["ScoreColumns"]


class ScoreColumns:
    """A [N, C] matrix written by row blocks and read by columns (class-major in a temporary file)."""

    def __init__(self, n: int, c: int, dtype=np.float32, *, array: np.ndarray | None = None):
        self.shape, self.dtype = (int(n), int(c)), np.dtype(dtype)
        self._array, self._base, self._rows = array, None, None
        self._file = None if array is not None else tempfile.TemporaryFile(prefix="aevlp-scores-")

    @classmethod
    def of(cls, scores) -> ScoreColumns:
        """`scores` as columns: a ScoreColumns as it is, an array [N, C] kept in memory as it is."""
        if isinstance(scores, ScoreColumns):
            return scores
        arr = np.asarray(scores)
        return cls(*arr.shape, dtype=arr.dtype, array=arr)

    def take(self, rows: np.ndarray) -> ScoreColumns:
        """The rows `rows` (a boolean mask [N] or row numbers) of every class, as columns (read-only: a view)."""
        idx = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows)
        view = ScoreColumns.__new__(ScoreColumns)
        view.shape, view.dtype, view._file, view._array = (len(idx), self.shape[1]), self.dtype, None, None
        view._base, view._rows = self, idx
        return view

    def __len__(self) -> int:
        return self.shape[0]

    def _offset(self, k: int, row: int) -> int:
        return (k * self.shape[0] + row) * self.dtype.itemsize

    def write_rows(self, lo: int, block: np.ndarray) -> None:
        """Rows [lo, lo + len(block)) of every class."""
        block = np.asarray(block, dtype=self.dtype)
        if self._base is not None:
            raise TypeError("a view of ScoreColumns (take) is read-only")
        if self._array is not None:
            self._array[lo:lo + len(block)] = block
            return
        by_class = np.ascontiguousarray(block.T)
        for k in range(self.shape[1]):
            os.pwrite(self._file.fileno(), by_class[k].tobytes(), self._offset(k, lo))

    def column(self, k: int) -> np.ndarray:
        """Class k's N scores (a fresh array)."""
        if self._base is not None:
            return self._base.column(k)[self._rows]
        if self._array is not None:
            return np.array(self._array[:, k])
        size = self.shape[0] * self.dtype.itemsize
        return np.frombuffer(os.pread(self._file.fileno(), size, self._offset(k, 0)), dtype=self.dtype).copy()

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """[hi - lo, C] the scores of rows [lo, hi)."""
        if self._base is not None:
            return self._base.rows(0, self._base.shape[0])[self._rows[lo:hi]]
        if self._array is not None:
            return np.array(self._array[lo:hi])
        size = (hi - lo) * self.dtype.itemsize
        cols = [np.frombuffer(os.pread(self._file.fileno(), size, self._offset(k, lo)), dtype=self.dtype)
                for k in range(self.shape[1])]
        return np.stack(cols, axis=1) if cols else np.empty((hi - lo, 0), self.dtype)

    def array(self) -> np.ndarray:
        """The whole [N, C] matrix in memory (small data, tests)."""
        return np.array(self._array) if self._array is not None else self.rows(0, self.shape[0])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
