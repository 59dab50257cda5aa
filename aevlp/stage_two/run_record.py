"""What a training run writes and says besides its checkpoints: config.toml and its first lines (the recipe, where
images are decoded, the model-selection criterion, E and its source, the per-class thresholds in
class_thresholds.csv) at the start; the test of the best checkpoint, per_class_ap.csv and results.json at the end.
`r` is `aevlp.stage_two.train`'s `TrainRun`."""
from __future__ import annotations

from collections.abc import Callable

import torch

from aevlp.cache import fingerprint_id
from aevlp.data import training_data_hash
from aevlp.metrics import evaluation_report, per_class_ap
from aevlp.stage_two.checkpoint import load_checkpoint
from aevlp.stage_two.evaluate import predict_scores
from aevlp.stage_two.plan import recipe_line
from aevlp.stage_two.run_folder import RunFolder
from aevlp.stage_two.thresholds import write_thresholds

__all__ = ["announce", "test_and_write_results"]


def announce(r, echo: Callable[[str], None], plan) -> None:
    """config.toml (what runs, resumed changes included), the run's first lines (the recipe; where images are
    decoded and resized, and why), the class thresholds."""
    RunFolder(r.run).write_config(r.cfg)
    echo(recipe_line(r.t, plan.lr_source))
    if r.inputs[0].input == "image":
        where = "pre-resized from the image cache" if r.t.image_cache else \
            ("decoded and resized on the GPU (nvJPEG)" if r.t.decode_on == "device" else
             "decoded and resized by the loader's workers")
        echo(f"images: {where}; training on {r.device.type} ({plan.decode.why})")
    if plan.changes:
        echo("resumed with: " + "; ".join(plan.changes) + " (config.toml records them)")
    if r.selection.criterion != "val" or not r.data.train_labels_known:
        echo(f"model selection: {r.selection.criterion} ({r.selection.why})")
    e = r.labeler.expected
    if e.estimated or r.labeler.thresholds is not None or not r.data.train_labels_known:
        echo(f"expected positives per image E = {e.value:.3g} ({e.source})")
    if r.labeler.thresholds is not None:  # RUN/class_thresholds.csv: the θ per class it selects with, and why
        from aevlp.stage_two.class_report import class_scores, threshold_table

        table = threshold_table(class_scores(r.labeler), r.specs.damp.threshold)
        path = write_thresholds(r.run / "class_thresholds.csv", r.data.classnames, r.labeler.thresholds, table)
        off = int((r.labeler.thresholds > 1).sum())
        echo(f"class thresholds ({r.specs.damp.class_thresholds}): {path}"
             + (f"; {off} class(es) without pseudo-positives (teacher unreliable)" if off else ""))


def test_and_write_results(r, state: dict) -> dict:
    """Test the best checkpoint once; write per_class_ap.csv and results.json."""
    best, _ = load_checkpoint(r.run / "best.pt")
    best.to(r.device)
    if r.meta["channels_last"]:
        best = best.to(memory_format=torch.channels_last)
    test_scores = predict_scores(best, r.ordered(2), r.device, r.precision, prepare=r.batch)
    test_metrics = evaluation_report(test_scores, r.data.test.labels)
    test_map = test_metrics["map"]
    per_class_ap(test_scores, r.data.test.labels, r.data.classnames).to_csv(r.run / "per_class_ap.csv", index=False)
    best_rec = next(x for x in state["history"] if x["epoch"] == state["best_epoch"])
    wise = state.get("wise_ft")  # train.wise_ft: best.pt is the mix it chose; val is the mix's
    results = {"dataset": r.data.info.name, "loss": r.specs.loss["name"], "backbone": r.t.backbone,
               "labels": r.t.labels, "damp_source": r.specs.damp.source if r.loss_spec.uses_pseudo else None,
               "best_epoch": state["best_epoch"], "epochs_run": state["epoch"],
               "stopped_early": state["stopped_early"], "stop_reason": state.get("stop_reason"),
               "early_stop": r.t.early_stop, "val_map": wise["val_map"] if wise else best_rec["val_map"],
               "val_labels": r.data.val_labels,
               "selection": {"criterion": r.selection.criterion, "why": r.selection.why,
                             "value": wise["select"] if wise else best_rec.get("select", best_rec["val_map"])},
               "train_labels": "full" if r.data.train_labels_known else "observed only", "test_map": test_map,
               "test_metrics": test_metrics, **({"wise_ft": wise} if wise else {}),
               **{k: best_rec[k] for k in best_rec if k.startswith("pseudo_")},
               "cache": str(r.cache.path), "cache_fingerprint": fingerprint_id(r.cache.fingerprint),
               **({"student": r.labeler.provenance} if r.labeler.provenance else {}),
               "expected_pos": {"value": round(r.labeler.expected.value, 4), "source": r.labeler.expected.source},
               "data_hash": training_data_hash(r.data, r.specs.dataset.image_check),
               "train_images": int(r.keep.sum()), "run_dir": str(r.run)}
    RunFolder(r.run).write_results(results)
    r.cache.close()
    return results
