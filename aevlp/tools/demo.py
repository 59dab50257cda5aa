"""`aevlp demo`: the whole pipeline on a toy world, offline, on a CPU, in minutes.

fashion-mosaic → the toy CLIP (pretrained on single items) → a small-cnn backbone pretrained on
single items (the toy world's ImageNet) → stage one → stage two end to end for AN, GR, GPR with
global-only and with DAMP pseudo-labels, and full labels, over seeds → one table (mean ± sd) with
the zero-shot teacher and a linear probe on CLIP features beside them. Every step reuses its output
when still valid, so a second run takes seconds.
"""
from __future__ import annotations

import functools
import json
import time
from pathlib import Path

from aevlp.config import load_config
from aevlp.data.fashion import CLASSNAMES, load_fashion_mnist, prepare_fashion_mosaic
from aevlp.tools.bench import run_bench, write_bench
from aevlp.tools.review import write_review
from aevlp.tools.toybackbone import pretrain_small_cnn
from aevlp.tools.toyclip import pretrain_toy_clip

__all__ = ["METHODS", "OBSERVED_METHODS", "PROBES", "SIZES", "run_demo"]

# end to end, small-cnn from the toy backbone: the paper's comparison, then what aevlp adds (docs/method.md)
METHODS = ["an", "gr", "gpr-global", "gpr-damp", "gpr-rate", "gpr-ts-best", "full-labels"]
# the same world reduced to what a user has: one tag per training image, no labelled val split
OBSERVED_METHODS = ["an", "gr", "gpr-damp", "gpr-ts-best"]
_PROBE = ['train.backbone="clip-head"', 'train.weights="none"', "train.epochs=25", "train.batch_size=16",
          "train.lr=1e-3"]
PROBES = {"probe-an": ("linear probe on CLIP features: AN", ['loss.name="an"', *_PROBE]),
          "probe-gpr-damp": ("linear probe on CLIP features: GPR + DAMP", ['loss.name="gpr"', *_PROBE])}
SIZES = {"full": {"n_train": 2500, "n_test": 800, "clip_steps": 600, "backbone_steps": 300, "epochs": 8},
         "quick": {"n_train": 1250, "n_test": 400, "clip_steps": 300, "backbone_steps": 150, "epochs": 6}}


def _paths(out: Path) -> dict[str, Path]:
    return {"data": out / "data", "clip": out / "clip", "backbone": out / "backbone", "cache": out / "cache" /
            "fashion-mosaic.h5", "bench": out, "runs": out / "runs", "report": out / "report",
            "review": out / "review", "raw": out / "fashion-mnist", "observed": out / "observed-only"}


def _pipeline(p: dict[str, Path], size: dict, observed: bool = False) -> Path:
    """OUT/demo.toml: pipelines/demo.toml with this demo's paths (absolute) and size. Every run of the
    demo reads it, its cache records it, and so `aevlp train --pseudo`/`aevlp run` on it need no flag.
    `observed`: OUT/observed-only/demo.toml, the same world as a user's single-tag data (`table`, E unknown)."""
    from aevlp.config import dump_config, find_pipeline, tomllib, updated

    changes = {"dataset": {"data_root": str(p["data"].resolve())}, "clip": {"pretrained": str(p["clip"].resolve())},
               "cache": {"path": str(p["cache"].resolve())},
               "train": {"weights": str((p["backbone"] / "small-cnn.safetensors").resolve()), "epochs": size["epochs"],
                         "out": str(p["runs"].resolve())}}
    path, what = p["bench"] / "demo.toml", "pipelines/demo.toml with this folder's paths"
    if observed:
        o = p["observed"]
        changes["dataset"].update(name="table", data_root=str((o / "data").resolve()))
        changes["cache"]["path"] = str((p["cache"].parent / "fashion-mosaic-observed.h5").resolve())
        changes["loss"] = {"expected_pos": 0.0}  # unknown: one tag per image is all a user has
        changes["train"]["out"] = str((o / "runs").resolve())
        path, what = o / "demo.toml", what + ", on the observed-only copy of its data (E unknown)"
    cfg = updated(tomllib.loads(find_pipeline("demo").read_text()), changes)
    text = (f"# The demo's pipeline as `aevlp demo` ran it ({what}).\n"
            f"# aevlp run {path}     # stage one reused; trains GPR + DAMP into "
            f"{Path(changes['train']['out']) / 'demo'}\n\n"
            + dump_config(cfg))
    if not path.exists() or path.read_text() != text:  # rewritten only when it changes: runs stay current
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return path


def _world(p: dict[str, Path], size: dict, raw: str | None, seed: int, progress: bool, echo) -> dict:
    """Steps 1-3: the data, the toy CLIP and the toy backbone (each reused when still valid)."""
    echo(f"[1/5] data: fashion-mosaic ({size['n_train']} train / {size['n_test']} test mosaics)")
    d = prepare_fashion_mosaic(p["data"], raw=raw, n_train=size["n_train"], n_test=size["n_test"], seed=seed,
                               download_to=p["raw"])
    echo(f"      {d['status']}: {p['data']}")
    @functools.cache
    def fm() -> dict:  # read once, and only if a model has to be trained
        return load_fashion_mnist(raw, p["raw"])

    echo(f"[2/5] toy CLIP: contrastive pretraining on single Fashion-MNIST items ({size['clip_steps']} steps)")
    clip = pretrain_toy_clip(fm, p["clip"], CLASSNAMES, steps=size["clip_steps"], seed=seed, progress=progress)
    echo(f"      {clip['status']}: zero-shot accuracy on single test items {clip['zero_shot_accuracy']:.1f}%")
    echo(f"      backbone: small-cnn classifying single items ({size['backbone_steps']} steps; the toy ImageNet)")
    bb = pretrain_small_cnn(fm, p["backbone"], steps=size["backbone_steps"], seed=seed, progress=progress)
    echo(f"      {bb['status']}: accuracy on single test items {bb['item_accuracy']:.1f}%")
    return {"clip": clip, "backbone": bb}


def _observed_only(p: dict[str, Path], size: dict, seeds: list[int], progress: bool, echo):
    """The world reduced to one tag per training image (`aevlp data prepare table --observed-only` on the same
    images), then OBSERVED_METHODS on it: what aevlp does with the data users have."""
    from aevlp.data import load_dataset
    from aevlp.data.table import observed_only_copy

    copy = observed_only_copy(load_dataset("fashion-mosaic", p["data"]), p["observed"] / "data")
    echo(f"      {copy['status']}: {p['observed'] / 'data'} ({copy['csv']})")
    return run_bench(_pipeline(p, size, observed=True), OBSERVED_METHODS, seeds, out=p["observed"],
                     progress=progress, echo=lambda s: echo("      " + s))


def run_demo(out: str | Path = "demo", *, quick: bool = False, seeds: int = 1, raw: str | None = None,
             seed: int = 0, progress: bool = True, echo=print) -> dict:
    """Run (or reuse) the demo into `out` (`out/quick` for --quick); returns the summary it also writes."""
    t0 = time.time()
    out = Path(out) / "quick" if quick else Path(out)
    size, p = SIZES["quick" if quick else "full"], _paths(out)
    world = _world(p, size, raw, seed, progress, echo)
    pipeline = _pipeline(p, size)
    train_seeds = list(range(seed, seed + max(1, seeds)))
    echo(f"[3/5] stage one + [4/5] stage two: {len(METHODS)} methods end to end and 2 linear probes, "
         f"seed(s) {', '.join(map(str, train_seeds))}")
    runs = run_bench(pipeline, [*METHODS, *PROBES], train_seeds, out=p["bench"], presets=PROBES,
                     progress=progress, echo=lambda s: echo("      " + s))
    echo("      the same world with one tag per training image (observed-only; no labelled val split): "
         f"{', '.join(OBSERVED_METHODS)}")
    obs_runs = _observed_only(p, size, train_seeds, progress, echo)
    echo("[5/5] report")
    rep = write_bench(runs, p["report"], title=f"fashion-mosaic, small-cnn end to end; mean ± sd over "
                                               f"{len(train_seeds)} seed(s)")
    obs_rep = write_bench(obs_runs, p["report"] / "observed-only",
                          title=f"the same world, observed-only data (one tag per image); {len(train_seeds)} seed(s)")
    summary = {"clip_zero_shot_accuracy": world["clip"]["zero_shot_accuracy"],
               "backbone_item_accuracy": world["backbone"]["item_accuracy"], "seeds": train_seeds,
               "table": json.loads(rep["table"].to_json(orient="records")),
               "runs": json.loads(runs.drop(columns=["cache"]).to_json(orient="records")),
               "observed_only": {"table": json.loads(obs_rep["table"].to_json(orient="records")),
                                 "runs": json.loads(obs_runs.drop(columns=["cache"]).to_json(orient="records"))},
               "files": rep["files"], "pipeline": str(pipeline), "seconds": round(time.time() - t0, 1)}
    (p["report"] / "demo.json").write_text(json.dumps(summary, indent=1))
    echo("")
    echo(rep["markdown"])
    echo("The same world as a user's single-tag data (one tag per training image, E unknown, no labelled val; its val")
    echo("mAP is against the held-out rows' single tags, the best epoch picked by their AUC: docs/training.md):")
    echo("")
    echo(obs_rep["markdown"])
    echo(f"report: {rep['files']['table']} (table), {rep['files']['plot']} (plot), {obs_rep['files']['table']} "
         f"(observed-only), {p['report'] / 'demo.json'}")
    review = write_review(p["cache"], p["review"], [p["runs"] / f"gpr-damp-s{seed}"], cfg=load_config(pipeline),
                          progress=False)
    echo(f"next:   open {review}   # the pseudo-labels class by class, a θ slider per class (no server needed)")
    echo(f"next:   aevlp train --pseudo {p['cache']} --loss an        # train one method yourself (no other flag "
         "needed)")
    echo(f"next:   aevlp predict {p['runs'] / f'gpr-damp-s{seed}'} {p['data'] / 'images' / 'val'} --out out/preds.csv"
         "   # tag images with the AEVLP model")
    return summary
