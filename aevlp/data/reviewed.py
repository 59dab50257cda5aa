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


def _chosen(task: dict, where: str) -> list[str] | None:
    """The classes of the task's last annotation that was not cancelled (None: not annotated); a task whose
    parts are not what Label Studio writes is refused, naming it."""
    annotations = task.get("annotations", [])
    if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
        raise DataError(f"{where}: its annotations are not a list of objects")
    done = [a for a in annotations if not a.get("was_cancelled")]
    if not done:
        return None
    picked: list[str] = []
    results = done[-1].get("result", [])
    if not isinstance(results, list):
        raise DataError(f"{where}: its annotation's result is not a list")
    for r in results:
        if not isinstance(r, dict):
            raise DataError(f"{where}: a result of its annotation is not an object")
        if r.get("type") == "choices" and r.get("from_name") == CHOICES_NAME:
            value = r.get("value", {})
            choices = value.get("choices", []) if isinstance(value, dict) else None
            if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
                raise DataError(f"{where}: its choices are not a list of class names")
            picked += choices
    return picked


def _load(p: Path, path) -> list:
    try:
        tasks = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"--reviewed {path}: not a Label Studio JSON export ({e})",
                        hint="in Label Studio: Export → JSON, then pass that file") from None
    except RecursionError:
        raise DataError(f"--reviewed {path}: nested too deeply to be a Label Studio export") from None
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise DataError(f"--reviewed {path}: a Label Studio JSON export is a list of tasks (objects)",
                        hint="in Label Studio: Export → JSON, then pass that file")
    return tasks


def read_reviewed(path: str | Path, images: list[str], classnames: list[str]) -> np.ndarray:
    """[N, C] int8 for `images` (paths relative to the image folder): 1 where a reviewer chose the class,
    -1 where they saw the image and did not, 0 for images nobody annotated. An image reviewed twice with
    different choices is refused, naming it (which review stands is the user's call)."""
    p = Path(path)
    tasks = _load(p, path)
    row = {im: i for i, im in enumerate(images)}
    col = {c: k for k, c in enumerate(classnames)}
    out = np.zeros((len(images), len(classnames)), dtype=np.int8)
    seen: dict[str, set[str]] = {}
    for n, task in enumerate(tasks):
        where = f"--reviewed {path}: task {n + 1}"
        data = task.get("data", {})
        if not isinstance(data, dict):
            raise DataError(f"{where}: its data is not an object (Label Studio writes {{\"image\": ...}})")
        image = data.get(IMAGE_KEY)
        picked = _chosen(task, where)
        if picked is None or image is None:
            continue
        if not isinstance(image, str) or image not in row:
            raise DataError(f"--reviewed {path}: image {image!r} is not in the CSV",
                            hint="review the tasks `aevlp cache export --format label-studio` wrote for this data")
        unknown = sorted(set(picked) - set(col))
        if unknown:
            raise DataError(f"--reviewed {path}: classes {unknown[:5]} are not the data's")
        if image in seen and seen[image] != set(picked):
            raise DataError(f"--reviewed {path}: image {image!r} was reviewed twice with different choices "
                            f"({sorted(seen[image])} and {sorted(picked)})",
                            hint="keep one review of each image in the export")
        seen[image] = set(picked)
        out[row[image]] = -1
        out[row[image], [col[c] for c in picked]] = 1
    return out
