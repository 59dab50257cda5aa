"""Early stopping: when training ends before its last epoch, and why (the papers' rules, by name)."""
from __future__ import annotations

from aevlp.settings import TrainSpec

__all__ = ["should_stop", "stop_reason"]


def _value(rec: dict) -> float:
    """An epoch's value of the selection criterion (runs from before `train.select`: its val mAP)."""
    return rec.get("select", rec["val_map"])


def stop_reason(state: dict, t: TrainSpec) -> str:
    """Why training stopped early, in words: the epoch, the val mAP and the rule that fired."""
    cur, best = state["history"][-1], state["best_val"]
    now = _value(cur)
    if t.early_stop == "first-drop":
        why = f"val mAP {now:.2f} did not improve on the best {best:.2f}"
    elif best - now > t.max_drop:
        why = f"val mAP {now:.2f} fell more than {t.max_drop:g} points below the best {best:.2f}"
    else:
        why = f"no val improvement for {t.patience} epochs (best {best:.2f})"
    return f"stopped after epoch {cur['epoch']}: {why} (train.early_stop = \"{t.early_stop}\"; best epoch " \
           f"{state['best_epoch']} is tested)"


def should_stop(state: dict, t: TrainSpec) -> bool:
    """AEVLP: patience or a drop > max_drop below the best; GR: the drop only; first-drop: the first epoch
    without improvement (Zhou et al.'s EM/APL code); none: never."""
    if t.early_stop == "none":
        return False
    drop = state["best_val"] - _value(state["history"][-1])
    if t.early_stop == "first-drop":
        return state["counter"] >= 1
    if drop > t.max_drop:
        return True
    return t.early_stop == "aevlp" and state["counter"] >= t.patience
