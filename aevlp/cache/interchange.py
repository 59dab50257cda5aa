"""Pseudo-labels handed to the tools people review labels in, each readable there with one command.

- Label Studio: `tasks.json` (one task per training image, its pseudo-positives as a prediction with
  the DAMP scores) and `label_config.xml` beside it (a multiple-choice labelling interface). Images are
  referenced as Label Studio's local-file URLs under the image folder; the image's path relative to it
  rides along in `data.aevlp_image`, which `aevlp data prepare table --reviewed` reads back.
- FiftyOne: a `FiftyOneImageClassificationDataset` folder: `labels.json` with, per image (its absolute
  path as the sample id), a list of classifications {label, confidence}: the pseudo-positives.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from urllib.parse import quote

import numpy as np

from aevlp.data.reviewed import CHOICES_NAME, IMAGE_KEY

__all__ = ["export_label_studio", "export_fiftyone", "label_config"]


def label_config(classnames: list[str]) -> str:
    """Label Studio's labelling interface: the image and one multiple-choice list of the classes."""
    choices = "\n".join(f'    <Choice value="{html.escape(c, quote=True)}"/>' for c in classnames)
    return (f'<View>\n  <Image name="image" value="$image"/>\n  <Choices name="{CHOICES_NAME}" toName="image" '
            f'choice="multiple" showInline="true">\n{choices}\n  </Choices>\n</View>\n')


def _task(image: str, names: list[str], pseudo: np.ndarray, scores: np.ndarray, version: str) -> dict:
    """One Label Studio task: the image and its pseudo-positives as a prediction, with their scores."""
    picked = np.flatnonzero(pseudo == 1)
    return {"data": {"image": f"/data/local-files/?d={quote(image, safe='/')}", IMAGE_KEY: image,
                     "aevlp_scores": {names[k]: round(float(scores[k]), 4) for k in picked}},
            "predictions": [{"model_version": version,
                             "score": round(float(scores[picked].mean()), 4) if len(picked) else 0.0,
                             "result": [{"from_name": CHOICES_NAME, "to_name": "image", "type": "choices",
                                         "value": {"choices": [names[k] for k in picked]}}]}]}


def export_label_studio(rows, names: list[str], out: str | Path, version: str) -> Path:
    """`out` (tasks JSON) and label_config.xml beside it. `rows` yields blocks (image ids, pseudo-labels [M, C],
    scores [M, C], unreadable [M]); each block is written as it comes (memory: a block's)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as fh:
        sep = "["
        for ids, pseudo, scores, bad in rows:
            for i in np.flatnonzero(~np.asarray(bad)):
                fh.write(sep + "\n" + json.dumps(_task(ids[i], names, pseudo[i], scores[i], version), indent=1))
                sep = ","
        fh.write("[]\n" if sep == "[" else "\n]\n")
    out.with_name("label_config.xml").write_text(label_config(names))
    return out


def export_fiftyone(rows, names: list[str], out: str | Path, image_root: Path) -> Path:
    """`out`/labels.json (returns `out`) in FiftyOne's image-classification format (multilabel, with
    confidences), from `rows` as `export_label_studio` takes them."""
    root, out = Path(image_root).resolve(), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "labels.json", "w") as fh:
        sep = "{\"labels\": {"
        for ids, pseudo, scores, bad in rows:
            for i in np.flatnonzero(~np.asarray(bad)):
                value = [{"label": names[k], "confidence": round(float(scores[i, k]), 4)}
                         for k in np.flatnonzero(pseudo[i] == 1)]
                fh.write(f"{sep}\n{json.dumps(str(root / ids[i]))}: {json.dumps(value)}")
                sep = ","
        fh.write("{\"labels\": {}}\n" if sep.startswith("{") else "\n}}\n")
    return out
