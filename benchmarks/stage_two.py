"""Stage-two costs, measured side by side in one run.

  GPR step / BCE step      one training step (forward, loss, backward, Adam) with GPR Loss (K, V,
                           pseudo-labels, regulariser) vs plain full-label BCE, same backbone and
                           batch (target <= 1.10)
  cache read / consumption rows/s of reading one round of similarities from the HDF5 cache and
                           building that epoch's DAMP pseudo-labels, vs images/s the training step
                           consumes (target >= 10)

    python benchmarks/stage_two.py --backbone resnet50 --image-size 224 --batch 8
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
from common import machine, today  # noqa: E402

from aevlp.losses import build_loss  # noqa: E402
from aevlp.models import build_model  # noqa: E402
from aevlp.schedules import gr_schedule  # noqa: E402

COCO = dict(q2=0.01, q3=1.0, lam1=0.7, lam2=0.5, rho=0.9, reg=0.001, expected_pos=2.9)


def step_time(backbone: str, size: int, batch: int, c: int, loss_name: str, steps: int) -> float:
    torch.manual_seed(0)
    model = build_model(backbone, c, weights="none")
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    loss = build_loss(loss_name, COCO)
    x = torch.randn(batch, 3, size, size)
    obs = torch.zeros(batch, c, dtype=torch.long)
    obs[:, 0] = 1
    full = (torch.rand(batch, c) < 0.1).long()
    pseudo = torch.randint(-1, 2, (batch, c))
    sched = gr_schedule(4, 8, [0, 10, -2, -8], [0.5, 2, 0.8, 0.5])
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        out = loss(model(x), obs, pseudo=pseudo, full=full, schedule=sched)
        opt.zero_grad()
        out.backward()
        opt.step()
        if i:  # the first step warms up
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def cache_read_rate(n: int, v: int, c: int, rounds: int) -> float:
    """Rows/s: read round r of /sims from an HDF5 file and run DAMP aggregate + select on it."""
    from aevlp.cache import Cache
    from aevlp.labeler import PseudoLabeler
    from aevlp.specs import DampSpec

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.h5"
        rng = np.random.default_rng(0)
        with h5py.File(path, "w") as f:
            f["sims"] = (rng.random((rounds, n, v, c), dtype=np.float32) * 0.4).astype(np.float16)
            f["bad"] = np.zeros(n, bool)
            f.attrs["fingerprint"] = json.dumps({})
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
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    gpr = step_time(args.backbone, args.image_size, args.batch, args.classes, "gpr", args.steps)
    bce = step_time(args.backbone, args.image_size, args.batch, args.classes, "bce-full", args.steps)
    consume = args.batch / gpr
    read = cache_read_rate(20000, 17, args.classes, 2)
    res = {"machine": machine(), "date": today(), "backbone": args.backbone, "image_size": args.image_size,
           "batch": args.batch, "classes": args.classes, "gpr_step_s": gpr, "bce_step_s": bce,
           "gpr_over_bce": gpr / bce,
           "cache_rows_per_s": read, "train_images_per_s": consume, "read_over_consume": read / consume}
    print(f"# stage two, {res['machine']}, {res['date']}, {args.backbone} {args.image_size}px batch {args.batch}, "
          f"C={args.classes}")
    print(f"GPR step {gpr * 1000:.1f} ms, BCE step {bce * 1000:.1f} ms: GPR/BCE = {gpr / bce:.3f} (target <= 1.10)")
    print(f"cache read + DAMP selection {read:,.0f} rows/s vs training {consume:.1f} images/s: "
          f"{read / consume:,.0f}x (target >= 10)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
