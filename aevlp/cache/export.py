"""Getting pseudo-labels out of a cache: a table per image (`aevlp cache export`) and a contact sheet
of the images given a class (`aevlp cache gallery`), to look at while iterating on prompts."""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from aevlp.cache.reader import Cache
from aevlp.errors import AevlpError

__all__ = ["export_pseudo_labels", "gallery", "gallery_html"]

FORMATS = ("csv", "parquet", "npz", "label-studio", "fiftyone")
RED_BOX = ("red box: the tile whose score for {cls} is highest, the evidence DAMP used (in 'missed': the best "
           "tile, still below the threshold)")


def _round(c: Cache, rnd: int) -> int:
    if not 0 <= rnd < c.rounds:
        raise AevlpError(f"--round {rnd}: the cache has rounds 0..{c.rounds - 1}")
    return rnd


def export_pseudo_labels(path: str | Path, out: str | Path, *, rnd: int = 0, fmt: str = "csv") -> Path:
    """One row per training image: image id, its positive and negative pseudo-labels (names), and per
    class the pseudo-label (1/0/-1) and DAMP score of round `rnd`."""
    if fmt not in FORMATS:
        raise AevlpError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if fmt in ("label-studio", "fiftyone"):
        from aevlp.cache.interchange import export_fiftyone, export_label_studio

        return (export_label_studio if fmt == "label-studio" else export_fiftyone)(path, out, rnd=rnd)
    out = Path(out)
    with Cache(path) as c:
        r = _round(c, rnd)
        ids, names = c.image_ids(), c.classnames()
        pseudo, scores, bad = c.f["pseudo"][r], c.f["scores"][r].astype(np.float32), c.f["bad"][:]
    if fmt == "npz":
        np.savez(out, image_ids=np.asarray(ids, dtype=str), classnames=np.asarray(names, dtype=str), pseudo=pseudo,
                 scores=scores, bad=bad)
        return out
    df = pd.DataFrame({"image": ids, "unreadable": bad,
                       "positives": ["|".join(n for n, z in zip(names, row) if z == 1) for row in pseudo],
                       "negatives": ["|".join(n for n, z in zip(names, row) if z == -1) for row in pseudo]})
    df = pd.concat([df, pd.DataFrame(pseudo, columns=[f"pseudo:{n}" for n in names]),
                    pd.DataFrame(scores, columns=[f"score:{n}" for n in names])], axis=1)
    if fmt == "parquet":
        try:
            df.to_parquet(out, index=False)
        except ImportError as e:
            raise AevlpError("parquet needs pyarrow", hint="pip install pyarrow, or use --format csv") from e
    else:
        df.to_csv(out, index=False)
    return out


def _panels(c: Cache, r: int, k: int) -> dict[str, np.ndarray]:
    """Row indices per panel for class k: new pseudo-positives, and with ground truth the wrong and missed."""
    pseudo, obs, bad = c.f["pseudo"][r][:, k], c.array("observed")[:, k], c.f["bad"][:]
    given = np.flatnonzero((pseudo == 1) & (obs != 1) & ~bad)
    panels = {"given the pseudo-label": given}
    if "labels" in c.f:
        truth = c.array("labels")[:, k]
        panels["wrong (not in the ground truth)"] = given[truth[given] != 1]
        panels["missed (in the ground truth, not pseudo-labelled)"] = np.flatnonzero(
            (truth == 1) & (pseudo != 1) & (obs != 1) & ~bad)
    return panels


def _fired_tile(c: Cache, r: int, row: int, k: int, temperature: float) -> int:
    """The tile (1..G²) whose softmax score for class k is highest: the view that made the label."""
    import torch

    from aevlp.damp import softmax

    soft = softmax(torch.from_numpy(c.f["sims"][r, row].astype(np.float64)), temperature)  # [V, C]
    return 1 + int(torch.argmax(soft[1:, k]))


def _thumb(path: Path, tile: int, grid: int, size: int = 128):
    from PIL import Image, ImageDraw

    from aevlp.views import tile_boxes

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        x0, y0, x1, y1 = tile_boxes(w, h, grid)[tile - 1]
        im = im.resize((size, size))
    sx, sy = size / w, size / h
    ImageDraw.Draw(im).rectangle([x0 * sx, y0 * sy, x1 * sx - 1, y1 * sy - 1], outline=(255, 40, 40), width=2)
    return im


def gallery(path: str | Path, classname: str, out: str | Path, *, rnd: int = 0, per_panel: int = 24) -> dict:
    """A PNG contact sheet for one class: the images given it as a pseudo-label (the tile that fired
    outlined in red) and, where ground truth is stored, the wrong and the missed ones. Returns (and
    writes beside the PNG as JSON) the image ids shown per panel."""
    from PIL import Image, ImageDraw

    out = Path(out)
    with Cache(path) as c:
        names = c.classnames()
        if classname not in names:
            from aevlp.registry import did_you_mean
            raise AevlpError(f"no class '{classname}' in {path}{did_you_mean(classname, names)}")
        r, k = _round(c, rnd), names.index(classname)
        data = c.dataset()
        ids, grid, tau = c.image_ids(), int(c.fingerprint["grid"]), c.selection.get("temperature", 0.01)
        every = _panels(c, r, k)
        totals = {title: len(rows) for title, rows in every.items()}
        panels = {title: rows[:per_panel] for title, rows in every.items()}
        tiles = {int(i): _fired_tile(c, r, int(i), k, tau) for rows in panels.values() for i in rows}
    cols, size, pad = 8, 128, 22
    height = pad + sum(pad + max(1, -(-len(rows) // cols)) * (size + 4) for rows in panels.values())
    sheet = Image.new("RGB", (cols * (size + 4), height + 4), "white")
    draw, y = ImageDraw.Draw(sheet), 2
    draw.text((4, y + 4), RED_BOX.format(cls=classname), fill=(200, 30, 30))
    y += pad
    for title, rows in panels.items():
        draw.text((4, y + 4), f"{classname}: {title} ({len(rows)} shown of {totals[title]})", fill="black")
        y += pad
        for j, i in enumerate(rows):
            thumb = _thumb(data.image_root / ids[i], tiles[int(i)], grid, size)
            sheet.paste(thumb, ((j % cols) * (size + 4) + 2, y + (j // cols) * (size + 4)))
        y += max(1, -(-len(rows) // cols)) * (size + 4)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    listing = {title: [ids[i] for i in rows] for title, rows in panels.items()}
    out.with_suffix(".json").write_text(json.dumps({"class": classname, "round": r, "panels": listing,
                                                    "totals": totals}, indent=1))
    return {"png": str(out), "panels": listing, "totals": totals}


def gallery_html(path: str | Path, out_dir: str | Path, *, rnd: int = 0, per_panel: int = 16) -> Path:
    """One contact sheet per class and an index.html linking them all."""
    out_dir = Path(out_dir)
    with Cache(path) as c:
        names = c.classnames()
    items = []
    for i, name in enumerate(names):
        g = gallery(path, name, out_dir / f"class{i:03d}.png", rnd=rnd, per_panel=per_panel)
        counts = ", ".join(f"{t}: {len(v)} shown of {g['totals'][t]}" for t, v in g["panels"].items())
        items.append(f'<h2>{html.escape(name)}</h2><p>{html.escape(counts)}</p><img src="class{i:03d}.png">')
    page = out_dir / "index.html"
    page.write_text("<!doctype html><meta charset='utf-8'><title>aevlp pseudo-labels</title>"
                    f"<h1>Pseudo-labels of {html.escape(str(path))} (round {rnd})</h1>" + "\n".join(items))
    return page
