"""What checking a cache on every open costs (docs/trust.md), at VOC and NUS-WIDE sizes.

Every open (`train`, `eval`, `run`, `pseudolabel`'s up-to-date check) reads every dataset but the stored
image embeddings, checks shapes, ranges and finiteness, and compares each with the SHA-256 written when
the cache was finished; `aevlp cache verify` also reads the embeddings. This builds a cache-shaped file
of the benchmark's size (random values; grid 4, R = 4) and times both, with the file in the page cache
(a first read from disk adds the disk's time for the bytes listed).

    python benchmarks/trust.py                 # VOC (5,717 x 20) and NUS-WIDE (150,000 x 81)
    python benchmarks/trust.py --sizes voc     # VOC only
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, today  # noqa: E402

from aevlp.cache.schema import SCHEMA_VERSION, STR  # noqa: E402
from aevlp.cache.validate import checksums, problems, sealed_names  # noqa: E402

SIZES = {"voc": (5717, 20), "nus": (150000, 81)}  # training images, classes (Cole et al.'s splits)


def make_cache(path: Path, n: int, c: int, rounds: int = 4, views: int = 17, dim: int = 512) -> int:
    """A complete cache-shaped file with global embeddings (as the DAMP teacher stores them); its size in bytes."""
    rs = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for r in range(rounds):  # written a round at a time: NUS's similarities are 1.6 GB
            ds = f.require_dataset("sims", (rounds, n, views, c), np.float16)
            ds[r] = rs.uniform(-0.3, 0.4, (n, views, c)).astype(np.float16)
        f["scores"] = rs.uniform(0, 1, (rounds, n, c)).astype(np.float16)
        f["pseudo"] = rs.integers(-1, 2, (rounds, n, c)).astype(np.int8)
        f["observed"] = np.eye(c, dtype=np.int8)[rs.integers(0, c, n)]
        f["labels"] = f["observed"][()]
        f["done"], f["bad"] = np.ones(n, bool), np.zeros(n, bool)
        f.create_dataset("image_ids", data=np.array([f"{i:06d}.jpg" for i in range(n)], dtype=object), dtype=STR)
        f.create_dataset("classnames", data=np.array([f"class{i}" for i in range(c)], dtype=object), dtype=STR)
        f["text_features"] = rs.normal(size=(c, dim)).astype(np.float32)
        f["relation"] = np.eye(c, dtype=np.float32)
        f["embeddings"] = rs.normal(size=(rounds, n, dim)).astype(np.float16)
        f.attrs["fingerprint"] = json.dumps({"schema_version": SCHEMA_VERSION, "rounds": rounds, "grid": 4,
                                             "num_images": n, "num_classes": c, "store_embeddings": "global"})
        f.attrs["schema_version"], f.attrs["complete"] = SCHEMA_VERSION, True
        f.attrs["checksums"] = json.dumps(checksums(f, sealed_names(f)))
    return path.stat().st_size


def timed(path: Path, thorough: bool) -> float:
    with h5py.File(path, "r") as f:
        problems(f, thorough=thorough)  # into the page cache
        t = time.perf_counter()
        found = problems(f, thorough=thorough)
        sec = time.perf_counter() - t
    assert not found, found
    return sec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="voc,nus")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    res = {"machine": machine(), "date": today(), "rows": []}
    print(f"# checking a cache on open, {res['machine']}, {res['date']}")
    print(f"{'size':5s} {'images':>7s} {'classes':>7s} {'file MB':>8s} {'read on open MB':>15s} {'on open s':>9s} "
          f"{'verify s':>8s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sizes.split(","):
            n, c = SIZES[name]
            path = Path(tmp) / f"{name}.h5"
            size = make_cache(path, n, c)
            with h5py.File(path) as f:
                opened = sum(f[k].nbytes for k in f if k != "embeddings")
            row = {"size": name, "images": n, "classes": c, "file_mb": size / 2 ** 20, "open_mb": opened / 2 ** 20,
                   "open_s": timed(path, False), "verify_s": timed(path, True)}
            res["rows"].append(row)
            print(f"{name:5s} {n:7d} {c:7d} {row['file_mb']:8.0f} {row['open_mb']:15.0f} {row['open_s']:9.2f} "
                  f"{row['verify_s']:8.2f}", flush=True)
            path.unlink()
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
