"""Looking after stage-one caches: list, inspect, verify and clean them (`aevlp cache ...`)."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from aevlp.cache import reader
from aevlp.cache.lock import lock_owner, owner_path
from aevlp.cache.reader import Cache, class_difference
from aevlp.cache.schema import dataset_hash, read_fingerprint
from aevlp.cache.validate import computes_sims, problems
from aevlp.errors import AevlpError
from aevlp.metrics import pseudo_label_quality_per_class

__all__ = ["list_caches", "inspect_cache", "verify_cache", "clean_candidates"]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).glob("*") if p.suffix == ".h5" or p.name.endswith(".h5.partial"))


def list_caches(folder: str | Path) -> pd.DataFrame:
    rows = []
    for p in _files(Path(folder)):
        row = {"file": p.name, "size_mb": round(p.stat().st_size / 2 ** 20, 2), "embeddings_mb": None}
        try:
            fp, complete = read_fingerprint(p)
            row.update(dataset=fp.get("dataset"), model=fp.get("clip_arch"),
                       pretrained=str(fp.get("clip_weights"))[:19],
                       grid=fp.get("grid"), rounds=fp.get("rounds"), images=fp.get("num_images"),
                       complete=complete and not p.name.endswith(".partial"))
            with h5py.File(p, "r") as f:
                row["embeddings_mb"] = round(sum(f[k].id.get_storage_size() for k in f if "embeddings" in k)
                                             / 2 ** 20, 2)
        except (AevlpError, OSError):
            row.update(complete=False, dataset="(unreadable)")
        rows.append(row)
    cols = ["file", "dataset", "model", "pretrained", "grid", "rounds", "images", "size_mb", "embeddings_mb",
            "complete"]
    return pd.DataFrame(rows, columns=cols)


def inspect_cache(path: str | Path) -> tuple[dict, pd.DataFrame]:
    """(facts, per-class table): pseudo-label counts per round-average and, with ground truth, P/R.
    A damaged or foreign file is an AevlpError naming what is wrong, never a traceback."""
    try:
        return _inspect(path)
    except (OSError, KeyError, ValueError, TypeError, IndexError) as e:
        raise AevlpError(f"{path} cannot be inspected: {type(e).__name__}: {e}",
                         hint=f"`aevlp cache verify {path}` lists what is wrong") from None


def _inspect(path: str | Path) -> tuple[dict, pd.DataFrame]:
    with Cache(path) as c:
        shapes = {k: list(c.f[k].shape) for k in c.f}
        sizes = {k: round(c.f[k].id.get_storage_size() / 2 ** 20, 2) for k in c.f}
        keep = ~c.f["bad"][:]
        pseudo = np.stack([reader.default_labels(c.f, r)[keep] for r in range(c.rounds)])  # [R, N, C], readable
        obs = c.array("observed")[keep]
        table = pd.DataFrame({"class": c.classnames()})
        table["pseudo_pos"] = ((pseudo == 1) & (obs != 1)).sum(axis=(0, 1)) / c.rounds
        table["pseudo_neg"] = (pseudo == -1).sum(axis=(0, 1)) / c.rounds
        table["observed"] = (obs == 1).sum(0)
        if "labels" in c.f:  # rounds pooled: counts summed over R rounds, so the ratios are round-averaged
            q = pseudo_label_quality_per_class(pseudo.reshape(-1, pseudo.shape[-1]), np.tile(obs, (c.rounds, 1)),
                                               np.tile(c.array("labels")[keep], (c.rounds, 1)), c.classnames())
            table["precision"], table["recall"] = q["precision"], q["recall"]
        facts = {"file": str(c.path), "fingerprint": c.fingerprint, "selection": c.selection, "shapes": shapes,
                 "sizes_mb": sizes,
                 "clip_preprocess": json.loads(c.f.attrs.get("clip_preprocess", "{}")),
                 "summary": json.loads(c.f.attrs.get("summary", "{}")),
                 "versions": json.loads(c.f.attrs.get("versions", "{}")), "created": c.f.attrs.get("created", "")}
    return facts, table


def verify_cache(path: str | Path, data_root: str | Path | None = None) -> list[str]:
    """Problems found by reading everything (empty list: the cache is sound); never raises. With
    `data_root`, the cache's rows and classes are also compared with that dataset's."""
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except (OSError, RuntimeError) as e:  # HDF5 reports damaged metadata as either
        return [f"cannot be opened as HDF5 ({e}): truncated, damaged or not a cache"]
    try:
        with f:
            found = [] if f.attrs.get("complete", False) else ["not marked complete"]
            found += problems(f, thorough=True)
            if found and found[-1].startswith(("missing datasets", "no readable", "schema_version", "cannot be read")):
                return found
            return found + _rederived(f) + _identity(f, data_root)
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:  # bytes damaged below
        return [f"cannot be read: {type(e).__name__}: {e}"]


def _rederived(f: h5py.File) -> list[str]:
    """What can be computed again from the similarities: each round's DAMP scores and pseudo-labels under the
    selection stage one stored (a cache whose checksums were recomputed after an edit is caught here)."""
    if computes_sims(f):
        return []  # nothing derived is stored: the embeddings they come from are held to their checksums
    found = []
    for r in range(f["sims"].shape[0]):
        differ, scores_differ = 0, False
        for lo, hi, scores, pseudo in reader.stored_selection(f, r):  # a block of rows at a time
            differ += int((pseudo != f["pseudo"][r, lo:hi]).sum())
            scores_differ |= not np.allclose(scores.astype(np.float32), f["scores"][r, lo:hi].astype(np.float32),
                                             atol=1e-3)
        if differ:
            found.append(f"pseudo, round {r}: differs from the pseudo-labels the similarities give under the stored "
                         f"selection ({differ} entries)")
        if scores_differ:
            found.append(f"scores, round {r}: differ from the DAMP scores the similarities give")
    return found


def _identity(f: h5py.File, data_root: str | Path | None) -> list[str]:
    """The rows against the fingerprint and, given the data, the class names and image ids against it."""
    fp, found = json.loads(f.attrs["fingerprint"]), []
    ids = list(f["image_ids"].asstr()[:])
    if dataset_hash(ids, f["observed"][:]) != fp.get("dataset_hash"):
        found.append("image ids / observed labels do not match the fingerprint's dataset_hash")
    if data_root is not None:
        from aevlp.data import load_dataset

        data = load_dataset(str(fp.get("dataset")), data_root)
        names = list(f["classnames"].asstr()[:])
        if names != list(data.classnames):
            found.append(f"classnames differ from {data_root}'s: {class_difference(names, list(data.classnames))}")
        rows = {im: obs for split in (data.train, data.val) for im, obs in zip(split.images, split.observed)}
        if not set(ids) <= set(rows):
            found.append(f"image ids not in {data_root}'s training images: another dataset or split")
        elif not np.array_equal(f["observed"][()], np.stack([rows[i] for i in ids])):
            found.append(f"observed labels differ from {data_root}'s for the same images")
    return found


def clean_candidates(folder: str | Path, wanted: list[Path] | None = None) -> list[tuple[Path, str]]:
    """Files that can go: unfinished runs no live process holds, stale locks, and — when `wanted`
    (the caches some pipeline still wants) is given — complete caches not in it."""
    out: list[tuple[Path, str]] = []
    folder = Path(folder)
    for p in sorted(folder.glob("*.h5.partial")):
        target = p.with_name(p.name[: -len(".partial")])
        if lock_owner(target) is None:
            out.append((p, "unfinished run (resume it with the same command, or delete)"))
    for lock in sorted(folder.glob("*.h5.lock")):
        target = lock.with_name(lock.name[: -len(".lock")])
        if lock_owner(target) is None:
            out += [(f, "lock no running process holds") for f in (lock, owner_path(target)) if f.exists()]
    if wanted is not None:
        keep = {Path(w).resolve() for w in wanted}
        for p in sorted(folder.glob("*.h5")):
            if p.resolve() not in keep:
                out.append((p, "no given pipeline wants this cache"))
    gone = {p for p, _ in out}
    for d in sorted(folder.glob("*.h5.sources")):  # students' scores of a cache that is gone (or going)
        cache = d.with_name(d.name[: -len(".sources")])
        if not cache.exists() or cache in gone:
            out.append((d, "student scores of a cache that is not there"))
    return out
