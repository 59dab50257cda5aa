"""Stage two's pre-resized image cache (`train.image_cache = true`): every image of a dataset's train, val and
test splits decoded once and resized to the training size, stored as uint8 [N, S, S, 3] in one HDF5
file per (dataset, size): `<cache folder>/images/<dataset>-<S>px.h5`.

It is built once (in PATH.partial, renamed onto PATH when complete; resumable: rows are written in order
and `rows_done` is flushed after each block, so an interrupted build goes on where it stopped), shared by
every run and method that trains at that size, and fingerprinted by the split lists and the image files'
sizes and times, so replaced images cause a rebuild. Reading a row is a copy of S*S*3 bytes: no JPEG decode, no resize.
Size: 3 * S^2 bytes per image (602 KB at 448 px; COCO's 122k images: 74 GB, VOC's 11.5k: 7 GB).
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from aevlp.cache.sealed import SealedFile, is_current
from aevlp.data.layout import image_identity
from aevlp.errors import AevlpError
from aevlp.imaging import load_uint8
from aevlp.progress import bar

__all__ = ["image_cache_path", "image_cache_fingerprint", "ensure_image_cache", "CachedImages", "FORMAT"]

FORMAT = 1
BLOCK = 64  # images decoded per write


def image_cache_path(stage_one_cache: Path, dataset: str, size: int) -> Path:
    """Next to the stage-one cache, in its images/ subfolder."""
    return Path(stage_one_cache).parent / "images" / f"{dataset}-{size}px.h5"


def image_cache_fingerprint(data, size: int) -> dict:
    """What the stored pixels depend on: the split lists, the files' identity, the size and the resize."""
    # "inputs.load_uint8": the name as first written (now aevlp.imaging's), kept so caches stay current
    return {"format": FORMAT, "size": size, "resize": "squash bilinear (PIL, uint8): inputs.load_uint8",
            **{f"{name}_images": [len(s.images), image_identity(data.image_root, s.images)]
               for name, s in _splits(data)}}


def _splits(data):
    return (("train", data.train), ("val", data.val), ("test", data.test))


def ensure_image_cache(data, size: int, path: Path, *, progress: bool = True) -> Path:
    """Build (or finish building) the image cache unless a current one is there; return its path. It is a
    `SealedFile`: built in PATH.partial under PATH's lock (a second run started meanwhile is refused, naming the
    builder) and renamed onto PATH when complete."""
    fp = image_cache_fingerprint(data, size)
    if is_current(path, fp):
        return path

    def create(f: h5py.File) -> None:
        for name, s in _splits(data):
            d = f.create_dataset(name, (len(s.images), size, size, 3), dtype=np.uint8)
            d.attrs["rows_done"] = 0

    def resume(f: h5py.File) -> bool:
        return all(name in f and f[name].shape == (len(s.images), size, size, 3) and "rows_done" in f[name].attrs
                   for name, s in _splits(data))

    with SealedFile(path, fp, create=create, resume=resume) as sealed:
        if not is_current(path, fp):  # another run may have finished it while this one waited to start
            _build(sealed.f, data, size, progress)
            sealed.finish()
    return path


def _build(f: h5py.File, data, size: int, progress: bool) -> None:
    """Every split's rows from the first not yet written, a block at a time, each block flushed before it counts."""
    for name, s in _splits(data):
        d = f[name]
        start = int(d.attrs["rows_done"])
        pbar = bar(total=len(s.images), initial=start, desc=f"image cache {name} {size}px", unit="img",
                   disable=not progress, leave=False)
        for i in range(start, len(s.images), BLOCK):
            j = min(i + BLOCK, len(s.images))
            d[i:j] = np.stack([load_uint8(data.image_root / p, size).numpy() for p in s.images[i:j]])
            f.flush()
            d.attrs["rows_done"] = j
            f.flush()
            pbar.update(j - i)
        pbar.close()


class CachedImages:
    """One split of an image cache as an array of rows; opened lazily in each process that reads it
    (h5py handles do not survive a fork), so DataLoader workers each get their own."""

    def __init__(self, path: Path, split: str, rows: np.ndarray | None = None):
        self.path, self.split, self.rows, self._d = Path(path), split, rows, None
        with h5py.File(self.path, "r") as f:
            if split not in f or not f.attrs.get("complete", False):
                raise AevlpError(f"{self.path} is not a complete image cache (no '{split}')",
                                 hint="delete it; training rebuilds it")
            self.shape = f[split].shape

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else self.shape[0]

    def __getitem__(self, i: int) -> np.ndarray:
        if self._d is None:
            self._d = h5py.File(self.path, "r")[self.split]
        return self._d[int(self.rows[i]) if self.rows is not None else i]

    def __getstate__(self):
        return {**self.__dict__, "_d": None}
