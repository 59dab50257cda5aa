"""`aevlp report`: one table and a few plots across run directories, whatever produced them."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from aevlp.errors import AevlpError

__all__ = ["collect_runs", "method_name", "write_report"]


def method_name(r: dict) -> str:
    """A readable row label: loss, where the pseudo-labels came from, and full labels if used."""
    name = r.get("loss", "?")
    if r.get("labels") == "full":
        return f"{name} (full labels)"
    if r.get("damp_source"):
        name += " + " + ("DAMP" if r["damp_source"] == "damp" else "global-only PL")
    return name


def collect_runs(run_dirs: list[str | Path]) -> pd.DataFrame:
    rows = []
    for d in map(Path, run_dirs):
        f = d / "results.json"
        if not f.exists():
            raise AevlpError(f"{d} has no results.json", hint="pass finished `aevlp train` run directories")
        r = json.loads(f.read_text())
        rows.append({"run": d.name, "method": method_name(r), "dataset": r.get("dataset"),
                     "backbone": r.get("backbone"),
                     "val_map": r.get("val_map"), "test_map": r.get("test_map"),
                     "pseudo_precision": r.get("pseudo_precision"), "pseudo_recall": r.get("pseudo_recall"),
                     "pseudo_f1": r.get("pseudo_f1"), "best_epoch": r.get("best_epoch"), "dir": str(d)})
    return pd.DataFrame(rows)


def _markdown(df: pd.DataFrame) -> str:
    cols = ["method", "dataset", "backbone", "test_map", "val_map", "pseudo_precision", "pseudo_recall", "pseudo_f1",
            "best_epoch", "run"]
    def fmt(v) -> str:
        if v is None or (isinstance(v, float) and v != v):
            return "—"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(row[c]) for c in cols) + " |" for _, row in df.iterrows()]
    return "\n".join(lines) + "\n"


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _plot_per_class_ap(df: pd.DataFrame, out: Path) -> str:
    """Per-class test AP: the best run beside the weakest baseline."""
    import matplotlib.pyplot as plt

    best = df.loc[df["test_map"].idxmax()]
    others = df[(df["dir"] != best["dir"]) & ~df["method"].str.contains("full labels")]
    base = others.loc[others["test_map"].idxmin()] if len(others) else None
    ap_best = pd.read_csv(Path(best["dir"]) / "per_class_ap.csv")
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(ap_best)), 4))
    x = range(len(ap_best))
    if base is not None:
        ap_base = pd.read_csv(Path(base["dir"]) / "per_class_ap.csv")
        ax.bar([i - 0.2 for i in x], ap_base["ap"], width=0.4, label=f"{base['method']} ({base['test_map']:.1f})")
        ax.bar([i + 0.2 for i in x], ap_best["ap"], width=0.4, label=f"{best['method']} ({best['test_map']:.1f})")
    else:
        ax.bar(list(x), ap_best["ap"], label=best["method"])
    ax.set_xticks(list(x), ap_best["class"], rotation=90)
    ax.set_ylabel("test AP (%)")
    ax.set_title("Per-class AP: best run vs weakest baseline")
    ax.legend()
    return _save(fig, out / "per_class_ap.png")


def _plot_pseudo_labels(df: pd.DataFrame, out: Path) -> str | None:
    """Pseudo-label precision and recall per class, one line per run that used pseudo-labels."""
    import matplotlib.pyplot as plt

    pl = [(r["method"], Path(r["dir"]) / "pseudo_per_class.csv") for _, r in df.iterrows()
          if (Path(r["dir"]) / "pseudo_per_class.csv").exists()]
    if not pl:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for method, f in pl:
        t = pd.read_csv(f)
        for ax, col in zip(axes, ("precision", "recall")):
            ax.plot(t["class"], t[col], marker="o", label=method)
    for ax, col in zip(axes, ("precision", "recall")):
        ax.set_title(f"pseudo-label {col} per class (%)")
        ax.tick_params(axis="x", rotation=90)
    axes[0].legend()
    return _save(fig, out / "pseudo_labels.png")


def _plot_curves(df: pd.DataFrame, out: Path) -> str:
    """Val mAP and training loss per epoch for every run."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for _, r in df.iterrows():
        hist = [json.loads(line) for line in (Path(r["dir"]) / "metrics.jsonl").read_text().splitlines()]
        axes[0].plot([h["epoch"] for h in hist], [h["val_map"] for h in hist], marker="o", label=r["method"])
        axes[1].plot([h["epoch"] for h in hist], [h["loss"] for h in hist], marker="o", label=r["method"])
    axes[0].set(title="val mAP per epoch", xlabel="epoch", ylabel="mAP (%)")
    axes[1].set(title="training loss per epoch", xlabel="epoch")
    axes[0].legend()
    return _save(fig, out / "curves.png")


def write_report(run_dirs: list[str | Path], out: str | Path) -> dict:
    """results.md + results.csv + PNGs (per-class AP, pseudo-label P/R per class, curves) in `out`."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = collect_runs(run_dirs)
    df.to_csv(out / "results.csv", index=False)
    (out / "results.md").write_text(_markdown(df))
    files = {"table": str(out / "results.md"), "csv": str(out / "results.csv"),
             "per_class_ap": _plot_per_class_ap(df, out)}
    if (pseudo := _plot_pseudo_labels(df, out)) is not None:
        files["pseudo_labels"] = pseudo
    files["curves"] = _plot_curves(df, out)
    return {"table": df, "files": files, "markdown": _markdown(df)}
