"""The standard SPML layout (Cole et al.): `formatted_{train,val}_{images,labels,labels_obs}.npy`.

Reading validates everything a later stage would otherwise trip over, and names the file at fault.
`aevlp_dataset.json`, written by the preparers, records class names and where the images are.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aevlp.data.observe import COLE_SEED, single_positive
from aevlp.data.registry import DatasetInfo, builtin_classnames, get_dataset
from aevlp.data.splits import train_val_split
from aevlp.errors import DataError, flag
from aevlp.hashing import file_sha256

__all__ = ["META_FILE", "Split", "SPMLData", "load_dataset", "write_layout", "read_meta", "image_problems",
           "image_identity", "image_root_of", "training_data_hash"]

log = logging.getLogger("aevlp")
META_FILE = "aevlp_dataset.json"
PHASES = ("train", "val")  # file phases; "val" files are the benchmark's test set


@dataclass
class Split:
    """One split: image paths (relative to the image root), full labels, observed labels."""

    images: np.ndarray
    labels: np.ndarray
    observed: np.ndarray
    index: np.ndarray  # rows of the source file this split was taken from

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class SPMLData:
    info: DatasetInfo
    root: Path
    image_root: Path
    classnames: list[str]
    train: Split
    val: Split
    test: Split
    report: dict = field(default_factory=dict)
    train_labels_known: bool = True  # False for observed-only data: train "labels" are the known positives
    val_labels: str = "full"  # "full", or "observed" (a proxy: no fully labelled val split exists)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise DataError(f"unknown split '{name}'", hint="choose train, val or test")
        return getattr(self, name)


def read_meta(root: Path) -> dict:
    path = Path(root) / META_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})", hint="re-run `aevlp data prepare`") from e


def _load_array(path: Path, hint: str) -> np.ndarray:
    if not path.exists():
        raise DataError(f"missing file {path}", hint=hint)
    with open(path, "rb") as fh:
        if fh.read(6) != b"\x93NUMPY":
            raise DataError(f"{path} is not a .npy file (numpy's format)", hint=f"write it with np.save; {hint}")
    plain = "np.save(path, np.asarray(ids, dtype=str))" if "images" in path.name else \
        "np.save(path, labels.astype(np.int8))"
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")  # never unpickle: an object array could run code
        return arr if arr.dtype.kind in "iufb" else np.asarray(arr)  # numbers stay mapped (read a block at a time)
    except ValueError as e:
        if "pickle" in str(e).lower() or "python objects" in str(e).lower():
            raise DataError(f"{path} holds Python objects, which aevlp does not unpickle (a file could run code)",
                            hint=f"save a plain array: {plain}") from None
        raise DataError(f"{path}: cannot be read as a .npy array ({e})", hint=hint) from e
    except Exception as e:  # numpy raises several types for corrupt files
        raise DataError(f"{path}: cannot be read as a .npy array ({e})", hint=hint) from e


CHECK_BYTES = 16 << 20  # label bytes (in the file's own dtype) checked and narrowed at a time


def _rows(arr: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Rows lo:hi of `arr`; a memory-mapped file's are read through a file handle, so the pages read do not stay
    resident in this process (a mapping keeps them: a label file's whole size at the end of a check)."""
    if not (isinstance(arr, np.memmap) and arr.flags.c_contiguous and arr.filename):
        return np.asarray(arr[lo:hi])
    row = int(np.prod(arr.shape[1:], dtype=np.int64))
    with open(arr.filename, "rb") as fh:
        fh.seek(arr.offset + lo * row * arr.dtype.itemsize)
        return np.fromfile(fh, dtype=arr.dtype, count=(hi - lo) * row).reshape((hi - lo, *arr.shape[1:]))


def _checked(block: np.ndarray, path: Path, allowed: Sequence[int]) -> np.ndarray:
    """`block` (rows of a label file, any numeric dtype) as int8, every value checked."""
    ok = np.isin(block, allowed)
    if not ok.all():
        bad = np.unique(block[~ok])[:5].tolist()
        raise DataError(f"{path}: label values must be in {set(allowed)}, found {bad}",
                        hint="labels are 0/1 matrices; convert or re-run `aevlp data prepare`")
    return block.astype(np.int8)


def _label_file(path: Path, hint: str, n: int, num_classes: int, images: Path) -> np.ndarray:
    labels = _load_array(path, hint)
    if labels.ndim != 2 or labels.shape[0] != n:
        raise DataError(f"{path}: shape {labels.shape} does not match {n} images in {images.name}",
                        hint="the label matrix needs one row per image, in the same order")
    if labels.shape[1] != num_classes:
        raise DataError(f"{path}: {labels.shape[1]} label columns, but the dataset has {num_classes} classes")
    return labels


def _phase_images(img_path: Path, phase: str, hint: str) -> np.ndarray:
    images = _load_array(img_path, hint)
    if images.ndim != 1:
        raise DataError(f"{img_path}: expected a 1-D array of image paths, got shape {images.shape}")
    images = images.astype(str)
    if not len(images):
        raise DataError(f"{img_path} lists no images: the {phase} split is empty", hint=hint)
    names, counts = np.unique(images, return_counts=True)
    if (counts > 1).any():
        dup = [f"{n} ({c}x)" for n, c in zip(names[counts > 1], counts[counts > 1])]
        raise DataError(f"{img_path}: {len(dup)} image id(s) appear more than once: {', '.join(dup[:5])}"
                        f"{' ...' if len(dup) > 5 else ''}",
                        hint="each image once, with all its labels in one row (`aevlp data prepare table` merges rows)")
    return images


def _load_phase(root: Path, phase: str, num_classes: int, hint: str, report: dict, parts_of) -> tuple:
    """(images, [(rows, labels, observed int8) of each part]) of one phase's files, `parts_of(n)` giving the file
    rows of each part (e.g. train and val). The label files are checked, narrowed and split a block of rows at a time
    (CHECK_BYTES), so no whole-file copy is held beside the parts; generated observed labels draw as one call."""
    img_path = root / f"formatted_{phase}_images.npy"
    lab_path = root / f"formatted_{phase}_labels.npy"
    obs_path = root / f"formatted_{phase}_labels_obs.npy"
    images = _phase_images(img_path, phase, hint)
    labels = _label_file(lab_path, hint, len(images), num_classes, img_path)
    observed, rng = None, None
    if obs_path.exists():
        observed = _load_array(obs_path, hint)
        if observed.shape != labels.shape:
            raise DataError(f"{obs_path}: shape {observed.shape} differs from {lab_path.name} {labels.shape}")
    else:
        rng = np.random.RandomState(COLE_SEED)
        report[f"{phase}_observed_generated"] = True
        log.warning("%s missing: generated single-positive labels with seed %d", obs_path.name, COLE_SEED)
    parts = parts_of(len(images))
    part_of, pos_of = np.full(len(images), -1, dtype=np.int8), np.zeros(len(images), dtype=np.int64)
    for k, rows in enumerate(parts):
        part_of[rows], pos_of[rows] = k, np.arange(len(rows))
    outs = [tuple(np.empty((len(rows), num_classes), dtype=np.int8) for _ in range(2)) for rows in parts]
    itemsize = max(labels.dtype.itemsize, 1 if observed is None else observed.dtype.itemsize)
    step = max(1, CHECK_BYTES // max(itemsize * num_classes, 1))
    no_pos = wrong = 0
    for lo in range(0, len(images), step):
        hi = min(lo + step, len(images))
        lab = _checked(_rows(labels, lo, hi), lab_path, (0, 1))
        obs = single_positive(lab, rng=rng) if observed is None else \
            _checked(_rows(observed, lo, hi), obs_path, (-1, 0, 1))
        no_pos += int((lab.sum(axis=1) == 0).sum())
        wrong += int(((obs == 1) & (lab != 1)).sum())
        for k, (lab_out, obs_out) in enumerate(outs):
            mine = part_of[lo:hi] == k
            lab_out[pos_of[lo:hi][mine]], obs_out[pos_of[lo:hi][mine]] = lab[mine], obs[mine]
    if no_pos:
        report[f"{phase}_rows_without_positive"] = no_pos
        log.warning("%s: %d of %d rows have no positive label (kept, as in the benchmark)",
                    lab_path.name, no_pos, len(images))
    if wrong:
        report[f"{phase}_observed_not_in_truth"] = wrong
        log.warning("%s: %d observed positives are not positives in %s", obs_path.name, wrong, lab_path.name)
    return images, [(rows, *out) for rows, out in zip(parts, outs)]


def load_dataset(name: str, root: str | Path, *, image_root: str | Path | None = None,
                 val_frac: float = 0.2, split_seed: int = COLE_SEED) -> SPMLData:
    """Load a dataset in the SPML layout and split it as the benchmark does.

    train = official train minus val (observed labels); val = `val_frac` of official train
    (judged on clean labels); test = the official val split (clean labels).
    """
    info = get_dataset(name)
    root = Path(root).expanduser()
    hint = f"prepare it with `aevlp data prepare {info.name} --out {root}` (see docs/datasets.md)"
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist or is not a directory", hint=hint)
    meta = read_meta(root)
    if meta.get("dataset") and get_dataset(meta["dataset"]).name != info.name:
        raise DataError(f"{root / META_FILE} says dataset '{meta['dataset']}', not '{info.name}'",
                        hint=f"pass {flag('dataset.name', meta['dataset'])} or point {flag('dataset.data_root')} "
                             "elsewhere")
    if "classnames" in meta:
        classnames = list(meta["classnames"])
    elif info.num_classes is not None:
        classnames = builtin_classnames(info.name)
    else:
        raise DataError(f"{root / META_FILE} is missing: the '{info.name}' dataset takes its classes from it",
                        hint="create the directory with `aevlp data prepare table --csv FILE --images DIR --out DIR`")
    if info.num_classes is not None and len(classnames) != info.num_classes:
        raise DataError(f"{root / META_FILE}: {len(classnames)} class names, '{info.name}' has {info.num_classes}")
    report: dict = {}
    images, ((tr, tr_labels, tr_obs), (va, va_labels, va_obs)) = _load_phase(
        root, "train", len(classnames), hint, report, lambda n: _train_val(meta, n, val_frac, split_seed))
    test_imgs, ((_, test_labels, _),) = _load_phase(root, "val", len(classnames), hint, report,
                                                    lambda n: [np.arange(n)])
    img_root = image_root_of(info.name, root, image_root)
    known = meta.get("train_labels", "full") != "observed-only"
    return SPMLData(
        info=info, root=root, image_root=img_root, classnames=classnames,
        train=Split(images[tr], tr_labels, tr_obs, tr),
        # Val is judged against its labels (clean, or on observed-only data the held-out rows' tags); its
        # observed tags are what the model-selection proxies read (aevlp.stage_two.model_selection). Test: the truth.
        val=Split(images[va], va_labels, va_obs, va),
        test=Split(test_imgs, test_labels, test_labels.copy(), np.arange(len(test_imgs))),
        report=report, train_labels_known=known,
        val_labels="full" if known or "val_rows" in meta else "observed",
    )


def image_root_of(name: str, root: str | Path, image_root: str | Path | None = None) -> Path:
    """The folder a dataset's image paths are relative to (`image_root` if given, else what its folder's
    aevlp_dataset.json or its registry entry says), without reading its label files."""
    if image_root is not None:
        return Path(image_root)
    root = Path(root).expanduser()
    return root / read_meta(root).get("image_root", get_dataset(name).image_root)


def _train_val(meta: dict, n: int, val_frac: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The benchmark's seeded split of the train file, or the explicit val rows the preparer recorded."""
    if "val_rows" not in meta:
        return train_val_split(n, val_frac=val_frac, seed=split_seed)
    va = np.asarray(sorted(meta["val_rows"]), dtype=np.int64)
    if va.size and (va.min() < 0 or va.max() >= n):
        raise DataError(f"{META_FILE}: val_rows point outside the {n} train rows", hint="re-run `aevlp data prepare`")
    return np.setdiff1d(np.arange(n), va), va


def image_identity(image_root: Path, paths: Sequence[str], mode: str = "stat") -> str:
    """A short hash of the image files themselves: their sizes and modification times ("stat"), their
    bytes ("content": slower, exact), or nothing ("none"), so that replaced images are noticed.
    "MODE:absent" when none of them exists here (a cache copied without its images: nothing to check)."""
    if mode == "none":
        return "none"
    h, found = hashlib.sha256(), 0
    for rel in paths:
        path = Path(image_root) / rel
        try:
            if mode == "content":
                h.update(bytes.fromhex(file_sha256(path)))
            else:
                st = path.stat()
                h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
            found += 1
        except OSError:
            h.update(b"missing")
        h.update(b"\0")
    return f"{mode}:{h.hexdigest()[:16]}" if found or len(paths) == 0 else f"{mode}:absent"


def training_data_hash(data: SPMLData, mode: str = "stat") -> str:
    """Identity of everything stage two reads besides the cache: the splits' ids and labels, and the
    val/test image files (the train images are in the cache's own fingerprint)."""
    h = hashlib.sha256()
    for split in (data.train, data.val, data.test):
        h.update("\0".join(map(str, split.images)).encode())
        h.update(np.ascontiguousarray(split.labels, dtype=np.int8).tobytes())
        # val and test as they were hashed before their observed tags were kept (runs made then stay current):
        # the val rows' tags come from the same file as the training rows', which the cache fingerprints
        observed = split.observed if split is data.train else split.labels
        h.update(np.ascontiguousarray(observed, dtype=np.int8).tobytes())
    h.update(image_identity(data.image_root, [*data.val.images, *data.test.images], mode).encode())
    return h.hexdigest()[:16]


def image_problems(image_root: Path, paths: Sequence[str], progress: bool = False) -> list[str]:
    """'path: reason' for every image that is missing, empty, or whose header no decoder reads."""
    from PIL import Image, UnidentifiedImageError

    from aevlp.progress import bar

    problems = []
    for rel in bar(paths, desc="checking images", unit="img", disable=not progress, leave=False):
        path = Path(image_root) / rel
        try:
            if path.stat().st_size == 0:
                problems.append(f"{path}: empty file")
                continue
            with Image.open(path) as im:
                im.size  # noqa: B018  (reading the header is the check)
        except FileNotFoundError:
            problems.append(f"{path}: missing")
        except (UnidentifiedImageError, OSError) as e:
            problems.append(f"{path}: not a readable image ({type(e).__name__})")
    return problems


def write_layout(out: str | Path, dataset: str, classnames: Sequence[str], image_root: str | Path,
                 phases: dict[str, tuple[Sequence[str], np.ndarray]], *, seed: int = COLE_SEED,
                 extra: dict | None = None, observed: dict[str, np.ndarray] | None = None) -> dict:
    """Write formatted files (+ observed labels: Cole's sampler with a fresh RNG per phase, or the
    `observed` matrices given) and metadata."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"dataset": dataset, "num_classes": len(classnames), "out": str(out)}
    for phase, (images, labels) in phases.items():
        labels = np.asarray(labels, dtype=np.float32 if dataset in ("voc", "coco") else np.int64)
        if labels.shape != (len(images), len(classnames)):
            raise DataError(f"internal: {phase} labels {labels.shape} vs {len(images)} images")
        np.save(out / f"formatted_{phase}_images.npy", np.asarray(images, dtype=str))
        np.save(out / f"formatted_{phase}_labels.npy", labels)
        obs = observed[phase] if observed and phase in observed else single_positive(labels.astype(np.int64), seed=seed)
        np.save(out / f"formatted_{phase}_labels_obs.npy", np.asarray(obs).astype(labels.dtype))
        name = "test" if phase == "val" else phase  # the "val" files are the held-out test split (Cole's naming)
        summary[f"{name}_images"] = len(images)
        summary[f"{name}_rows_without_positive"] = int((labels.sum(axis=1) == 0).sum())
    try:
        rel = Path(image_root).resolve().relative_to(out.resolve())
        img_root = str(rel)
    except ValueError:
        img_root = str(Path(image_root).resolve())
    meta = {"dataset": dataset, "classnames": list(classnames), "image_root": img_root, **(extra or {})}
    (out / META_FILE).write_text(json.dumps(meta, indent=1))
    return summary
