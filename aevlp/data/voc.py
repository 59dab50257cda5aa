"""PASCAL VOC 2012 → SPML layout, as Cole et al. format it.

A class is positive for an image when it has a non-difficult object of that class: label 1 in
`ImageSets/Main/{cls}_{phase}.txt` (0 there means "difficult only"), or equivalently a
`<difficult>0</difficult>` object in `Annotations/{id}.xml`. Images without positives are dropped
(and counted), images are sorted by file name.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from aevlp.data.layout import write_layout
from aevlp.data.registry import builtin_classnames
from aevlp.errors import DataError

__all__ = ["prepare_voc", "find_voc_root"]


def find_voc_root(raw: Path) -> Path:
    """Accept the VOC2012 folder itself, VOCdevkit, or the folder holding VOCdevkit."""
    for cand in (raw, raw / "VOC2012", raw / "VOCdevkit" / "VOC2012"):
        if (cand / "ImageSets" / "Main").is_dir():
            return cand
    raise DataError(f"{raw}: no VOC2012 folder with ImageSets/Main found",
                    hint="pass --raw pointing at VOCdevkit/VOC2012 (from VOCtrainval_11-May-2012.tar)")


def _read_ids(path: Path) -> list[str]:
    if not path.exists():
        raise DataError(f"missing {path}", hint="the VOC ImageSets/Main split lists are needed")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _labels_from_lists(main: Path, phase: str, classes: list[str]) -> dict[str, set[int]]:
    """Per-class list files; `{cls}_{phase}.txt` or `{cls}_trainval.txt` filtered by `{phase}.txt`."""
    ann: dict[str, set[int]] = {}
    members = None
    for c, cls in enumerate(classes):
        path = main / f"{cls}_{phase}.txt"
        if not path.exists():
            path = main / f"{cls}_trainval.txt"
            if members is None:
                members = set(_read_ids(main / f"{phase}.txt"))
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) < 2:
                continue
            if members is not None and parts[0] not in members:
                continue
            try:
                flag = int(parts[-1])
            except ValueError as e:
                raise DataError(f"{path}: bad line '{line}' (expected 'image_id label')") from e
            ann.setdefault(parts[0], set())
            if flag == 1:
                ann[parts[0]].add(c)
    return ann


def _labels_from_xml(root: Path, phase: str, classes: list[str]) -> dict[str, set[int]]:
    index = {cls: c for c, cls in enumerate(classes)}
    ann: dict[str, set[int]] = {}
    for image_id in _read_ids(root / "ImageSets" / "Main" / f"{phase}.txt"):
        path = root / "Annotations" / f"{image_id}.xml"
        try:
            tree = ET.parse(path)
        except (ET.ParseError, FileNotFoundError) as e:
            raise DataError(f"{path}: cannot read annotation ({e})") from e
        ann[image_id] = set()
        for obj in tree.getroot().iter("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in index:
                raise DataError(f"{path}: unknown VOC class '{name}'")
            if (obj.findtext("difficult") or "0").strip() != "1":
                ann[image_id].add(index[name])
    return ann


def prepare_voc(raw: str | Path, out: str | Path, *, source: str = "auto") -> dict:
    """`source`: 'lists' (ImageSets/Main per-class files), 'xml' (Annotations), or 'auto'."""
    root = find_voc_root(Path(raw))
    classes = builtin_classnames("voc")
    main = root / "ImageSets" / "Main"
    if source == "auto":
        has_lists = (main / f"{classes[0]}_train.txt").exists() or (main / f"{classes[0]}_trainval.txt").exists()
        source = "lists" if has_lists else "xml"
    if source == "xml" and not (root / "Annotations").is_dir():
        raise DataError(f"{root}: neither per-class lists in ImageSets/Main nor an Annotations folder")
    phases, dropped = {}, {}
    for phase in ("train", "val"):
        ann = _labels_from_lists(main, phase, classes) if source == "lists" else _labels_from_xml(root, phase, classes)
        ids = sorted(i for i, cs in ann.items() if cs)
        dropped[phase] = len(ann) - len(ids)
        labels = np.zeros((len(ids), len(classes)), dtype=np.float32)
        for r, i in enumerate(ids):
            labels[r, sorted(ann[i])] = 1
        phases[phase] = ([f"{i}.jpg" for i in ids], labels)
    summary = write_layout(out, "voc", classes, root / "JPEGImages", phases, extra={"source": f"voc2012/{source}"})
    summary.update({f"{p}_dropped_without_positive": n for p, n in dropped.items()})
    return summary
