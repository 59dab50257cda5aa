"""Getting pseudo-labels out of a cache: a table per image (`aevlp cache export`) and a contact sheet
of the images given a class (`aevlp cache gallery`), to look at while iterating on prompts.

Every export selects through the labeler a training run uses (`aevlp.stage_two.labeler.labeler_for`), with the same
settings and student: what a file says is what a run with those settings trains on in that round (epoch
e reads round (e − 1) mod R). Each writes what it was selected with beside it (its provenance).
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from aevlp.cache.reader import Cache
from aevlp.errors import AevlpError
from aevlp.specs import Specs
from aevlp.tools.visual import fired_tile, outlined_thumbnail

__all__ = ["Labels", "selected_labels", "write_provenance", "export_pseudo_labels", "gallery", "gallery_html"]

FORMATS = ("csv", "parquet", "npz", "label-studio", "fiftyone")
EXPORT_ROWS = 20_000  # rows of a table export built and written at a time
RED_BOX = ("red box: the tile whose score for {cls} is highest, the evidence DAMP used (in 'missed': the best "
           "tile, still below the threshold)")


@dataclass(frozen=True)
class Labels:
    """One round's pseudo-labels of every training row, as a run with given settings selects them."""

    image_ids: list[str]
    classnames: list[str]
    pseudo: np.ndarray  # [N, C] int8 in {-1, 0, 1}
    bad: np.ndarray  # [N] unreadable in stage one
    observed: np.ndarray  # [N, C]
    round: int
    provenance: dict
    image_root: Path


def selected_labels(path: str | Path, *, rnd: int = 0, cfg: dict | None = None, student: str = "") -> Labels:
    """Round `rnd`'s labels of cache `path` selected with `cfg` (default: the pipeline the cache was made with)
    and the stored student source `student` (`aevlp.stage_two.refine.run_selection` gives a run's)."""
    with Cache(path) as c:
        lab, prov = _labeler(c, rnd, cfg, student)
        return Labels(c.image_ids(), c.classnames(), lab.for_epoch(rnd + 1), c.f["bad"][:].astype(bool),
                      lab.observed.numpy(), rnd, prov, c.image_root())


def _labeler(c: Cache, rnd: int, cfg: dict | None, student: str):
    """(the labeler a run with `cfg` and `student` selects with, its provenance) on open cache `c`."""
    from aevlp.config import config_for_cache
    from aevlp.stage_two.labeler import labeler_for

    if not 0 <= rnd < c.rounds:
        raise AevlpError(f"--round {rnd}: the cache has rounds 0..{c.rounds - 1}")
    cfg = cfg if cfg is not None else config_for_cache(c)
    lab = labeler_for(c, cfg, student=student)
    prov = {"cache": str(Path(c.f.filename).resolve()), "round": rnd,
            "epochs": f"e with (e - 1) mod {c.rounds} = {rnd}", "loss": Specs.of(cfg).loss["name"],
            **lab.provenance_record()}
    return lab, prov


def write_provenance(out: Path, prov: dict) -> Path:
    """OUT.provenance.json beside an export (inside it for a folder): what its labels were selected with."""
    target = out / "provenance.json" if out.is_dir() else out.with_name(out.name + ".provenance.json")
    target.write_text(json.dumps(prov, indent=1, default=str))
    return target


def export_pseudo_labels(path: str | Path, out: str | Path, *, rnd: int = 0, fmt: str = "csv", cfg: dict | None = None,
                         student: str = "") -> Path:
    """One row per training image: image id, its positive and negative pseudo-labels (names), and per class the
    pseudo-label (1/0/-1) and the score selected from, in round `rnd`, as `selected_labels` selects them."""
    if fmt not in FORMATS:
        raise AevlpError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with Cache(path) as c:
        lab, prov = _labeler(c, rnd, cfg, student)
        pseudo, ids, names, bad = lab.for_epoch(rnd + 1), c.image_ids(), c.classnames(), c.f["bad"][:].astype(bool)
        blocks = [(lo, min(lo + EXPORT_ROWS, hi)) for b_lo, hi in c.row_blocks(len(ids))
                  for lo in range(b_lo, hi, EXPORT_ROWS)] or [(0, 0)]
        rows = ((lo, hi, lab.round_score_rows(rnd, lo, hi)) for lo, hi in blocks)
        if fmt == "npz":
            _write_npz(out, ids, names, pseudo, bad, prov, rows)
        elif fmt in ("csv", "parquet"):
            _write_frames(out, fmt, (_frame(ids[lo:hi], names, bad[lo:hi], pseudo[lo:hi], scores)
                                     for lo, hi, scores in rows))
        else:
            from aevlp.cache.interchange import export_fiftyone, export_label_studio

            picked = ((ids[lo:hi], pseudo[lo:hi], scores, bad[lo:hi]) for lo, hi, scores in rows)
            out = export_label_studio(picked, names, out, f"aevlp {prov.get('loss', '')} labels, round {rnd}") \
                if fmt == "label-studio" else export_fiftyone(picked, names, out, c.image_root())
    write_provenance(out, prov)
    return out


def _write_frames(out: Path, fmt: str, frames) -> None:
    if fmt == "csv":
        for i, frame in enumerate(frames):
            frame.to_csv(out, index=False, mode="w" if i == 0 else "a", header=i == 0)
        return
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise AevlpError("parquet needs pyarrow", hint="pip install pyarrow, or use --format csv") from e
    writer = None
    for frame in frames:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        writer = writer or pq.ParquetWriter(out, table.schema)
        writer.write_table(table)
    writer.close()


def _write_npz(out: Path, ids, names, pseudo, bad, prov: dict, rows) -> None:
    """What `np.savez` writes, with `scores` streamed into its member a block at a time (`np.load` reads it)."""
    import zipfile

    fmt = np.lib.format
    with zipfile.ZipFile(out, "w", allowZip64=True) as z:
        for name, value in (("image_ids", np.asarray(ids, dtype=str)), ("classnames", np.asarray(names, dtype=str)),
                            ("pseudo", pseudo), ("bad", bad),
                            ("provenance", np.asarray(json.dumps(prov, default=str)))):
            with z.open(f"{name}.npy", "w", force_zip64=True) as fh:
                fmt.write_array(fh, np.asanyarray(value), allow_pickle=False)
        with z.open("scores.npy", "w", force_zip64=True) as fh:
            fmt.write_array_header_2_0(fh, {"descr": fmt.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                                            "shape": tuple(pseudo.shape)})
            for _, _, scores in rows:
                fh.write(np.ascontiguousarray(scores, dtype=np.float32).tobytes())


def _frame(ids: list[str], classnames: list[str], bad: np.ndarray, pseudo: np.ndarray,
           scores: np.ndarray) -> pd.DataFrame:
    """Rows of a table export: image, unreadable, the positive and negative classes' names, then per class the
    pseudo-label and the score selected from."""
    names = np.asarray(classnames, dtype=object)
    df = pd.DataFrame({"image": ids, "unreadable": bad,
                       "positives": ["|".join(names[row == 1]) for row in pseudo],
                       "negatives": ["|".join(names[row == -1]) for row in pseudo]})
    return pd.concat([df, pd.DataFrame(pseudo, columns=[f"pseudo:{n}" for n in classnames]),
                      pd.DataFrame(scores, columns=[f"score:{n}" for n in classnames])], axis=1)


def _panels(c: Cache, sel: Labels, k: int) -> dict[str, np.ndarray]:
    """Row indices per panel for class k: new pseudo-positives, and with ground truth the wrong and missed."""
    pseudo, obs, bad = sel.pseudo[:, k], sel.observed[:, k], sel.bad
    given = np.flatnonzero((pseudo == 1) & (obs != 1) & ~bad)
    panels = {"given the pseudo-label": given}
    if "labels" in c.f:
        truth = c.array("labels")[:, k]
        panels["wrong (not in the ground truth)"] = given[truth[given] != 1]
        panels["missed (in the ground truth, not pseudo-labelled)"] = np.flatnonzero(
            (truth == 1) & (pseudo != 1) & (obs != 1) & ~bad)
    return panels


def gallery(path: str | Path, classname: str, out: str | Path, *, rnd: int = 0, per_panel: int = 24,
            cfg: dict | None = None, student: str = "", sel: Labels | None = None) -> dict:
    """A PNG contact sheet for one class: the images given it as a pseudo-label (selected as `selected_labels` does;
    the tile that fired outlined in red) and, where ground truth is stored, the wrong and the missed ones.
    Returns (and writes beside the PNG as JSON, with the provenance) the image ids shown per panel."""
    from PIL import Image, ImageDraw

    out = Path(out)
    sel = sel or selected_labels(path, rnd=rnd, cfg=cfg, student=student)
    with Cache(path) as c:
        names = sel.classnames
        if classname not in names:
            from aevlp.registry import did_you_mean
            raise AevlpError(f"no class '{classname}' in {path}{did_you_mean(classname, names)}")
        r, k = sel.round, names.index(classname)
        ids, grid, tau = sel.image_ids, int(c.fingerprint["grid"]), sel.provenance["selection"]["temperature"]
        every = _panels(c, sel, k)
        totals = {title: len(rows) for title, rows in every.items()}
        panels = {title: rows[:per_panel] for title, rows in every.items()}
        tiles = {int(i): fired_tile(c.sims_rows(r, int(i), int(i) + 1)[0], k, tau) for rows in panels.values()
                 for i in rows}
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
            thumb = outlined_thumbnail(sel.image_root / ids[i], tiles[int(i)], grid, size)
            sheet.paste(thumb, ((j % cols) * (size + 4) + 2, y + (j // cols) * (size + 4)))
        y += max(1, -(-len(rows) // cols)) * (size + 4)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    listing = {title: [ids[i] for i in rows] for title, rows in panels.items()}
    out.with_suffix(".json").write_text(json.dumps({"class": classname, "round": r, "panels": listing,
                                                    "totals": totals, "provenance": sel.provenance},
                                                   indent=1, default=str))
    return {"png": str(out), "panels": listing, "totals": totals}


def gallery_html(path: str | Path, out_dir: str | Path, *, rnd: int = 0, per_panel: int = 16, cfg: dict | None = None,
                 student: str = "") -> Path:
    """One contact sheet per class and an index.html linking them all."""
    out_dir = Path(out_dir)
    sel = selected_labels(path, rnd=rnd, cfg=cfg, student=student)
    items = []
    for i, name in enumerate(sel.classnames):
        g = gallery(path, name, out_dir / f"class{i:03d}.png", rnd=rnd, per_panel=per_panel, sel=sel)
        counts = ", ".join(f"{t}: {len(v)} shown of {g['totals'][t]}" for t, v in g["panels"].items())
        items.append(f'<h2>{html.escape(name)}</h2><p>{html.escape(counts)}</p><img src="class{i:03d}.png">')
    page = out_dir / "index.html"
    page.write_text("<!doctype html><meta charset='utf-8'><title>aevlp pseudo-labels</title>"
                    f"<h1>Pseudo-labels of {html.escape(str(path))} (round {rnd})</h1>" + "\n".join(items))
    return page
