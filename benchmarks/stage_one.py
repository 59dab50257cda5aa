"""Stage-one throughput, measured side by side in one run (random-init CLIP; real photo JPEGs).

Ratios printed per architecture and precision:
  pipeline / bare encoder   the full `aevlp pseudolabel` (decode, crop, CLIP, DAMP, HDF5) vs the
                            image encoder alone on pre-decoded, pre-normalised tensors (target >= 0.85)
  pipeline / reference      vs a reference-style loop: PIL crop + transform per tile, fp32 model,
                            as the official code does it (target >= 3)
Images/s counts source images, each with G*G+1 views (R = 1 round, so every view is encoded).

    python benchmarks/stage_one.py --archs ViT-B-32,ViT-B-16 --images 32
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, make_jpeg_dataset, today  # noqa: E402

from aevlp.config import load_config  # noqa: E402
from aevlp.damp import aggregate  # noqa: E402
from aevlp.imaging import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from aevlp.specs import ClipSpec  # noqa: E402
from aevlp.stage_one.clip import load_clip  # noqa: E402
from aevlp.stage_one.pseudolabel import MAX_VIEWS_PER_FORWARD, run_pseudolabel  # noqa: E402
from aevlp.stage_one.views import tile_boxes  # noqa: E402


def bare_encoder(arch: str | ClipSpec, precision: str, n_views: int, chunk: int = MAX_VIEWS_PER_FORWARD) -> float:
    """Views/s of encode_image alone on pre-normalised tensors of the model's dtype, already on its device,
    `chunk` views per forward (the pipeline's own chunk by default)."""
    spec = arch if isinstance(arch, ClipSpec) else ClipSpec(arch, "", device="cpu", precision=precision)
    clip = load_clip(spec)
    x = torch.randn(n_views, 3, clip.image_size, clip.image_size).to(clip.device, clip.dtype)
    clip.encode_images(x[:chunk])  # warm-up
    _sync(clip.device)
    t = time.perf_counter()
    for i in range(0, n_views, chunk):
        clip.encode_images(x[i:i + chunk])
    _sync(clip.device)
    return n_views / (time.perf_counter() - t)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pipeline(arch: str, precision: str, root: Path, out: Path, grid: int, n: int, workers: int) -> float:
    """Source images/s of run_pseudolabel (second run, so one-time start-up is excluded)."""
    cfg = load_config(None, ['dataset.name="voc"', f'dataset.data_root="{root}"', f'cache.path="{out}"',
                             f'clip.arch="{arch}"', 'clip.pretrained=""', f'clip.precision="{precision}"',
                             f"views.grid={grid}", "views.rounds=1", "clip.batch_size=16",
                             f"clip.workers={workers}", "dataset.val_frac=0.01"])
    run_pseudolabel(cfg, limit=min(n, 16), progress=False, force=True)
    return run_pseudolabel(cfg, limit=n, progress=False, force=True)["images_per_s"]


def reference_loop(arch: str | ClipSpec, paths: list[Path], grid: int, classes: int = 20) -> float:
    """The official code's way: PIL crop + Resize/Flip/ToTensor/Normalize per tile in the main process, fp32
    weights; source images/s of one round (the official code redoes this every epoch)."""
    spec = arch if isinstance(arch, ClipSpec) else ClipSpec(arch, "", device="cpu")
    clip = load_clip(dataclasses.replace(spec, precision="fp32"))
    text = torch.nn.functional.normalize(torch.randn(classes, clip.embed_dim, device=clip.device), dim=-1)
    tx = transforms.Compose([transforms.Resize((clip.image_size, clip.image_size)),
                             transforms.RandomHorizontalFlip(0.5), transforms.ToTensor(),
                             transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    t = time.perf_counter()
    for i in range(0, len(paths), 16):
        views = []
        for p in paths[i:i + 16]:
            with Image.open(p) as im:
                im = im.convert("RGB")
                views.append(tx(im))
                views += [tx(im.crop(b)) for b in tile_boxes(im.width, im.height, grid)]
        x = torch.stack(views)
        emb = torch.cat([clip.encode_images(x[j:j + MAX_VIEWS_PER_FORWARD])
                         for j in range(0, len(x), MAX_VIEWS_PER_FORWARD)])
        sims = (emb @ text.T).reshape(-1, grid * grid + 1, classes)
        aggregate(sims[:, 0], sims[:, 1:], torch.zeros(len(sims), classes, device=sims.device), temperature=0.01,
                  eta=0.3)[0].cpu()
    return len(paths) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="ViT-B-32,ViT-B-16")
    ap.add_argument("--precisions", default="auto", help="comma list of fp32,bf16,auto")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--grid", type=int, default=4)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--grids", default="", help="also measure grid sizes, e.g. 1,2,3,4,5 (first arch, default "
                    "precision), each on as many images as make --images x (--grid^2+1) views")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()
    torch.manual_seed(0)
    results = {"machine": machine(), "date": today(), "images": args.images, "grid": args.grid, "rows": []}
    print(f"# stage one, {results['machine']}, {results['date']}, {args.images} images x {args.grid ** 2 + 1} views")
    print(f"{'arch':10s} {'precision':9s} {'bare img/s':>10s} {'pipeline':>9s} {'reference':>9s} "
          f"{'pipe/bare':>9s} {'pipe/ref':>8s}")
    with tempfile.TemporaryDirectory() as tmp:
        root = make_jpeg_dataset(Path(tmp) / "data", args.images)
        paths = sorted((root / "VOCdevkit/VOC2012/JPEGImages").glob("train*.jpg"))[:args.images]
        for arch in args.archs.split(","):
            ref = reference_loop(arch, paths, args.grid)
            for precision in args.precisions.split(","):
                prec = load_clip(ClipSpec(arch, "", device="cpu", precision=precision)).precision
                bare = bare_encoder(arch, prec, args.images * (args.grid ** 2 + 1)) / (args.grid ** 2 + 1)
                pipe = pipeline(arch, prec, root, Path(tmp) / f"{arch}-{prec}.h5", args.grid, args.images,
                                args.workers)
                row = {"arch": arch, "precision": prec, "bare_images_per_s": bare, "pipeline_images_per_s": pipe,
                       "reference_images_per_s": ref, "pipeline_over_bare": pipe / bare,
                       "pipeline_over_reference": pipe / ref}
                results["rows"].append(row)
                print(f"{arch:10s} {prec:9s} {bare:10.2f} {pipe:9.2f} {ref:9.2f} {pipe / bare:9.2f} {pipe / ref:8.2f}",
                      flush=True)
        if args.grids:
            arch = args.archs.split(",")[0]
            prec = load_clip(ClipSpec(arch, "", device="cpu", precision="auto")).precision
            print(f"\n# grid scaling, {arch} {prec}: views = G*G+1; images per grid: the same number of views")
            print(f"{'grid':>4s} {'views':>5s} {'pipeline img/s':>14s} {'bare img/s':>10s} {'pipe/bare':>9s}")
            results["grids"] = []
            total = args.images * (args.grid ** 2 + 1)  # every grid encodes the same number of views
            root = make_jpeg_dataset(Path(tmp) / "data", max(total // 2, args.images))
            for g in map(int, args.grids.split(",")):
                views = g * g + 1
                n = max(args.images, total // views)
                bare = bare_encoder(arch, prec, n * views) / views
                pipe = pipeline(arch, prec, root, Path(tmp) / f"grid{g}.h5", g, n, args.workers)
                results["grids"].append({"grid": g, "views": views, "images": n, "pipeline_images_per_s": pipe,
                                         "bare_images_per_s": bare})
                print(f"{g:4d} {views:5d} {pipe:14.2f} {bare:10.2f} {pipe / bare:9.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
