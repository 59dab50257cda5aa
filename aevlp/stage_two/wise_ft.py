"""WiSE-FT for the CLIP-initialised student (`train.wise_ft`; Wortsman et al., "Robust fine-tuning of zero-shot
models", CVPR 2022): the fine-tuned weights averaged with the weights fine-tuning started from — CLIP's own tower
and its zero-shot head — the share of the tuned ones chosen on val. docs/training.md, "Backbones".
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from aevlp.stage_two.checkpoint import read_checkpoint, save_checkpoint
from aevlp.stage_two.evaluate import predict_scores
from aevlp.stage_two.run_folder import RunFolder

__all__ = ["WISE_ALPHAS", "mixed", "wise_ft"]

WISE_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the share of the fine-tuned weights; 1: the fine-tuned model itself


def mixed(initial: dict, tuned: dict, alpha: float) -> dict:
    """WiSE-FT's weight-space ensemble: (1 − α)·initial + α·tuned for every floating-point tensor (counters and
    other integer buffers: the tuned model's)."""
    return {k: torch.lerp(initial[k].to(v.dtype), v, alpha) if v.is_floating_point() else v for k, v in tuned.items()}


def wise_ft(r, state: dict, echo, initial: Callable[[], torch.nn.Module]) -> None:
    """`train.wise_ft`: the run's best weights mixed with the weights it started from (`initial()` builds that
    model: CLIP's tower and its zero-shot head), the share α of the tuned ones chosen on val by the run's own criterion
    among WISE_ALPHAS (the more tuned on a tie). best.pt becomes that mix (marked `wise` in the file); the tuned
    weights move to TUNED, so a run resumed before its test mixes from them again, and a best.pt that training wrote
    since (a run resumed for more epochs) replaces them; `state["wise_ft"]` records α and each α's val figures."""
    tuned_file, best = r.run / RunFolder.TUNED, r.run / RunFolder.BEST
    if not (tuned_file.exists() and "wise" in read_checkpoint(best)):
        best.replace(tuned_file)
    tuned = read_checkpoint(tuned_file)["model"]
    start = initial().state_dict()
    tuned = {k: v.to(r.device) for k, v in tuned.items()}
    measures = {}
    for alpha in WISE_ALPHAS:
        r.core.load_state_dict(mixed(start, tuned, alpha))
        val = predict_scores(r.core, r.ordered(1), r.device, r.precision, prepare=r.batch)
        measures[alpha] = r.selection.measures(val)
    score = {a: r.selection.value(m) for a, m in measures.items()}  # the run's own criterion (val mAP, or ...)
    alpha = max(reversed(WISE_ALPHAS), key=score.get)
    r.core.load_state_dict(mixed(start, tuned, alpha))
    save_checkpoint(best, r.core, meta=r.meta, wise={"alpha": alpha})
    state["wise_ft"] = {"alpha": alpha, "val_map": measures[alpha]["val_map"], "select": score[alpha],
                        "criterion": r.selection.criterion, "by_alpha": {str(a): round(v, 4) for a, v in score.items()}}
    echo(f"wise_ft: α = {alpha:g} ({r.selection.criterion} " + ", ".join(f"{a:g}: {v:.2f}" for a, v in score.items())
         + f"); the tuned weights are {tuned_file}")
