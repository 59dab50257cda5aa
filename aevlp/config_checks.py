"""Range checks of every numeric and structured config value, in one place (after types are checked).

A value out of range is a ConfigError naming the key, the value and the allowed range, before any
stage starts (not a NaN loss or a traceback an hour later).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from aevlp.errors import ConfigError

__all__ = ["RANGES", "check_ranges"]


def _between(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> tuple[Callable, str]:
    def ok(v):
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    return ok, f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


POS = (lambda v: v > 0, "> 0")
NONNEG = (lambda v: v >= 0, ">= 0")
ONE_UP = (lambda v: v >= 1, ">= 1")
MINUS_ONE_UP = (lambda v: v >= -1, ">= 0, or -1 for one per core but one")
UNIT = _between(0, 1)
DEVICE = (lambda v: bool(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v)), "auto, cpu, cuda or cuda:N")
FOUR_NUMBERS = (lambda v: len(v) == 4 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v),
                "a list of 4 numbers")
PROMPTS = (lambda v: len(v) > 0 and all(isinstance(t, str) and t.count("{}") == 1 for t in v),
           "a non-empty list of templates, each with exactly one {} for the class")

RANGES: dict[tuple[str, str], tuple[Callable[[Any], bool], str]] = {
    ("dataset", "val_frac"): _between(0, 1, True, True),
    ("clip", "batch_size"): ONE_UP, ("clip", "workers"): NONNEG, ("clip", "device"): DEVICE,
    ("text", "prompts"): PROMPTS, ("text", "sparse_topk"): ONE_UP, ("text", "reweight_p"): _between(0, 1, False, True),
    ("views", "grid"): ONE_UP, ("views", "rounds"): ONE_UP, ("views", "size"): NONNEG,
    ("views", "jitter"): _between(0, 0.5),
    ("damp", "temperature"): POS, ("damp", "eta"): NONNEG, ("damp", "threshold"): UNIT, ("damp", "top_k"): ONE_UP,
    ("damp", "negative_ratio"): _between(0, 1, False, True),
    ("loss", "beta"): FOUR_NUMBERS, ("loss", "alpha"): FOUR_NUMBERS, ("loss", "q2"): POS, ("loss", "q3"): POS,
    ("loss", "lam1"): UNIT, ("loss", "lam2"): UNIT, ("loss", "rho"): UNIT, ("loss", "reg"): NONNEG,
    ("loss", "expected_pos"): NONNEG, ("loss", "em_alpha"): NONNEG, ("loss", "pl_weight"): NONNEG,
    ("loss", "ls_coef"): _between(0, 1, False, True), ("loss", "role_lr_mult"): POS, ("loss", "apl_beta"): NONNEG,
    ("loss", "apl_warmup"): ONE_UP, ("loss", "apl_neg_proportion"): UNIT, ("loss", "ll_delta_rel"): _between(0, 100),
    ("loss", "boost_alpha"): POS, ("loss", "vlpl_threshold"): UNIT, ("loss", "vlpl_temperature"): POS,
    ("train", "epochs"): ONE_UP, ("train", "batch_size"): ONE_UP, ("train", "lr"): _between(0, 10, True),
    ("train", "lr_mult"): POS, ("train", "image_size"): NONNEG, ("train", "patience"): NONNEG,
    ("train", "max_drop"): NONNEG, ("train", "linear_init"): NONNEG, ("train", "workers"): MINUS_ONE_UP,
    ("train", "device"): DEVICE,
}


def check_ranges(cfg: dict) -> dict:
    """Raise ConfigError for the first value out of range (and cross-field rules); return cfg."""
    for (section, key), (ok, allowed) in RANGES.items():
        value = cfg[section][key]
        if not ok(value):
            raise ConfigError(f"{section}.{key} = {value!r} is out of range: it must be {allowed}",
                              hint=f"fix it in the pipeline or with --set {section}.{key}=...")
    loss, train = cfg["loss"], cfg["train"]
    if loss["lam1"] < loss["lam2"]:
        raise ConfigError(f"loss.lam1 = {loss['lam1']} is below loss.lam2 = {loss['lam2']}",
                          hint="the positive pseudo-label weight lies in [lam2, lam1]: lam1 >= lam2")
    if loss["alpha"][1] <= 0 or loss["alpha"][3] <= 0:
        raise ConfigError(f"loss.alpha = {loss['alpha']}: the sigmas (2nd and 4th) must be > 0")
    if train["linear_init"] >= train["epochs"]:
        raise ConfigError(f"train.linear_init = {train['linear_init']} must be below train.epochs = {train['epochs']}")
    return cfg
