"""`aevlp demo`: the whole pipeline on a toy world, offline, on a CPU, in minutes.

prepare fashion-mosaic → pretrain the toy CLIP → stage one → stage two for five methods → report.
Every step reuses its output when still valid, so a second run takes seconds.
"""
from __future__ import annotations

import json
from pathlib import Path

from aevlp.config import load_config
from aevlp.data.fashion import CLASSNAMES, load_fashion_mnist, prepare_fashion_mosaic
from aevlp.report import write_report
from aevlp.run import run_pipeline
from aevlp.toyclip import pretrain_toy_clip

__all__ = ["METHODS", "SIZES", "run_demo"]

# name -> overrides: the rows of the paper's comparison that the toy world can show
METHODS = {
    "an": ['loss.name="an"'],
    "gr": ['loss.name="gr"'],
    "gpr-global": ['loss.name="gpr"', 'damp.source="global"'],
    "gpr-damp": ['loss.name="gpr"', 'damp.source="damp"'],
    "full-labels": ['loss.name="bce-full"', 'train.labels="full"'],
}
SIZES = {"full": {"n_train": 8000, "n_test": 2000, "clip_steps": 1500, "epochs": 25},
         "quick": {"n_train": 2500, "n_test": 800, "clip_steps": 600, "epochs": 25}}


def run_demo(out: str | Path = "demo", *, quick: bool = False, raw: str | None = None, seed: int = 0,
             progress: bool = True, echo=print) -> dict:
    out = Path(out)
    size = SIZES["quick" if quick else "full"]
    tag = "quick" if quick else "full"
    echo(f"[1/5] data: fashion-mosaic ({size['n_train']} train / {size['n_test']} test mosaics)")
    data_root = out / f"data-{tag}"
    d = prepare_fashion_mosaic(data_root, raw=raw, n_train=size["n_train"], n_test=size["n_test"], seed=seed,
                               download_to=out / "fashion-mnist")
    echo(f"      {d['status']}: {data_root}")
    echo(f"[2/5] toy CLIP: contrastive pretraining on single Fashion-MNIST items ({size['clip_steps']} steps)")
    clip = pretrain_toy_clip(lambda: load_fashion_mnist(raw, out / "fashion-mnist"), out / f"clip-{tag}", CLASSNAMES,
                             steps=size["clip_steps"], seed=seed, progress=progress)
    echo(f"      {clip['status']}: zero-shot accuracy on single test items {clip['zero_shot_accuracy']:.1f}%")
    base = [f'dataset.data_root="{data_root}"', f'clip.pretrained="{clip["folder"]}"',
            f'cache.path="{out / "cache" / f"fashion-mosaic-{tag}.h5"}"',
            f'train.out="{out / f"runs-{tag}"}"', f"train.epochs={size['epochs']}", f"train.seed={seed}"]
    results = {}
    for i, (name, overrides) in enumerate(METHODS.items()):
        step = "[3/5] stage one + [4/5] stage two" if i == 0 else "      stage two"
        echo(f"{step}: {name}")
        cfg = load_config("demo", base + overrides)
        results[name] = run_pipeline(cfg, name, progress=progress, echo=lambda s: echo("      " + s))
    echo("[5/5] report")
    rep = write_report([r["run_dir"] for r in results.values()], out / f"report-{tag}")
    summary = {"clip_zero_shot_accuracy": clip["zero_shot_accuracy"],
               "methods": {k: {m: r.get(m) for m in ("test_map", "val_map", "pseudo_precision", "pseudo_recall",
                                                      "pseudo_f1")} for k, r in results.items()},
               "report": rep["files"]}
    (out / f"report-{tag}" / "demo.json").write_text(json.dumps(summary, indent=1))
    echo("")
    echo(rep["markdown"])
    for kind, path in rep["files"].items():
        echo(f"{kind:14s} {path}")
    return summary
