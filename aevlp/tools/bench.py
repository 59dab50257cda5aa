"""`aevlp bench`: several methods × seeds on one pipeline's cache, one comparison table (mean ± sd).

Each (method, seed) is an ordinary `aevlp run` of the pipeline with the method's overrides and
`train.seed`, into OUT/runs/METHOD-sSEED, so it is reused when current and can be reported on its
own. The table adds the zero-shot teacher (the CLIP model's own test mAP) from the cache.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from aevlp.config import load_config
from aevlp.errors import ConfigError
from aevlp.registry import did_you_mean
from aevlp.tools.run import run_pipeline

__all__ = ["PRESETS", "method_overrides", "run_bench", "summarise", "write_bench"]

# Method names beyond the registered losses: the rows of the paper's comparisons that need more than --loss,
# and the methods aevlp adds (docs/method.md, "Beyond AEVLP"). Each sets what it is whatever the pipeline's
# defaults (pipelines/table.toml makes plain GPR into GPR-TS).
_AEVLP = ['damp.class_thresholds=""', 'damp.student_loss=""']  # one θ, no student: AEVLP as published
PRESETS: dict[str, tuple[str, list[str]]] = {
    "gpr-damp": ("GPR + DAMP pseudo-labels (AEVLP)", ['loss.name="gpr"', 'damp.source="damp"', *_AEVLP]),
    "gpr-global": ("GPR + global-view pseudo-labels", ['loss.name="gpr"', 'damp.source="global"', *_AEVLP]),
    "full-labels": ("full labels (upper bound)", ['loss.name="bce-full"', 'train.labels="full"']),
    "gpr-rate": ("GPR + DAMP, per-class θ from the observed positives", [
        'loss.name="gpr"', 'damp.source="damp"', 'damp.class_thresholds="rate"', 'damp.student_loss=""']),
    "gpr-ts": ("GPR-TS: GPR + DAMP fused with a GR student, per-class θ", [
        'loss.name="gpr"', 'damp.source="damp"', 'damp.student_loss="gr"', 'damp.class_thresholds="rate"']),
    "gpr-ts-em": ("GPR-TS with an EM student", [
        'loss.name="gpr"', 'damp.source="damp"', 'damp.student_loss="em"', 'damp.class_thresholds="rate"']),
    "gpr-ts-best": ("GPR-TS-best: the best on val of three students (GR, EM, GPR-soft) and their fusion with DAMP", [
        'loss.name="gpr"', 'damp.source="damp"', 'damp.student_loss="best"', 'damp.class_thresholds="rate"']),
    "gpr-ts-soft": ("GPR-TS-soft: GPR-soft from DAMP fused with the best of three students; the better kept", [
        'loss.name="gpr-soft"', 'damp.source="damp"', 'damp.student_loss="best"', 'damp.class_thresholds="rate"']),
}
RESULT_KEYS = ("test_map", "val_map", "pseudo_precision", "pseudo_recall", "pseudo_f1", "best_epoch", "epochs_run")


def method_overrides(method: str, presets: dict | None = None) -> tuple[str, list[str]]:
    """(label, overrides) of a method: a preset, or any registered loss (`--loss NAME`)."""
    from aevlp.losses import LOSSES

    presets = {**PRESETS, **(presets or {})}
    if method in presets:
        return presets[method]
    if method in LOSSES:
        return LOSSES.get(method).source or method, [f'loss.name="{LOSSES.canonical(method)}"']
    raise ConfigError(f"unknown method '{method}'{did_you_mean(method, [*presets, *LOSSES.names()])}",
                      hint=f"a loss ({', '.join(LOSSES.names())}) or a preset ({', '.join(presets)})")


def run_bench(pipeline: str | Path, methods: Sequence[str], seeds: Sequence[int], *, out: str | Path,
              base: Sequence[str] = (), presets: dict | None = None, progress: bool = True,
              echo: Callable[[str], None] = print) -> pd.DataFrame:
    """Train every method with every seed (reusing current runs); returns one row per run."""
    out = Path(out)
    rows = []
    for seed in seeds:
        for method in methods:
            label, overrides = method_overrides(method, presets)
            cfg = load_config(pipeline, [*base, *overrides, f"train.seed={seed}", f'train.out="{out / "runs"}"'])
            echo(f"{method} (seed {seed})")
            r = run_pipeline(cfg, f"{method}-s{seed}", progress=progress, echo=lambda s: echo("  " + s),
                             epoch_lines=False)
            rows.append({"method": method, "label": label, "seed": seed, **{k: r.get(k) for k in RESULT_KEYS},
                         "cache": r.get("cache"), "run_dir": r.get("run_dir")})
    return pd.DataFrame(rows)


def _teacher_rows(runs: pd.DataFrame) -> list[dict]:
    from aevlp.cache import Cache

    caches = [c for c in runs["cache"].dropna().unique() if Path(c).exists()]
    if not caches:
        return []
    with Cache(caches[0]) as c:
        summary = json.loads(c.f.attrs.get("summary", "{}"))
    names = {"zero_shot_global_map": "zero-shot teacher: CLIP, global view",
             "zero_shot_damp_map": "zero-shot teacher: CLIP, DAMP (global + tiles)"}
    return [{"method": k.removesuffix("_map").replace("_", "-"), "label": lab, "n": 1, "test_map_mean": summary[k],
             "test_map_sd": 0.0} for k, lab in names.items() if k in summary]


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation (ddof 1; 0 for one seed) per method, in the order first run."""
    order = list(dict.fromkeys(runs["method"]))
    rows = []
    for m in order:
        g = runs[runs["method"] == m]
        row = {"method": m, "label": g["label"].iloc[0], "n": len(g)}
        for k in ("test_map", "val_map", "pseudo_f1"):
            vals = pd.to_numeric(g[k], errors="coerce").dropna().to_numpy()
            row[f"{k}_mean"] = float(vals.mean()) if len(vals) else np.nan
            row[f"{k}_sd"] = float(vals.std(ddof=1)) if len(vals) > 1 else (0.0 if len(vals) else np.nan)
        rows.append(row)
    return pd.DataFrame(rows + _teacher_rows(runs))


def _markdown(table: pd.DataFrame) -> str:
    def cell(mean, sd, n) -> str:
        if mean is None or mean != mean:
            return "—"
        return f"{mean:.2f} ± {sd:.2f}" if n > 1 else f"{mean:.2f}"
    lines = ["| method | test mAP | val mAP | pseudo-label F1 | seeds |", "|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['label']} | {cell(r['test_map_mean'], r['test_map_sd'], r['n'])} | "
                     f"{cell(r.get('val_map_mean'), r.get('val_map_sd'), r['n'])} | "
                     f"{cell(r.get('pseudo_f1_mean'), r.get('pseudo_f1_sd'), r['n'])} | {r['n']} |")
    return "\n".join(lines) + "\n"


def write_bench(runs: pd.DataFrame, out: str | Path, title: str = "") -> dict:
    """bench_runs.csv (every run), bench.csv + bench.md (mean ± sd), bench.png (bars with sd)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = summarise(runs)
    runs.to_csv(out / "bench_runs.csv", index=False)
    table.to_csv(out / "bench.csv", index=False)
    md = _markdown(table)
    (out / "bench.md").write_text(md)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(table)), 4))
    ax.bar(range(len(table)), table["test_map_mean"], yerr=table["test_map_sd"].fillna(0), capsize=4,
           color=["tab:green" if m == "gpr-damp" else "tab:gray" if m.startswith("zero-shot") else "tab:blue"
                  for m in table["method"]])
    ax.set_xticks(range(len(table)), table["label"], rotation=30, ha="right", fontsize=8)
    lo = np.nanmin(table["test_map_mean"] - table["test_map_sd"].fillna(0))
    ax.set_ylim(max(0, lo - 5), min(100, np.nanmax(table["test_map_mean"] + table["test_map_sd"].fillna(0)) + 3))
    ax.set_ylabel("test mAP (%)")
    ax.set_title(title or f"mean ± sd over {int(runs['seed'].nunique())} seed(s)")
    fig.tight_layout()
    fig.savefig(out / "bench.png", dpi=110)
    plt.close(fig)
    return {"table": table, "markdown": md, "files": {"table": str(out / "bench.md"), "csv": str(out / "bench.csv"),
                                                      "runs": str(out / "bench_runs.csv"),
                                                      "plot": str(out / "bench.png")}}
