"""Reading a complete stage-one cache (stage two, the cache tools); plain h5py works just as well."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

if TYPE_CHECKING:
    import torch

from aevlp.cache.schema import partial_path, read_fingerprint
from aevlp.cache.validate import computes_sims, problems
from aevlp.errors import AevlpError, ConfigError, flag

__all__ = ["Cache", "sims_from_embeddings", "read_sims", "row_blocks", "set_block_mb", "computed_text",
           "stored_selection", "default_labels"]

RECOMPUTE = "recompute it: `aevlp pseudolabel ... --force` (or `aevlp run`), or `aevlp cache verify` for details"


def _missing_hint(path: Path) -> str:
    partial = partial_path(path)
    if not partial.exists():
        return "create it with `aevlp pseudolabel --dataset NAME --out PATH`"
    from aevlp.cache.lock import lock_owner

    owner = lock_owner(path)
    if owner:
        return f"it is being computed right now (pid {owner.get('pid')} on {owner.get('host')}): wait for it"
    return f"an unfinished run left {partial.name}: re-run the same `aevlp pseudolabel` command to finish it"


def class_difference(cached: list[str], data: list[str]) -> str:
    """What differs between two class lists, in words: counts, names only one has, or the order."""
    only_cache, only_data = [c for c in cached if c not in data], [c for c in data if c not in cached]
    parts = [] if len(cached) == len(data) else [f"{len(cached)} classes in the cache, {len(data)} in the dataset"]
    if only_cache:
        parts.append(f"only in the cache: {', '.join(only_cache[:5])}{' ...' if len(only_cache) > 5 else ''}")
    if only_data:
        parts.append(f"only in the dataset: {', '.join(only_data[:5])}{' ...' if len(only_data) > 5 else ''}")
    if not parts:
        i = next(i for i, (a, b) in enumerate(zip(cached, data)) if a != b)
        parts.append(f"the same {len(data)} names in another order (first at position {i + 1}: '{cached[i]}' in "
                     f"the cache, '{data[i]}' in the dataset)")
    return "; ".join(parts)


def aligned_config(cfg: dict, recorded: dict, path: Path, explicit: tuple[str, ...] = ()) -> dict:
    """A copy of cfg with the stage-one sections the cache at `path` recorded (`recorded`: its info's
    "stage_one"): what a run trained from it records; an explicit --set that differs (`explicit`) is an error."""
    from aevlp.config import updated

    changes: dict[str, dict] = {}
    for section, table in recorded.items():
        for key, value in table.items():
            if key not in cfg.get(section, {}) or cfg[section][key] == value:
                continue
            if f"{section}.{key}" in explicit:
                raise ConfigError(f"--set {section}.{key}={cfg[section][key]!r} contradicts the cache {path}, "
                                  f"which was made with {section}.{key} = {value!r}",
                                  hint="stage-one settings belong to stage one: re-run `aevlp pseudolabel` (or "
                                       "`aevlp run`) with them, or drop the --set")
            changes.setdefault(section, {})[key] = value
    return updated(cfg, changes)


def stage_one_settings(info: dict) -> dict:
    """The settings a cache's numbers depend on, as stage one recorded them in its info: [text] and [views], and
    the [clip] keys of the fingerprint (not where or how fast CLIP ran)."""
    from dataclasses import fields

    from aevlp.settings import ClipSpec

    fixed = {f.name for f in fields(ClipSpec) if f.metadata.get("cache", True)}
    clip = {k: v for k, v in (info.get("clip") or {}).items() if k in fixed}
    return {**info.get("stage_one", {}), **({"clip": clip} if clip else {})}


def recorded_stage_one(path: Path) -> dict:
    """`stage_one_settings` of a complete cache, without opening it as a `Cache` (no checks: for comparing
    configs); {} when unreadable."""
    try:
        with h5py.File(path, "r") as f:
            return stage_one_settings(json.loads(f.attrs.get("info", "{}")))
    except (OSError, RuntimeError, ValueError, TypeError, AttributeError):
        return {}


def sims_from_embeddings(emb: np.ndarray, index: np.ndarray, text: torch.Tensor) -> torch.Tensor:
    """[n, U, D] float16 slot embeddings, their [n, R, V] index and [C, D] class features → [R, n, V, C]
    float16 similarities: how a cache with `cache.sims = computed` is read, and how re-prompting and stage one
    compute the similarities such a cache holds (float32 products of the float16 embeddings, rounded once)."""
    import torch

    s = torch.as_tensor(np.asarray(emb).astype(np.float32)) @ text.T  # [n, U, C]
    idx = torch.as_tensor(np.asarray(index).astype(np.int64))  # [n, R, V]
    n, r, v = idx.shape
    gathered = torch.gather(s, 1, idx.reshape(n, r * v, 1).expand(-1, -1, s.shape[-1]))
    return gathered.reshape(n, r, v, -1).transpose(0, 1).half()


def read_sims(f: h5py.File, rnd: int, rows, text=None) -> np.ndarray:
    """float16 [M, V, C] similarities of `rows` in round `rnd` of an open cache file: its stored ones, or with
    `text` (its class features, a float32 tensor) computed from its embeddings (`cache.sims = computed`)."""
    if text is None:
        return f["sims"][rnd, rows]
    index = f["embedding_index"][rows][:, rnd:rnd + 1]  # [M, 1, V]
    return sims_from_embeddings(f["embeddings"][rows], index, text)[0].numpy()


def row_blocks(f: h5py.File, n: int | None = None, budget: int | None = None) -> list[tuple[int, int]]:
    """[lo, hi) row ranges over the first `n` rows (default: all) of an open cache file whose similarities, as
    float32 (and, computing them, the embeddings they come from), take at most `budget` bytes (default BLOCK_BYTES)
    each: what the tools that read every row hold at once (memory bounded by a block, not by N)."""
    _, rows, v, c = f["sims"].shape
    n = rows if n is None else n
    budget = budget or BLOCK_BYTES
    row, what = 4 * v * c, f"{v} views x {c} classes x 4 bytes"
    if computes_sims(f):  # computed from the embeddings: read, as
        _, u, d = f["embeddings"].shape  # float16 and float32 copies, and their products with every class
        row, what = row + 6 * u * d + 4 * u * c, what + f", computed from {u} embeddings x {d}"
    if row > budget:
        raise ConfigError(f"one row of {f.filename}'s similarities takes {row / 2**20:.3g} MB as float32 "
                          f"({what}), more than the {budget / 2**20:g} MB a block of rows may take",
                          hint=f"aevlp --block-mb {math.ceil(row / 2**20)} (or more): the memory a tool "
                               f"that reads every row holds at once")
    step = budget // row
    return [(lo, min(n, lo + step)) for lo in range(0, n, step)]


def computed_text(f: h5py.File):
    """The class features (float32 tensor) a file that computes its similarities reads them with; None when it
    stores them (`cache.sims`)."""
    if not computes_sims(f):
        return None
    import torch

    return torch.as_tensor(f["text_features"][()].astype(np.float32))


def stored_selection(f: h5py.File, rnd: int):
    """Blocks (lo, hi, scores float16, pseudo int8) of DAMP under the selection stage one stored, on round `rnd`'s
    similarities (read or computed), unreadable rows zero: the readable defaults, recomputed."""
    import torch

    from aevlp.damp import pseudo_labels

    sel, text = json.loads(f.attrs["selection"]), computed_text(f)
    obs, bad = torch.as_tensor(f["observed"][()]), f["bad"][()].astype(bool)
    for lo, hi in row_blocks(f):
        sims = torch.as_tensor(read_sims(f, rnd, slice(lo, hi), text).astype(np.float32))
        scores, pseudo = pseudo_labels(sims, obs[lo:hi], **sel)
        scores, pseudo = scores.numpy().astype(np.float16), pseudo.numpy()
        scores[bad[lo:hi]], pseudo[bad[lo:hi]] = 0, 0
        yield lo, hi, scores, pseudo


def default_labels(f: h5py.File, rnd: int) -> np.ndarray:
    """int8 [N, C] round `rnd`'s pseudo-labels under the selection stage one stored (the readable defaults): read,
    or computed a block of rows at a time from the similarities (`cache.sims = computed`)."""
    if not computes_sims(f):
        return f["pseudo"][rnd]
    out = np.zeros(f["pseudo"].shape[1:], dtype=np.int8)
    for lo, hi, _, pseudo in stored_selection(f, rnd):
        out[lo:hi] = pseudo
    return out


BLOCK_BYTES = 1 << 26  # 64 MB of float32 similarities a block (docs/performance.md, "Scale")


def set_block_mb(mb: float) -> None:
    """The memory (MB) a block of rows may take in the tools that read every row (`aevlp --block-mb`): smaller
    bounds their peak memory, larger reads fewer, bigger pieces. A block must hold one row (`row_blocks`)."""
    global BLOCK_BYTES
    if not (isinstance(mb, (int, float)) and math.isfinite(mb) and mb > 0):
        raise ConfigError(f"--block-mb {mb!r}: the memory a block of rows may take must be a number of MB > 0",
                          hint="aevlp --block-mb 64 (the default)")
    BLOCK_BYTES = int(mb * 2**20)


class Cache:
    """Read access to a complete cache (stage two, cache tools); plain h5py works just as well."""

    def __init__(self, path: str | Path, *, check: bool = True):
        """Open a complete cache; with `check` (the default) its structure and a sample of its values are
        validated first, and a damaged file is refused with what is wrong."""
        self.path = Path(path)
        if not self.path.exists():
            raise AevlpError(f"cache {self.path} not found", hint=_missing_hint(self.path))
        self.fingerprint, complete = read_fingerprint(self.path)
        if not complete:
            raise AevlpError(f"cache {self.path} is incomplete", hint="re-run `aevlp pseudolabel` to finish it")
        try:
            self.f = h5py.File(self.path, "r")
        except (OSError, RuntimeError) as e:  # HDF5 reports damaged metadata as either
            raise AevlpError(f"{self.path} cannot be opened as HDF5 ({e}): damaged", hint=RECOMPUTE) from None
        found = problems(self.f) if check else []
        if found:
            self.f.close()
            raise AevlpError(f"{self.path} is damaged:\n    " + "\n    ".join(found), hint=RECOMPUTE)
        self.selection = json.loads(self.f.attrs.get("selection", "{}"))
        self._text = None  # the class features a computing cache reads with (read once, when first needed)

    @property
    def rounds(self) -> int:
        return self.f["sims"].shape[0]

    @property
    def num_views(self) -> int:
        return self.f["sims"].shape[2]

    def __len__(self) -> int:
        return self.f["sims"].shape[1]

    def array(self, name: str) -> np.ndarray:
        ds = self.f[name]
        return ds.asstr()[:] if ds.dtype.kind == "O" else ds[:]

    def image_ids(self) -> list[str]:
        return list(self.array("image_ids"))

    def classnames(self) -> list[str]:
        return list(self.array("classnames"))

    @property
    def computed(self) -> bool:
        """Whether the similarities are computed from the stored embeddings when read (`cache.sims`)."""
        return self.fingerprint.get("sims") == "computed"

    def sims(self, rnd: int) -> np.ndarray:
        """[N, V, C] float16 similarities of one augmentation round (view 0 = global)."""
        return self.sims_rows(rnd, 0, len(self))

    def sims_rows(self, rnd: int, lo: int, hi: int) -> np.ndarray:
        """[hi - lo, V, C] float16 similarities of rows [lo, hi) in one round."""
        return self.sims_at(rnd, slice(lo, hi))

    def sims_at(self, rnd: int, rows) -> np.ndarray:
        """float16 similarities [M, V, C] of `rows` (a slice, or increasing row numbers) in one round: read, or
        computed from the stored embeddings and class features (the same float16 numbers either way)."""
        if self.computed and self._text is None:
            self._text = computed_text(self.f)
        return read_sims(self.f, rnd % self.rounds, rows, self._text if self.computed else None)

    def row_blocks(self, n: int | None = None, budget: int | None = None) -> list[tuple[int, int]]:
        """`row_blocks` of this file: [lo, hi) row ranges that take at most `budget` bytes each."""
        return row_blocks(self.f, n, budget)

    @property
    def embedding_mode(self) -> str:
        """Which image embeddings the file keeps: none, global or all (cache.store_embeddings)."""
        return self.fingerprint.get("store_embeddings", "none")

    @property
    def embed_dim(self) -> int:
        return int(self.f["embeddings"].shape[-1]) if "embeddings" in self.f else 0

    def has_eval_embeddings(self) -> bool:
        return self.embedding_mode != "none" and "embeddings" in self.f and "test_embeddings" in self.f

    def global_embeddings(self) -> np.ndarray:
        """[R, N, D] float16 global-view embeddings of the training rows, per round."""
        emb = self.f["embeddings"]
        if self.embedding_mode != "all":
            return self._verified("embeddings", emb[:])
        if "embedding_index" not in self.f:  # schema 1: [R, N, V, D]
            return emb[:, :, 0]
        idx = self.f["embedding_index"][:, :, 0]  # [N, R]: the slot of the global view per round
        slots = self._verified("embeddings", emb[:])
        return np.stack([slots[np.arange(len(idx)), idx[:, r]] for r in range(idx.shape[1])])

    def eval_embeddings(self, split: str, views: bool = False) -> np.ndarray:
        """Unflipped embeddings of the val or test images: the global view [N, D], or with `views`
        every view [N, V, D] (caches that stored all views)."""
        emb = self._verified(f"{split}_embeddings", self.f[f"{split}_embeddings"][:])
        if views:
            return emb if emb.ndim == 3 else emb[:, None]
        return emb[:, 0] if emb.ndim == 3 else emb

    @property
    def info(self) -> dict:
        """What stage one recorded beside the fingerprint: its pipeline file, data root, limit, its settings."""
        return json.loads(self.f.attrs.get("info", "{}"))

    def pipeline_file(self) -> str | None:
        """The pipeline file stage one ran, where it is still there (a cache remembers its pipeline)."""
        path = self.info.get("pipeline")
        return path if path and Path(path).is_file() else None

    def dataset(self):
        """The dataset the cache was made from, read from the data root stage one recorded."""
        from aevlp.data import load_dataset

        info = self.info
        return load_dataset(self.fingerprint["dataset"], info["data_root"], image_root=info.get("image_root") or None)

    def image_root(self) -> Path:
        """The folder of the dataset's images stage one read (without loading the dataset's labels)."""
        from aevlp.data.layout import image_root_of

        info = self.info
        return image_root_of(self.fingerprint["dataset"], info["data_root"], info.get("image_root") or None)

    def plain_text_features(self) -> np.ndarray | None:
        """[C, D] class features of the prompts before the GCN, where stage one stored them (since 2026-12)."""
        return self.f["text_features_plain"][:] if "text_features_plain" in self.f else None

    def eval_labels(self, split: str) -> np.ndarray | None:
        """The full labels of the val or test images, where the cache stored them."""
        return self.f[f"{split}_labels"][:] if f"{split}_labels" in self.f else None

    def check_matches(self, ids: list[str], observed: np.ndarray, classnames: list[str]) -> None:
        """Refuse a cache made for other images, labels or classes, saying which and how to fix it."""
        fix = ("re-run stage one for this dataset (`aevlp pseudolabel`), or pass the matching cache: "
               f"{flag('cache.path', 'FILE.h5')}")
        if self.classnames() != list(classnames):
            raise AevlpError(f"{self.path}: its classes differ from the dataset's: "
                             f"{class_difference(self.classnames(), list(classnames))}", hint=fix)
        cids = self.image_ids()
        if cids != list(ids):
            if len(cids) < len(ids) and cids == list(ids[:len(cids)]):
                raise AevlpError(f"{self.path} covers only the first {len(cids)} of {len(ids)} training images",
                                 hint=f"it was made with --limit {len(cids)}: pass --limit {len(cids)} here too")
            first = next((i for i, (a, b) in enumerate(zip(cids, ids)) if a != b), min(len(cids), len(ids)))
            raise AevlpError(f"{self.path}: image ids differ from the dataset's train split "
                             f"({len(cids)} vs {len(ids)} rows; first difference at row {first})", hint=fix)
        if not np.array_equal(self.array("observed"), observed.astype(np.int8)):
            raise AevlpError(f"{self.path}: observed labels differ from the dataset's", hint=fix)

    def _verified(self, name: str, values: np.ndarray) -> np.ndarray:
        """A whole dataset as read, held to its checksum (the embeddings: too large to hash on every open)."""
        import hashlib

        stored = json.loads(self.f.attrs.get("checksums", "{}")).get(name)
        if stored and hashlib.sha256(np.ascontiguousarray(values)).hexdigest() != stored:
            raise AevlpError(f"{self.path} is damaged: {name}: content differs from the checksum written when the "
                             "cache was finished", hint=RECOMPUTE)
        return values

    def aligned_config(self, cfg: dict, explicit: tuple[str, ...] = ()) -> dict:
        """A copy of cfg whose [clip], [text] and [views] are this cache's (what stage one recorded); an
        explicit --set of one of them (a key in `explicit`) that differs is an error."""
        return aligned_config(cfg, stage_one_settings(self.info), self.path, explicit)

    def check_images(self, image_root: Path) -> str:
        """Refuse stale pseudo-labels: the image files (sizes and times, or bytes: the mode stage one used)
        against the identity recorded in the fingerprint. Returns "checked", "unchecked" (stage one was told
        not to record them) or "absent" (none is here: a cache copied without its images)."""
        from aevlp.data.layout import image_identity

        recorded = str(self.fingerprint.get("images_hash") or "")
        mode = recorded.split(":", 1)[0]
        if mode not in ("stat", "content"):
            return "unchecked"
        ids = self.image_ids() + ([*self.array("val_image_ids"), *self.array("test_image_ids")]
                                  if "val_image_ids" in self.f and "test_image_ids" in self.f else [])
        now = image_identity(image_root, ids, mode)
        if now.endswith(":absent"):
            return "absent"
        if now != recorded:
            raise AevlpError(f"{self.path} is stale: the images under {image_root} changed since stage one read them "
                             f"(images_hash {recorded} -> {now})",
                             hint="recompute the pseudo-labels: `aevlp pseudolabel ... --force` (or `aevlp run`)")
        return "checked"

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
