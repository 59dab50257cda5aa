"""Your own data: a CSV (one row per image) → SPML layout.

Labels come either from one column of names joined by a separator ("cat|dog") or from one 0/1
column per class. A `split` column (train/test) picks the test rows; without one, a seeded
`test_frac` of rows becomes the test set. Observed single positives use Cole's sampler.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from aevlp.data.layout import write_layout
from aevlp.errors import DataError

__all__ = ["prepare_table"]

IMAGE_COLUMNS = ("image", "path", "file", "filename", "image_path")


def _read_csv(csv: Path) -> pd.DataFrame:
    if not csv.exists():
        raise DataError(f"missing CSV {csv}")
    try:
        return pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{csv}: cannot be parsed as CSV ({e})") from e


def prepare_table(csv: str | Path, images: str | Path, out: str | Path, *, image_col: str | None = None,
                  labels_col: str = "labels", sep: str = "|", split_col: str = "split",
                  test_frac: float = 0.2, seed: int = 0, check_images: bool = True) -> dict:
    csv, images = Path(csv), Path(images)
    df = _read_csv(csv)
    if df.empty:
        raise DataError(f"{csv}: no rows")
    if image_col is None:
        image_col = next((c for c in IMAGE_COLUMNS if c in df.columns), None)
        if image_col is None:
            raise DataError(f"{csv}: no image path column; looked for {', '.join(IMAGE_COLUMNS)}",
                            hint="name it with --image-col")
    elif image_col not in df.columns:
        raise DataError(f"{csv}: no column '{image_col}'", hint=f"columns are: {', '.join(df.columns)}")
    if labels_col in df.columns:
        tags = [[t.strip() for t in s.split(sep) if t.strip()] for s in df[labels_col]]
        classnames = sorted({t for row in tags for t in row})
        col = {c: i for i, c in enumerate(classnames)}
        labels = np.zeros((len(df), len(classnames)), dtype=np.int64)
        for r, row in enumerate(tags):
            labels[r, [col[t] for t in row]] = 1
    else:
        classnames = [c for c in df.columns if c not in (image_col, split_col)]
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
        raise DataError(f"{csv}: no labels found in column '{labels_col}'")
    paths = df[image_col].str.strip().to_numpy()
    if check_images:
        missing = [p for p in paths if not (images / p).is_file()]
        if missing:
            raise DataError(f"{csv}: {len(missing)} image files not found under {images}, e.g. {missing[:3]}",
                            hint="--images must be the folder the CSV paths are relative to")
    if split_col in df.columns:
        split = df[split_col].str.strip().str.lower()
        unknown = sorted(set(split) - {"train", "test", "val"})
        if unknown:
            raise DataError(f"{csv}: column '{split_col}' has {unknown}; use train or test")
        is_test = split.isin(["test", "val"]).to_numpy()
    else:
        if not 0.0 < test_frac < 1.0:
            raise DataError(f"--test-frac must be in (0, 1), got {test_frac}")
        n_test = int(round(test_frac * len(df)))
        is_test = np.zeros(len(df), dtype=bool)
        is_test[np.random.RandomState(seed).permutation(len(df))[:n_test]] = True
    if is_test.all() or not is_test.any():
        raise DataError(f"{csv}: need both train and test rows, got {int((~is_test).sum())} and {int(is_test.sum())}")
    phases = {"train": (paths[~is_test], labels[~is_test]), "val": (paths[is_test], labels[is_test])}
    summary = write_layout(out, "table", classnames, images, phases, extra={"source": str(csv)})
    return summary
