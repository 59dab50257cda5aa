"""Run every benchmark and regenerate docs/performance.md from their measured figures.

Results are kept in benchmarks/results/*.json; `--only NAME` re-runs one benchmark and renders the
page with the stored results of the others.

    python benchmarks/run_all.py                # about 25 minutes on 2 CPU cores
    python benchmarks/run_all.py --quick        # ViT-B-32 only, fewer images
    python benchmarks/run_all.py --only cache   # stage_one | cache | stage_two | reprompt | render (none)
    python benchmarks/run_all.py --device cuda --only gpu   # on a GPU box: benchmarks/gpu.py (the VOC run)

GPU-box results (benchmarks/results/stage_two_*h200*.json, from `stage_two.py --device cuda`, and
benchmarks/results/gpu_*.json, from `gpu.py`) are rendered beside this machine's.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "performance.md"
RESULTS = HERE / "results"


def run(script: str, *args: str) -> dict:
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / script.replace(".py", ".json")
    subprocess.run([sys.executable, str(HERE / script), *args, "--json", str(out)], check=True)
    return json.loads(out.read_text())


def stored(script: str) -> dict:
    path = RESULTS / script.replace(".py", ".json")
    if not path.exists():
        raise SystemExit(f"no stored results {path}: run without --only first")
    return json.loads(path.read_text())


def render(s1: dict, s2: dict, ca: dict, notes: str, gpu: list[dict], rp: dict | None,
           runs: list[dict] = ()) -> str:
    rows = "\n".join(f"| {r['arch']} | {r['precision']} | {r['bare_images_per_s']:.2f} | {r['pipeline_images_per_s']:.2f} "
                     f"| {r['reference_images_per_s']:.2f} | **{r['pipeline_over_bare']:.2f}** | "
                     f"{r['pipeline_over_reference']:.2f} |" for r in s1["rows"])
    grids = "\n".join(f"| {g['grid']} | {g['views']} | {g['pipeline_images_per_s']:.2f} | {g['bare_images_per_s']:.2f} | "
                      f"{g['pipeline_images_per_s'] / g['bare_images_per_s']:.2f} |" for g in s1.get("grids", []))
    m = ca["merge"]
    return f"""# Performance

Measured figures only; regenerate with `python benchmarks/run_all.py`. Each benchmark prints its
ratios from one run, side by side.

Machine: {s1['machine']}. Date: {s1['date']}.

## Stage one throughput (`benchmarks/stage_one.py`)

Random-init open_clip encoders; {s1['images']} photo JPEGs at 500×375; grid {s1['grid']} ({s1['grid'] ** 2 + 1} views);
1 round; 16 images per batch; 1 decoding worker. Images/s counts source images.

| arch | precision | bare encoder img/s | `aevlp pseudolabel` img/s | reference loop img/s | pipeline / bare (target ≥ 0.85) | pipeline / reference (target ≥ 3) |
|---|---|---|---|---|---|---|
{rows}

*bare encoder*: `encode_image` alone on pre-decoded, pre-normalised tensors. *pipeline*: all of stage
one (decode + crops in a worker, CLIP, DAMP, HDF5), second run. *reference loop*: the official
code's way (PIL crop + transforms per tile, fp32 weights).

Grid scaling (first architecture, default precision):

| grid | views | pipeline img/s | bare img/s | pipeline / bare |
|---|---|---|---|---|
{grids}

## The cache (`benchmarks/cache.py`)

| measure | value | target |
|---|---|---|
| CLIP views of a {ca['epochs']}-epoch run: official online recomputation vs aevlp (R = {ca['rounds']}) | {ca['online_views']} vs {ca['cached_views']} views: **{ca['views_ratio']:.1f}×** | — |
| CLIP time of that run ({ca['images']} images, {ca['arch']}): online (T × one round, measured) vs cached | {ca['online_s']:.1f} s vs {ca['cached_s']:.1f} s: **{ca['time_ratio']:.1f}×** | — |
| re-tuning DAMP selection from the cache vs re-running stage one | {ca['retune_s'] * 1000:.2f} ms vs {ca['stage_one_s']:.1f} s: **{ca['retune_speedup']:,.0f}×** | ≥ 100× |
| merging 4 shards ({m['mb']:.0f} MB of similarities): copy vs HDF5 virtual dataset | {m['copy_s']:.2f} s vs {m['vds_create_s'] * 1000:.1f} ms; reading a round {m['read_round_copy_s']:.2f} s vs {m['read_round_vds_s']:.2f} s | choose |

## Stage two (`benchmarks/stage_two.py`)

| measure | value | target |
|---|---|---|
| GPR step / BCE step ({s2['backbone']}, {s2['image_size']} px, batch {s2['batch']}, C = {s2['classes']}) | {s2['gpr_step_s'] * 1000:.0f} ms / {s2['bce_step_s'] * 1000:.0f} ms = **{s2['gpr_over_bce']:.3f}** | ≤ 1.10 |
| cache read + DAMP selection vs training consumption | {s2['cache_rows_per_s']:,.0f} rows/s vs {s2['train_images_per_s']:.1f} images/s = **{s2['read_over_consume']:,.0f}×** | ≥ 10× |

{loaders(s2, gpu)}
{reprompt_section(rp)}
{scale_section(_stored_or_none("scale.json"), _stored_or_none("scale_before_blocks.json"))}
{gpu_section(runs)}
{before_after_section(_stored_or_none("before_after.json"))}
{notes}
"""


def _stored_or_none(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def before_after_section(ba: dict | None) -> str:
    if not ba:
        return ""
    b, a, r = ba["best"]["before"], ba["best"]["after"], ba["ratio"]
    return f"""## Before and after the GPU work, on this CPU (`benchmarks/before_after.py`)

The GPU work (inference on the run's device, `auto` placement of decoding and resizing, GPU decoding of
stage one's JPEGs, pinned and overlapped copies, bf16 autocast for inference on CUDA) must not make a CPU
run slower. `benchmarks/before_after.py` runs `aevlp pseudolabel` and one `aevlp train` epoch from two
source trees side by side, alternating A B A B ({ba['images']} photo JPEGs, random-init ViT-B-32, G = 4, R = 4;
small-cnn at 64 px), {ba['machine']}, {ba['date']}:

| measure (best of two runs each) | before | after | after / before |
|---|---|---|---|
| stage one, images/s | {b['stage_one_images_per_s']:.2f} | {a['stage_one_images_per_s']:.2f} | {r['stage_one_images_per_s']:.2f}× |
| one training epoch, images/s | {b['epoch_images_per_s']:.1f} | {a['epoch_images_per_s']:.1f} | {r['epoch_images_per_s']:.2f}× |

On a CPU, `auto` keeps decoding and resizing on the workers, as before: nothing got slower (we did not trace
the small gain to one change). **The GPU figures of this work are not measured yet** (no GPU was lent to the
sessions that built it); the command in the GPU section measures them: stage one against its encoder on the
distinct views it encodes, the GPU's utilisation while it encodes, the stage-two epoch with each loader and
placement, and `predict` and the student's scoring on the CPU against the GPU. Two bugs that only showed with
GPU decoding were found by `gpu.py --tiny` on the CPU and fixed: a decoding worker handed the main process a
tensor whose memory was still a shared file descriptor (the run hung), and an empty split's image list was
tested for truth as a numpy array.
"""


def growth_per_cell(sc: dict) -> str:
    """Each operation's peak memory growth per image and class between the two computed 1,000-class sizes built."""
    from scale import OPS

    built = sorted(((r["N"], r) for r in sc["rows"] if r.get("layout") == "computed" and r["C"] == 1000
                    and not r["projected"]), key=lambda x: x[0])
    if len(built) < 2:
        return "not measured at two sizes"
    (n0, a), (n1, b) = built[0], built[-1]
    ops = [op for op in OPS if op not in ("open", "verify") and "peak_mb" in a.get(op, {}) and "peak_mb" in b.get(op, {})]
    grow = ", ".join(f"{op} {(b[op]['peak_mb'] - a[op]['peak_mb']) * 1e6 / ((n1 - n0) * 1000):.2f}" for op in ops)
    at = ", ".join(f"{op} {b[op]['peak_mb']:,.0f} MB" for op in ops)
    return (f"between {n0:,} and {n1:,} images at 1,000 classes (computed layout) each operation's peak grows by "
            f"{grow} bytes per added image and class (at {n1:,}: {at})")


def scale_section(sc: dict | None, before: dict | None) -> str:
    if not sc:
        return ""
    from scale import OPS
    from scale import render as scale_table

    def peaks(rep: dict) -> dict:
        return {(r["N"], r["C"]): max(r[op]["peak_mb"] for op in OPS if "peak_mb" in r.get(op, {}))
                for r in rep["rows"] if not r["projected"] and r.get("layout", "stored") == "stored"}
    now, was = peaks(sc), peaks(before) if before else {}
    mem = "; ".join(f"{n:,} × {c:,}: {was[(n, c)]:,.0f} → {m:,.0f} MB" for (n, c), m in now.items() if (n, c) in was)
    sizes = {(r.get("layout", "stored"), r["N"], r["C"]): r for r in sc["rows"] if "embeddings_gb" in r}
    big = [(n, c) for (lay, n, c) in sizes if lay == "computed" and ("stored", n, c) in sizes]
    ratio = "; ".join(f"{n:,} × {c:,}: stored {sizes[('stored', n, c)]['file_gb'] / sizes[('stored', n, c)]['embeddings_gb']:.1f}×, "
                      f"computed {sizes[('computed', n, c)]['file_gb'] / sizes[('computed', n, c)]['embeddings_gb']:.2f}×"
                      for n, c in big)
    stale = "" if any("layout" in r for r in sc["rows"]) else (
        "\n**This table is from the run before the computed layout and the review were measured** (stored layout, "
        "no embeddings): `python benchmarks/scale.py --json benchmarks/results/scale.json` (about half an hour on 2 "
        "cores) measures both layouts, the review and its render.\n")
    return f"""## Scale (`benchmarks/scale.py`)
{stale}
Synthetic caches built through the real `CacheWriter` (random unit embeddings of every distinct view, U = 2V, and
the similarities they give; R = {sc['R']}, V = {sc['V']}: grid 3, D = {sc['D']}), N training images × C classes, in both layouts
(`cache.sims` stored or computed, docs/cache.md); each operation in its own process, its time and its peak resident
memory above the imports; the review with 60 thumbnails a class, and headless Chromium's time to render its
overview and one class page from the file system (less an empty page's); {sc['machine']}, {sc['date']}. Rows
marked *proj.* were not built (larger than 4 GB here): their times are projected from the fitted growth.

{scale_table(sc)}

The labeler, the per-class thresholds, `cache verify` and the exports read the similarities a block of rows at
a time (64 MB of float32 a block; `aevlp --block-mb N` or `AEVLP_BLOCK_MB` sets it, and a block smaller than one
row is refused): every row's selection depends on that row alone, and the exports stream their scores (npz
included). Against the same operations before that change (whole rounds read at once; that run's caches kept no
embeddings), the largest peak per size of the stored layout went {mem}. File size over the embeddings' size: {ratio or "not measured yet"}.

What grows with N: {growth_per_cell(sc)}. The floats do not: the round-averaged scores that per-class θ, the prior
estimators, `cache thresholds` and the review read class by class live in a temporary file (`ScoreColumns`, 4·N·C
bytes in TMPDIR; the full training labels that `thresholds` and `review` compare with, N·C bytes, too), the review
ranks and outlines tiles a block of rows at a time, the exports stream, a stored student's scores are read a block
of rows at a time, label files are checked and split a block of rows at a time through file reads (a memory map
kept the whole file resident), and the tools on a cache do not load the dataset folder's labels unless E needs its
val split. What stays whole is int8 and is what training holds too: the pseudo-labels and the observed labels, one
byte per image and class each (`thresholds` holds no pseudo-labels).
"""


LOADER_ROWS = (("pil", "official-style PIL loader (decode, Resize, flip, ToTensor, Normalize)"),
               ("aevlp", "aevlp, uint8 out (normalise + flip on the GPU)"),
               ("aevlp+normalise", "aevlp, normalised on this core too (CPU training)"),
               ("cache", "aevlp from the pre-resized image cache"),
               ("cache+normalise", "image cache, normalised on this core too"),
               ("pil, 1 worker", "PIL loader, one worker process feeding the main one"),
               ("aevlp, 1 worker", "aevlp, one worker process feeding the main one"),
               ("gpu-decode", "train.decode_on = device (nvJPEG decode + resize on the GPU)"))


def loaders(s2: dict, gpu: list[dict]) -> str:
    """The loader table (images/s per core, this machine and the stored GPU-box runs) and the GPU model rates."""
    runs = [("this machine", s2)] + [(f"GPU box, run {i} ({g['loader_images']} images)", g)
                                     for i, g in enumerate(gpu, 1)]
    head = " | ".join(name for name, _ in runs)
    rows = [f"| {label} | " + " | ".join(f"{r['loader_images_per_s'][key]:,.0f}" if key in r.get(
        "loader_images_per_s", {}) else "—" for _, r in runs) + " |" for key, label in LOADER_ROWS]
    ratios = " | ".join(f"{r['aevlp_over_pil']:.2f} / {r['cache_over_pil']:.1f}" for _, r in runs)
    box = gpu[0]["machine"].split(", torch")[0] if gpu else ""
    out = [f"### Loaders at {s2['loader_size']} px, images/s of one core", "",
           *([f"GPU box: {box}, measured {gpu[0]['date']} (`stage_two.py --device cuda`, results stored in "
              "benchmarks/results/).", ""] if gpu else []),
           f"| loader | {head} |", "|---|" + "---|" * len(runs), *rows,
           f"| **aevlp / PIL (target ≥ 2) / cache / PIL (target ≥ 5)** | {ratios} |", ""]
    par = [(name, r) for name, r in runs if "parallel_images_per_s" in r]
    if par:
        out += ["Whole loaders (N workers; on the GPU box the batches are moved to the GPU and, for aevlp, "
                "normalised there), images/s:", "",
                "| machine | workers | PIL | aevlp | image cache | aevlp / PIL |", "|---|---|---|---|---|---|"]
        out += [f"| {name} | {r['parallel_workers']} | {r['parallel_images_per_s']['pil']:,.0f} | "
                f"{r['parallel_images_per_s']['aevlp']:,.0f} | {r['parallel_images_per_s']['cache']:,.0f} | "
                f"{r['parallel_images_per_s']['aevlp'] / r['parallel_images_per_s']['pil']:.2f} |" for name, r in par]
        out.append("")
    cons = [(name, r) for name, r in runs if r.get("consume_images_per_s")]
    if cons:
        out += ["Model consumption, ResNet-50 training step (forward, GPR loss, backward, Adam), images/s:", "",
                "| machine | size, batch, precision | plain | channels_last | channels_last + torch.compile |",
                "|---|---|---|---|---|"]
        out += [f"| {name} | {r['loader_size']} px, {r['consume_batch']}, {r['consume_precision']} | "
                + " | ".join(f"{r['consume_images_per_s'][k]:,.1f}" if k in r["consume_images_per_s"] else "—"
                             for k in ("plain", "channels_last", "channels_last+compile")) + " |" for name, r in cons]
    return "\n".join(out)


def _reprompt_scaling(rp: dict) -> str:
    if "images_4n" not in rp:
        return ""
    return (f"| the same on {rp['images_4n']} images | {rp['full_4n_s']:.1f} s vs {rp['rederive_4n_s']:.2f} s: "
            f"**{rp['ratio_4n']:.0f}×** |\n"
            f"| projected to {rp['projected_images']:,} images (VOC's train split): stage one at "
            f"{rp['full_per_image_s']:.2f} s per image, the re-derive as if all its {rp['images_4n']}-image time "
            f"were per image | **at least {rp['projected_ratio_at_least']:.0f}×** |\n")


def reprompt_section(rp: dict | None) -> str:
    if not rp:
        return ""
    mem = "; ".join(f"{k} images: stage one {m['stage_one_mb']:.0f} MB, re-derive {m['rederive_mb']:.0f} MB"
                    for k, m in rp["memory"].items())
    return f"""## Re-prompting (`benchmarks/reprompt.py`)

| measure | value |
|---|---|
| a new prompt template on {rp['images']} images ({rp['arch']}, grid 4, R = 4): stage one from scratch vs re-derived from the stored embeddings | {rp['full_s']:.1f} s vs {rp['rederive_s']:.2f} s: **{rp['ratio']:.0f}×** |
{_reprompt_scaling(rp)}| peak memory (tiny model, N and 4N images) | {mem} |
"""


GPU_COMMAND = """\
1. On a machine with internet: `make gpu-wheels` puts the packages a bare GPU image with PyTorch often
   lacks (open_clip_torch, ftfy, wcwidth, tomli_w) in `.whl/` (with internet on the GPU machine, skip it
   and `pip install -e .` there instead).
2. On the GPU machine, from the repository root, with `.whl` copied along (about 5 minutes on an H200):

       python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
           .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && \\
       PYTHONUNBUFFERED=1 python3 benchmarks/gpu.py --device cuda --json gpu_h200.json

3. Copy `gpu_h200.json` to `benchmarks/results/` and run `python benchmarks/run_all.py --only render`."""


def gpu_section(runs: list[dict]) -> str:
    """The paper's VOC run on one GPU (benchmarks/gpu.py): measured, or how to measure it."""
    head = "## The paper's VOC run on one GPU (`benchmarks/gpu.py`)\n\n"
    if not runs:
        return head + "**GPU: not measured yet.** Run:\n\n" + GPU_COMMAND + "\n"
    out = [head + "Random-init ViT-B/16 and ResNet-50, synthetic 500×375 JPEGs, pipelines/voc.toml's settings "
           "(grid 4, R = 4, fp16 CLIP weights; batch 8 at 448 px for training). Per-image figures measured in one "
           "run; the VOC run (5,717 images, 8 epochs) projected from them.\n"]
    for r in runs:
        s1, a, o, p = r["stage_one"], r["stage_two_aevlp"], r["stage_two_official"], r["voc_run"]
        distinct = s1.get("distinct_views_per_image", 68)
        out += [f"{r['machine'].split(', torch')[0]}, {r['date']}, {r['images']} images.", "",
                "| measure | value | target |", "|---|---|---|"]
        out += [f"| stage one, {q.get('placement', 'auto placement')}, clip.workers = {q['workers']}: `aevlp "
                f"pseudolabel` / bare encoder on the {distinct} distinct views | {q['images_per_s']:.1f} / "
                f"{s1['bare_images_per_s']:.1f} images/s = **{q['over_bare']:.2f}**; GPU busy "
                f"{q['gpu_utilisation']['mean'] or 0:.0f}% while encoding, peak {q['peak_gb'] or 0:.1f} GB | ≥ 0.90, "
                "≥ 85 % busy |" for q in s1["pipeline"] + s1.get("placements", [])]
        lb = r.get("largest_batch") or {}
        out += [f"| encoding each distinct view once (vs every round's views) | ×{s1.get('distinct_view_saving', 1):.1f} "
                "| — |",
                f"| stage one: aevlp (R = 4 rounds, once) vs the official loop (one round, every epoch) | "
                f"{s1['pipeline_best_images_per_s']:.1f} vs {s1['official_images_per_s_per_round']:.1f} images/s | — |",
                f"| largest encoder chunk that fits | {lb.get('views_per_forward', '—')} views, "
                f"{lb.get('images_per_s', 0):.1f} images/s | — |"]
        out += [f"| stage two, one epoch, {x['loader']} | {x['images_per_s']:.1f} images/s | — |"
                for x in r.get("stage_two_loaders", [])]
        out += [f"| stage two, one epoch: aevlp ({a.get('loader', 'workers')}, {a['precision']}, channels_last) vs "
                f"official (fp32, PIL) | {a['images_per_s']:.1f} vs {o['images_per_s']:.1f} images/s = "
                f"**{a['images_per_s'] / o['images_per_s']:.2f}×** | ≥ 3× |"]
        inf = r.get("inference") or {}
        if "device_over_cpu" in inf:
            out += [f"| the student's scoring (both flips): device vs CPU | {inf['cuda']['images_per_s']:.1f} vs "
                    f"{inf['cpu']['images_per_s']:.1f} images/s = **{inf['device_over_cpu']:.0f}×** | ≥ 20× |"]
        out += [f"| the VOC run: aevlp vs official | {p['aevlp_min']:.1f} min (stage one {p['aevlp_stage_one_min']:.1f}) vs "
                f"{p['official_min']:.1f} min = **{p['aevlp_over_official']:.2f}** | ≤ 0.10 |", ""]
    return "\n".join(out) + "\nRe-run:\n\n" + GPU_COMMAND + "\n"


def precisions() -> str:
    """bf16 and fp32 where the CPU has bf16 instructions; fp32 alone where bf16 would be emulated."""
    from aevlp.device import cpu_supports_bf16

    return "bf16,fp32" if cpu_supports_bf16() else "fp32"


def gpu_slug() -> str:
    import torch

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return "".join(c for c in name.lower().split()[-1] if c.isalnum()) or "gpu"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                    help="cuda: also run benchmarks/gpu.py (the paper's VOC run on this GPU)")
    ap.add_argument("--only", choices=["stage_one", "cache", "stage_two", "reprompt", "gpu", "render"], default=None,
                    help="re-run one benchmark (render: none) and use the stored results of the others")
    ap.add_argument("--notes", default=str(HERE / "performance_notes.md"),
                    help="hand-written findings appended to the generated page")
    args = ap.parse_args()
    archs = "ViT-B-32" if args.quick else "ViT-B-32,ViT-B-16"
    todo = {args.only} if args.only else {"stage_one", "cache", "stage_two", "reprompt"} | (
        {"gpu"} if args.device == "cuda" else set())
    if "gpu" in todo:
        subprocess.run([sys.executable, str(HERE / "gpu.py"), "--device", "cuda", "--json",
                        str(RESULTS / f"gpu_{gpu_slug()}.json")], check=True)
    s1 = run("stage_one.py", "--archs", archs, "--images", "8" if args.quick else "16", "--precisions",
             precisions(), "--grids", "1,2,3,4,5") if "stage_one" in todo else stored("stage_one.py")
    ca = run("cache.py", "--images", "8" if args.quick else "16") if "cache" in todo else stored("cache.py")
    s2 = run("stage_two.py", "--workers", "1") if "stage_two" in todo else stored("stage_two.py")
    rp = run("reprompt.py") if "reprompt" in todo else stored("reprompt.py")
    gpu = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("stage_two_*h200*.json"))]  # GPU-box runs
    notes = Path(args.notes).read_text() if Path(args.notes).exists() else ""
    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("gpu_*.json"))]  # benchmarks/gpu.py
    DOC.write_text(render(s1, s2, ca, notes, gpu, rp, runs))
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
