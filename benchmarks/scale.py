"""How the cache tools' cost grows with the number of images N and of classes C, measured on synthetic caches.

Each cache is built through the real `CacheWriter` from random unit embeddings (R = 4 rounds, V = 10 views:
grid 3, D = 512) and the similarities they give against random unit text features; its dataset folder holds the
image names and labels only (no images, no CLIP). Every operation runs in its own process, which reports its
time and its peak memory above what the imports cost:

  open        `Cache(path)`: the structural check and checksums every command runs on open
  verify      `aevlp cache verify`: every byte against its checksum
  select      one epoch's pseudo-labels, as training selects them (`labeler_for(...).for_epoch(1)`), one θ
  select-rate the same with per-class θ (`damp.class_thresholds = "rate"`)
  select-stu  the same with a stored student source fused in (`damp.student`)
  thresholds  `aevlp cache thresholds` (the per-class table)
  export-csv  `aevlp cache export --format csv`; export-npz the same as npz
  review      `aevlp review` (60 thumbnails a class: every image is one small JPEG, hard-linked), then headless
              Chromium's time to render its overview and one class page from the file system, less its time
              for an empty page (the render columns)

Sizes whose file would exceed `--max-gb` are not built; their time is projected from the fitted growth
(time ∝ (N·C)^k per operation) and marked as projected. The peak-memory column shows what grows with N.

    python benchmarks/scale.py --json benchmarks/results/scale.json        # about 15 minutes on 2 cores
    python benchmarks/scale.py --sizes 10000x20,10000x80 --max-gb 1         # a quick look
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, today  # noqa: E402

R, V, D = 4, 10, 512
SIZES = [(10_000, 20), (10_000, 80), (10_000, 1000), (100_000, 20), (100_000, 80), (100_000, 1000),
         (1_000_000, 80), (1_000_000, 1000)]
OPS = ("open", "verify", "select", "select-rate", "select-stu", "thresholds", "export-csv", "export-npz", "review")
CHUNK = 2048
LINKS = 60_000  # hard links to one thumbnail file before the next copy


def file_bytes(n: int, c: int, sims: str) -> int:
    """A cache's bulk: every view's embedding (U = 2V, float16) and its index (int32 a round and view), the
    observed and full labels (int8), and, stored, the DAMP defaults (float16 scores and int8 labels a round) and
    the similarities (float16); a computing cache writes neither."""
    common = n * 2 * V * D * 2 + R * n * V * 4 + 2 * n * c
    return common + (R * n * c * 3 + R * n * V * c * 2 if sims == "stored" else 0)


def build(folder: Path, n: int, c: int, sims: str = "stored", seed: int = 0) -> Path:
    """A dataset folder (names and labels) and its complete cache, written through CacheWriter in row chunks:
    every view's embedding (U = 2V distinct views a row, the rounds differing by flips) and, with `sims` stored,
    the similarities they give (the same numbers a computing cache gives when read)."""
    from aevlp.cache.reader import sims_from_embeddings
    from aevlp.cache.schema import CacheLayout, dataset_hash
    from aevlp.cache.sources import store_source
    from aevlp.cache.writer import CacheWriter
    from aevlp.config import load_config
    from aevlp.damp import pseudo_labels
    from aevlp.data.layout import write_layout
    from aevlp.specs import Specs

    g = np.random.default_rng(seed)
    names = [f"class{k}" for k in range(c)]
    n_all = n + n // 4  # the train file holds train + val (the val split is cut from it), test beside it
    labels = (g.random((n_all, c)) < 2.0 / c).astype(np.int64)
    labels[np.arange(n_all), g.integers(0, c, n_all)] = 1
    test = (g.random((1000, c)) < 2.0 / c).astype(np.int64)
    test[np.arange(1000), g.integers(0, c, 1000)] = 1
    data = folder / "data"
    write_layout(data, "table", names, data / "images", {"train": ([f"{i:07d}.jpg" for i in range(n_all)], labels),
                                                         "val": ([f"t{i:05d}.jpg" for i in range(1000)], test)})
    from PIL import Image

    (data / "images").mkdir(parents=True, exist_ok=True)
    one = data / "images" / "one.jpg"
    Image.fromarray((g.random((64, 80, 3)) * 255).astype(np.uint8)).save(one)
    for i, name in enumerate([f"{i:07d}.jpg" for i in range(n_all)] + [f"t{i:05d}.jpg" for i in range(1000)]):
        if i and i % LINKS == 0:  # a file system allows so many links to one file (ext4: 65,000)
            one = data / "images" / f"one{i // LINKS}.jpg"
            shutil.copyfile(data / "images" / "one.jpg", one)
        os.link(one, data / "images" / name)
    from aevlp.data import load_dataset

    ds = load_dataset("table", data)
    text = _unit(g.normal(size=(c, D))) * 0.3  # CLIP-like cosines
    fp = {"schema_version": 2, "dataset": "table", "num_images": len(ds.train), "num_classes": c, "rounds": R,
          "grid": 3, "store_embeddings": "all", "ids_hash": dataset_hash(ds.train.images, np.zeros(0)),
          "dataset_hash": dataset_hash(ds.train.images, ds.train.observed),
          "synthetic": f"benchmarks/scale.py seed {seed}", **({"sims": "computed"} if sims == "computed" else {})}
    info = {"data_root": str(data)}
    sel = Specs.of(load_config(None, ['dataset.name="table"'])).damp.selection()  # stage one's default
    path = folder / "cache.h5"
    index = np.broadcast_to((np.arange(V)[None] + V * (np.arange(R)[:, None] % 2))[None], (CHUNK, R, V))
    with CacheWriter(path, fp, CacheLayout(R, V, "all", D, 2 * V, sims), image_ids=list(ds.train.images),
                     classnames=names, observed=ds.train.observed, labels=ds.train.labels, text_features=text,
                     relation=None, selection=sel, info=info) as w:
        for lo in range(0, len(ds.train), CHUNK):
            b = min(CHUNK, len(ds.train) - lo)
            emb = _unit(g.normal(size=(b, 2 * V, D)).astype(np.float32) + g.normal(size=(b, 1, D))).astype(np.float16)
            sims = sims_from_embeddings(emb, index[:b], torch.as_tensor(text)).numpy()  # [R, b, V, C]
            obs = torch.as_tensor(ds.train.observed[lo:lo + b])
            made = [pseudo_labels(torch.as_tensor(s.astype(np.float32)), obs, **sel) for s in sims]
            w.write(lo, sims, np.stack([m[0].numpy() for m in made]), np.stack([m[1].numpy() for m in made]),
                    np.zeros(b, bool), emb, index[:b])
        w.finish({"images": len(ds.train)})
    from aevlp.cache import Cache

    with Cache(path) as cc:
        store_source(cc, "stu", g.random((len(cc), c)), {"run": "synthetic"})
    return path


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def run_op(op: str, path: Path, out: Path) -> dict:
    """One operation in this process: {seconds, peak_mb above the imports}."""
    from aevlp.cache import Cache
    from aevlp.cache.admin import verify_cache
    from aevlp.cache.export import export_pseudo_labels
    from aevlp.config import config_for_cache
    from aevlp.stage_two.labeler import labeler_for

    base = _rss("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to what is resident now
    t = time.perf_counter()
    if op == "open":
        Cache(path).close()
    elif op == "verify":
        found = verify_cache(path)
        assert not found, found
    elif op.startswith("select"):
        with Cache(path) as c:
            extra = {"select-rate": ['damp.class_thresholds="rate"'], "select-stu": ['damp.student="stu"']}
            labeler_for(c, config_for_cache(c, overrides=extra.get(op, []))).for_epoch(1)
    elif op == "thresholds":
        from click.testing import CliRunner

        from aevlp.cli import cli
        r = CliRunner().invoke(cli, ["cache", "thresholds", str(path), "--out", str(out / "t.csv")])
        assert r.exit_code == 0, r.output
    elif op.startswith("export"):
        export_pseudo_labels(path, out / f"x.{op[7:]}", fmt=op[7:])
    elif op == "review":
        from aevlp.tools.review import write_review

        write_review(path, out / "site", per_class=60, progress=False)
        shutil.copytree(out / "site", path.parent / "site", dirs_exist_ok=True)  # kept for the render
    seconds = time.perf_counter() - t
    return {"seconds": round(seconds, 3),
            "peak_mb": round(max(_rss("VmHWM") - base, 0) / 1024, 1)}


def _rss(field: str) -> int:
    """kB of this process's resident memory now (VmRSS) or at its peak (VmHWM), from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measure(path: Path, op: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        p = subprocess.run([sys.executable, __file__, "--op", op, "--cache", str(path), "--out", out],
                           capture_output=True, text=True)
    if p.returncode:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:300].replace("AssertionError: ", "")}
    return json.loads(p.stdout.strip().splitlines()[-1])


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def render_times(site: Path) -> dict:
    """Seconds headless Chromium takes to load and run the overview and a class page, less an empty page's
    (the fastest of three each); {} without Chromium or without the site."""
    if CHROMIUM is None or not (site / "index.html").exists():
        return {}
    (site / "empty.html").write_text("<!doctype html><html><body></body></html>")

    def best(page: str) -> float:
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={site / '.chromium'}",
                 "--dump-dom"]
        times = []
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run([CHROMIUM, *flags, (site / page).resolve().as_uri()], capture_output=True, timeout=300)
            times.append(time.perf_counter() - t)
        return min(times)

    empty = best("empty.html")
    return {"overview_s": round(max(best("index.html") - empty, 0), 3),
            "class_page_s": round(max(best("class-000.html") - empty, 0), 3),
            "site_mb": round(sum(f.stat().st_size for f in site.rglob("*") if f.is_file()) / 1e6, 1),
            "overview_mb": round(sum((site / p).stat().st_size for p in ("index.html", "data/overview.js",
                                                                       "data/summaries.js")) / 1e6, 2)}


def fit(points: list[tuple[float, float]]) -> float | None:
    """k in y ∝ x^k (least squares on logs), from two or more points."""
    if len(points) < 2:
        return None
    x, y = np.log([p[0] for p in points]), np.log([max(p[1], 1e-3) for p in points])
    return float(np.polyfit(x, y, 1)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=",".join(f"{n}x{c}" for n, c in SIZES), help="NxC,NxC,...")
    ap.add_argument("--layouts", default="stored,computed", help="cache.sims of the caches built")
    ap.add_argument("--max-gb", type=float, default=4.0, help="build caches of at most this size")
    ap.add_argument("--json", default=None)
    ap.add_argument("--op", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.op:
        print(json.dumps(run_op(args.op, Path(args.cache), Path(args.out))))
        return
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    rows = []
    for layout in args.layouts.split(","):
        for n, c in sizes:
            row = {"layout": layout, "N": n, "C": c, "file_gb": round(file_bytes(n, c, layout) / 1e9, 3),
                   "embeddings_gb": round(n * 2 * V * D * 2 / 1e9, 3)}
            if file_bytes(n, c, layout) > args.max_gb * 1e9:
                rows.append({**row, "projected": True})
                continue
            rows.append(measure_size(row, layout, n, c))
    report = summarise(rows)
    print(render(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


def measure_size(row: dict, layout: str, n: int, c: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        path = build(Path(d), n, c, layout)
        row.update(build_s=round(time.perf_counter() - t, 1), file_gb=round(path.stat().st_size / 1e9, 3),
                   projected=False)
        for op in OPS:
            row[op] = measure(path, op)
            print(f"{layout:8s} N {n:>9,} C {c:>5}: {op:12s} {row[op]}", flush=True)
        row["render"] = render_times(path.parent / "site")
        print(f"{layout:8s} N {n:>9,} C {c:>5}: render       {row['render']}", flush=True)
    return row


def summarise(rows: list[dict]) -> dict:
    """The rows; per layout each operation's fitted exponent in N·C (time) and in N (peak memory); projections."""
    growth = {}
    for layout in dict.fromkeys(r["layout"] for r in rows):
        mine = [r for r in rows if r["layout"] == layout]
        growth[layout] = {}
        for op in OPS:
            ok = [r for r in mine if not r["projected"] and "seconds" in r.get(op, {})]
            k = fit([(r["N"] * r["C"], r[op]["seconds"]) for r in ok])
            growth[layout][op] = {"time_vs_NC": None if k is None else round(k, 2),
                                  "memory_vs_N": _memory_exponent(ok, op)}
            if k is None:
                continue
            ref = max(ok, key=lambda r: r["N"] * r["C"])
            for r in mine:
                if r["projected"]:
                    r[op] = {"seconds": round(ref[op]["seconds"] * (r["N"] * r["C"] / (ref["N"] * ref["C"])) ** k, 1)}
    return {"machine": machine(), "date": today(), "R": R, "V": V, "D": D, "rows": rows, "growth": growth}


def _memory_exponent(ok: list[dict], op: str) -> float | None:
    """Peak memory's exponent in N at the largest C measured at two N or more."""
    by_c: dict[int, list] = {}
    for r in ok:
        by_c.setdefault(r["C"], []).append((r["N"], max(r[op]["peak_mb"], 1.0)))
    series = [v for _, v in sorted(by_c.items()) if len({n for n, _ in v}) > 1]
    k = fit(series[-1]) if series else None
    return None if k is None else round(k, 2)


def render(report: dict) -> str:
    head = ("| cache.sims | N | C | file (embeddings) | " + " | ".join(OPS)
            + " | render: overview / class page (overview bytes) |")
    lines = [head, "|" + "---|" * (5 + len(OPS))]
    for r in report["rows"]:
        cells = []
        for op in OPS:
            v = r.get(op, {})
            cells.append(v.get("error", "failed")[:40] if "seconds" not in v else
                         f"{v['seconds']:g} s" + (" (proj.)" if r["projected"] else f", {v['peak_mb']:g} MB"))
        rd = r.get("render") or {}
        cells.append(f"{rd['overview_s']:g} s / {rd['class_page_s']:g} s ({rd['overview_mb']:g} MB)" if rd else "—")
        size = f"{r.get('file_gb', r.get('sims_gb', 0)):g} GB ({r.get('embeddings_gb', 0):g})"
        size += " (proj.)" if r["projected"] else ""
        lines.append(f"| {r.get('layout', 'stored')} | {r['N']:,} | {r['C']:,} | {size} | " + " | ".join(cells) + " |")
    growth = report["growth"] if all(isinstance(v, dict) and "open" in v for v in report["growth"].values()) \
        else {"stored": report["growth"]}
    for layout, g in growth.items():
        for what, key in (("time vs N·C", "time_vs_NC"), ("peak memory vs N", "memory_vs_N")):
            cells = " | ".join(str(g.get(op, {}).get(key, "—")) for op in OPS)
            lines.append(f"| {layout} | exponent: {what} | | | {cells} | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
