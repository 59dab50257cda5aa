"""`aevlp review`: a static site to look at a cache's pseudo-labels class by class and set θ per class.

OUT/index.html (an overview: per class the counts at θ, the teacher's mean score on the observed
positives, precision/recall/F1 where full labels exist, the zero-shot teacher's mAP; with run
directories, each run's per-class test AP beside the teacher's; "download thresholds"), one page per
class (thumbnails sorted by the class's DAMP score, each marked observed / pseudo-positive /
pseudo-negative / unknown, ✓/✗ against the truth where known, the tile that scored highest outlined;
a θ slider re-marks them and updates the counts live; with runs, the test images where student and
teacher disagree most), its scripts and styles (aevlp/review_assets, written for aevlp), the data as
script files (so the site opens from the file system: no server, no network) and small JPEG thumbnails.
A class's rows travel as base64 arrays: scores as 16-bit fractions, flags and ranks as bytes. The overview loads
no class's rows: per class, only the rows stage two could pick (the image's top-k, not observed) with their
scores and flags (data/summaries.js: about N·top_k entries in all), so it opens at once at any size; a class
page loads its own rows (data/class-K.js) and its thumbnails only.
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
import shutil
from pathlib import Path

import numpy as np

from aevlp.cache import Cache
from aevlp.settings import default_of
from aevlp.specs import Specs
from aevlp.stage_two.class_report import class_scores
from aevlp.stage_two.labeler import labeler_for
from aevlp.stage_two.score_columns import ScoreColumns
from aevlp.tools.visual import fired_tiles, thumbnail, tile_box_percent

__all__ = ["write_review", "THUMB"]

THUMB = 104  # thumbnails are THUMB x THUMB JPEGs (a few KB)
TILE_BYTES = 64 << 20  # the tiles and ranks are computed a block of rows at a time, about this much memory each
ASSETS = Path(__file__).resolve().parent.parent / "review_assets"


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()


def _thumb(src: Path, dst: Path) -> None:
    if not dst.exists():
        thumbnail(src, THUMB).save(dst, quality=70)


def _rows_to_show(score: np.ndarray, usable: np.ndarray, n: int) -> list[int]:
    """n/2 highest-scoring rows, then n/2 spread evenly over the rest by score (the boundary shows)."""
    order = np.flatnonzero(usable)[np.argsort(-score[usable], kind="stable")]
    top, rest = order[: n // 2], order[n // 2:]
    spread = rest[np.linspace(0, len(rest) - 1, min(n - len(top), len(rest))).astype(int)] if len(rest) else rest
    return [int(i) for i in dict.fromkeys([*top, *spread])]


def _tiles(cache: Cache, shown: dict[int, list[int]], temperature: float) -> dict[tuple[int, int], int]:
    """{(row, class): the tile that scored highest for the class in round 0} for the rows each class page shows,
    read a block of rows at a time."""
    by_row: dict[int, list[int]] = {}
    for k, rows in shown.items():
        for i in rows:
            by_row.setdefault(i, []).append(k)
    wanted, (_, _, v, c) = sorted(by_row), cache.f["sims"].shape
    step, out = max(1, TILE_BYTES // (32 * v * c)), {}  # float64 softmax and its temporaries
    for lo in range(0, len(wanted), step):
        rows = wanted[lo:lo + step]
        fired = fired_tiles(cache.sims_at(0, rows), temperature)
        out.update({(i, k): int(fired[j, k]) for j, i in enumerate(rows) for k in by_row[i]})
    return out


def _ranks(scores: ScoreColumns) -> ScoreColumns:
    """Each row's rank of every class by score (0: the row's highest), capped at 255, as uint8 columns; a block
    of rows at a time."""
    n, c = scores.shape
    out, step = ScoreColumns(n, c, np.uint8), max(1, TILE_BYTES // (24 * max(c, 1)))
    for lo in range(0, n, step):
        rank = (-scores.rows(lo, min(lo + step, n))).argsort(1).argsort(1)
        out.write_rows(lo, np.minimum(rank, 255))
    return out


def _page(title: str, body: str, scripts: list[str]) -> str:
    tags = "".join(f'<script src="{s}"></script>' for s in scripts)
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<link rel="stylesheet" href="assets/review.css">{tags}</head><body>{body}</body></html>\n')


def _card(row: int, image: str, box: list[float], truth: int | None, note: str = "") -> str:
    mark = "" if truth is None else ('<span class="ok">✓</span>' if truth else '<span class="wrong">✗</span>')
    tile = f'<div class="tile" style="left:{box[0]}%;top:{box[1]}%;width:{box[2]}%;height:{box[3]}%"></div>'
    return (f'<div class="card" data-row="{row}"><div class="img"><img src="thumbs/{row}.jpg" alt="" loading="lazy">'
            f'{tile}</div>'
            f'<div>{mark} <span class="status"></span></div><div class="muted">{html.escape(image)}{note}</div></div>')


def _class_page(k: int, s, col: np.ndarray, truth: np.ndarray | None, ids: list[str], rows: list[int], sizes: dict,
                ctx: dict) -> str:
    name = s.classnames[k]
    cards = "".join(_card(i, ids[i], tile_box_percent(*sizes[i], ctx["grid"], ctx["tiles"][i, k]),
                          None if truth is None else int(truth[i]), f" · {col[i]:.3f}")
                    for i in rows)
    pr = "".join(f' · {key} <b id="count-{key}"></b>' for key in ("precision", "recall", "f1")) \
        if s.labels is not None else ""
    controls = (f'<div class="controls">θ <input id="theta" type="range" min="0" max="1.01" step="0.001"> '
                f'<b id="theta-value"></b> <button id="save">keep this θ</button> <span id="saved"></span><br>'
                f'observed <b id="count-observed"></b> · pseudo-positive <b id="count-positive"></b> · '
                f'pseudo-negative <b id="count-negative"></b> · unknown <b id="count-unknown"></b>{pr}</div>')
    legend = ('<p class="legend"><span style="border-color:#2a6">observed positive</span><span style="border-color:'
              '#27c">pseudo-positive</span><span style="border-color:#b7b">pseudo-negative</span><span '
              'style="border-color:#ccc">unknown</span> red box: the tile that scored highest for the class '
              '(DAMP\'s evidence); the number: its DAMP score</p>')
    body = (f'<p><a href="index.html">all classes</a></p><h1>{html.escape(name)}</h1>{controls}{legend}'
            f'<h2>training images, by DAMP score ({len(rows)} shown)</h2><div class="grid">{cards}</div>'
            + ctx["disagree"].get(k, ""))
    head = f"<script>window.CLASS_INDEX = {k};</script>"
    scripts = ["data/overview.js", f"data/class-{k:03d}.js", "assets/review.js"]
    return _page(f"aevlp review: {name}", head + body, scripts)


def _class_data(k: int, s, col: np.ndarray, rank: np.ndarray, neg: np.ndarray, truth: np.ndarray | None) -> str:
    """Class k's rows for its page: scores `col`, each row's rank of the class `rank`, pseudo-negatives `neg` and
    full labels `truth` (None: observed-only data)."""
    raw = {"index": k, "name": s.classnames[k], "theta": float(min(s.thresholds[k], 1.01)),
           "score": _b64(np.round(np.clip(col, 0, 1) * 65535).astype("<u2")),
           "obs": _b64((s.observed[:, k] == 1).astype(np.uint8) | (s.bad.astype(np.uint8) << 1)),
           "rank": _b64(rank.astype(np.uint8)), "neg": _b64(neg.astype(np.uint8)),
           "truth": None if truth is None else _b64(truth.astype(np.uint8))}
    return f"window.AEVLP_CLASSES = window.AEVLP_CLASSES || {{}};\nwindow.AEVLP_CLASSES[{k}] = {json.dumps(raw)};\n"


def _class_summary(k: int, s, col: np.ndarray, rank: np.ndarray, neg: np.ndarray, truth: np.ndarray | None,
                   top_k: int) -> dict:
    """What the overview counts class k with at any θ, without its rows: the rows stage two could pick (not
    observed, readable, in the image's top-k) with their scores as on the class page (16-bit fractions), their
    pseudo-negative and truth flags; and the counts of the rest."""
    obs, bad = s.observed[:, k] == 1, s.bad
    rest = ~obs & ~bad
    cand = np.flatnonzero(rest & (rank < top_k))
    return {"observed": int((obs & ~bad).sum()), "rest": int(rest.sum()),
            "negOther": int((rest & (rank >= top_k) & neg).sum()),
            "truePos": None if truth is None else int((rest & truth).sum()),
            "score": _b64(np.round(np.clip(col[cand], 0, 1) * 65535).astype("<u2")),
            "neg": _b64(neg[cand].astype(np.uint8)),
            "truth": None if truth is None else _b64(truth[cand].astype(np.uint8))}


def _overview(s, ctx: dict, runs: list[dict], mean_observed: list[float]) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("class", "observed", "teacher's mean score on them", "θ",
                                             "pseudo-positive", "pseudo-negative", "unknown"))
    head += "".join(f"<th>{h}</th>" for h in ("precision", "recall", "F1")) if s.labels is not None else ""
    rows = []
    for k, name in enumerate(s.classnames):
        obs = (s.observed[:, k] == 1) & ~s.bad
        cells = "".join(f'<td class="{c}"></td>' for c in ("positive", "negative", "unknown"))
        if s.labels is not None:
            cells += "".join(f'<td class="{c}"></td>' for c in ("precision", "recall", "f1"))
        rows.append(f'<tr data-class="{k}"><td><a href="class-{k:03d}.html">{html.escape(name)}</a></td>'
                    f'<td>{int(obs.sum())}</td><td>{mean_observed[k]:.3f}</td>'
                    f'<td class="theta"></td>{cells}</tr>')
    teacher = ", ".join(f"{k.replace('zero_shot_', '').replace('_map', '')} {v:.2f}" for k, v in ctx["summary"].items()
                        if k.startswith("zero_shot")) or "not stored (stage one without val/test embeddings)"
    truth = "training labels" if s.labels is not None else "no full training labels: precision and recall unknown"
    body = (f"<h1>Pseudo-labels of {html.escape(ctx['cache'])}</h1><p>{len(s.scores)} training images, "
            f"{len(s.classnames)} classes, at most {ctx['top_k']} pseudo-positives per image; counts over every "
            f"training image at each class's θ (set on its page); P/R/F1 against the {truth}. Zero-shot teacher "
            f"test mAP: {teacher}.</p><p><button id=\"download\">download thresholds</button> (a CSV "
            "class,threshold: <code>--set damp.class_thresholds='\"thresholds.csv\"'</code>)</p>"
            f"<table><tr>{head}</tr>{''.join(rows)}</table><pre id=\"thresholds-csv\"></pre>{_runs_table(s, runs)}")
    return _page("aevlp review", body, ["data/overview.js", "data/summaries.js", "assets/review.js"])  # no rows


def _runs_table(s, runs: list[dict]) -> str:
    if not runs:
        return ""
    head = "<th>class</th>" + "".join(f"<th>{html.escape(r['name'])}</th>" for r in runs)
    rows = "".join(f"<tr><td>{html.escape(n)}</td>" + "".join(f"<td>{r['ap'][k]:.1f}</td>" for r in runs) + "</tr>"
                   for k, n in enumerate(s.classnames))
    means = "".join(f"<td><b>{np.mean(r['ap']):.2f}</b></td>" for r in runs)
    return f"<h2>test AP per class</h2><table><tr>{head}</tr>{rows}<tr><td>mAP</td>{means}</tr></table>"


def _run_results(runs: list[str | Path], cache: Cache, s, data, infer) -> list[dict]:
    """Each run's per-class test AP and test scores, and the teacher's (DAMP on the stored test views)."""
    import pandas as pd

    from aevlp.metrics import per_class_ap
    from aevlp.stage_one.teacher import zero_shot_scores
    from aevlp.stage_two.evaluate import checkpoint_scores

    out = []
    if cache.has_eval_embeddings() and cache.eval_labels("test") is not None:
        teach = zero_shot_scores(cache.eval_embeddings("test", views=True), cache.f["text_features"][:],
                                 cache.selection.get("temperature", default_of("damp.temperature")), infer.device)
        t = teach.get("damp", teach["global"])
        out.append({"name": "zero-shot teacher", "ap": per_class_ap(t, cache.eval_labels("test"))["ap"].to_numpy(),
                    "scores": t, "teacher": True})
    for run in map(Path, runs):
        table = pd.read_csv(run / "per_class_ap.csv")
        scores = checkpoint_scores(run, [data.image_root / p for p in data.test.images], infer)
        out.append({"name": run.name, "ap": table["ap"].to_numpy(), "scores": scores, "teacher": False})
    return out


def _disagreements(runs: list[dict], data, out: Path, per_class: int) -> dict[int, str]:
    """Per class, the test images whose student and teacher score ranks differ most (thumbnails and why)."""
    teacher = next((r for r in runs if r["teacher"]), None)
    students = [r for r in runs if not r["teacher"]]
    if teacher is None or not students:
        return {}
    stu, tea = students[0]["scores"], teacher["scores"]
    ranks = lambda a: a.argsort(0).argsort(0) / max(len(a) - 1, 1)  # noqa: E731
    gap = ranks(stu) - ranks(tea)
    sections = {}
    for k in range(tea.shape[1]):
        rows = np.argsort(-np.abs(gap[:, k]))[:per_class]
        cards = []
        for i in rows:
            _thumb(data.image_root / data.test.images[i], out / "thumbs" / f"test-{i}.jpg")
            truth = '<span class="ok">✓ positive</span>' if data.test.labels[i, k] == 1 else \
                '<span class="muted">negative</span>'
            cards.append(f'<div class="card unknown"><div class="img"><img src="thumbs/test-{i}.jpg" alt=""></div>'
                         f'<div>{truth}</div><div class="muted">student {stu[i, k]:.2f} · teacher {tea[i, k]:.3f}</div>'
                         "</div>")
        sections[k] = (f"<h2>test images where {html.escape(students[0]['name'])} and the teacher disagree most"
                       f"</h2><div class=\"grid\">{''.join(cards)}</div>")
    return sections


def write_review(cache_path: str | Path, out: str | Path, runs: list[str | Path] = (), *, per_class: int = 60,
                 cfg: dict | None = None, student: str = "", progress: bool = True, device: str = "auto",
                 batch_size: int = 64) -> Path:
    """Write the site for a cache into `out`, its labels selected as a training run with `cfg` (default: the
    pipeline the cache was made with) and the stored student source `student` would select them
    (`aevlp.stage_two.labeler.labeler_for`); the runs and the teacher score the test images on `device` (the one
    inference rule, `aevlp.device.inference`)."""
    from aevlp.config import config_for_cache
    from aevlp.data.layout import image_root_of
    from aevlp.device import inference
    from aevlp.progress import bar

    infer = inference(device, batch_size)
    out = Path(out)
    (out / "thumbs").mkdir(parents=True, exist_ok=True)
    (out / "data").mkdir(exist_ok=True)
    shutil.copytree(ASSETS, out / "assets", dirs_exist_ok=True)
    with Cache(cache_path) as cache:
        cfg = cfg if cfg is not None else config_for_cache(cache)
        specs = Specs.of(cfg)
        data = specs.dataset.load() if runs else None  # the test split; the training rows need the cache alone
        image_root = data.image_root if data is not None else \
            image_root_of(specs.dataset.name, specs.dataset.data_root or cache.info["data_root"],
                          specs.dataset.image_root or None)
        labeler = labeler_for(cache, cfg, data=data, student=student)
        s = class_scores(labeler)
        pseudo = labeler.for_epoch(1)  # [N, C] int8: -1 marks the pseudo-negatives
        ids = cache.image_ids()
        ctx = {"cache": str(cache_path), "summary": json.loads(cache.f.attrs.get("summary", "{}")),
               "grid": int(cache.fingerprint["grid"]), "top_k": specs.damp.top_k}
        run_results = _run_results(runs, cache, s, data, infer)
        usable = ~s.bad
        shown = {k: _rows_to_show(s.scores.column(k), usable, per_class) for k in range(len(s.classnames))}
        ctx["tiles"] = _tiles(cache, shown, specs.damp.temperature)
    rank = _ranks(s.scores)
    ctx["disagree"] = _disagreements(run_results, data, out, per_class // 4)
    sizes = {}
    for i in bar(sorted({i for rows in shown.values() for i in rows}), desc="thumbnails", disable=not progress):
        _thumb(image_root / ids[i], out / "thumbs" / f"{i}.jpg")
        sizes[i] = _image_size(image_root / ids[i])
    key = hashlib.sha256(str(Path(cache_path).resolve()).encode()).hexdigest()[:8]
    (out / "data" / "overview.js").write_text("window.REVIEW = " + json.dumps(
        {"key": f"aevlp-{key}", "top_k": specs.damp.top_k,
         "classes": [{"name": n, "theta": float(min(s.thresholds[k], 1.01))} for k, n in enumerate(s.classnames)]})
        + ";\n")
    summaries, mean_observed = [], []
    for k in range(len(s.classnames)):  # a class at a time: its scores, ranks and pseudo-negatives
        col, rk, neg, truth = s.scores.column(k), rank.column(k), pseudo[:, k] == -1, s.truth(k)
        obs = (s.observed[:, k] == 1) & usable
        mean_observed.append(float(col[obs].mean()) if obs.any() else 0.0)
        summaries.append(_class_summary(k, s, col, rk, neg, truth, specs.damp.top_k))
        (out / "data" / f"class-{k:03d}.js").write_text(_class_data(k, s, col, rk, neg, truth))
        (out / f"class-{k:03d}.html").write_text(_class_page(k, s, col, truth, ids, shown[k], sizes, ctx))
    (out / "data" / "summaries.js").write_text("window.REVIEW_SUMMARIES = " + json.dumps(summaries) + ";\n")
    (out / "index.html").write_text(_overview(s, ctx, run_results, mean_observed))
    rank.close()
    return out / "index.html"


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size
