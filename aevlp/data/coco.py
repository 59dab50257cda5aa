"""MS-COCO (2014 by default) → SPML layout, as Cole et al. format it.

Classes are the 80 categories in ascending category-id order; images with no annotation are
dropped (and counted); image ids are sorted as strings, as the official preprocessing does.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from aevlp.data.layout import write_layout
from aevlp.errors import DataError

__all__ = ["prepare_coco"]


def _load(path: Path) -> dict:
    if not path.exists():
        raise DataError(f"missing {path}", hint="download annotations_trainval2014.zip and unpack it under --raw")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e


def prepare_coco(raw: str | Path, out: str | Path, *, year: str = "2014") -> dict:
    raw = Path(raw)
    phases, dropped, classnames = {}, {}, None
    for phase in ("train", "val"):
        data = _load(raw / "annotations" / f"instances_{phase}{year}.json")
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise DataError(f"{raw / 'annotations' / f'instances_{phase}{year}.json'}: no '{key}' field")
        cats = sorted(data["categories"], key=lambda c: c["id"])
        names = [c["name"] for c in cats]
        if classnames is not None and names != classnames:
            raise DataError("train and val annotation files list different categories")
        classnames = names
        col = {c["id"]: i for i, c in enumerate(cats)}
        files = {str(im["id"]): im["file_name"] for im in data["images"]}
        ann: dict[str, set[int]] = {}
        for a in data["annotations"]:
            ann.setdefault(str(a["image_id"]), set()).add(col[a["category_id"]])
        ids = sorted(i for i in files if ann.get(i))
        dropped[phase] = len(files) - len(ids)
        labels = np.zeros((len(ids), len(cats)), dtype=np.float32)
        for r, i in enumerate(ids):
            labels[r, sorted(ann[i])] = 1
        phases[phase] = ([f"{phase}{year}/{files[i]}" for i in ids], labels)
    summary = write_layout(out, "coco", classnames, raw, phases, extra={"source": f"coco{year}"})
    summary.update({f"{p}_dropped_without_positive": n for p, n in dropped.items()})
    return summary
