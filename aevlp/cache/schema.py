"""The stage-one cache's schema: where it lives, its layout, and how it is identified (its fingerprint).

See docs/cache.md. Shapes: R rounds, N training rows, V views (view 0 = global), U distinct views
per row (each (tile, flip) encoded once), C classes, D embedding size.

The fingerprint is built here and only here (`stage_one_fingerprint`): its image side (the images and
how they were encoded: what re-prompting needs unchanged) and its text side (the classes, prompts and
relation graph: what re-prompting can re-derive from stored embeddings), and its shard form.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import h5py
import numpy as np

from aevlp.errors import AevlpError, ConfigError, flag
from aevlp.settings import CacheSpec, TextSpec, checked, choices_of

__all__ = ["SCHEMA_VERSION", "STR", "EMBEDDING_MODES", "IMAGE_SIDE", "default_path", "partial_path", "lock_path",
           "sources_path", "dataset_hash", "clip_preprocess", "stage_one_fingerprint", "shard_fingerprint",
           "can_reprompt", "sims_layout", "fingerprint_id", "fingerprint_diff", "parse_fingerprint", "read_fingerprint",
           "CacheLayout", "COMPUTED"]

SCHEMA_VERSION = 2  # 2: "all" embeddings stored once per distinct view + an index; eval labels stored
STR = h5py.string_dtype("utf-8")
EMBEDDING_MODES = choices_of(CacheSpec, "store_embeddings")  # which image embeddings are kept


def default_path(dataset: str) -> Path:
    """Where a dataset's cache goes when `cache.path` is empty: cache/DATASET.h5."""
    return Path("cache") / f"{dataset}.h5"


def partial_path(target: Path) -> Path:
    return target.with_name(target.name + ".partial")


def lock_path(target: Path) -> Path:
    return target.with_name(target.name + ".lock")


def sources_path(target: Path) -> Path:
    """The folder beside a cache that holds its pseudo-label sources (students' scores, aevlp.cache.sources)."""
    return target.with_name(target.name + ".sources")


def dataset_hash(image_ids: Iterable[str], observed: np.ndarray) -> str:
    """Identity of the rows a cache describes: image ids in order + observed labels."""
    h = hashlib.sha256()
    for i in image_ids:
        h.update(str(i).encode())
        h.update(b"\0")
    h.update(np.ascontiguousarray(observed, dtype=np.int8).tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ImageSide:
    """The fingerprint fields that describe the images and how they were encoded: a cache whose image
    side matches can be re-derived for a new text side from its stored embeddings."""

    schema_version: int
    dataset: str
    ids_hash: str
    images_hash: str
    num_images: int
    clip_arch: str
    clip_weights: str
    clip_config: str
    precision: str
    mean: list
    std: list
    interpolation: str
    resize_mode: str
    image_size: int
    quick_gelu: bool
    grid: int
    rounds: int
    resize_on: str
    flip: bool
    jitter: float
    view_seed: int
    store_embeddings: str
    eval_hash: str | None


@dataclass(frozen=True)
class TextSide:
    """The fingerprint fields of the text side: the rows' observed labels, the classes and their features."""

    dataset_hash: str
    num_classes: int
    prompts: list
    phrases: list
    gcn: bool
    gcn_seed: int | None
    sparse_topk: int | None
    reweight_p: float | None
    relation: str


IMAGE_SIDE = tuple(f.name for f in fields(ImageSide))  # what re-prompting needs unchanged


def clip_preprocess(clip, views) -> dict:
    """The preprocessing every view gets and the activation the model is built with (the cache's
    `clip_preprocess` attribute, and part of the fingerprint's image side). `clip`: a ClipIdentity;
    `views`: a resolved ViewSpec."""
    return {**views.preprocess_json(), "quick_gelu": clip.source.quick_gelu}


def stage_one_fingerprint(*, dataset: str, clip, views, text: TextSpec, store_embeddings: str, ids: Sequence[str],
                          observed: np.ndarray, phrases: list[str], relation: str,
                          eval_ids: dict[str, list[str]] | None = None, images_hash: str = "",
                          sims: str = "stored") -> dict:
    """Everything that changes the cached numbers — and nothing that does not (e.g. DAMP selection)."""
    image = ImageSide(
        schema_version=SCHEMA_VERSION, dataset=dataset, ids_hash=dataset_hash(ids, np.zeros(0)),
        images_hash=images_hash, num_images=len(ids), clip_arch=clip.arch, clip_weights=clip.weights_id,
        clip_config=clip.config_id, precision=clip.precision, **clip_preprocess(clip, views), grid=views.grid,
        rounds=views.rounds, resize_on=views.resize_on, flip=views.flip, jitter=views.jitter, view_seed=views.seed,
        store_embeddings=store_embeddings,
        eval_hash=dataset_hash(eval_ids["val"] + eval_ids["test"], np.zeros((0, 1))) if eval_ids else None)
    words = TextSide(dataset_hash=dataset_hash(ids, observed), num_classes=int(observed.shape[1]),
                     prompts=list(text.prompts), phrases=list(phrases), gcn=text.gcn,
                     gcn_seed=text.gcn_seed if text.gcn else None, sparse_topk=text.sparse_topk if text.gcn else None,
                     reweight_p=text.reweight_p if text.gcn else None, relation=relation)
    # decoded on the GPU (nvJPEG rounds a little differently): recorded; absent means the workers decoded, as in
    # every cache made before the key existed, so those stay current
    where = {"decode_on": views.decode_on} if getattr(views, "decode_on", "worker") != "worker" else {}
    computed = {"sims": "computed"} if sims == "computed" else {}  # absent: stored, as in every earlier cache
    return {**asdict(image), **asdict(words), **where, **computed}


def sims_layout(setting: str, store_embeddings: str, rounds: int, views: int, unique_views: int, classes: int,
                embed_dim: int) -> str:
    """`cache.sims` resolved: stored or computed. Computing needs every view's embedding stored; `auto` computes
    where the similarities (R·V·C float16 per image) would take more than the embeddings (U·D)."""
    if setting == "computed" and store_embeddings != "all":
        raise ConfigError(f"{flag('cache.sims', 'computed')} computes the similarities from every view's embedding",
                          hint=f"set {flag('cache.store_embeddings', 'all')}, or {flag('cache.sims', 'stored')}")
    if setting != "auto":
        return setting
    bigger = rounds * views * classes > unique_views * embed_dim
    return "computed" if store_embeddings == "all" and bigger else "stored"


def shard_fingerprint(fp: dict, k: int, w: int, rows: tuple[int, int]) -> dict:
    """The fingerprint of shard k of w, which holds training rows [start, stop)."""
    return {**fp, "shard": f"{k}/{w}", "rows": list(rows)}


def can_reprompt(old: dict, new: dict) -> bool:
    """True when the cache `old` describes stores every view and only its text side differs from `new`."""
    return old.get("store_embeddings") == "all" == new.get("store_embeddings") and \
        all(old.get(k) == new.get(k) for k in (*IMAGE_SIDE, "sims")) and "ids_hash" in old


def fingerprint_id(fp: dict) -> str:
    """A short hash of a fingerprint: what a training run records about the cache it read."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint_diff(old: dict, new: dict) -> list[str]:
    """Human-readable 'field: old -> new' lines for every differing fingerprint field."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in keys if old.get(k) != new.get(k)]


def parse_fingerprint(f: h5py.File) -> dict:
    """The fingerprint table of an open cache file; KeyError, ValueError or TypeError if it has none."""
    fp = json.loads(f.attrs["fingerprint"])
    if not isinstance(fp, dict):
        raise ValueError(f"its fingerprint is a {type(fp).__name__}, not a table")
    return fp


def read_fingerprint(path: Path) -> tuple[dict, bool]:
    """(fingerprint, complete) of a cache file; raises AevlpError if it is not an aevlp cache."""
    try:
        with h5py.File(path, "r") as f:
            return parse_fingerprint(f), bool(f.attrs.get("complete", False))
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:  # damaged metadata: HDF5 raises either
        raise AevlpError(f"{path} is not a readable aevlp cache ({e})",
                         hint="delete it, or recompute it: `aevlp pseudolabel ... --force`") from None


COMPUTED = ("sims", "scores", "pseudo")  # what a cache with `cache.sims = computed` computes when read


@dataclass(frozen=True)
class CacheLayout:
    """The shapes a cache file is created with (docs/cache.md).

    rounds R, views V, embedding mode and size D, and U: the distinct views per image that were
    encoded (2V when rounds differ only by flips, R·V with tile jitter, V with one round): "all"
    stores each of them once, with an index [N, R, V] into them. A schema-1 file's "all" embeddings are
    [R, N, V, D] with no index (unique_views 0); they are still read.
    """

    rounds: int
    num_views: int
    embeddings: str = "none"  # one of EMBEDDING_MODES
    embed_dim: int = 0
    unique_views: int = 0
    sims: str = "stored"  # stored | computed (from the embeddings when read: aevlp.cache.reader)

    def __post_init__(self):
        checked(CacheSpec, store_embeddings=self.embeddings)

    def row_shapes(self, n: int, c: int) -> dict[str, tuple[tuple, type]]:
        """name -> (shape, dtype) of the per-row datasets for N rows and C classes."""
        r, v, d = self.rounds, self.num_views, self.embed_dim
        shapes = {"sims": ((r, n, v, c), np.float16), "scores": ((r, n, c), np.float16),
                  "pseudo": ((r, n, c), np.int8)}
        if self.sims == "computed":  # nor what they give: only their shapes (unwritten datasets, COMPUTED)
            for name in COMPUTED:
                del shapes[name]
        if self.embeddings == "global":
            shapes["embeddings"] = ((r, n, d), np.float16)
        elif self.indexed:
            shapes["embeddings"] = ((n, self.unique_views, d), np.float16)
            shapes["embedding_index"] = ((n, r, v), np.int16)
        elif self.embeddings == "all":  # schema 1
            shapes["embeddings"] = ((r, n, v, d), np.float16)
        return shapes

    def nbytes(self, n: int, c: int) -> int:
        """Bytes of the per-row datasets for N rows and C classes (the bulk of a cache file)."""
        return sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in self.row_shapes(n, c).values())

    @property
    def indexed(self) -> bool:
        """All views stored once per distinct view, with an index (schema 2)."""
        return self.embeddings == "all" and self.unique_views > 0

    def eval_shape(self, n: int) -> tuple:
        """Unflipped val/test embeddings: the global view [N, D], or every view [N, V, D] with "all"."""
        return (n, self.num_views, self.embed_dim) if self.embeddings == "all" else (n, self.embed_dim)

    def row_axis(self, name: str) -> int:
        """The axis of a per-row dataset that indexes rows: 1 for [R, N, ...], 0 for [N, ...]."""
        return 0 if name == "embedding_index" or (name == "embeddings" and self.indexed) else 1

    @classmethod
    def of_file(cls, f: h5py.File) -> CacheLayout:
        """The layout of an existing cache file (its embedding mode from the fingerprint)."""
        r, _, v, _ = f["sims"].shape
        fp = json.loads(f.attrs["fingerprint"])
        mode = fp.get("store_embeddings", "none")
        dim = int(f["text_features"].shape[-1]) if mode != "none" else 0
        u = int(f["embeddings"].shape[1]) if mode == "all" and "embedding_index" in f else 0
        return cls(rounds=r, num_views=v, embeddings=mode, embed_dim=dim, unique_views=u,
                   sims=fp.get("sims", "stored"))
