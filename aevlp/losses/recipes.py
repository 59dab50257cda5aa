"""The comparison methods as their authors ran them: per-dataset values of their [loss] keys, and each
method's official training recipe, one table each, every value with the file it was read from.

`LOSS_VALUES` is what the benchmark pipelines' [loss] tables hold (a test pins them); `SCHEME_DEFAULTS`
the values a method takes where its key is 0 ("its own"); `RECIPES` what `train.recipe = "official"`
puts in [train] (`official_recipe`). docs/training.md's tables are generated from here (`make docs`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aevlp.errors import ConfigError, flag

__all__ = ["BENCHMARKS", "PIPELINE_OF", "Row", "LOSS_VALUES", "SCHEME_DEFAULTS", "RECIPES", "official_recipe",
           "carried_recipe", "SCALED_BY", "recipe_tables",
           "pipeline_block", "write_pipeline_blocks", "write_recipe_tables"]

BENCHMARKS = ("voc", "coco", "nuswide", "cub")  # the registry's names
PIPELINE_OF = dict(zip(BENCHMARKS, ("voc", "coco", "nus", "cub")))  # each one's file in pipelines/
COLE = "elijahcole/single-positive-multi-label @89152d5"
ZHOU = "Correr-Zhou/SPML-AckTheUnknown @ae1ccaf"
KIM22 = "snucml/LargeLossMatters @5025d16"
KIM23 = "youngwk/BridgeGapExplanationPAMC @4a1986c"
VLPL = "mvrl/VLPL @ed09b59"
MIME = "palm-biaoliu/mime @06e15de"
SMILE = "palm-biaoliu/mime @06e15de utils/losses.py loss_smile; 1992209760/SPL_Image_DataSet train_smile.py"


@dataclass(frozen=True)
class Row:
    """One setting's value on VOC, COCO, NUS-WIDE and CUB, and where it was read."""

    values: tuple
    source: str

    @classmethod
    def same(cls, value: Any, source: str) -> Row:
        return cls((value,) * len(BENCHMARKS), source)

    def on(self, dataset: str) -> Any:
        return self.values[BENCHMARKS.index(dataset)]


LOSS_VALUES: dict[str, Row] = {
    "em_alpha": Row((0.2, 0.1, 0.1, 0.01), f"{ZHOU} main.py (dataset settings); {VLPL} main_clip.py (P['alpha'])"),
    "apl_beta": Row((0.02, 0.9, 0.2, 0.4), f"{ZHOU} main.py (dataset settings)"),
    "apl_warmup": Row((5, 5, 4, 3), f"{ZHOU} main.py (warmup_epoch)"),
    "apl_neg_proportion": Row.same(0.9, f"{ZHOU} main.py (neg_proportion)"),
    "apl_epochs": Row.same(10, f"{ZHOU} main.py:290, 372 (num_epochs, the denominator of the per-epoch count)"),
    "ls_coef": Row.same(0.1, f"{COLE} train.py (ls_coef)"),
    "role_lr_mult": Row.same(10.0, f"{COLE} train.py (the label estimator's lr_mult)"),
    "ll_delta_rel": Row.same(0.0, f"0: the scheme's own Δrel, {KIM23} config.py (SCHEME_DEFAULTS)"),
    "boost_alpha": Row.same(5.0, f"{KIM23} config.py (alpha)"),
    "vlpl_threshold": Row.same(0.3, f"{VLPL} main_clip.py (--threshold)"),
    "vlpl_temperature": Row.same(0.01, f"{VLPL} main_clip.py (--temp)"),
    "pl_weight": Row.same(0.7, f"{VLPL} main_clip.py (beta_pos)"),
    "mime_beta": Row.same(1e-4, f"{MIME} train_mime.py (P['beta']), utils/losses.py:257-269 loss_VIB"),
    "mime_theta": Row.same(0.95, f"{MIME} train_mime.py (P['theta'])"),
    "mime_warmup": Row((2, 2, 2, 5), f"{MIME} train_mime.py (warmup_epoch)"),
    "smile_alpha": Row.same(0.1, f"{SMILE} (VOC's; the same on every dataset here, docs/training.md)"),
    "smile_beta": Row.same(0.01, f"{SMILE} (VOC's)"),
    "smile_theta": Row.same(0.01, f"{SMILE} (VOC's)"),
    "smile_warmup": Row((2, 5, 5, 15), "1992209760/SPL_Image_DataSet train_smile.py (warmup_epoch)"),
}

# Where a method's [loss] key is 0, its own value (the key is shared by several schemes).
SCHEME_DEFAULTS: dict[str, dict[str, tuple[Any, str]]] = {
    "ll-r": {"ll_delta_rel": (0.5, f"{KIM23} config.py (delta_rel, LL-R)")},
    "ll-ct": {"ll_delta_rel": (0.2, f"{KIM23} config.py (delta_rel, LL-Ct)")},
    "ll-cp": {"ll_delta_rel": (0.1, f"{KIM23} config.py (delta_rel, LL-Cp)")},
    "boostlu": {"ll_delta_rel": (0.5, f"{KIM23} config.py (delta_rel of LL-R, which BoostLU runs on)")},
}

_TEN = Row.same(10, "every official baseline trains 10 epochs")
_ONE_LR = Row.same(1.0, "one learning rate for all layers (no head x10)")
_ZHOU_LR = Row((1e-5, 1e-5, 1e-5, 1e-4), f"{ZHOU} main.py (lr)")
_COLE_LR_MULT = Row.same(1.0, f"{COLE} train.py initialize_training_run: f (backbone and linear classifier) at lr, "
                               "only g (ROLE's label estimator) at lr_mult x lr")
_COLE_E2E = {"epochs": _TEN, "lr_mult": _COLE_LR_MULT,
             "early_stop": Row.same("none", f"{COLE} train.py (the best val epoch is tested)")}
RECIPES: dict[str, dict[str, Row]] = {
    **{m: _COLE_E2E for m in ("an", "an-ls", "wan", "epr", "iun", "iu", "bce-full")},
    "role": {"epochs": Row.same(35, f"{COLE} train.py: train_mode linear_init, 25 linear + 10 end-to-end epochs"),
             "linear_init": Row.same(25, f"{COLE} train.py (linear_init: 25 epochs on frozen features)"),
             "linear_init_lr": Row.same(1e-3, f"{COLE} train.py (linear_init_params['role']: lr 1e-3)"),
             "batch_size": Row.same(8, f"{COLE} train.py (end-to-end phase)"), "lr_mult": _COLE_LR_MULT,
             "early_stop": _COLE_E2E["early_stop"]},
    "em": {"epochs": _TEN, "lr": _ZHOU_LR, "lr_mult": _ONE_LR,
           "batch_size": Row((8, 16, 16, 8), f"{ZHOU} main.py (bsize)"),
           "early_stop": Row.same("first-drop", f"{ZHOU} main.py (stops at the first val decrease)")},
    "vlpl": {"epochs": _TEN, "lr": Row((1e-5, 1e-5, 1e-5, 1e-4), f"{VLPL} main_clip.py (lr)"), "lr_mult": _ONE_LR,
             "batch_size": Row.same(8, f"{VLPL} main_clip.py (bsize)"),
             "early_stop": Row.same("none", f"{VLPL} main_clip.py (early stop commented out; best val tested)")},
    "ll-r": {"epochs": _TEN, "batch_size": Row.same(16, f"{KIM22} config.py (bsize 16; lr 1e-5, lr_mult 10)"),
             "early_stop": Row.same("gr", f"{KIM22} train.py run_train: `elif bestmap_val - map_val > 3: break` "
                                          "(stop on a drop; the best val epoch is tested)"),
             "max_drop": Row.same(3.0, f"{KIM22} train.py run_train (`bestmap_val - map_val > 3`)")},
    "mime": {"epochs": _TEN, "lr": Row.same(1e-4, f"{MIME} train_mime.py (lr 1e-4 for the backbone)"),
             "lr_mult": Row.same(10.0, f"{MIME} train_mime.py (the transformer and heads at 10 x lr)"),
             "optimizer": Row.same("adamax", f"{MIME} train_mime.py (torch.optim.Adamax)"),
             "batch_size": Row((32, 32, 16, 16), f"{MIME} train_mime.py (bsize)"),
             "early_stop": Row.same("none", f"{MIME} train_mime.py (the best val epoch is tested)")},
    "smile": {"epochs": _TEN, "lr": Row.same(1e-5, "1992209760/SPL_Image_DataSet train_smile.py (lr)"),
              "lr_mult": _ONE_LR, "batch_size": Row((8, 16, 16, 8), "train_smile.py (bsize)"),
              "early_stop": Row.same("none", "train_smile.py (the best val epoch is tested)")},
}
RECIPES["em-apl"] = RECIPES["em"]
RECIPES["em-pl"] = RECIPES["vlpl"]
RECIPES.update({m: RECIPES["ll-r"] for m in ("ll-ct", "ll-cp", "boostlu")})


PIPELINE_OWN = ("gr", "gpr", "an-pl")  # AEVLP's code: its recipe is the benchmark pipelines' own


def official_recipe(method: str, dataset: str) -> dict[str, Any]:
    """The [train] values of a method's official recipe on a benchmark dataset ({} for GR, GPR and AN-PL: their
    official recipe is the benchmark pipeline's own, AEVLP's configs)."""
    if method not in RECIPES and method not in PIPELINE_OWN:
        raise ConfigError(f"train.recipe = official: no official recipe is recorded for '{method}' "
                          f"(aevlp/losses/recipes.py has {', '.join(sorted([*RECIPES, *PIPELINE_OWN]))})",
                          hint="use train.recipe = shared (every method with one recipe)")
    if dataset not in BENCHMARKS:
        raise ConfigError(f"train.recipe = official is defined on the benchmark datasets ({', '.join(BENCHMARKS)}), "
                          f"not on '{dataset}'",
                          hint=f"use {flag('train.recipe', 'shared')} (every method with one recipe), or "
                          f"{flag('train.recipe_as', 'voc')} to carry VOC's official recipes over to this pipeline")
    return {k: row.on(dataset) for k, row in RECIPES.get(method, {}).items()}


# A recipe value carried to another pipeline is scaled by that pipeline's value of this key over the benchmark's.
SCALED_BY = {"lr": "lr", "linear_init_lr": "lr", "batch_size": "batch_size", "epochs": "epochs",
             "linear_init": "epochs"}


def carried_recipe(method: str, benchmark: str, here: dict[str, Any], there: dict[str, Any]) -> dict[str, Any]:
    """`method`'s official recipe on `benchmark`, carried to a pipeline whose [train] is `here` (`there`: the
    benchmark pipeline's [train]). Each rate, batch and epoch count is taken relative to the benchmark pipeline,
    whose GR/GPR recipe is AEVLP's: the value × here[key] / there[key] (an int rounds, at least 1). So every method
    keeps its authors' lr, batch and length relative to AEVLP's, and GR and GPR train exactly as `here` says.
    The other values (optimizer, lr_mult, early stopping) are the authors' as they are."""
    out = {}
    for k, v in official_recipe(method, benchmark).items():
        ref = SCALED_BY.get(k)
        if ref is None:
            out[k] = v
        elif isinstance(v, int):
            out[k] = max(1, round(v * here[ref] / there[ref]))
        else:
            out[k] = float(f"{v * here[ref] / there[ref]:.6g}")
    return out


BLOCK_BEGIN = "# comparison methods (aevlp train --loss NAME; docs/training.md): generated from aevlp/losses/recipes.py"
BLOCK_END = "# end of the comparison methods' values"


def pipeline_block(dataset: str) -> str:
    """The [loss] lines of a benchmark pipeline that hold the comparison methods' values for `dataset`."""
    from aevlp.settings import LossParams, declared

    docs = declared(LossParams)
    lines = [BLOCK_BEGIN]
    for k, row in LOSS_VALUES.items():
        v = row.on(dataset)
        lines.append(f"{k} = {v!r}".ljust(28) + f"# {docs[k].metadata['doc']}")
    return "\n".join(lines + [BLOCK_END])


def write_pipeline_blocks(folder: str) -> list[str]:
    """Rewrite the generated block of each benchmark pipeline in `folder`; the files that changed."""
    from pathlib import Path

    changed = []
    for dataset, name in PIPELINE_OF.items():
        p = Path(folder) / f"{name}.toml"
        text = p.read_text()
        head, rest = text.split(BLOCK_BEGIN, 1)
        _, tail = rest.split(BLOCK_END, 1)
        new = head + pipeline_block(dataset) + tail
        if new != text:
            p.write_text(new)
            changed.append(str(p))
    return changed


TABLES_BEGIN = "<!-- recipe tables: generated from aevlp/losses/recipes.py by `make docs`; do not edit by hand -->"
TABLES_END = "<!-- end of generated recipe tables -->"


def write_recipe_tables(path: str) -> bool:
    """Put `recipe_tables()` between the markers of docs/training.md; True if the file changed."""
    from aevlp.settings_docs import write_between

    return write_between(path, TABLES_BEGIN, TABLES_END, recipe_tables())


def recipe_tables() -> str:
    """docs/training.md's tables: per-dataset values of the [loss] keys, and the official recipes."""
    out = ["| [loss] key | VOC | COCO | NUS | CUB | source |", "|---|---|---|---|---|---|"]
    out += [f"| `{k}` | " + " | ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in r.values) +
            f" | {r.source} |" for k, r in LOSS_VALUES.items()]
    out += ["", "| method | key | its own value | source |", "|---|---|---|---|"]
    out += [f"| `{m}` | `{k}` | {v:g} | {src} |" for m, keys in SCHEME_DEFAULTS.items() for k, (v, src) in keys.items()]
    out += ["", "| method | [train] key | VOC | COCO | NUS | CUB | source |", "|---|---|---|---|---|---|---|"]
    for m, keys in RECIPES.items():
        out += [f"| `{m}` | `{k}` | " + " | ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in r.values) +
                f" | {r.source} |" for k, r in keys.items()]
    return "\n".join(out) + "\n"
