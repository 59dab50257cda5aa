"""`fashion-mosaic`: a multi-label toy world built from Fashion-MNIST, for the offline demo.

Each image is a 2×2 canvas of 32-px cells holding 1–4 items of distinct classes at small random
offsets; its labels are the union of its items' classes. Train mosaics use only Fashion-MNIST's
training split, test mosaics only its test split. Fashion-MNIST (MIT, Zalando) is read from its
standard idx files: --raw DIR, Debian's `dataset-fashion-mnist`, or torchvision's download.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
from PIL import Image

from aevlp.data.layout import META_FILE, write_layout
from aevlp.errors import DataError

__all__ = ["CLASSNAMES", "load_fashion_mnist", "prepare_fashion_mosaic", "DEBIAN_DIR"]

CLASSNAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CELL, ITEM = 32, 28


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim not in (1, 3):
        raise DataError(f"{path}: not an idx file of unsigned bytes (magic {magic:#x})")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
    for cand in (folder / f"{stem}.gz", folder / stem, folder / "FashionMNIST" / "raw" / f"{stem}.gz",
                 folder / "FashionMNIST" / "raw" / stem):
        if cand.is_file():
            return cand
    return None


def load_fashion_mnist(raw: str | Path | None = None, download_to: str | Path | None = None) -> dict:
    """{'train': (images [N,28,28], labels [N]), 'test': (...)} from the first place that has them."""
    places = [Path(raw)] if raw else []
    places += [DEBIAN_DIR] + ([Path(download_to)] if download_to else [])
    for folder in places:
        paths = {s: [_find(folder, f) for f in fs] for s, fs in FILES.items()}
        if all(p is not None for ps in paths.values() for p in ps):
            return {s: (_read_idx(ps[0]), _read_idx(ps[1])) for s, ps in paths.items()}
    if download_to and not raw:
        try:
            from torchvision.datasets import FashionMNIST

            for train in (True, False):
                FashionMNIST(str(download_to), train=train, download=True)
            return load_fashion_mnist(download_to)
        except Exception as e:  # offline
            reason = f"{type(e).__name__}: {e}"
    else:
        reason = "not found"
    raise DataError(f"Fashion-MNIST idx files {reason} (looked in {', '.join(map(str, places))})",
                    hint="install Debian's package (`apt-get install dataset-fashion-mnist`, files under "
                         f"{DEBIAN_DIR}), pass --raw DIR holding train-images-idx3-ubyte.gz etc., "
                         "or run where torchvision can download it")


def _mosaics(images: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator,
             max_items: int = 4) -> tuple[np.ndarray, np.ndarray]:
    by_class = [np.flatnonzero(labels == c) for c in range(len(CLASSNAMES))]
    canvases = np.zeros((n, 2 * CELL, 2 * CELL), dtype=np.uint8)
    y = np.zeros((n, len(CLASSNAMES)), dtype=np.int64)
    for i in range(n):
        k = int(rng.integers(1, max_items + 1))
        classes = rng.choice(len(CLASSNAMES), size=k, replace=False)
        cells = rng.choice(4, size=k, replace=False)
        for c, cell in zip(classes, cells):
            item = images[rng.choice(by_class[c])]
            dx, dy = rng.integers(0, CELL - ITEM + 1, size=2)
            x0, y0 = (cell % 2) * CELL + dx, (cell // 2) * CELL + dy
            np.maximum(canvases[i, y0:y0 + ITEM, x0:x0 + ITEM], item, out=canvases[i, y0:y0 + ITEM, x0:x0 + ITEM])
            y[i, c] = 1
    return canvases, y


def prepare_fashion_mosaic(out: str | Path, *, raw: str | Path | None = None, n_train: int = 8000,
                           n_test: int = 2000, seed: int = 0, download_to: str | Path | None = None) -> dict:
    """Write the mosaics as PNGs + SPML layout; reuses `out` when it was made with the same settings."""
    out = Path(out)
    params = {"n_train": n_train, "n_test": n_test, "seed": seed, "version": 1}
    meta_path = out / META_FILE
    if meta_path.exists() and json.loads(meta_path.read_text()).get("mosaic") == params:
        return {"dataset": "fashion-mosaic", "out": str(out), "status": "reused", **params}
    if n_train < 10 or n_test < 10:
        raise DataError(f"need at least 10 train and 10 test mosaics, got {n_train} and {n_test}")
    fm = load_fashion_mnist(raw, download_to)
    rng = np.random.default_rng(seed)
    phases = {}
    for phase, split, n in (("train", "train", n_train), ("val", "test", n_test)):
        canvases, y = _mosaics(*fm[split], n, rng)
        folder = out / "images" / phase
        folder.mkdir(parents=True, exist_ok=True)
        names = []
        for i, c in enumerate(canvases):
            name = f"{phase}/{i:05d}.png"
            Image.fromarray(c).convert("RGB").save(out / "images" / name, compress_level=1)
            names.append(name)
        phases[phase] = (names, y)
    summary = write_layout(out, "fashion-mosaic", CLASSNAMES, out / "images", phases,
                           extra={"source": "Fashion-MNIST (MIT, Zalando) mosaics", "mosaic": params})
    return {**summary, "status": "created"}
