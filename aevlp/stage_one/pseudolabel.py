"""Stage one: frozen CLIP over the DAMP views of every training image → the HDF5 cache.

dataset → views → CLIP → cache. DAMP selection is applied here only to store readable default
pseudo-labels; stage two re-derives them from the cached similarities with its own parameters.

`plan_stage_one` decides everything without loading CLIP (data, fingerprint, reuse/resume/stale);
`run_pseudolabel` carries the plan out.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from aevlp import distributed
from aevlp.cache import (
    CacheLayout,
    CacheWriter,
    can_reprompt,
    clip_preprocess,
    fingerprint_diff,
    partial_path,
    read_fingerprint,
    shard_fingerprint,
    stage_one_fingerprint,
)
from aevlp.cache.reader import sims_from_embeddings
from aevlp.cache.schema import sims_layout
from aevlp.cache.summary import filled_summary
from aevlp.cache.validate import problems as cache_problems
from aevlp.cache.writer import check_disk
from aevlp.damp import pseudo_labels
from aevlp.data import SPMLData, image_identity
from aevlp.device import check_fits, resolve_device
from aevlp.errors import AevlpError, flag
from aevlp.placement import Place, decode_place, resize_place
from aevlp.profiling import profiled, step
from aevlp.progress import bar
from aevlp.specs import Specs
from aevlp.stage_one import shards
from aevlp.stage_one.clip import ClipIdentity, ClipModel, identify_clip, load_clip
from aevlp.stage_one.reprompt import rederive
from aevlp.stage_one.text import ClassFeatures, class_phrases, relation_id, text_features
from aevlp.stage_one.view_scoring import Launched, encode, launch
from aevlp.stage_one.views import GlobalViews, ViewBatches, ViewSpec, expand_views, render_on_device, unique_slots

__all__ = ["StageOnePlan", "run_pseudolabel", "plan_stage_one", "MAX_VIEWS_PER_FORWARD"]

log = logging.getLogger("aevlp")
MAX_VIEWS_PER_FORWARD = 256


@dataclass
class StageOnePlan:
    """What stage one would do for a config, decided without loading CLIP.

    `status`: up-to-date (a matching complete cache exists), missing, resume (a matching unfinished
    `.partial` exists) or stale (a cache made with other settings; `diff` lists the changed fields).
    """

    specs: Specs
    data: SPMLData
    n: int  # training rows covered (the first n of the train split)
    views: ViewSpec
    clip: ClipIdentity
    fingerprint: dict
    eval_ids: dict[str, list[str]] | None  # val/test image ids whose global embeddings are stored
    target: Path
    status: str
    diff: list[str]
    limit: int | None = None
    placement: str = ""  # where decoding and resizing happen, and why (aevlp.placement)

    @property
    def sims(self) -> str:
        """stored | computed (`cache.sims`, as the fingerprint records it)."""
        return self.fingerprint.get("sims", "stored")

    @property
    def image_paths(self) -> list[str]:
        return [str(self.data.image_root / i) for i in self.data.train.images[:self.n]]

    def writer_fields(self, rows: tuple[int, int], eval_ids: dict | None, classes: ClassFeatures) -> dict:
        """The CacheWriter arguments this plan decides for training rows [start, stop) and the class
        features: rows, labels, text side, selection, and `info` (what train reads back)."""
        (start, stop), split, ds = rows, self.data.train, self.specs.dataset
        return {"image_ids": list(split.images[start:stop]), "classnames": self.data.classnames,
                "observed": split.observed[start:stop],
                "labels": split.labels[start:stop] if self.data.train_labels_known else None,
                "text_features": classes.refined.numpy(), "text_features_plain": classes.plain.numpy(),
                "relation": None if classes.relation is None else classes.relation.numpy(),
                "selection": self.specs.damp.selection(), "eval_ids": eval_ids,
                "eval_labels": {"val": self.data.val.labels, "test": self.data.test.labels} if eval_ids else None,
                "info": {"data_root": str(Path(ds.data_root).resolve()), "image_root": ds.image_root,
                         "limit": self.limit, "pipeline": self.specs.pipeline,
                         "clip": dataclasses.asdict(self.specs.clip),
                         "stage_one": {"text": {**dataclasses.asdict(self.specs.text),
                                                "prompts": list(self.specs.text.prompts)},
                                       "views": dataclasses.asdict(self.specs.views)}}}


@dataclass
class _Scorer:
    """The loaded CLIP model and the class features every view is compared with."""

    clip: ClipModel
    classes: ClassFeatures  # refined [C, D] (what views are compared with), plain, relation (CPU: as stored)
    views: ViewSpec

    def __post_init__(self):
        self.text_on_device = self.classes.refined.to(self.clip.device)


def _status(target: Path, fp: dict) -> tuple[str, list[str]]:
    """up-to-date, reprompt (only the text side changed and every view's embedding is stored: the
    changed fields), stale (other settings), damaged (what is wrong), incomplete, resume (a matching
    .partial) or missing."""
    if target.exists():
        try:
            old, complete = read_fingerprint(target)
        except AevlpError as e:
            return "damaged", [e.message]
        diff = fingerprint_diff(old, fp)
        if diff and can_reprompt(old, fp) and complete:
            return "reprompt", diff
        if diff:
            return "stale", diff
        if not complete:
            return "incomplete", []
        with h5py.File(target, "r") as f:
            found = cache_problems(f)
        return ("damaged", found) if found else ("up-to-date", [])
    if partial_path(target).exists():
        try:
            old, _ = read_fingerprint(partial_path(target))
        except AevlpError:
            old = None
        return ("resume" if old == fp else "missing"), []
    return "missing", []


def plan_stage_one(cfg: dict, limit: int | None = None) -> StageOnePlan:
    """Everything stage one would do, decided without loading CLIP: data, fingerprint and the verdict."""
    specs = Specs.of(cfg)
    data = specs.dataset.load()
    n = len(data.train) if limit is None else min(limit, len(data.train))
    if n < 1:
        raise AevlpError(f"{data.root}: the train split is empty")
    ident = identify_clip(specs.clip)
    device = resolve_device(specs.clip.device, "clip.device")
    paths = [data.image_root / i for i in data.train.images[:n]]
    resize, decode = resize_place(specs.views.resize_on, device), \
        decode_place(specs.views.decode_on, device, paths, "views.decode_on")
    views = ViewSpec.of(specs.views, ident.preprocess, resize_on=resize.where, decode_on=decode.where)
    _check_view_memory(specs, views)
    ids = list(data.train.images[:n])
    eval_ids = None if specs.cache.store_embeddings == "none" else \
        {"val": list(data.val.images), "test": list(data.test.images)}
    phrases = class_phrases(data.classnames, specs.text)
    sims = sims_layout(specs.cache.sims, specs.cache.store_embeddings, views.rounds, views.num_views,
                       unique_slots(views), data.num_classes, ident.source.embed_dim)
    images = image_identity(data.image_root, ids + (eval_ids["val"] + eval_ids["test"] if eval_ids else []),
                            specs.dataset.image_check)
    fp = stage_one_fingerprint(dataset=specs.dataset.name, clip=ident, views=views, text=specs.text,
                               store_embeddings=specs.cache.store_embeddings, ids=ids, observed=data.train.observed[:n],
                               phrases=phrases, relation=relation_id(specs.text), eval_ids=eval_ids, images_hash=images,
                               sims=sims)
    target = specs.cache_path
    if images.endswith(":absent"):
        fp["images_hash"] = _recorded_images_hash(target, images)
    status, diff = _status(target, fp)
    return StageOnePlan(specs=specs, data=data, n=n, views=views, clip=ident, fingerprint=fp, eval_ids=eval_ids,
                        target=target, status=status, diff=diff, limit=limit,
                        placement=_placement_line(views, resize, decode, device))


def _placement_line(views: ViewSpec, resize: Place, decode: Place, device: torch.device) -> str:
    """Where stage one decodes and resizes, and why, in one line."""
    dec = "the GPU's decoder (nvJPEG)" if views.decode_on == "device" else "the workers"
    res = "the device" if views.resize_on == "device" else "the workers"
    why = decode.why if views.decode_on == "device" else f"{decode.why}; {resize.why}"
    return f"images decoded by {dec}, views cut and resized on {res}, CLIP on {device.type} ({why})"


def _check_view_memory(specs: Specs, views: ViewSpec) -> None:
    """A batch's views (uint8, with the batches the workers queue) and one forward chunk (float32) must fit."""
    px = 3 * views.size ** 2
    queued = max(1, 2 * specs.clip.workers + 1)
    need = specs.clip.batch_size * unique_slots(views) * px * queued + MAX_VIEWS_PER_FORWARD * px * 4
    check_fits(f"stage one's views (clip.batch_size {specs.clip.batch_size} x {unique_slots(views)} distinct views "
               f"of {views.size} px per image, grid {views.grid}, rounds {views.rounds}, clip.workers "
               f"{specs.clip.workers})", need, torch.device("cpu"),
               hint="lower clip.batch_size or clip.workers (or views.grid / views.rounds)")


def _recorded_images_hash(target: Path, absent: str) -> str:
    """No image is here (a cache copied from another machine): what the cache recorded stands, with a note."""
    try:
        recorded = read_fingerprint(target)[0].get("images_hash", absent) if target.exists() else absent
    except AevlpError:
        return absent
    if recorded != absent:
        log.warning("the images are absent here, so they could not be checked against %s; it is used as it "
                    "recorded them (everything that needs no image, such as re-prompting, works)", target)
    return recorded


def _load_scorer(plan: StageOnePlan) -> _Scorer:
    clip = load_clip(plan.specs.clip)
    return _Scorer(clip=clip, classes=text_features(clip, plan.data.classnames, plan.specs.text), views=plan.views)


def run_pseudolabel(cfg: dict, *, force: bool = False, limit: int | None = None, progress: bool = True,
                    shard: tuple[int, int] | None = None, plan: StageOnePlan | None = None,
                    reprompt: bool = True, profile: str | Path | None = None, echo=None) -> dict:
    """Compute (or reuse, or resume) the cache the config asks for; returns a summary dict.

    A matching complete cache is reused without loading CLIP at all. Under torchrun each rank
    computes one shard and rank 0 merges them; `shard=(k, w)` computes shard k alone and merges
    when all W shards are complete (how a failed rank is re-run). `plan`: a `plan_stage_one` result
    for this very cfg and limit, when the caller already made one. When only the text side changed
    (prompts, phrases, classes, GCN) and the cache stores every view's embedding, the new cache is
    re-derived from those embeddings without decoding or encoding an image (`reprompt=False`: the
    full path). `profile`: write torch.profiler's table and trace there (`aevlp.profiling`); `echo`: where the
    line saying where images are decoded and resized goes (None: nowhere).
    """
    plan = plan or plan_stage_one(cfg, limit)
    target = plan.target
    if plan.status == "up-to-date" and not force:
        return {"cache": str(target), "status": "reused", "images": plan.n}
    if plan.status == "reprompt" and reprompt:
        return {"cache": str(target), "status": "re-prompted", **rederive(plan, progress=progress)}
    if plan.status in ("stale", "reprompt", "damaged", "incomplete") and not force:
        what = {"stale": "was made with different settings:", "reprompt": "was made with different settings:",
                "damaged": "is damaged:",
                "incomplete": "is marked incomplete (a run that did not finish)"}[plan.status]
        raise AevlpError(f"{target} {what}" + "".join("\n    " + d for d in plan.diff),
                         hint=f"pass {flag('--force')} to recompute (the old file stays until the new one is "
                              f"complete), or {flag('cache.path', 'OTHER.h5')} to keep both")
    if echo is not None:
        echo(plan.placement)
    scorer = _load_scorer(plan)
    rank, world, _ = distributed.env()
    if shard is None and world > 1:
        distributed.init(scorer.clip.device.type)
        shard = (rank, world)
    with profiled(profile, echo or (lambda _: None)):
        if shard is None:
            stats, resumed = _compute(plan, scorer, target, plan.fingerprint, (0, plan.n), plan.eval_ids, progress)
            return {"cache": str(target), "status": "resumed" if resumed else "computed", **stats}
        return _run_shard(plan, scorer, shard, progress)


def _run_shard(plan: StageOnePlan, scorer: _Scorer, shard: tuple[int, int], progress: bool) -> dict:
    """Compute shard k of w; under torchrun rank 0 merges after a barrier, alone the last shard merges."""
    (k, w), target, fp, n = shard, plan.target, plan.fingerprint, plan.n
    rank, world, _ = distributed.env()
    bs = max(1, plan.specs.clip.batch_size)
    rows = [distributed.shard_rows(n, bs, i, w) for i in range(w)]
    if not shards.shard_complete(target, fp, k, w, rows[k]):
        _compute(plan, scorer, shards.shard_path(target, k, w), shard_fingerprint(fp, k, w, rows[k]), rows[k],
                 plan.eval_ids if k == 0 else None, progress)
    if world > 1:  # under torchrun: everyone waits, rank 0 merges
        distributed.barrier()
        if rank == 0:
            shards.merge_shards(target, fp, w, rows, filled_summary)
        distributed.barrier()
        return {"cache": str(target), "status": "computed", "shard": f"{k}/{w}", "images": n}
    left = [i for i in range(w) if not shards.shard_complete(target, fp, i, w, rows[i])]
    if not left:
        shards.merge_shards(target, fp, w, rows, filled_summary)
        return {"cache": str(target), "status": "merged", "shard": f"{k}/{w}", "images": n}
    return {"cache": str(shards.shard_path(target, k, w)), "status": "shard done", "shard": f"{k}/{w}",
            "images": rows[k][1] - rows[k][0], "shards_left": left}


def _writer(plan: StageOnePlan, scorer: _Scorer, path: Path, fp: dict, rows: tuple[int, int],
            eval_ids: dict | None) -> CacheWriter:
    layout = CacheLayout(rounds=plan.views.rounds, num_views=plan.views.num_views,
                         embeddings=plan.specs.cache.store_embeddings, embed_dim=scorer.clip.embed_dim,
                         unique_views=unique_slots(plan.views), sims=plan.sims)
    fields = plan.writer_fields(rows, eval_ids, scorer.classes)
    check_disk(path, layout.nbytes(rows[1] - rows[0], fields["observed"].shape[1]))
    return CacheWriter(path, fp, layout, clip_preprocess=clip_preprocess(plan.clip, plan.views), **fields)


def _compute(plan: StageOnePlan, scorer: _Scorer, path: Path, fp: dict, rows: tuple[int, int],
             eval_ids: dict | None, progress: bool) -> tuple[dict, bool]:
    """Fill (or resume) one cache file for rows [start, stop) of the train split."""
    t_start = time.time()
    with _writer(plan, scorer, path, fp, rows, eval_ids) as writer:  # (it holds the cache's lock)
        done = _fill(writer, plan, scorer, rows, progress)
        if eval_ids and not writer.f.attrs["eval_done"]:
            for split_name, split_ids in eval_ids.items():
                paths = [str(plan.data.image_root / i) for i in split_ids]
                writer.write_eval(split_name, _embed_eval(plan, scorer, paths, progress, split_name))
            writer.f.attrs["eval_done"] = True
        stats = filled_summary(writer.f)
        stats.update({"computed_images": done, "seconds": round(time.time() - t_start, 2),
                      "images_per_s": round(done / max(time.time() - t_start, 1e-9), 2)})
        writer.finish(stats)
    return stats, writer.resumed


def _view_loader(plan: StageOnePlan, scorer: _Scorer, todo: list[list[int]], paths: list[str],
                 row_offset: int) -> torch.utils.data.DataLoader:
    workers, views = plan.specs.clip.workers, plan.views
    ship = "encoded" if views.decode_on == "device" else "decoded" if views.resize_on == "device" else "views"
    ds = ViewBatches(paths, todo, views, row_offset, ship=ship)
    return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers,
                                       pin_memory=scorer.clip.device.type == "cuda",
                                       prefetch_factor=2 if workers > 0 else None)


def _raise_or_warn(errors: list, skip: bool) -> None:
    if errors and not skip:
        listing = "\n    ".join(msg for _, msg in errors)
        raise AevlpError(f"{len(errors)} unreadable image(s):\n    {listing}",
                         hint=f"fix or remove them, or pass {flag('cache.on_bad_image', 'skip')} (skipped rows are "
                              "marked in the cache and ignored by stage two); finished rows are kept for the next run")
    for _, msg in errors:
        log.warning("skipping %s", msg)


def _land(writer: CacheWriter, plan: StageOnePlan, batch: Launched, observed: torch.Tensor) -> None:
    """The host's share of a batch whose device work is done: rounds per view, the readable DAMP pseudo-labels,
    the HDF5 writes (sims [R,B,V,C] f16, scores, pseudo [R,B,C], the embeddings the cache keeps)."""
    batch.land()
    rows = batch.rows
    bad = np.zeros(len(rows), dtype=bool)
    for row, _ in batch.errors:
        bad[int(row) - int(rows[0])] = True
    with step("DAMP"):
        if plan.sims == "computed":  # what reading the cache will compute: from the float16 embeddings it keeps
            sims = sims_from_embeddings(batch.emb.float().numpy().astype(np.float16), batch.index.numpy(),
                                        torch.as_tensor(writer.f["text_features"][()].astype(np.float32)))
        else:
            sims = expand_views(batch.sims, batch.index).half()  # [R, B, V, C], rounded as stored
        sel = plan.specs.damp.selection()
        scores, pseudo = zip(*(pseudo_labels(sims[r].float(), observed[rows], **sel)
                               for r in range(plan.views.rounds)))
        scores, pseudo = torch.stack(scores), torch.stack(pseudo)
        if bad.any():
            sims[:, bad], scores[:, bad], pseudo[:, bad] = 0, 0, 0
    mode, emb, emb_index = plan.specs.cache.store_embeddings, None, None
    if mode == "all":  # each distinct (tile, flip) view once, and which one each round used
        emb, emb_index = batch.emb.numpy(), batch.index.numpy()
    elif mode == "global":
        emb = expand_views(batch.emb, batch.index)[:, :, 0].numpy()  # [R, B, D]
    with step("write"):
        writer.write(int(rows[0]), sims.numpy(), scores.numpy(), pseudo.numpy(), bad, emb, emb_index)


def _fill(writer: CacheWriter, plan: StageOnePlan, scorer: _Scorer, rows: tuple[int, int], progress: bool) -> int:
    """Score every pending batch of rows [start, stop) into `writer`; returns the rows computed. Batch i is
    landed (its DAMP and writes on the host) after batch i + 1 is launched on the device
    (`aevlp.stage_one.view_scoring`)."""
    start, stop = rows
    paths, n, bs = plan.image_paths[start:stop], stop - start, max(1, plan.specs.clip.batch_size)
    pending = set(writer.pending().tolist())
    batches = [list(range(s, min(s + bs, n))) for s in range(0, n, bs)]
    todo = [b for b in batches if pending.intersection(b)]
    obs_t = torch.as_tensor(plan.data.train.observed[start:stop])
    skip = plan.specs.cache.on_bad_image == "skip"
    pbar = bar(total=n, initial=n - sum(len(b) for b in todo), unit="img", desc="stage one", disable=not progress,
               dynamic_ncols=True)
    computed, queued, loader = 0, None, iter(_view_loader(plan, scorer, todo, paths, start))
    keep = plan.specs.cache.store_embeddings != "none"
    while True:
        with step("wait for workers"):
            item = next(loader, None)
        if item is not None:
            batch_rows, slots, index, errors = item
            if plan.views.resize_on == "device":  # the worker only decoded (or read): the rest where CLIP runs
                with step("render on device"):
                    slots, index, failed = render_on_device(slots, batch_rows, plan.views, scorer.clip.device, start)
                errors = [*errors, *((r, f"{paths[r]}: {m}") for r, m in failed)]
            _raise_or_warn(errors, skip)
            launched = launch(scorer.clip, scorer.text_on_device, slots, index, plan.views, batch_rows, errors, keep)
        if queued is not None:
            _land(writer, plan, queued, obs_t)
            computed += len(queued.rows)
            pbar.update(len(queued.rows))
        if item is None:
            break
        queued = launched
    pbar.close()
    return computed


def _embed_eval(plan: StageOnePlan, scorer: _Scorer, paths: list[str], progress: bool, split: str) -> np.ndarray:
    """Unflipped embeddings of val/test images: the global view [N, D] (clip-head, the teacher), or every
    view [N, V, D] with --store-embeddings all (the DAMP teacher)."""
    spec = dataclasses.replace(plan.views, rounds=1, flip=False, jitter=0.0)
    every = plan.specs.cache.store_embeddings == "all"
    bs = max(1, plan.specs.clip.batch_size) * (1 if every else spec.num_views)
    batches = [list(range(s, min(s + bs, len(paths)))) for s in range(0, len(paths), bs)]
    ds = ViewBatches(paths, batches, spec) if every else GlobalViews(paths, batches, spec)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=plan.specs.clip.workers)
    shape = (len(paths), spec.num_views, scorer.clip.embed_dim) if every else (len(paths), scorer.clip.embed_dim)
    out = np.zeros(shape, dtype=np.float32)
    for item in bar(loader, desc=f"{split} embeddings", disable=not progress, unit="batch"):
        rows, slots, errors = item[0], item[1], item[-1]
        if errors:
            raise AevlpError(f"{len(errors)} unreadable {split} image(s):\n    " + "\n    ".join(m for _, m in errors))
        emb = encode(scorer.clip, slots, plan.views).float().cpu().numpy()
        out[rows.numpy()] = emb if every else emb[:, 0]
    return out
