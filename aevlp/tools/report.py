"""`aevlp report`: one table and a few plots across run directories, whatever produced them."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from aevlp.errors import AevlpError
from aevlp.stage_two.run_folder import RunFolder

__all__ = ["finished", "collect_runs", "method_name", "teacher_rows", "compared_pair", "distinguishing_names",
           "write_report"]


def method_name(r: dict) -> str:
    """A readable row label: loss, where the pseudo-labels came from, and full labels if used."""
    name = r.get("loss", "?")
    if r.get("labels") == "full":
        return f"{name} (full labels)"
    if r.get("damp_source"):
        name += " + " + ("DAMP" if r["damp_source"] == "damp" else "global-only PL")
    return name


def distinguishing_names(dirs: list[Path]) -> list[str]:
    """The shortest path suffixes that tell the run directories apart (runs-a/gr vs runs-b/gr)."""
    parts = [Path(d).resolve().parts for d in dirs]
    for k in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-k:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(d) for d in dirs]


def finished(run_dirs: list[str | Path]) -> tuple[list[Path], list[str]]:
    """(run directories with results, a note for each folder passed over: unfinished or not a run)."""
    dirs, notes = [], []
    for d in map(Path, run_dirs):
        state = RunFolder(d).state()
        if state == "finished":
            dirs.append(d)
        elif state != "new":
            notes.append(f"{d}: not finished (no results.json; `aevlp train --resume {d}` finishes it): left out")
        else:
            notes.append(f"{d}: not a run directory (no results.json): left out")
    if not dirs:
        raise AevlpError("none of the folders given holds a finished run (results.json)",
                         hint="pass run directories of `aevlp train` or `aevlp run`, e.g. runs/*")
    return dirs, notes


def collect_runs(run_dirs: list[str | Path]) -> pd.DataFrame:
    """One row per finished run directory; `run` is the shortest path suffix that tells it from the others."""
    dirs = [Path(d) for d in run_dirs]
    rows = []
    for d, name in zip(dirs, distinguishing_names(dirs)):
        r = RunFolder(d).results() or {}
        m = r.get("test_metrics", {})
        rows.append({"run": name, "method": method_name(r), "dataset": r.get("dataset"),
                     "backbone": r.get("backbone"), "labels": r.get("labels"), "loss": r.get("loss"),
                     "damp_source": r.get("damp_source"), "val_map": r.get("val_map"), "test_map": r.get("test_map"),
                     "micro_map": m.get("micro_map"), "CF1": m.get("CF1"), "OF1": m.get("OF1"),
                     "pseudo_precision": r.get("pseudo_precision"), "pseudo_recall": r.get("pseudo_recall"),
                     "pseudo_f1": r.get("pseudo_f1"), "best_epoch": r.get("best_epoch"), "cache": r.get("cache"),
                     "dir": str(d)})
    return pd.DataFrame(rows)


def teacher_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The zero-shot teacher (the CLIP model's own test mAP) of each cache the runs were trained from."""
    from aevlp.cache import Cache

    rows = []
    caches = {Path(c).resolve(): c for c in df.get("cache", pd.Series(dtype=object)).dropna() if Path(c).exists()}
    for cache in caches.values():  # each cache once, however its runs spelled its path
        with Cache(cache) as c:
            summary = json.loads(c.f.attrs.get("summary", "{}"))
        for key, label in (("zero_shot_global_map", "zero-shot teacher (CLIP, global view)"),
                           ("zero_shot_damp_map", "zero-shot teacher (CLIP, DAMP)")):
            if key in summary:
                rows.append({"run": Path(cache).name, "method": label, "test_map": summary[key], "dir": ""})
    return pd.DataFrame(rows)


def _markdown(df: pd.DataFrame) -> str:
    cols = ["method", "dataset", "backbone", "test_map", "micro_map", "CF1", "OF1", "val_map", "pseudo_precision",
            "pseudo_recall", "pseudo_f1", "best_epoch", "run"]

    def fmt(v) -> str:
        if v is None or (isinstance(v, float) and v != v):
            return "—"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    def cell(row, c) -> str:
        v = row.get(c)
        return str(int(v)) if c == "best_epoch" and isinstance(v, float) and v == v else fmt(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(row, c) for c in cols) + " |" for _, row in df.iterrows()]
    return "\n".join(lines) + "\n"


def compared_pair(df: pd.DataFrame, pair: tuple[str, str] | None = None) -> tuple[pd.Series, pd.Series | None]:
    """(ours, baseline) for the per-class plot: the pair named (run names), or the best AEVLP run (GPR +
    DAMP; else the best single-positive run) against the best other single-positive run."""
    if pair:
        pick = [df[(df["run"] == p) | (df["dir"] == p)] for p in pair]
        missing = [p for p, rows in zip(pair, pick) if rows.empty]
        if missing:
            raise AevlpError(f"--compare: no run named {missing[0]}", hint=f"runs: {', '.join(df['run'])}")
        return pick[0].iloc[0], pick[1].iloc[0]
    sp = df[df["labels"] != "full"]
    sp = sp if len(sp) else df
    ours_pool = sp[(sp["loss"] == "gpr") & (sp["damp_source"] == "damp")]
    ours = (ours_pool if len(ours_pool) else sp).sort_values("test_map").iloc[-1]
    others = sp[sp["method"] != ours["method"]]  # another method, not a second run of the same one
    return ours, (others.sort_values("test_map").iloc[-1] if len(others) else None)


def _label(row: pd.Series) -> str:
    """A plot legend entry: the method and the run's distinguishing path part."""
    return f"{row['method']} [{row['run']}]"


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _plot_per_class_ap(df: pd.DataFrame, out: Path, pair: tuple[str, str] | None = None) -> str:
    """Per-class test AP of two runs side by side (see `compared_pair`)."""
    import matplotlib.pyplot as plt

    ours, base = compared_pair(df, pair)
    ap_ours = pd.read_csv(Path(ours["dir"]) / "per_class_ap.csv")
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(ap_ours)), 4))
    x = range(len(ap_ours))
    if base is not None:
        ap_base = pd.read_csv(Path(base["dir"]) / "per_class_ap.csv")
        ax.bar([i - 0.2 for i in x], ap_base["ap"], width=0.4, label=f"{_label(base)} ({base['test_map']:.1f})")
        ax.bar([i + 0.2 for i in x], ap_ours["ap"], width=0.4, label=f"{_label(ours)} ({ours['test_map']:.1f})")
        title = f"Per-class test AP: {ours['run']} vs {base['run']}"
    else:
        ax.bar(list(x), ap_ours["ap"], label=_label(ours))
        title = f"Per-class test AP: {ours['run']}"
    ax.set_xticks(list(x), ap_ours["class"], rotation=90)
    ax.set_ylabel("test AP (%)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    return _save(fig, out / "per_class_ap.png")


def _plot_pseudo_labels(df: pd.DataFrame, out: Path) -> str | None:
    """Pseudo-label precision and recall per class, one line per run that used pseudo-labels."""
    import matplotlib.pyplot as plt

    pl = [(_label(r), Path(r["dir"]) / "pseudo_per_class.csv") for _, r in df.iterrows()
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
        axes[0].plot([h["epoch"] for h in hist], [h["val_map"] for h in hist], marker="o", label=_label(r))
        axes[1].plot([h["epoch"] for h in hist], [h["loss"] for h in hist], marker="o", label=_label(r))
    axes[0].set(title="val mAP per epoch", xlabel="epoch", ylabel="mAP (%)")
    axes[1].set(title="training loss per epoch", xlabel="epoch")
    axes[0].legend()
    return _save(fig, out / "curves.png")


def write_report(run_dirs: list[str | Path], out: str | Path, compare: tuple[str, str] | None = None) -> dict:
    """results.md + results.csv + PNGs (per-class AP, pseudo-label P/R per class, curves) in `out`; the
    zero-shot teacher of the runs' cache(s) is a row of the table."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dirs, notes = finished(run_dirs)
    df = collect_runs(dirs)
    table = pd.concat([df, teacher_rows(df)], ignore_index=True)
    table.drop(columns=["dir"]).to_csv(out / "results.csv", index=False)
    (out / "results.md").write_text(_markdown(table))
    files = {"table": str(out / "results.md"), "csv": str(out / "results.csv"),
             "per_class_ap": _plot_per_class_ap(df, out, compare)}
    if (pseudo := _plot_pseudo_labels(df, out)) is not None:
        files["pseudo_labels"] = pseudo
    files["curves"] = _plot_curves(df, out)
    return {"table": table, "files": files, "markdown": _markdown(table), "notes": notes}
