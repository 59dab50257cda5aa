"""Stage-two costs, measured side by side in one run.

  loader images/s per core  one process (one core) turning JPEGs into model input at the training
                           size: the official code's PIL loader (Image.open, Resize, flip, ToTensor,
                           Normalize), aevlp's (PIL decode + resize to uint8 HWC in the worker;
                           normalise and flip where the model is), and aevlp's pre-resized image
                           cache (train.image_cache). Targets: aevlp >= 2x PIL, cache >= 5x PIL.
  model consumption        images/s one ResNet training step takes (forward, loss, backward, Adam),
                           with and without channels_last (and torch.compile with --compile)

  GPR step / BCE step      one training step (forward, loss, backward, Adam) with GPR Loss (K, V,
                           pseudo-labels, regulariser) vs plain full-label BCE, same backbone and
                           batch (target <= 1.10)
  cache read / consumption rows/s of reading one round of similarities from the HDF5 cache and
                           building that epoch's DAMP pseudo-labels, vs images/s the training step
                           consumes (target >= 10)

    python benchmarks/stage_two.py --backbone resnet50 --image-size 224 --batch 8
    python benchmarks/stage_two.py --loader-size 448 --device cuda --compile   # on a GPU box
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, make_jpeg_dataset, today  # noqa: E402

from aevlp.losses import build_loss  # noqa: E402
from aevlp.schedules import gr_schedule  # noqa: E402
from aevlp.stage_two.models import build_model  # noqa: E402

COCO = dict(q2=0.01, q3=1.0, lam1=0.7, lam2=0.5, rho=0.9, reg=0.001, expected_pos=2.9)


def step_time(backbone: str, size: int, batch: int, c: int, loss_name: str, steps: int, *, device: str = "cpu",
              channels_last: bool = False, compile: bool = False, precision: str = "fp32") -> float:
    from aevlp.device import autocast

    torch.manual_seed(0)
    dev = torch.device(device)
    model = build_model(backbone, c, weights="none").to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    run = torch.compile(model) if compile else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    loss = build_loss(loss_name, COCO)
    x = torch.randn(batch, 3, size, size, device=dev)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    obs = torch.zeros(batch, c, dtype=torch.long, device=dev)
    obs[:, 0] = 1
    full = (torch.rand(batch, c, device=dev) < 0.1).long()
    pseudo = torch.randint(-1, 2, (batch, c), device=dev)
    sched = gr_schedule(4, 8, [0, 10, -2, -8], [0.5, 2, 0.8, 0.5])
    times = []
    for i in range(steps + (3 if compile else 1)):
        _sync(dev)
        t = time.perf_counter()
        with autocast(dev, precision):
            logits = run(x)
        out = loss(logits.float(), obs, pseudo=pseudo, full=full, schedule=sched)
        opt.zero_grad()
        out.backward()
        opt.step()
        _sync(dev)
        if i >= (3 if compile else 1):  # the first steps warm up (and compile)
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


class PILRows(torch.utils.data.Dataset):
    """The official code's loader: PIL decode, PIL resize to (S, S), random flip, ToTensor, Normalize."""

    def __init__(self, paths, size):
        from torchvision import transforms as T

        self.paths = paths
        self.tf = T.Compose([T.Resize((size, size)), T.RandomHorizontalFlip(), T.ToTensor(),
                             T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return self.tf(im.convert("RGB")), i


def loader_rates(paths: list, size: int, batch: int, cache_dir: Path, device: str = "cpu") -> dict:
    """Images/s of one process on one core (workers=0, one torch thread) through each loader, best of
    three interleaved rounds; aevlp's without and with `to_model_input` on this process (it runs on the
    GPU there); and of one worker process feeding this one (the batches cross processes)."""
    from aevlp.stage_two.image_cache import CachedImages
    from aevlp.stage_two.inputs import ImageRows

    cached = _image_cache(paths, size, cache_dir)
    dev = torch.device(device)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker: one core
    specs = {"pil": (PILRows(paths, size), False, 0), "aevlp": (ImageRows(paths, size), False, 0),
             "aevlp+normalise": (ImageRows(paths, size), True, 0),
             "cache": (ImageRows(paths, size, images=CachedImages(cached, "train")), False, 0),
             "cache+normalise": (ImageRows(paths, size, images=CachedImages(cached, "train")), True, 0),
             "pil, 1 worker": (PILRows(paths, size), False, 1), "aevlp, 1 worker": (ImageRows(paths, size), False, 1)}
    out = dict.fromkeys(specs, 0.0)
    for _ in range(3):  # interleaved rounds, best of each: this machine's speed drifts
        for name, (ds, normalise, workers) in specs.items():
            out[name] = max(out[name], _rate(ds, batch, workers, dev if normalise else None, size))
    torch.set_num_threads(threads)
    if dev.type == "cuda":
        out["gpu-decode"] = _gpu_decode_rate(paths, size, batch, dev)
    return out


def parallel_rates(paths: list, size: int, batch: int, workers: int, cache: Path, device: str) -> dict:
    """Images/s of a whole training loader with `workers` processes, the batches made model input on
    `device` (aevlp: normalised and flipped there), best of two interleaved rounds."""
    from aevlp.stage_two.image_cache import CachedImages
    from aevlp.stage_two.inputs import ImageRows

    dev = torch.device(device)
    reps = max(1, -(-64 * workers * batch // len(paths)))  # >= 64 batches per worker: start-up and prefetch amortised
    many, rows = paths * reps, np.tile(np.arange(len(paths)), reps)
    specs = {"pil": (PILRows(many, size), None), "aevlp": (ImageRows(many, size), dev),
             "cache": (ImageRows(many, size, images=CachedImages(cache, "train", rows)), dev)}
    out = dict.fromkeys(specs, 0.0)
    for name, (ds, normalise_on) in specs.items():
        out[name] = _rate(ds, batch, workers, normalise_on, size, to=dev, from_start=True)
    return out


def decode_agreement(paths: list, size: int, device: str) -> dict:
    """How far train.decode_on = device (GPU decode_jpeg + tensor resize) is from the workers' pixels."""
    from aevlp.imaging import to_model_input
    from aevlp.stage_two.inputs import ImageRows, make_loader

    dev = torch.device(device)
    a, _ = next(iter(make_loader(ImageRows(paths[:16], size), 16, 0, torch.device("cpu"))))
    b, _ = next(iter(make_loader(ImageRows(paths[:16], size, encoded=True), 16, 0, torch.device("cpu"))))
    x, y = to_model_input(a, dev), to_model_input(b, dev, size=size)
    level = 1 / 255 / 0.225
    return {"max_levels": float((x - y).abs().max() / level), "mean_levels": float((x - y).abs().mean() / level)}


def _rate(ds, batch: int, workers: int, normalise_on, size: int, to: torch.device | None = None,
          from_start: bool = False) -> float:
    """Images/s after the first batch (so a worker's start-up is not counted), or `from_start`;
    `to`: the device the batches are moved to (pinned memory when it is CUDA)."""
    from aevlp.imaging import to_model_input
    from aevlp.stage_two.inputs import make_loader

    to = to or torch.device("cpu")
    t, n = time.perf_counter(), 0
    it = iter(make_loader(ds, batch, workers, to))
    if not from_start:
        next(it)
        t = time.perf_counter()
    for x, rows in it:
        if normalise_on is not None:
            to_model_input(x, normalise_on, torch.zeros(len(rows), dtype=torch.bool), size=size)
        else:
            x.to(to, non_blocking=True)
        n += len(rows)
    _sync(to)
    return n / (time.perf_counter() - t)


def _gpu_decode_rate(paths: list, size: int, batch: int, dev: torch.device) -> float:
    """Images/s of train.decode_on = device: file bytes read on the CPU, decoded and resized on the GPU."""
    from aevlp.imaging import to_model_input
    from aevlp.stage_two.inputs import ImageRows, make_loader

    ds = ImageRows(paths, size, encoded=True)
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for x, _ in make_loader(ds, batch, 0, torch.device("cpu")):
            to_model_input(x, dev, None, size=size)
        _sync(dev)
        best = max(best, len(ds) / (time.perf_counter() - t))
    return best


def _image_cache(paths: list, size: int, cache_dir: Path) -> Path:
    """A one-split image cache of `paths` at `size`, built by aevlp's own builder."""
    from types import SimpleNamespace as NS

    from aevlp.stage_two.image_cache import ensure_image_cache

    root = Path(paths[0]).parent
    split = NS(images=np.array([Path(p).name for p in paths]))
    empty = NS(images=np.array([], dtype=str))
    data = NS(image_root=root, train=split, val=empty, test=empty)
    return ensure_image_cache(data, size, cache_dir / f"bench-{size}px.h5", progress=False)


def cache_read_rate(n: int, v: int, c: int, rounds: int) -> float:
    """Rows/s: read round r of /sims from an HDF5 file and run DAMP aggregate + select on it."""
    from aevlp.cache import Cache
    from aevlp.specs import DampSpec
    from aevlp.stage_two.labeler import PseudoLabeler

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.h5"
        rng = np.random.default_rng(0)
        grid = int(round((v - 1) ** 0.5))
        with h5py.File(path, "w") as f:  # a complete cache's structure, random similarities
            f["sims"] = (rng.random((rounds, n, v, c), dtype=np.float32) * 0.4).astype(np.float16)
            f["scores"] = np.zeros((rounds, n, c), np.float16)
            f["pseudo"] = np.zeros((rounds, n, c), np.int8)
            f["done"], f["bad"] = np.ones(n, bool), np.zeros(n, bool)
            f["observed"] = np.zeros((n, c), np.int8)
            f["text_features"] = np.zeros((c, 8), np.float32)
            f.attrs["fingerprint"] = json.dumps({"rounds": rounds, "grid": grid, "num_images": n, "num_classes": c})
            f.attrs["complete"] = True
            for k in ("image_ids", "classnames"):
                f[k] = np.array(["x"] * (n if k == "image_ids" else c), dtype=object).astype("S")
        obs = np.zeros((n, c), np.int8)
        obs[:, 0] = 1
        damp = {"source": "damp", "temperature": 0.01, "eta": 0.3, "top_k": 3, "threshold": 0.5,
                "negative_ratio": 0.3, "mode": "paper"}
        cache = Cache(path)
        labeler = PseudoLabeler(cache, DampSpec(**damp), obs)
        t = time.perf_counter()
        for e in range(1, rounds + 1):
            labeler.for_epoch(e)
        rate = n * rounds / (time.perf_counter() - t)
        cache.close()
        return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--loader-size", type=int, default=448, help="training size for the loader comparison")
    ap.add_argument("--loader-images", type=int, default=96)
    ap.add_argument("--images", default="", help="a folder of JPEGs to use (default: photo JPEGs made here)")
    ap.add_argument("--device", default="cpu", help="where the model (and aevlp's normalisation) runs")
    ap.add_argument("--compile", action="store_true", help="also time the step under torch.compile")
    ap.add_argument("--workers", type=int, default=0, help="also time whole loaders with this many workers")
    ap.add_argument("--only-loaders", action="store_true", help="skip the step and cache measurements")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.only_loaders:
        res = {"machine": machine(), "date": today(), **loaders(args)}
        _print_loaders({**res, "consume_images_per_s": {}, "backbone": args.backbone, "consume_batch": 0,
                        "consume_precision": ""})
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1))
        return
    gpr = step_time(args.backbone, args.image_size, args.batch, args.classes, "gpr", args.steps)
    bce = step_time(args.backbone, args.image_size, args.batch, args.classes, "bce-full", args.steps)
    consume = args.batch / gpr
    read = cache_read_rate(20000, 17, args.classes, 2)
    res = {"machine": machine(), "date": today(), "backbone": args.backbone, "image_size": args.image_size,
           "batch": args.batch, "classes": args.classes, "gpr_step_s": gpr, "bce_step_s": bce,
           "gpr_over_bce": gpr / bce,
           "cache_rows_per_s": read, "train_images_per_s": consume, "read_over_consume": read / consume}
    res.update(loaders(args))
    res.update(consumption(args))
    print(f"# stage two, {res['machine']}, {res['date']}, {args.backbone} {args.image_size}px batch {args.batch}, "
          f"C={args.classes}")
    print(f"GPR step {gpr * 1000:.1f} ms, BCE step {bce * 1000:.1f} ms: GPR/BCE = {gpr / bce:.3f} (target <= 1.10)")
    print(f"cache read + DAMP selection {read:,.0f} rows/s vs training {consume:.1f} images/s: "
          f"{read / consume:,.0f}x (target >= 10)")
    _print_loaders(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


def loaders(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        if args.images:
            paths = sorted(str(p) for p in Path(args.images).glob("*.jpg"))[:args.loader_images]
        else:
            root = make_jpeg_dataset(Path(tmp) / "voc", args.loader_images)
            paths = sorted(str(p) for p in (root / "VOCdevkit/VOC2012/JPEGImages").glob("train*.jpg"))
        rates = loader_rates(paths, args.loader_size, 16, Path(tmp), args.device)
        res = {"loader_size": args.loader_size, "loader_images": len(paths), "loader_images_per_s": rates,
               "aevlp_over_pil": rates["aevlp"] / rates["pil"], "cache_over_pil": rates["cache"] / rates["pil"]}
        if args.workers:
            cache = Path(tmp) / f"bench-{args.loader_size}px.h5"
            res["parallel_workers"] = args.workers
            res["parallel_images_per_s"] = parallel_rates(paths, args.loader_size, 32, args.workers, cache,
                                                          args.device)
        if args.device == "cuda":
            res["gpu_decode_agreement"] = decode_agreement(paths, args.loader_size, args.device)
    return res


def consumption(args) -> dict:
    """Images/s of one ResNet step at the loader size: plain, channels_last (and compiled)."""
    size, batch = args.loader_size, (32 if args.device == "cuda" else 4)
    prec = "bf16" if args.device == "cuda" else "fp32"
    kw = dict(device=args.device, precision=prec)
    rates = {"plain": batch / step_time(args.backbone, size, batch, args.classes, "gpr", args.steps, **kw),
             "channels_last": batch / step_time(args.backbone, size, batch, args.classes, "gpr", args.steps,
                                                channels_last=True, **kw)}
    if args.compile:
        rates["channels_last+compile"] = batch / step_time(args.backbone, size, batch, args.classes, "gpr",
                                                           args.steps, channels_last=True, compile=True, **kw)
    return {"consume_batch": batch, "consume_precision": prec, "consume_images_per_s": rates}


def _print_loaders(res: dict) -> None:
    r = res["loader_images_per_s"]
    print(f"loader at {res['loader_size']} px, one core, images/s: " + ", ".join(f"{k} {v:.1f}" for k, v in r.items()))
    print(f"aevlp / PIL = {res['aevlp_over_pil']:.2f} (target >= 2), cache / PIL = {res['cache_over_pil']:.2f} "
          "(target >= 5)")
    if "parallel_images_per_s" in res:
        print(f"whole loader, {res['parallel_workers']} workers, from its start, images/s: " +
              ", ".join(f"{k} {v:.1f}" for k, v in res["parallel_images_per_s"].items()))
    if "gpu_decode_agreement" in res:
        print("GPU decode vs workers, in uint8 levels: max {max_levels:.2f}, mean {mean_levels:.3f}".format(
            **res["gpu_decode_agreement"]))
    print(f"model consumption ({res['backbone']} {res['loader_size']} px, batch {res['consume_batch']}, "
          f"{res['consume_precision']}), images/s: " +
          ", ".join(f"{k} {v:.1f}" for k, v in res["consume_images_per_s"].items()))


if __name__ == "__main__":
    main()
