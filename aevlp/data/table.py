"""Your own data: a CSV (one row per image) → SPML layout.

Labels come either from one column of names joined by a separator ("cat|dog") or from one 0/1
column per class. A `split` column picks the rows: `train`, `test` (the held-out test split, with
full labels) and, optionally, `val` (a fully labelled validation split; without one, a seeded 20 % of
the training rows is held out). Without a split column a seeded `test_frac` of rows is the test split.

Two modes for the training rows:
  * full labels (the benchmark's way): observed single positives are drawn with Cole's sampler;
  * `observed_only`: the CSV's training labels *are* what is known (one tag per image, or a few
    positives, all kept as observed); no full training labels exist anywhere in the prepared folder.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from aevlp.data.layout import write_layout
from aevlp.errors import DataError

__all__ = ["prepare_table"]

log = logging.getLogger("aevlp")
IMAGE_COLUMNS = ("image", "path", "file", "filename", "image_path")
SPLITS = ("train", "val", "test")


LAYOUT_HINT = "one row per image under a header: image,labels[,split] with labels like cat|dog (docs/datasets.md)"


def _delimiter(csv: Path) -> str:
    """The column delimiter of a CSV: ',' unless its header is clearly ';'- or tab-separated (spreadsheets
    in many locales write ';')."""
    with open(csv, newline="", encoding="utf-8", errors="replace") as fh:
        header = fh.readline()
    counts = {d: header.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=counts.get)
    return best if counts[best] > counts[","] else ","


def _read_csv(csv: Path) -> pd.DataFrame:
    if not csv.is_file():
        raise DataError(f"missing CSV {csv}")
    if csv.stat().st_size == 0:
        raise DataError(f"{csv} is empty", hint=LAYOUT_HINT)
    delimiter = _delimiter(csv)
    if delimiter != ",":
        log.warning("%s: columns are separated by %r; reading it so", csv, delimiter)
    try:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False, sep=delimiter)
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{csv}: no header and no rows ({e})", hint=LAYOUT_HINT) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{csv}: cannot be parsed as CSV ({e})", hint=LAYOUT_HINT) from e
    if df.empty:
        raise DataError(f"{csv}: a header ({', '.join(df.columns)}) but no rows", hint=LAYOUT_HINT)
    return df


def _image_column(df: pd.DataFrame, csv: Path, image_col: str | None) -> str:
    if image_col is None:
        image_col = next((c for c in IMAGE_COLUMNS if c in df.columns), None)
        if image_col is None:
            raise DataError(f"{csv}: no image path column; looked for {', '.join(IMAGE_COLUMNS)}",
                            hint="name it with --image-col")
    elif image_col not in df.columns:
        raise DataError(f"{csv}: no column '{image_col}'", hint=f"columns are: {', '.join(df.columns)}")
    return image_col


def _check_tag_names(tags: list[list[str]], csv: Path, sep: str) -> None:
    """Tags that look like another separator, or that differ only by case or spaces, are user errors."""
    for other in {",", ";", "|", "/"} - {sep}:
        odd = sorted({t for row in tags for t in row if other in t})
        if odd:
            raise DataError(f"{csv}: label {odd[0]!r} contains '{other}' but the separator is '{sep}'",
                            hint=f"pass --sep '{other}' if that is the separator, or rename the label")
    seen: dict[str, str] = {}
    for t in sorted({t for row in tags for t in row}):
        key = " ".join(t.lower().split())
        if key in seen:
            log.warning("%s: labels %r and %r differ only by case or spaces; they are kept as two classes",
                        csv, seen[key], t)
        seen.setdefault(key, t)


def _labels(df: pd.DataFrame, csv: Path, cols: tuple[str, ...], labels_col: str, sep: str):
    """(classnames, labels [N, C] int64) from a labels column or from 0/1 columns."""
    if labels_col in df.columns:
        tags = [[t.strip() for t in s.split(sep) if t.strip()] for s in df[labels_col]]
        _check_tag_names(tags, csv, sep)
        classnames = sorted({t for row in tags for t in row})
        col = {c: i for i, c in enumerate(classnames)}
        labels = np.zeros((len(df), len(classnames)), dtype=np.int64)
        for r, row in enumerate(tags):
            labels[r, [col[t] for t in row]] = 1
    else:
        classnames = [c for c in df.columns if c not in cols]
        if not classnames:
            raise DataError(f"{csv}: no '{labels_col}' column and no 0/1 class columns",
                            hint=f"add a '{labels_col}' column like 'cat{sep}dog' or one 0/1 column per class")
        vals = df[classnames].apply(lambda s: s.str.strip())
        bad = ~vals.isin(["0", "1"])
        if bad.any().any():
            r, c = np.argwhere(bad.to_numpy())[0]
            raise DataError(f"{csv}: row {r + 2}, column '{classnames[c]}' is '{vals.iat[r, c]}', expected 0 or 1")
        labels = vals.to_numpy().astype(np.int64)
    if not classnames:
        raise DataError(f"{csv}: no labels found in column '{labels_col}'", hint=LAYOUT_HINT)
    return classnames, labels


def _paths(df: pd.DataFrame, csv: Path, image_col: str, images: Path, allow_outside: bool,
           check_images: bool) -> np.ndarray:
    """Image paths relative to --images: unique (`a.png` and `./a.png` are one image), inside it (unless
    allowed), and existing; written normalised."""
    import posixpath

    paths = np.array([posixpath.normpath(p.strip().replace("\\", "/")) if p.strip() else "" for p in df[image_col]],
                     dtype=object)
    empty = np.flatnonzero(paths == "")
    if len(empty):
        raise DataError(f"{csv}: line {empty[0] + 2} has no image path", hint="every row names its image")
    dup = pd.Series(paths)[pd.Series(paths).duplicated()].tolist()
    if dup:
        raise DataError(f"{csv}: image {dup[0]!r} appears {int((paths == dup[0]).sum())} times",
                        hint="one row per image, with all its labels in that row")
    root = images.resolve()
    if not allow_outside:
        outside = [p for p in paths if Path(p).is_absolute() or not (root / p).resolve().is_relative_to(root)]
        if outside:
            raise DataError(f"{csv}: {len(outside)} image path(s) point outside --images {images}, e.g. "
                            f"{outside[0]!r}", hint="paths must be relative to --images; pass "
                                                    "--allow-outside-images if that is really meant")
    if check_images:
        missing = [p for p in paths if not (images / p).is_file()]
        if missing:
            raise DataError(f"{csv}: {len(missing)} image files not found under {images}, e.g. {missing[:3]}",
                            hint="--images must be the folder the CSV paths are relative to")
    return paths


def _splits(df: pd.DataFrame, csv: Path, split_col: str, test_frac: float, seed: int) -> np.ndarray:
    """One of train / val / test per row."""
    if split_col in df.columns:
        split = df[split_col].str.strip().str.lower().to_numpy()
        unknown = sorted(set(split) - set(SPLITS))
        if unknown:
            raise DataError(f"{csv}: column '{split_col}' has {unknown}; use train, val (optional) or test")
        return split
    if not 0.0 < test_frac < 1.0:
        raise DataError(f"--test-frac must be in (0, 1), got {test_frac}")
    split = np.full(len(df), "train", dtype=object)
    split[np.random.RandomState(seed).permutation(len(df))[:int(round(test_frac * len(df)))]] = "test"
    return split


def _with_reviewed(observed: dict | None, reviewed, images, classnames, labels, extra: dict) -> np.ndarray:
    """The training rows' observed labels (the CSV's known tags, or Cole's single positives) with a Label
    Studio review laid over them: its confirmed positives and negatives (`aevlp.data.reviewed`)."""
    from aevlp.data.observe import single_positive
    from aevlp.data.reviewed import read_reviewed

    base = observed["train"] if observed else single_positive(labels.astype(np.int64))
    review = read_reviewed(reviewed, list(images), classnames)
    extra["reviewed"] = {"source": str(reviewed), "images": int((review != 0).any(1).sum()),
                         "positives": int((review == 1).sum()), "negatives": int((review == -1).sum())}
    return np.where(review != 0, review, base)


def _check_tagged(df: pd.DataFrame, csv: Path, labels: np.ndarray, split: np.ndarray, image_col: str) -> None:
    """Every training row of observed-only data carries its known tag; the rows that do not are named."""
    empty = np.flatnonzero((split == "train") & (labels.sum(1) == 0))
    if len(empty):
        where = ", ".join(f"line {i + 2} ({df[image_col].iloc[i]})" for i in empty[:5])
        raise DataError(f"{csv}: {len(empty)} training row(s) have no tag: {where}{' ...' if len(empty) > 5 else ''}",
                        hint="in --observed-only mode every training image needs its known tag: add it, or move "
                             "the row to split=test with its full labels")


def _observed_only(labels: np.ndarray, is_train: np.ndarray) -> np.ndarray:
    """The observed labels of observed-only data: a training row's tags as they are; a fully labelled val row
    (split=val) one of its labels drawn as Cole et al.'s sampler draws a single positive, so the model-selection
    proxies can be measured against its full labels (aevlp.stage_two.model_selection)."""
    from aevlp.data.observe import single_positive

    return np.where(is_train[:, None], labels, single_positive(labels.astype(np.int64)))


def prepare_table(csv: str | Path, images: str | Path, out: str | Path, *, image_col: str | None = None,
                  labels_col: str = "labels", sep: str = "|", split_col: str = "split", test_frac: float = 0.2,
                  seed: int = 0, check_images: bool = True, observed_only: bool = False,
                  allow_outside_images: bool = False, reviewed: str | Path | None = None) -> dict:
    """The CSV as a dataset in the SPML layout (module docstring). `reviewed`: a Label Studio JSON export of
    the tasks `aevlp cache export --format label-studio` wrote: each annotated training image's classes are
    observed, chosen as positives and the others as negatives, beside its known tag."""
    csv, images = Path(csv), Path(images)
    if not sep or sep.isspace() or len(sep) > 3:
        raise DataError(f"--sep {sep!r}: the separator between a row's labels must be one to three visible "
                        "characters", hint="the default is '|' (cat|dog); e.g. --sep ';'")
    df = _read_csv(csv)
    image_col = _image_column(df, csv, image_col)
    classnames, labels = _labels(df, csv, (image_col, split_col), labels_col, sep)
    paths = _paths(df, csv, image_col, images, allow_outside_images, check_images)
    split = _splits(df, csv, split_col, test_frac, seed)
    if not (split == "test").any() or not (split == "train").any():
        raise DataError(f"{csv}: need both train and test rows, got {int((split == 'train').sum())} and "
                        f"{int((split == 'test').sum())}")
    train = np.flatnonzero(split != "test")  # explicit val rows live in the train file, as in Cole's layout
    extra = {"source": str(csv), "train_labels": "observed-only" if observed_only else "full"}
    if (split == "val").any():
        extra["val_rows"] = [int(i) for i in np.flatnonzero(split[train] == "val")]
    observed = None
    if observed_only:  # the known positives are the observed labels; nothing else is known of these rows
        _check_tagged(df, csv, labels, split, image_col)
        observed = {"train": _observed_only(labels[train], split[train] == "train")}
    if reviewed is not None:
        observed = {"train": _with_reviewed(observed, reviewed, paths[train], classnames, labels[train], extra)}
    phases = {"train": (paths[train], labels[train]), "val": (paths[split == "test"], labels[split == "test"])}
    summary = write_layout(out, "table", classnames, images, phases, extra=extra, observed=observed)
    summary["val_images"] = len(extra.get("val_rows", [])) or "a seeded 20 % of the train rows"
    if observed_only:
        summary["train_labels"] = "observed only (pseudo-label precision/recall will not be reported)"
    if "reviewed" in extra:
        r = extra["reviewed"]
        summary["reviewed"] = f"{r['images']} images: {r['positives']} confirmed positives, {r['negatives']} negatives"
    return summary


def observed_only_copy(data, out: str | Path, *, labelled_val: bool = False) -> dict:
    """A dataset folder over the same images holding only what a user with single-tag data has: each training
    row its observed tag (the dataset's own single positive), the test rows fully labelled. The val rows stay
    training rows with their tag (no labelled val split: a seeded 20 % is held out again, the same rows), or with
    `labelled_val` a fully labelled val split. Written as a CSV a user could write (`out/tags.csv`: one 0/1 column
    per class, in the dataset's class order, so a run on it starts from the same weights as one on the full
    labels) through `prepare_table --observed-only`; reused when the CSV is unchanged. `data`: an `SPMLData`
    with full labels."""
    out = Path(out)
    names = list(data.classnames)
    n = len(data.train) + len(data.val)
    labels = np.zeros((n, len(names)), dtype=np.int64)
    images, split = np.empty(n, dtype=object), np.full(n, "train", dtype=object)
    for part, is_val in ((data.train, False), (data.val, True)):
        keep_full = labelled_val and is_val
        labels[part.index] = part.labels if keep_full else (part.observed == 1)
        images[part.index] = part.images
        split[part.index] = "val" if keep_full else "train"
    df = pd.DataFrame(np.concatenate([labels, data.test.labels.astype(np.int64)]), columns=names)
    df.insert(0, "split", [*split, *["test"] * len(data.test)])
    df.insert(0, "image", [*images, *data.test.images])
    text = df.to_csv(index=False)
    csv = out / "tags.csv"
    if csv.exists() and csv.read_text() == text and (out / "aevlp_dataset.json").exists():
        return {"status": "reused", "out": str(out), "csv": str(csv)}
    out.mkdir(parents=True, exist_ok=True)
    csv.write_text(text)
    summary = prepare_table(csv, data.image_root, out, observed_only=True)
    return {**summary, "status": "created", "csv": str(csv)}
