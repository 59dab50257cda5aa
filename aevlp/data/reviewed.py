"""Labels reviewed in Label Studio, read back as observed labels: what `aevlp cache export --format
label-studio` hands out comes back from Label Studio's JSON export with each annotated image's classes
confirmed (chosen: positive) or rejected (not chosen: negative).

The field names are shared with the exporter (`aevlp.cache.interchange`): tasks carry the image's path
relative to the image folder in `data.aevlp_image`, and the choices are named `labels`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from aevlp.errors import DataError

__all__ = ["IMAGE_KEY", "CHOICES_NAME", "read_reviewed"]

IMAGE_KEY = "aevlp_image"  # the task's data field holding the image path relative to the image folder
CHOICES_NAME = "labels"  # the <Choices name=...> of the labelling config


def _chosen(task: dict) -> list[str] | None:
    """The classes of the task's last annotation that was not cancelled (None: not annotated)."""
    done = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
    if not done:
        return None
    picked: list[str] = []
    for r in done[-1].get("result", []):
        if r.get("type") == "choices" and r.get("from_name") == CHOICES_NAME:
            picked += list(r.get("value", {}).get("choices", []))
    return picked


def read_reviewed(path: str | Path, images: list[str], classnames: list[str]) -> np.ndarray:
    """[N, C] int8 for `images` (paths relative to the image folder): 1 where a reviewer chose the class,
    -1 where they saw the image and did not, 0 for images nobody annotated."""
    p = Path(path)
    try:
        tasks = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"--reviewed {path}: not a Label Studio JSON export ({e})",
                        hint="in Label Studio: Export → JSON, then pass that file") from None
    if not isinstance(tasks, list):
        raise DataError(f"--reviewed {path}: a Label Studio JSON export is a list of tasks")
    row = {im: i for i, im in enumerate(images)}
    col = {c: k for k, c in enumerate(classnames)}
    out = np.zeros((len(images), len(classnames)), dtype=np.int8)
    for task in tasks:
        image = task.get("data", {}).get(IMAGE_KEY)
        picked = _chosen(task)
        if picked is None or image is None:
            continue
        if image not in row:
            raise DataError(f"--reviewed {path}: image {image!r} is not in the CSV",
                            hint="review the tasks `aevlp cache export --format label-studio` wrote for this data")
        unknown = sorted(set(picked) - set(col))
        if unknown:
            raise DataError(f"--reviewed {path}: classes {unknown[:5]} are not the data's")
        out[row[image]] = -1
        out[row[image], [col[c] for c in picked]] = 1
    return out
