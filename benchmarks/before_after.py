"""A change's cost on this machine, side by side in one run: `aevlp pseudolabel` images/s and one `aevlp train`
epoch's images/s, run from two source trees (a commit checked out with `git worktree add`, and this one),
alternating A B A B so the machine's drift falls on both.

Random-init ViT-B-32 (bf16 weights where the CPU has bf16, else fp32) on photo JPEGs at 500×375, grid 4,
R = 4, clip.workers 1, store_embeddings all; small-cnn at 64 px for one epoch (the CPU's training path).

    git worktree add /tmp/aevlp-before HEAD
    python benchmarks/before_after.py --before /tmp/aevlp-before --json benchmarks/results/before_after.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, make_jpeg_dataset, today  # noqa: E402

HERE = Path(__file__).resolve().parent.parent
STEP = """
import json, sys, time
from aevlp.config import load_config
from aevlp.stage_one.pseudolabel import run_pseudolabel
from aevlp.stage_two.train import run_train
root, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = load_config(None, ['dataset.name="voc"', f'dataset.data_root="{root}"', f'cache.path="{out}/c.h5"',
                         'clip.arch="ViT-B-32"', 'clip.pretrained=""', "views.grid=4", "views.rounds=4",
                         "clip.batch_size=16", "clip.workers=1", 'cache.store_embeddings="all"',
                         "dataset.val_frac=0.1", 'train.backbone="small-cnn"', 'train.weights="none"',
                         "train.image_size=64", "train.epochs=1", "train.batch_size=8", "train.workers=1",
                         'train.early_stop="none"'])
run_pseudolabel(cfg, limit=8, progress=False, force=True)
s1 = run_pseudolabel(cfg, limit=n, progress=False, force=True)["images_per_s"]
t = time.perf_counter()
run_train(cfg, run_dir=f"{out}/run", progress=False, echo=None, force=True, limit=n)
rec = json.loads(open(f"{out}/run/metrics.jsonl").read().splitlines()[0])
print(json.dumps({"stage_one_images_per_s": s1, "epoch_images_per_s": n / rec["seconds"]}))
"""


def once(tree: Path, root: Path, n: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        r = subprocess.run([sys.executable, "-c", STEP, str(root), out, str(n)], capture_output=True, text=True,
                           env=env, cwd=tree)
        if r.returncode:
            raise SystemExit(f"{tree}: {r.stderr[-2000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="the source tree before the change (a git worktree)")
    ap.add_argument("--after", default=str(HERE), help="the source tree after it [default: this one]")
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    trees = {"before": Path(args.before).resolve(), "after": Path(args.after).resolve()}
    runs: dict[str, list[dict]] = {k: [] for k in trees}
    with tempfile.TemporaryDirectory() as tmp:
        root = make_jpeg_dataset(Path(tmp) / "voc", args.images)
        for _ in range(args.repeats):
            for name, tree in trees.items():
                runs[name].append(once(tree, root, args.images))
                print(name, runs[name][-1], flush=True)
    best = {k: {m: max(r[m] for r in v) for m in v[0]} for k, v in runs.items()}
    ratio = {m: best["after"][m] / best["before"][m] for m in best["after"]}
    out = {"machine": machine(), "date": today(), "images": args.images, "runs": runs, "best": best, "ratio": ratio}
    for m, v in ratio.items():
        print(f"{m}: before {best['before'][m]:.2f}, after {best['after'][m]:.2f} = {v:.3f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
