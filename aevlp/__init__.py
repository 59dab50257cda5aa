"""aevlp: vision-language pseudo-labels (DAMP) + GPR Loss for single-positive multi-label learning.

The public Python API (docs/api.md), for notebooks and other tools; everything is imported on
first use, so `import aevlp` stays cheap:

Configuration and data
    load_config(pipeline, overrides)      a resolved config dict (defaults ← pipeline ← --set)
    Specs.of(cfg)                         the same, typed, per section
    load_dataset(name, root)              the benchmark's train / val / test splits
Stage one: CLIP pseudo-labels into a cache
    run_pseudolabel(cfg)                  compute, resume or reuse the cache a config asks for
    plan_stage_one(cfg)                   what stage one would do, without loading CLIP
    Cache(path)                           read a cache (sims, scores, pseudo-labels, embeddings)
DAMP and losses
    pseudo_labels(sims, observed, ...)    DAMP scores and pseudo-labels from cached similarities
    aggregate(...), select(...)           the two halves of DAMP (docs/method.md)
    build_loss(name, params), LOSSES      any registered loss by name; gr_loss, gpr_loss
    gr_schedule(epoch, epochs, beta, alpha)   GR's per-epoch (w, b, mu, sigma)
Stage two and results
    run_train(cfg, cache=path)            train, validate, test; writes a run directory
    evaluate_checkpoint(run[, dataset, root]), predict_images(run, paths)
    mean_average_precision(scores, targets), pseudo_label_quality(pseudo, observed, truth)
Registries (register your own)
    register_loss, register_backbone, register_dataset
"""

from importlib import import_module

__version__ = "0.1.0"

_API = {
    "load_config": "aevlp.config", "Specs": "aevlp.specs", "load_dataset": "aevlp.data",
    "run_pseudolabel": "aevlp.stage_one.pseudolabel", "plan_stage_one": "aevlp.stage_one.pseudolabel",
    "Cache": "aevlp.cache",
    "pseudo_labels": "aevlp.damp", "aggregate": "aevlp.damp", "select": "aevlp.damp",
    "build_loss": "aevlp.losses", "LOSSES": "aevlp.losses", "gr_loss": "aevlp.losses", "gpr_loss": "aevlp.losses",
    "register_loss": "aevlp.losses", "gr_schedule": "aevlp.schedules", "run_train": "aevlp.stage_two.train",
    "evaluate_checkpoint": "aevlp.stage_two.evaluate", "predict_images": "aevlp.stage_two.evaluate",
    "mean_average_precision": "aevlp.metrics", "pseudo_label_quality": "aevlp.metrics",
    "register_backbone": "aevlp.stage_two.models", "register_dataset": "aevlp.data",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        value = getattr(import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'aevlp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
