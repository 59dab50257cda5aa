"""Single-tag data as users have it, against the same world with full labels (docs/training.md, "Your own
single-tag data"): the demo world and the weak-teacher world (DAMP's tiles on a 3×3 grid cut through the
mosaic's items), each in full-label and observed-only form, over seeds, side by side.

The observed-only form is what `aevlp data prepare table --observed-only` makes of a CSV holding, per training
image, its one observed tag (the same tag the full-label form observes), the test rows fully labelled, no val
split: the same 20 % of the training rows are held out again, with their tag only. Every observed-only run
keeps each epoch's val and test predictions (`train.save_scores`), so model selection can be measured against
the held-out rows' full labels, which this script holds aside (never the test split).

Needs `aevlp demo --seeds 3` first (its data, CLIP, backbone, cache and full-label runs; GR reads no
pseudo-labels, so its runs serve both worlds).

    python benchmarks/observed_only.py --demo demo --seeds 0,1,2 --json benchmarks/results/observed_only.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, today  # noqa: E402

from aevlp.metrics import mean_average_precision  # noqa: E402
from aevlp.stage_two.model_selection import observed_auc  # noqa: E402
from aevlp.tools.bench import run_bench  # noqa: E402

METHODS = ["an", "gr", "gpr-damp", "gpr-ts"]
WEAK = ["views.grid=3"]


def worlds(demo: Path) -> dict[str, dict]:
    """Each world's full-label and observed-only pipeline, cache and bench folder."""
    from aevlp.data import load_dataset
    from aevlp.data.table import observed_only_copy
    from aevlp.tools.demo import SIZES, _paths, _pipeline

    p = _paths(demo)
    observed_only_copy(load_dataset("fashion-mosaic", p["data"]), p["observed"] / "data")
    obs = _pipeline(p, SIZES["full"], observed=True)
    cache = p["cache"].parent
    return {
        "demo": {"full": (demo / "demo.toml", [], demo), "observed": (obs, [], p["observed"])},
        "weak": {"full": (demo / "demo.toml", [*WEAK, f'cache.path="{cache / "fashion-mosaic-g3.h5"}"'],
                          demo / "bench-weak"),
                 "observed": (obs, [*WEAK, f'cache.path="{cache / "fashion-mosaic-observed-g3.h5"}"'],
                              demo / "observed-only-weak")}}


def run_all(demo: Path, seeds: list[int]) -> dict[str, pd.DataFrame]:
    out = {}
    for world, forms in worlds(demo).items():
        for form, (pipeline, base, folder) in forms.items():
            methods = [m for m in METHODS if not (form == "full" and world == "weak" and m in ("an", "gr"))]
            extra = ["train.save_scores=true"] if form == "observed" else []
            print(f"== {world} world, {form} labels: {', '.join(methods)}", flush=True)
            out[f"{world}/{form}"] = run_bench(pipeline, methods, seeds, out=folder, base=[*base, *extra],
                                               progress=False, echo=lambda s: print("  " + s, flush=True))
    return out


def held_aside(demo: Path):
    """The held-out rows' full labels by image id (the full-label form's val split) and the training rows'."""
    from aevlp.data import load_dataset

    d = load_dataset("fashion-mosaic", demo / "data")
    return d, {img: lab for img, lab in zip(d.val.images, d.val.labels)}


def data_root(run: Path) -> str:
    from aevlp.config import recorded_config

    return recorded_config(run / "config.toml")["dataset"]["data_root"]


def selection_study(run: Path, truth_by_id: dict, classnames: list[str]) -> dict:
    """Per criterion: the epoch it picks and that epoch's true val mAP (full labels held aside), against the best."""
    from aevlp.data import load_dataset

    hist = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    d = load_dataset("table", data_root(run))
    order = [d.classnames.index(c) for c in classnames]
    truth = np.stack([truth_by_id[i] for i in d.val.images])
    true_val, auc = [], []
    for h in hist:
        val = np.load(run / "scores" / f"epoch-{h['epoch']}.npz")["val"].astype(np.float32)[:, order]
        true_val.append(mean_average_precision(val, truth))
        auc.append(observed_auc(val, d.val.observed[:, order]))
    true_val = np.array(true_val)
    picks = {"observed": int(np.argmax([h["val_map"] for h in hist])), "observed-auc": int(np.argmax(auc)),
             "last": len(hist) - 1}
    if all("val_map_pseudo" in h for h in hist):
        picks["observed+pseudo"] = int(np.argmax([h["val_map_pseudo"] for h in hist]))
    best = float(true_val.max())
    return {"run": str(run), "best_true_val": best, "best_epoch": int(np.argmax(true_val)) + 1,
            "picks": {k: {"epoch": v + 1, "true_val": float(true_val[v]), "below_best": best - float(true_val[v])}
                      for k, v in picks.items()}}


def expected_study(run: Path, truth: np.ndarray, observed: np.ndarray) -> dict:
    """The run's E and hidden positives per class (its class_thresholds.csv) against the truth."""
    res = json.loads((run / "results.json").read_text())
    out = {"E": res.get("expected_pos", {}).get("value"), "E_source": res.get("expected_pos", {}).get("source"),
           "true_E": float(truth.sum(1).mean())}
    out["E_error_pct"] = 100 * (out["E"] - out["true_E"]) / out["true_E"] if out["E"] else None
    table = run / "class_thresholds.csv"
    if table.exists():
        t = pd.read_csv(table)
        unk = (observed == 0).sum(0)
        true_rate = ((truth == 1) & (observed == 0)).sum(0) / unk
        out["rate_mae_points"] = float(100 * np.mean(np.abs(t["hidden"].to_numpy() / unk - true_rate)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", default="demo")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    demo, seeds = Path(args.demo), [int(s) for s in args.seeds.split(",")]
    t0 = time.time()
    runs = run_all(demo, seeds)
    full, val_truth = held_aside(demo)
    out = {"machine": machine(), "date": today(), "seeds": seeds, "tables": {}, "selection": [], "expected": []}
    for key, df in runs.items():
        out["tables"][key] = json.loads(df.drop(columns=["cache"]).to_json(orient="records"))
    names = full.classnames
    train_truth = {img: lab for img, lab in zip(full.train.images, full.train.labels)}
    for key in ("demo/observed", "weak/observed"):
        for _, row in runs[key].iterrows():
            run = Path(row["run_dir"])
            study = selection_study(run, val_truth, names)
            out["selection"].append({"world": key, "method": row["method"], "seed": row["seed"], **study})
            if row["method"] == "gpr-ts":
                from aevlp.data import load_dataset

                d = load_dataset("table", data_root(run))
                order = [d.classnames.index(c) for c in names]
                truth = np.stack([train_truth[i] for i in d.train.images])
                out["expected"].append({"world": key, "seed": row["seed"],
                                        **expected_study(run, truth, d.train.observed[:, order])})
    out["seconds"] = round(time.time() - t0, 1)
    report(out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))


def report(out: dict) -> None:
    print("\ntest mAP per seed (full labels | observed-only)")
    for world in ("demo", "weak"):
        full = pd.DataFrame(out["tables"][f"{world}/full"])
        obs = pd.DataFrame(out["tables"][f"{world}/observed"])
        for m in METHODS:
            f = full[full["method"] == m]["test_map"].round(2).tolist()
            o = obs[obs["method"] == m]["test_map"].round(2).tolist()
            print(f"  {world:5s} {m:9s} full {f}  observed-only {o}")
    sel = pd.DataFrame([{"criterion": k, "below": v["below_best"]} for s in out["selection"]
                        for k, v in s["picks"].items()])
    print("\nmodel selection on observed-only data (true val mAP of the picked epoch vs the best epoch's)")
    for crit, g in sel.groupby("criterion"):
        print(f"  {crit:16s} runs {len(g):3d}  >= 1 point below the best: {int((g['below'] >= 1).sum()):3d}  "
              f"mean shortfall {g['below'].mean():.2f}")
    for e in out["expected"]:
        print(f"  {e['world']} seed {e['seed']}: E {e['E']:.3f} ({e['E_source']}) vs {e['true_E']:.3f} "
              f"({e['E_error_pct']:+.1f} %), per-class rate MAE {e.get('rate_mae_points', float('nan')):.2f} points")


if __name__ == "__main__":
    main()
