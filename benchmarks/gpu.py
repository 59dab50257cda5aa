"""The paper's VOC run on one GPU, timed side by side with the official code's way, in one script.

Random-init weights (nothing is downloaded), synthetic VOC-size photo JPEGs (500x375, quality 90) and
pipelines/voc.toml's settings. Every figure is measured in this run, after a warm-up:

  stage one   ViT-B/16, grid 4 (17 views), R = 4 rounds, fp16 weights. The pipeline encodes each distinct view
              once (34 per image: 17 boxes, each flipped and not); its images/s is set against the bare image
              encoder's rate *for those 34 views* (pre-decoded, pre-normalised tensors; target >= 0.90), and the
              distinct-view saving (68 views a round-by-round encoder would run, over 34) is reported apart.
              `aevlp pseudolabel` at clip.workers = 4, 8, 15 (auto placement), then at the most workers with
              each placement (views cut on the workers / on the GPU / JPEGs decoded on the GPU too) and with
              torch.compile; GPU utilisation sampled only while batches are being encoded, peak memory; the
              official loop (PIL crop + transforms per tile, fp32 weights, one round, redone every epoch); the
              largest encoder batch that fits.
  stage two   ResNet-50 at 448 px, GPR Loss, the recipe's batch 8: one epoch of `aevlp train` with each loader
              (the workers decoding with PIL, the pre-resized image cache, the GPU's JPEG decoder: the default
              on a GPU) against the official loader (PIL transforms, float batches) and fp32.
  inference   the student's scoring (both flips of every training image, as GPR-TS does) on the CPU and on
              the device, on the trained run.
  projection  the VOC run (5,717 training images, 8 epochs) from the per-image figures, both ways.

    python benchmarks/gpu.py --device cuda --json benchmarks/results/gpu_h200.json   # ~5 min on an H200
    python benchmarks/gpu.py --device cpu --tiny                                     # the script's own test

docs/performance.md says how to run it on a lent GPU box (the packages it needs travel as wheels).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, make_jpeg_dataset, today  # noqa: E402
from stage_one import reference_loop  # noqa: E402
from stage_two import PILRows  # noqa: E402

from aevlp.config import load_config  # noqa: E402
from aevlp.specs import ClipSpec  # noqa: E402
from aevlp.stage_one.pseudolabel import run_pseudolabel  # noqa: E402
from aevlp.stage_one.view_scoring import views_per_forward  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VOC_TRAIN_IMAGES, VOC_EPOCHS = 5717, 8  # the paper's VOC run: the official train split less nothing, 8 epochs
TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                                              "head_width": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


class Scale:
    """What one run measures: the full (GPU) or the tiny (CPU test) version of every setting."""

    def __init__(self, args: argparse.Namespace, tmp: Path):
        self.device, self.tiny = args.device, args.tiny
        self.images = 2 if args.tiny else args.images
        self.workers = [0, 1] if args.tiny else [int(w) for w in args.workers.split(",")]
        self.precision = "fp16" if args.device == "cuda" else "fp32"
        self.arch, self.clip_config = "ViT-B-16", ""
        self.backbone, self.size = ("small-cnn", 32) if args.tiny else ("resnet50", 448)
        if args.tiny:
            self.arch, self.clip_config = "tiny-gpu-bench", str(tmp / "tiny-gpu-bench.json")
            Path(self.clip_config).write_text(json.dumps(TINY_CLIP))

    def clip_spec(self, precision: str | None = None) -> ClipSpec:
        return ClipSpec(self.arch, "", device=self.device, precision=precision or self.precision,
                        config=self.clip_config)

    def config(self, root: Path, cache: Path, *extra: str) -> dict:
        """pipelines/voc.toml on this data, with random-init CLIP and backbone."""
        return load_config(ROOT / "pipelines" / "voc.toml", [
            f'dataset.data_root="{root}"', f'cache.path="{cache}"', "dataset.val_frac=0.05",
            f'clip.arch="{self.arch}"', f'clip.config="{self.clip_config}"', 'clip.pretrained=""',
            f'clip.device="{self.device}"', f'clip.precision="{self.precision}"', 'cache.store_embeddings="none"',
            f'train.backbone="{self.backbone}"', 'train.weights="none"', f"train.image_size={self.size}",
            f'train.device="{self.device}"', *extra])


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Utilisation:
    """GPU utilisation (%) sampled every 0.2 s on a thread while the block runs and `active` is set (`encoding`
    sets it while stage one's loop runs: not during CLIP's loading or the eval embeddings); empty off CUDA."""

    def __init__(self, device: str):
        self.on, self.samples, self.active = device == "cuda", [], False
        self._stop = threading.Event()

    def __enter__(self):
        if self.on:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            if not self.active:
                continue
            try:
                self.samples.append(torch.cuda.utilization())
            except Exception:  # no NVML on this machine: no samples
                return

    def encoding(self):
        """Set `active` while `aevlp.stage_one.pseudolabel._fill` (the encoding loop) runs."""
        import contextlib

        import aevlp.stage_one.pseudolabel as pl

        real, util = pl._fill, self

        def fill(*a, **k):
            util.active = True
            try:
                return real(*a, **k)
            finally:
                util.active = False

        @contextlib.contextmanager
        def patched():
            pl._fill = fill
            try:
                yield self
            finally:
                pl._fill = real
        return patched()

    def __exit__(self, *exc):
        self._stop.set()
        return False

    def summary(self) -> dict:
        s = np.array(self.samples or [np.nan], dtype=float)
        return {"mean": float(np.nanmean(s)) if self.samples else None,
                "median": float(np.nanmedian(s)) if self.samples else None, "samples": len(self.samples)}


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}%"


def _peak_reset() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_gb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else None


def _pipeline_run(s: Scale, root: Path, tmp: Path, name: str, *extra: str) -> dict:
    cfg = s.config(root, tmp / f"{name}.h5", *extra)
    _peak_reset()
    with Utilisation(s.device) as util, util.encoding():
        rate = run_pseudolabel(cfg, limit=s.images, progress=False, force=True)["images_per_s"]
    return {"images_per_s": rate, "gpu_utilisation": util.summary(), "peak_gb": _peak_gb()}


def stage_one(s: Scale, root: Path, tmp: Path, paths: list[Path]) -> dict:
    """Pipeline images/s per clip.workers and per placement, against the bare encoder on the distinct views."""
    from stage_one import bare_encoder

    from aevlp.stage_one.views import ViewSpec, unique_slots

    every, distinct = R_ROUNDS * 17, unique_slots(ViewSpec(grid=4, rounds=R_ROUNDS))  # 68 views, 34 encoded
    _peak_reset()
    views_per_s = bare_encoder(s.clip_spec(), s.precision, max(s.images // 4, 2) * every)
    bare = views_per_s / distinct
    out = {"encoder_views_per_s": views_per_s, "views_per_image": every, "distinct_views_per_image": distinct,
           "bare_images_per_s": bare, "distinct_view_saving": every / distinct, "encoder_peak_gb": _peak_gb(),
           "pipeline": [], "placements": []}
    warm = s.config(root, tmp / "warm.h5")
    run_pseudolabel(warm, limit=min(s.images, 16), progress=False, force=True)  # CUDA context, kernels, workers
    for w in s.workers:
        q = {"workers": w, **_pipeline_run(s, root, tmp, f"s1-w{w}", f"clip.workers={w}")}
        q["over_bare"] = q["images_per_s"] / bare
        out["pipeline"].append(q)
        print(f"stage one, clip.workers={w}: {q['images_per_s']:.1f} images/s = {q['over_bare']:.2f} x the bare "
              f"encoder on the {distinct} distinct views ({bare:.1f}); GPU busy {_pct(q['gpu_utilisation']['mean'])} "
              "while encoding", flush=True)
    w = s.workers[-1]
    places = [("workers cut, workers decode", 'views.resize_on="worker"', 'views.decode_on="worker"'),
              ("GPU cuts, workers decode", 'views.resize_on="device"', 'views.decode_on="worker"'),
              ("GPU decodes (nvJPEG) and cuts", 'views.resize_on="device"', 'views.decode_on="device"'),
              ("auto + torch.compile", "clip.compile=true")]
    for label, *extra in places:
        if s.tiny and "compile" in label:
            continue  # compiling takes minutes on a CPU: the GPU run measures it
        q = {"placement": label, "workers": w, **_pipeline_run(s, root, tmp, f"s1-{len(out['placements'])}",
                                                               f"clip.workers={w}", *extra)}
        q["over_bare"] = q["images_per_s"] / bare
        out["placements"].append(q)
        print(f"stage one, {label} (clip.workers={w}): {q['images_per_s']:.1f} images/s = {q['over_bare']:.2f} x; "
              f"GPU busy {_pct(q['gpu_utilisation']['mean'])}", flush=True)
    ref = reference_loop(s.clip_spec(), paths[:max(2, min(len(paths), s.images // 4))], 4)
    out["official_images_per_s_per_round"] = ref
    best = max(p["images_per_s"] for p in out["pipeline"] + out["placements"])
    out["pipeline_best_images_per_s"] = best
    out["cache_path"] = str(tmp / f"s1-w{s.workers[-1]}.h5")
    print(f"official loop: {ref:.1f} images/s for one round (fp32, PIL per tile); aevlp's {R_ROUNDS} rounds: "
          f"{best:.1f} images/s; encoding each distinct view once saves {every / distinct:.1f}x", flush=True)
    return out


R_ROUNDS = 4


def largest_batch(s: Scale) -> dict:
    """The largest encoder chunk (views per forward, doubling from the pipeline's) that fits, and its rate."""
    from stage_one import bare_encoder

    chunk, best, limit = (16, None, 64) if s.tiny else (views_per_forward(torch.device(s.device)), None, 16384)
    while chunk <= limit:
        try:
            rate = bare_encoder(s.clip_spec(), s.precision, chunk * 2, chunk=chunk)
        except torch.cuda.OutOfMemoryError:
            break
        best = {"views_per_forward": chunk, "images_per_s": rate / (R_ROUNDS * 17)}
        chunk *= 2
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if best:
        print(f"largest encoder chunk tried that fits: {best['views_per_forward']} views, "
              f"{best['images_per_s']:.1f} images/s (R = 4, 17 views); the pipeline's is "
              f"{views_per_forward(torch.device(s.device))}")
    return best or {}


LOADERS = {"workers (PIL)": ('train.decode_on="worker"', "train.image_cache=false"),
           "image cache": ('train.decode_on="worker"', "train.image_cache=true"),
           "GPU decoder (nvJPEG)": ('train.decode_on="device"', "train.image_cache=false")}


def aevlp_epoch(s: Scale, root: Path, cache: str, tmp: Path, workers: int, loader: str) -> dict:
    """One epoch of `aevlp train` on the stage-one cache with a loader: channels_last, bf16 (fp32 on a CPU)."""
    from aevlp.stage_two.train import run_train

    prec = "bf16" if s.device == "cuda" else "fp32"
    run = tmp / f"aevlp-run-{len(loader)}"
    cfg = s.config(root, Path(cache), "train.epochs=1", 'train.early_stop="none"', f'train.precision="{prec}"',
                   'train.channels_last="on"', f"train.workers={workers}", *LOADERS[loader])
    _peak_reset()
    run_train(cfg, run_dir=run, progress=False, echo=None, force=True)
    rec = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    batch = cfg["train"]["batch_size"]
    return {"loader": loader, "epoch_s": rec["seconds"], "images": s.images, "batch": batch, "precision": prec,
            "images_per_s": s.images / rec["seconds"], "peak_gb": _peak_gb(), "run_dir": str(run)}


def stage_two(s: Scale, root: Path, cache: str, tmp: Path, workers: int) -> list[dict]:
    """One epoch with each loader the machine has (the GPU decoder needs CUDA)."""
    out = []
    for loader in LOADERS:
        if "GPU" in loader and s.device != "cuda":
            continue
        a = aevlp_epoch(s, root, cache, tmp, workers, loader)
        print(f"stage two, one epoch, {loader}: {a['images_per_s']:.1f} images/s", flush=True)
        out.append(a)
    return out


def inference_rates(s: Scale, run_dir: str, root: Path, cache: str) -> dict:
    """The student's scoring (every training image, both flips averaged) on the CPU and on the device."""
    from aevlp.cache import Cache
    from aevlp.device import inference
    from aevlp.stage_two.refine import student_scores

    out = {}
    with Cache(cache) as c:
        data = c.dataset()
        for dev, n in (("cpu", min(s.images, 2 if s.tiny else 64)), (s.device, s.images)):
            if dev in out:
                continue
            keep = np.zeros(len(c), dtype=bool)
            keep[:n] = True
            student_scores(Path(run_dir), data, c, keep, len(c), inference(dev))  # warm-up: workers, kernels
            _sync()
            t = time.perf_counter()
            student_scores(Path(run_dir), data, c, keep, len(c), inference(dev))
            _sync()
            out[dev] = {"images": n, "images_per_s": n / (time.perf_counter() - t)}
            print(f"the student's scoring on {dev}: {out[dev]['images_per_s']:.1f} images/s (both flips)", flush=True)
    if s.device in out and "cpu" in out:
        out["device_over_cpu"] = out[s.device]["images_per_s"] / out["cpu"]["images_per_s"]
    return out


def official_epoch(s: Scale, paths: list[Path], batch: int, workers: int) -> dict:
    """One epoch the official code's way: PIL loader (Resize, flip, ToTensor, Normalize), fp32, GPR Loss."""
    from aevlp.losses import build_loss
    from aevlp.schedules import gr_schedule
    from aevlp.stage_two.models import build_model

    dev = torch.device(s.device)
    torch.manual_seed(0)
    model = build_model(s.backbone, 20, weights="none").to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    loss = build_loss("gpr", dict(q2=0.01, q3=1.0, lam1=0.7, lam2=0.4, rho=0.9, reg=0.05, expected_pos=1.5))
    sched = gr_schedule(1, 8, [0, 2, -2, -2], [0.5, 2, 0.8, 0.5])
    loader = torch.utils.data.DataLoader(PILRows([str(p) for p in paths], s.size), batch_size=batch, shuffle=True,
                                         num_workers=workers, drop_last=False)
    _peak_reset()
    _sync()
    t = time.perf_counter()
    for x, _ in loader:
        x = x.to(dev)
        obs = torch.zeros(len(x), 20, dtype=torch.long, device=dev)
        obs[:, 0] = 1
        pseudo = torch.randint(-1, 2, (len(x), 20), device=dev)
        out = loss(model(x), obs, pseudo=pseudo, full=obs, schedule=sched)
        opt.zero_grad()
        out.backward()
        opt.step()
    _sync()
    sec = time.perf_counter() - t
    return {"epoch_s": sec, "images": len(paths), "batch": batch, "precision": "fp32",
            "images_per_s": len(paths) / sec, "peak_gb": _peak_gb()}


def projection(s1: dict, a2: dict, o2: dict) -> dict:
    """The VOC run (5,717 images, 8 epochs) from the per-image figures: aevlp computes R = 4 rounds once and
    trains from the cache; the official code re-encodes one round of views every epoch while it trains."""
    n, e = VOC_TRAIN_IMAGES, VOC_EPOCHS
    aevlp_s = n / s1["pipeline_best_images_per_s"] + e * n / a2["images_per_s"]
    official_s = e * n * (1 / s1["official_images_per_s_per_round"] + 1 / o2["images_per_s"])
    return {"images": n, "epochs": e, "aevlp_min": aevlp_s / 60, "official_min": official_s / 60,
            "aevlp_over_official": aevlp_s / official_s,
            "aevlp_stage_one_min": n / s1["pipeline_best_images_per_s"] / 60,
            "aevlp_training_min": e * n / a2["images_per_s"] / 60}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--tiny", action="store_true",
                    help="2 images, a tiny ViT and small-cnn at 32 px: the script's own test")
    ap.add_argument("--images", type=int, default=1024, help="synthetic VOC-size JPEGs (stage one and two)")
    ap.add_argument("--workers", default="4,8,15", help="clip.workers values for stage one; the last one also "
                    "feeds both stage-two loaders")
    ap.add_argument("--json", default=None, help="write the results here (benchmarks/results/gpu_*.json are "
                    "rendered into docs/performance.md by run_all.py)")
    args = ap.parse_args()
    logging.getLogger("aevlp").setLevel(logging.ERROR)  # random weights and generated observed labels: expected
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu.py: --device cuda but torch sees no GPU here; --device cpu --tiny tests the script")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        s = Scale(args, tmp)
        root = make_jpeg_dataset(tmp / "voc", s.images)
        paths = sorted((root / "VOCdevkit/VOC2012/JPEGImages").glob("train*.jpg"))
        res = {"machine": machine(), "date": today(), "images": s.images, "arch": s.arch,
               "clip_precision": s.precision, "backbone": s.backbone, "image_size": s.size}
        print(f"# gpu.py, {res['machine']}, {res['date']}, {s.images} images", flush=True)
        res["stage_one"] = stage_one(s, root, tmp, paths)
        res["largest_batch"] = largest_batch(s)
        workers, cache = s.workers[-1], res["stage_one"].pop("cache_path")
        res["stage_two_loaders"] = stage_two(s, root, cache, tmp, workers)
        res["stage_two_aevlp"] = a = max(res["stage_two_loaders"], key=lambda x: x["images_per_s"])
        res["stage_two_official"] = o = official_epoch(s, paths, a["batch"], workers)
        res["stage_two_workers"] = workers
        print(f"stage two, one epoch ({s.backbone} {s.size} px, batch {a['batch']}): aevlp {a['images_per_s']:.1f} "
              f"images/s ({a['loader']}, {a['precision']}, channels_last) vs official {o['images_per_s']:.1f} (fp32, "
              f"PIL): {a['images_per_s'] / o['images_per_s']:.2f}x (target >= 3)", flush=True)
        res["inference"] = inference_rates(s, a["run_dir"], root, cache)
        res["voc_run"] = p = projection(res["stage_one"], a, o)
        print(f"the VOC run projected ({p['images']} images, {p['epochs']} epochs): aevlp {p['aevlp_min']:.1f} min "
              f"vs official {p['official_min']:.1f} min = {p['aevlp_over_official']:.2f} (target <= 0.10)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
