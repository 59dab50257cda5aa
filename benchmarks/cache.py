"""What the stage-one cache buys, measured side by side in one run (random-init ViT-B-32, photo JPEGs).

  offline advantage     CLIP work of a whole training run: the official code re-encodes every view
                        of every image every epoch (T x N x V views); aevlp encodes R rounds once,
                        each distinct (tile, flip) view once (N x 2V). Ratio of views and of time.
  re-tune vs re-run     building new pseudo-labels from cached similarities (new tau/eta/theta/k)
                        vs recomputing stage one (target >= 100)
  merge: copy vs VDS    joining shard files: copying rows into one file vs an HDF5 virtual dataset

    python benchmarks/cache.py --images 16 --epochs 8 --rounds 4
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

from aevlp.cache import Cache  # noqa: E402
from aevlp.config import load_config  # noqa: E402
from aevlp.specs import DampSpec  # noqa: E402
from aevlp.stage_one.pseudolabel import run_pseudolabel  # noqa: E402
from aevlp.stage_two.labeler import PseudoLabeler  # noqa: E402


def stage_one(root: Path, out: Path, n: int, rounds: int, arch: str) -> float:
    cfg = load_config(None, ['dataset.name="voc"', f'dataset.data_root="{root}"', f'cache.path="{out}"',
                             f'clip.arch="{arch}"', 'clip.pretrained=""', "views.grid=4", f"views.rounds={rounds}",
                             "clip.batch_size=16", "clip.workers=1", "dataset.val_frac=0.01"])
    run_pseudolabel(cfg, limit=min(n, 8), progress=False, force=True)  # warm-up
    t = time.perf_counter()
    run_pseudolabel(cfg, limit=n, progress=False, force=True)
    return time.perf_counter() - t


def retune_time(cache: Path, repeats: int = 5) -> float:
    """Seconds to rebuild pseudo-labels of every round with new selection parameters."""
    with Cache(cache) as c:
        obs = c.array("observed")
        t = time.perf_counter()
        for i in range(repeats):
            damp = {"source": "damp", "temperature": 0.01 + 0.002 * i, "eta": 0.3, "top_k": 3, "threshold": 0.4,
                    "negative_ratio": 0.2, "mode": "paper"}
            lab = PseudoLabeler(c, DampSpec(**damp), obs)
            for e in range(1, c.rounds + 1):
                lab.for_epoch(e)
        return (time.perf_counter() - t) / repeats


def merge_copy_vs_vds(n: int = 40000, v: int = 17, c: int = 81, r: int = 2, shards: int = 4) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        rows = np.linspace(0, n, shards + 1).astype(int)
        for k in range(shards):
            with h5py.File(tmp / f"s{k}.h5", "w") as f:
                f["sims"] = rng.random((r, rows[k + 1] - rows[k], v, c), dtype=np.float32).astype(np.float16)
        t = time.perf_counter()
        with h5py.File(tmp / "copy.h5", "w") as out:
            d = out.create_dataset("sims", (r, n, v, c), np.float16)
            for k in range(shards):
                with h5py.File(tmp / f"s{k}.h5", "r") as f:
                    d[:, rows[k]:rows[k + 1]] = f["sims"][:]
        copy_s = time.perf_counter() - t
        t = time.perf_counter()
        layout = h5py.VirtualLayout(shape=(r, n, v, c), dtype=np.float16)
        for k in range(shards):
            layout[:, rows[k]:rows[k + 1]] = h5py.VirtualSource(str(tmp / f"s{k}.h5"), "sims",
                                                               shape=(r, rows[k + 1] - rows[k], v, c))
        with h5py.File(tmp / "vds.h5", "w") as out:
            out.create_virtual_dataset("sims", layout)
        vds_s = time.perf_counter() - t
        reads = {"copy": [], "vds": []}
        for _ in range(3):  # alternate and keep the best, so page-cache and first-touch effects even out
            for name in ("copy", "vds"):
                t = time.perf_counter()
                with h5py.File(tmp / f"{name}.h5", "r") as f:
                    f["sims"][1]
                reads[name].append(time.perf_counter() - t)
        reads = {k: min(v) for k, v in reads.items()}
        return {"rows": n, "mb": r * n * v * c * 2 / 2 ** 20, "copy_s": copy_s, "vds_create_s": vds_s,
                "read_round_copy_s": reads["copy"], "read_round_vds_s": reads["vds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=8, help="T of the official online recomputation")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    res = {"machine": machine(), "date": today(), "arch": args.arch, "images": args.images, "epochs": args.epochs,
           "rounds": args.rounds}
    with tempfile.TemporaryDirectory() as tmp:
        root = make_jpeg_dataset(Path(tmp) / "data", args.images)
        one_round = stage_one(root, Path(tmp) / "r1.h5", args.images, 1, args.arch)
        cached = stage_one(root, Path(tmp) / "rR.h5", args.images, args.rounds, args.arch)
        v = 17
        res.update(online_views=args.epochs * args.images * v, cached_views=args.images * min(args.rounds, 2) * v,
                   online_s=args.epochs * one_round, cached_s=cached)
        res["views_ratio"] = res["online_views"] / res["cached_views"]
        res["time_ratio"] = res["online_s"] / res["cached_s"]
        retune = retune_time(Path(tmp) / "rR.h5")
        res.update(stage_one_s=cached, retune_s=retune, retune_speedup=cached / retune)
    res["merge"] = merge_copy_vs_vds()
    m = res["merge"]
    print(f"# cache, {res['machine']}, {res['date']}, {args.arch} random init, {args.images} images, grid 4")
    print(f"offline advantage over T={args.epochs} epochs: views {res['online_views']} vs {res['cached_views']} "
          f"({res['views_ratio']:.1f}x); time {res['online_s']:.1f} s (T x one round, measured) vs "
          f"{res['cached_s']:.1f} s for R={args.rounds} ({res['time_ratio']:.1f}x)")
    print(f"re-tune from cache {res['retune_s'] * 1000:.2f} ms vs re-run stage one {res['stage_one_s']:.1f} s: "
          f"{res['retune_speedup']:,.0f}x (target >= 100)")
    print(f"merge {m['mb']:.0f} MB in 4 shards: copy {m['copy_s']:.2f} s, "
          f"virtual dataset {m['vds_create_s'] * 1000:.1f} ms; "
          f"reading one round: copy {m['read_round_copy_s']:.2f} s, VDS {m['read_round_vds_s']:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
