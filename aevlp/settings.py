"""Every pipeline setting, declared once: each key of each section with its default, what it may be, and
what it does (as litgpt's `args.py` declares its dataclasses).

A section is a frozen dataclass; a key is a field made with `key(default, doc, choices=..., check=...)`.
Everything else is derived from these declarations: the defaults (`defaults()`), the checks a config
dict goes through (`check_value`, `check_section`), the typed specs the stages read (`Specs.of`, in
`aevlp.specs`), and the key tables of pipelines/README.md (`aevlp.settings_docs`). Building a section checks
it (`__post_init__`), so a spec made in Python is held to the same declaration as a pipeline file.
A leaf module: it imports nothing of aevlp but the errors and Cole et al.'s seed.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

from aevlp.data.observe import COLE_SEED
from aevlp.errors import ConfigError, flag

__all__ = ["Check", "Rule", "key", "between", "SECTIONS", "PipelineSpec", "DatasetSpec", "ClipSpec", "TextSpec",
           "ViewsSpec", "DampSpec", "LossParams", "TrainSpec", "CacheSpec", "defaults", "declared", "check_value",
           "check_section", "checked", "choices_of", "default_of"]

@dataclass(frozen=True)
class Check:
    """A value test and the words that say what passes it (in error messages and the docs' tables)."""

    ok: Callable[[Any], bool]
    allowed: str


@dataclass(frozen=True)
class Rule:
    """A check across keys of one section: `ok(**{k: value})` over `keys`."""

    keys: tuple[str, ...]
    ok: Callable[..., bool]
    message: str
    hint: str = ""


def between(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Check:
    def ok(v):
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    return Check(ok, f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")


POS = Check(lambda v: v > 0, "> 0")
SEED = Check(lambda v: 0 <= v < 2 ** 32, "in [0, 2^32 - 1]")
NONNEG = Check(lambda v: v >= 0, ">= 0")
ONE_UP = Check(lambda v: v >= 1, ">= 1")
UNIT = between(0, 1)
DEVICE = Check(lambda v: bool(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v)), "auto, cpu, cuda or cuda:N")
FOUR_NUMBERS = Check(lambda v: len(v) == 4 and all(isinstance(x, (int, float)) and not isinstance(x, bool) and
                                                   math.isfinite(x) and abs(x) <= 1000 for x in v),
                     "a list of 4 numbers, each in [-1000, 1000]")
SOURCE_NAME = Check(lambda v: v == "" or (bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", v)) and ".." not in v),
                    "a plain name of a file in CACHE.sources/ (letters, digits, '.', '_', '-'; no path)")
PROMPTS = Check(lambda v: len(v) > 0 and all(isinstance(t, str) and t.count("{}") == 1 for t in v),
                "a non-empty list of templates, each with exactly one {} for the class")


def key(default: Any, doc: str, *, choices: tuple[str, ...] = (), check: Check | None = None,
        cache: bool = True) -> Any:
    """A declared setting: its default, one line of doc, its allowed values (`choices`) or test (`check`).
    `cache=False` marks a stage-one key that does not change the cached numbers (not in the fingerprint)."""
    return field(default=default, metadata={"doc": doc, "choices": tuple(choices), "check": check, "cache": cache})


def _type_ok(value: Any, default: Any) -> tuple[bool, Any]:
    """(accepted, value as stored) for a value of a key whose default is `default`; ints widen to floats."""
    if isinstance(default, bool):
        return isinstance(value, bool), value
    if isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool), value
    if isinstance(default, tuple):
        return isinstance(value, (list, tuple)), tuple(value) if isinstance(value, (list, tuple)) else value
    return isinstance(value, str), value


def _kind(default: Any) -> str:
    return {bool: "bool", int: "int", float: "float", tuple: "list", str: "str"}[type(default)]


def check_value(cls, name: str, value: Any) -> Any:
    """`value` for key `name` of section `cls` as stored (ints widened to floats, lists to tuples), or a
    ConfigError naming the key, the value and what is allowed."""
    f = declared(cls)[name]
    where = f"{cls.SECTION}.{name}"
    ok, value = _type_ok(value, f.default)
    if not ok:
        raise ConfigError(f"{where} = {value!r} should be a {_kind(f.default)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} = {value!r} must be a finite number", hint=f"fix it: {flag(where, '...')}")
    choices, check = f.metadata["choices"], f.metadata["check"]
    if choices and value not in choices:
        raise ConfigError(f"{where} = {value!r} is not one of {', '.join(choices)}")
    if check is not None and not check.ok(value):
        raise ConfigError(f"{where} = {_show(value)} is out of range: it must be {check.allowed}",
                          hint=f"fix it: {flag(where, '...')}")
    return value


def _show(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def checked(cls, **values: Any) -> dict[str, Any]:
    """Check some keys of a section (each against its declaration, and every rule whose keys are all
    given): how functions that take settings as arguments (the losses, DAMP) hold them to the declaration."""
    out = {k: check_value(cls, k, v) for k, v in values.items()}
    for rule in cls.RULES:
        if all(k in out for k in rule.keys) and not rule.ok(**{k: out[k] for k in rule.keys}):
            raise ConfigError(rule.message.format(**{k: _show(out[k]) for k in rule.keys}), hint=rule.hint or None)
    return out


class _Section:
    """What every section shares: its name, its rules, and a check of all its keys when built."""

    SECTION: ClassVar[str] = ""
    RULES: ClassVar[tuple[Rule, ...]] = ()
    STAGE: ClassVar[str] = ""

    def __post_init__(self):
        values = checked(type(self), **{f.name: getattr(self, f.name) for f in fields(self)})
        for name, value in values.items():  # the stored form (floats, tuples), on a frozen instance
            object.__setattr__(self, name, value)

    def __getitem__(self, name: str) -> Any:
        """`spec["grid"]` as `spec.grid` (sections were mappings before they were declared)."""
        if name not in declared(type(self)):
            raise KeyError(name)
        return getattr(self, name)


@dataclass(frozen=True)
class PipelineSpec(_Section):
    SECTION, STAGE = "pipeline", "both"
    name: str = key("", "the pipeline file this config came from (recorded, so caches and runs know it)")


@dataclass(frozen=True)
class DatasetSpec(_Section):
    SECTION, STAGE = "dataset", "both"
    name: str = key("", "registered dataset name (`aevlp data ls`)")
    data_root: str = key("", "folder in the SPML layout (a copy elsewhere with the same files is the same "
                             "cache)", cache=False)
    image_root: str = key("", "where the images live, if not where the layout says", cache=False)
    val_frac: float = key(0.2, "share of the official train set held out as val (clean labels)",
                          check=between(0, 1, True, True))
    split_seed: int = key(COLE_SEED, "seed of the train/val split (Cole et al.'s)", check=SEED)
    image_check: str = key("stat", "how image files are identified in fingerprints: size + mtime, content hash, "
                                   "or not at all", choices=("stat", "content", "none"))

    def load(self):
        """The dataset, split as the benchmark does (`aevlp.data.load_dataset`)."""
        from aevlp.data import load_dataset

        if not self.data_root:
            raise ConfigError("no data root",
                              hint=f"pass {flag('dataset.data_root', 'DIR')} (a folder in the SPML layout)")
        return load_dataset(self.name, self.data_root, image_root=self.image_root or None,
                            val_frac=self.val_frac, split_seed=self.split_seed)


@dataclass(frozen=True)
class ClipSpec(_Section):
    SECTION, STAGE = "clip", "stage one"
    arch: str = key("ViT-B-16", "open_clip architecture (`aevlp clip ls`); empty for an HF-layout folder")
    pretrained: str = key("openai", "a pretrained tag (built as trained: QuickGELU), a weights file, an HF-layout "
                                    "folder or hf-hub:NAME; \"\" for random weights")
    config: str = key("", "a local open_clip model-config JSON (its file name is the architecture)")
    pretrained_cfg: str = key("", "for a bare weights file: the tag whose settings it carries")
    tokenizer: str = key("", "a local HF tokenizer folder")
    device: str = key("auto", "where CLIP runs", check=DEVICE, cache=False)
    precision: str = key("auto", "CLIP weights dtype; auto: fp16 on CUDA (the official code's), bf16 on a "
                                 "bf16-capable CPU, else fp32", choices=("auto", "fp32", "bf16", "fp16"))
    batch_size: int = key(16, "source images per forward pass (each gives rounds x (grid^2+1) views)",
                          check=between(1, 4096), cache=False)
    workers: int = key(1, "DataLoader processes decoding and cropping images", check=between(0, 256), cache=False)
    compile: bool = key(False, "torch.compile the image encoder", cache=False)


@dataclass(frozen=True)
class TextSpec(_Section):
    SECTION, STAGE = "text", "stage one"
    prompts: tuple[str, ...] = key(("a photo of a {}.",), "prompt templates; several are averaged (an ensemble)",
                                   check=PROMPTS)
    phrases: str = key("", "a file of class phrases (CSV classname,phrase, or one per line) if names read badly")
    gcn: bool = key(True, "the frozen relation GCN over the class text features (official: on)")
    gcn_seed: int = key(0, "the GCN's random weights (the official code leaves them unseeded)", check=SEED)
    sparse_topk: int = key(20, "relation entries kept per row (capped at the number of classes)", check=ONE_UP)
    reweight_p: float = key(0.2, "total weight of related classes; the class itself keeps 1 - p",
                            check=between(0, 1, False, True))
    relation: str = key("text", "the relation matrix: text (cosine of the class text features) or a .npy path")


@dataclass(frozen=True)
class ViewsSpec(_Section):
    SECTION, STAGE = "views", "stage one"
    grid: int = key(4, "G: one global view + a G x G grid of tiles", check=between(1, 64))
    rounds: int = key(4, "augmentation rounds cached; training epoch e reads round (e-1) mod R",
                      check=between(1, 1000))
    size: int = key(0, "view size in pixels; 0: the checkpoint's input size", check=between(0, 4096))
    resize: str = key("checkpoint", "checkpoint (the weights' own) | squash (official: distorting) | shortest "
                                    "(+ centre crop) | longest (+ padding)",
                      choices=("checkpoint", "squash", "shortest", "longest", "crop"))
    interpolation: str = key("checkpoint", "checkpoint | bilinear (official) | bicubic | nearest",
                             choices=("checkpoint", "bilinear", "bicubic", "nearest"))
    normalize: str = key("checkpoint", "statistics of the CLIP input: checkpoint | clip | imagenet (official)",
                         choices=("checkpoint", "clip", "imagenet"))
    flip: bool = key(True, "independent random horizontal flip per view and round (official)")
    jitter: float = key(0.0, "random tile enlargement per side, as a share of the tile (official: 0)",
                        check=between(0, 0.5))
    seed: int = key(0, "seed of the flips and jitter", check=SEED)
    resize_on: str = key("auto", "where crops are resized: worker (the decoding processes), device (the GPU); auto: "
                                 "the device on a GPU, else the workers (aevlp/placement.py)",
                         choices=("auto", "worker", "device"))
    decode_on: str = key("auto", "where JPEGs are decoded: worker, or device (the GPU's nvJPEG; crops then resized "
                                 "there too); auto: the device on a GPU when every image is a JPEG",
                         choices=("auto", "worker", "device"))


@dataclass(frozen=True)
class DampSpec(_Section):
    SECTION, STAGE = "damp", "stage two"
    RULES = (Rule(("student", "student_loss"), lambda student, student_loss: not (student and student_loss),
                  "damp.student = {student} and damp.student_loss = {student_loss}: set one (stored scores, or a "
                  "student trained first), not both"),)
    source: str = key("damp", "pseudo-labels from DAMP (global + tiles), the global view only, or the global view "
                              "against the plain (not GCN-refined) class text features (VLPL's)",
                      choices=("damp", "global", "global-plain"))
    temperature: float = key(0.01, "tau of the softmax over CLIP cosine similarities", check=between(0, 100, True))
    eta: float = key(0.3, "cap of the per-image gate eta' = min(s_global[observed], eta)", check=NONNEG)
    threshold: float = key(0.5, "theta: a positive pseudo-label needs f >= theta", check=UNIT)
    top_k: int = key(3, "at most k positive pseudo-labels per image", check=ONE_UP)
    negative_ratio: float = key(0.2, "floor(ratio x C) lowest-scoring classes become negatives",
                                check=between(0, 1, False, True))
    mode: str = key("paper", "paper: negatives are real -1 labels; official: written as 0 (neutral), as the "
                             "official code does", choices=("paper", "official"))
    class_thresholds: str = key("", "per-class θ_c instead of one θ: a rule from the observed positives (rate | "
                                    "observed; docs/method.md) or a CSV class,threshold (aevlp cache thresholds)")
    prior: str = key("quantile", "where E (expected positives per image) is not known (observed-only data, no "
                                 "labelled val split): the class-prior estimator E is estimated with, from a "
                                 "student's val scores (else the teacher's): quantile | bbe | elkan-noto | km2 "
                                 "(aevlp/stage_two/priors.py; docs/method.md)",
                     choices=("quantile", "bbe", "elkan-noto", "km2"))
    min_auc: float = key(0.6, "with class_thresholds = a rule: a class whose observed positives the teacher ranks "
                              "above its unknown entries less often than this gets no pseudo-positives (GR's loss)",
                         check=between(0, 1))
    student: str = key("", "a student's scores stored beside the cache (aevlp refine) to fuse with DAMP's before "
                           "selection: the source's name in CACHE.sources/", check=SOURCE_NAME)
    student_loss: str = key("", "train a student with this method first (RUN/student, same cache and settings) and "
                                "fuse its scores with DAMP's before selection: gr makes the gpr-ts method; best "
                                "trains GR, EM and GPR-soft students and the best on val teaches")
    student_weight: float = key(0.5, "the student's share w of the fused score w·p_student + (1−w)·f_DAMP", check=UNIT)

    def selection(self) -> dict:
        """The keyword arguments of `aevlp.damp.pseudo_labels` (without `source`); stored in caches."""
        return {"temperature": self.temperature, "eta": self.eta, "top_k": self.top_k, "threshold": self.threshold,
                "negative_ratio": self.negative_ratio, "negatives": self.mode == "paper"}


@dataclass(frozen=True)
class LossParams(_Section):
    SECTION, STAGE = "loss", "stage two"
    RULES = (Rule(("lam1", "lam2"), lambda lam1, lam2: lam1 >= lam2,
                  "lam1 must be >= lam2: loss.lam1 = {lam1} is below loss.lam2 = {lam2}",
                  "the positive pseudo-label weight lies in [lam2, lam1]"),
             Rule(("alpha",), lambda alpha: alpha[1] > 0 and alpha[3] > 0,
                  "loss.alpha = {alpha}: the sigmas (2nd and 4th) must be > 0"))
    name: str = key("gpr", "any registered method (`aevlp train --help` lists them; docs/training.md)")
    beta: tuple[float, ...] = key((0.0, 10.0, -2.0, -8.0), "[w0, wT, b0, bT] of the soft pseudo-label "
                                                            "k = sigmoid(w p + b)", check=FOUR_NUMBERS)
    alpha: tuple[float, ...] = key((0.5, 2.0, 0.8, 0.5), "[mu0, sigma0, muT, sigmaT] of the re-weighting v",
                                   check=FOUR_NUMBERS)
    q2: float = key(0.01, "GCE exponent for the positive side of unknowns", check=between(0, 100, True))
    q3: float = key(1.0, "exponent for the negative side of unknowns", check=between(0, 100, True))
    lam1: float = key(0.7, "upper bound of the positive pseudo-label weight", check=UNIT)
    lam2: float = key(0.5, "lower bound of the positive pseudo-label weight", check=UNIT)
    rho: float = key(0.9, "label-smoothing target of positive pseudo-labels", check=UNIT)
    reg: float = key(0.001, "GPR: weight of the expected-positive regulariser", check=between(0, 1e6))
    expected_pos: float = key(0.0, "expected positives per image (Cole et al.), 0 or >= 1; 0: the dataset's "
                                   "published value, the full training labels' mean, a labelled val split's, or "
                                   "estimated (damp.prior)",
                              check=Check(lambda v: v == 0 or 1 <= v <= 1e6, "0 (from the data) or in [1, 1e6]"))
    em_alpha: float = key(0.1, "EM / EM-APL / VLPL: weight of the entropy term on unknowns", check=between(0, 1e6))
    pl_weight: float = key(0.7, "VLPL / EM-PL: weight of positive pseudo-labels", check=between(0, 1e6))
    ls_coef: float = key(0.1, "AN-LS: label smoothing", check=between(0, 1, False, True))
    role_lr_mult: float = key(10.0, "ROLE: the label estimator's lr is lr x role_lr_mult", check=between(0, 1e6, True))
    apl_beta: float = key(0.02, "EM-APL: weight of the soft negatives", check=between(0, 1e6))
    apl_warmup: int = key(5, "EM-APL: first epoch after which soft negatives are added", check=ONE_UP)
    apl_neg_proportion: float = key(0.9, "EM-APL: share of each class's unobserved entries made soft negatives",
                                    check=UNIT)
    apl_epochs: int = key(10, "EM-APL: the epoch count in the per-epoch share 1/(apl_epochs - warmup) (Zhou et al.'s "
                              "code fixes it at 10, whatever the run's epochs)", check=ONE_UP)
    ll_delta_rel: float = key(0.0, "LL-R/Ct/Cp, BoostLU: percent of a batch's entries treated as false negatives per "
                                   "epoch; 0: the scheme's own (LL-R 0.5, LL-Ct 0.2, LL-Cp 0.1)", check=between(0, 100))
    boost_alpha: float = key(5.0, "BoostLU: factor of the positive part of the class activation maps",
                             check=between(0, 1e6, True))
    vlpl_threshold: float = key(0.3, "VLPL: a global-view softmax score above this is a pseudo-positive", check=UNIT)
    vlpl_temperature: float = key(0.01, "VLPL: softmax temperature", check=between(0, 100, True))
    mime_beta: float = key(1e-4, "MIME: weight of the KL term of the per-class Gaussian latent", check=between(0, 1e6))
    mime_theta: float = key(0.95, "MIME: a prediction above this becomes an observed positive for good", check=UNIT)
    mime_warmup: int = key(2, "MIME: first epoch after which predictions join the positives", check=ONE_UP)
    smile_alpha: float = key(0.1, "SMILE: weight of the classifier's fit to the observed labels", check=between(0, 1e6))
    smile_beta: float = key(0.01, "SMILE: weight of the label distribution's fit to the observed labels",
                            check=between(0, 1e6))
    smile_theta: float = key(0.01, "SMILE: weight of the classifier's fit to the label distribution",
                             check=between(0, 1e6))
    smile_warmup: int = key(2, "SMILE: epochs of the warm-up (both heads fit the observed labels only)", check=NONNEG)


@dataclass(frozen=True)
class TrainSpec(_Section):
    SECTION, STAGE = "train", "stage two"
    RULES = (Rule(("linear_init", "epochs"), lambda linear_init, epochs: linear_init < epochs,
                  "train.linear_init = {linear_init} must be below train.epochs = {epochs}"),
             Rule(("layer_decay", "wise_ft", "backbone"), lambda layer_decay, wise_ft, backbone: backbone == "clip" or
                  (layer_decay == 1 and not wise_ft), "train.layer_decay = {layer_decay} and train.wise_ft = {wise_ft} "
                  "need train.backbone = \"clip\" (not {backbone})"))
    backbone: str = key("resnet50", "the classifier's backbone (`aevlp train --help` lists them)")
    weights: str = key("default", "default (ImageNet for the ResNets; none otherwise) | imagenet | none | a file")
    labels: str = key("observed", "train on the single positives (the task) or the full labels (upper bound)",
                      choices=("observed", "full"))
    epochs: int = key(8, "training epochs", check=between(1, 10000))
    batch_size: int = key(16, "images per step", check=between(1, 65536))
    lr: float = key(0.0, "backbone learning rate (Adam, no weight decay, no schedule); 0: the backbone's own "
                         "(ResNets and clip 1e-5; small-cnn 3e-4; clip-head 1e-3)", check=between(0, 10))
    lr_mult: float = key(10.0, "the head's lr is lr x lr_mult", check=between(0, 1e6, True))
    layer_decay: float = key(1.0, "clip backbone: lr x layer_decay^(layers above); 1: none", check=between(0, 1, True))
    wise_ft: bool = key(False, "clip backbone: the tuned weights mixed with the initial ones (WiSE-FT), mix on val")
    image_size: int = key(0, "classifier input size; 0: the backbone's own (448 for the ResNets) or the images'",
                          check=Check(lambda v: v == 0 or 32 <= v <= 4096, "0 (the backbone's own) or in [32, 4096]"))
    early_stop: str = key("aevlp", "aevlp (patience or a drop > max_drop) | gr (drop only) | first-drop | none",
                          choices=("aevlp", "gr", "first-drop", "none"))
    patience: int = key(2, "epochs without val improvement before stopping (early_stop = aevlp)", check=NONNEG)
    max_drop: float = key(2.0, "val mAP points below the best that stop training", check=between(0, 100))
    select: str = key("auto", "which epoch is tested: val (best val mAP), observed-auc (the held-out rows' tags "
                              "against their unknowns, per class AUC), observed (mAP against their tags), "
                              "observed+pseudo (their tags and pseudo-labels), last; auto: val with a fully "
                              "labelled val split, else observed-auc (measured best; "
                              "aevlp/stage_two/model_selection.py)",
                      choices=("auto", "val", "observed-auc", "observed", "observed+pseudo", "last"))
    save_scores: bool = key(False, "every epoch's val/test predictions kept in RUN/scores/epoch-N.npz (studies)")
    linear_init: int = key(0, "epochs with the backbone frozen (only the head trains)", check=NONNEG)
    linear_init_lr: float = key(0.0, "the head's lr during those epochs; 0: lr x lr_mult", check=between(0, 10))
    seed: int = key(0, "seed of the initialisation, the shuffling and the flips", check=SEED)
    workers: int = key(-1, "DataLoader processes; -1: the machine's cores but one (at most 8)",
                       check=Check(lambda v: -1 <= v <= 256, "in [-1, 256] (-1: one per core but one)"))
    device: str = key("auto", "where training runs", check=DEVICE)
    precision: str = key("auto", "autocast: auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16",
                         choices=("auto", "fp32", "bf16", "fp16"))
    optimizer: str = key("adam", "adam (the shared recipe) | adamax (MIME's official)", choices=("adam", "adamax"))
    recipe: str = key("shared", "shared: every method with this section's recipe (like for like) | official: each "
                                "method's authors' recipe on the benchmark datasets (docs/training.md)",
                      choices=("shared", "official"))
    recipe_as: str = key("", "with recipe = official off the benchmarks: whose official recipes (voc | coco | "
                             "nuswide | cub), each lr, batch and epoch count scaled by this [train]'s over that one's",
                         choices=("", "voc", "coco", "nuswide", "cub"))
    recipe_base: str = key("", "written by a carried recipe: the lr/batch/epochs it scaled from; empty: this section's")
    image_cache: bool = key(False, "read images pre-resized from one HDF5 file per dataset and size")
    decode_on: str = key("auto", "where JPEGs are decoded: worker, or device (nvJPEG); auto: the device on a GPU "
                                 "when every image is a JPEG, else the workers (aevlp/placement.py)",
                         choices=("auto", "worker", "device"))
    channels_last: str = key("auto", "the image backbone's memory format: auto (= on)", choices=("auto", "on", "off"))
    compile: bool = key(False, "torch.compile the model")
    out: str = key("runs", "folder for run directories")


@dataclass(frozen=True)
class CacheSpec(_Section):
    SECTION, STAGE = "cache", "stage one"
    path: str = key("", "the cache file; empty: cache/DATASET.h5", cache=False)
    store_embeddings: str = key("none", "image embeddings kept: none | global (clip-head, the teacher) | all "
                                        "(every distinct view: re-prompting, the DAMP teacher)",
                                choices=("none", "global", "all"))
    sims: str = key("auto", "the per-view similarities: stored, or computed from the stored embeddings when read "
                            "(needs store_embeddings = all); auto: computed where that file is smaller (rounds x "
                            "views x classes > distinct views x embedding size)",
                    choices=("auto", "stored", "computed"))
    on_bad_image: str = key("fail", "unreadable images: stop with their paths, or skip them (marked in the cache)",
                            choices=("fail", "skip"), cache=False)


# In the order a config dict (and a run's config.toml) has always had its sections.
SECTIONS: dict[str, type] = {c.SECTION: c for c in (PipelineSpec, DatasetSpec, ClipSpec, TextSpec, ViewsSpec,
                                                     DampSpec, LossParams, TrainSpec, CacheSpec)}


def default_of(dotted: str) -> Any:
    """The declared default of `section.key`: what code that takes a setting as an argument falls back to."""
    section, name = dotted.split(".", 1)
    return declared(SECTIONS[section])[name].default


def declared(cls) -> dict[str, Any]:
    """name -> dataclass field of a section, in declaration order."""
    return {f.name: f for f in fields(cls) if f.default is not MISSING}


def choices_of(cls, name: str) -> tuple[str, ...]:
    return declared(cls)[name].metadata["choices"]


def defaults() -> dict[str, dict[str, Any]]:
    """A fresh config dict of every section's defaults (lists where TOML has lists)."""
    return {s: {n: list(f.default) if isinstance(f.default, tuple) else f.default for n, f in declared(c).items()}
            for s, c in SECTIONS.items()}


def check_section(section: str, table: dict[str, Any]) -> None:
    """The cross-key rules of a section (each key was checked when set): a ConfigError for the first broken."""
    checked(SECTIONS[section], **table)
