"""CUB-200-2011 binary attributes → SPML layout (official train_test_split; labels = is_present)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from aevlp.data.layout import write_layout
from aevlp.data.registry import builtin_classnames
from aevlp.errors import DataError

__all__ = ["prepare_cub"]


def _table(path: Path, ncols: int) -> list[list[str]]:
    if not path.exists():
        raise DataError(f"missing {path}", hint="unpack CUB_200_2011.tgz under --raw")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < ncols:
            raise DataError(f"{path}:{n}: expected at least {ncols} fields, got '{line}'")
        rows.append(parts)
    return rows


def prepare_cub(raw: str | Path, out: str | Path) -> dict:
    raw = Path(raw)
    base = raw / "CUB_200_2011" if (raw / "CUB_200_2011").is_dir() else raw
    images = {int(r[0]): r[1] for r in _table(base / "images.txt", 2)}
    is_train = {int(r[0]): r[1] == "1" for r in _table(base / "train_test_split.txt", 2)}
    classes = builtin_classnames("cub")
    for cand in (raw / "attributes.txt", base / "attributes.txt", base / "attributes" / "attributes.txt"):
        if cand.exists():
            names = [r[1] for r in _table(cand, 2)]
            if names != classes:
                raise DataError(f"{cand}: attribute names differ from CUB-200-2011's 312 attributes")
            break
    ids = sorted(images)
    row = {i: r for r, i in enumerate(ids)}
    labels = np.zeros((len(ids), len(classes)), dtype=np.int64)
    path = base / "attributes" / "image_attribute_labels.txt"
    # Some lines of this file carry an extra field; only the first three matter.
    for parts in _table(path, 3):
        img, attr, present = int(parts[0]), int(parts[1]), parts[2]
        if img not in row or not 1 <= attr <= len(classes) or present not in ("0", "1"):
            raise DataError(f"{path}: bad line '{' '.join(parts)}'")
        labels[row[img], attr - 1] = int(present)
    missing = [i for i in ids if i not in is_train]
    if missing:
        raise DataError(f"{base / 'train_test_split.txt'}: no split for image ids {missing[:5]}")
    phases = {}
    for phase, flag in (("train", True), ("val", False)):
        sel = [i for i in ids if is_train[i] == flag]
        phases[phase] = ([images[i] for i in sel], labels[[row[i] for i in sel]])
    return write_layout(out, "cub", classes, base / "images", phases, extra={"source": "cub-200-2011"})
