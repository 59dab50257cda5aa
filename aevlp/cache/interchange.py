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


def export_label_studio(sel, out: str | Path) -> Path:
    """`out` (tasks JSON) and label_config.xml beside it, from `aevlp.cache.export.Labels`."""
    names, ok = sel.classnames, np.flatnonzero(~sel.bad)
    version = f"aevlp {sel.provenance.get('loss', '')} labels, round {sel.round}"
    tasks = []
    for i in ok:
        picked = [k for k in range(len(names)) if sel.pseudo[i, k] == 1]
        image = sel.image_ids[i]
        tasks.append({
            "data": {"image": f"/data/local-files/?d={quote(image, safe='/')}", IMAGE_KEY: image,
                     "aevlp_scores": {names[k]: round(float(sel.scores[i, k]), 4) for k in picked}},
            "predictions": [{"model_version": version,
                             "score": round(float(sel.scores[i, picked].mean()), 4) if picked else 0.0,
                             "result": [{"from_name": CHOICES_NAME, "to_name": "image", "type": "choices",
                                         "value": {"choices": [names[k] for k in picked]}}]}]})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(tasks, indent=1))
    out.with_name("label_config.xml").write_text(label_config(names))
    return out


def export_fiftyone(sel, out: str | Path) -> Path:
    """`out`/labels.json in FiftyOne's image-classification format (multilabel, with confidences)."""
    root, names = Path(sel.image_root).resolve(), sel.classnames
    labels = {str(root / sel.image_ids[i]): [{"label": names[k], "confidence": round(float(sel.scores[i, k]), 4)}
                                             for k in range(len(names)) if sel.pseudo[i, k] == 1]
              for i in np.flatnonzero(~sel.bad)}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "labels.json").write_text(json.dumps({"labels": labels}, indent=1))
    return out
