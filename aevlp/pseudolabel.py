"""Stage one: frozen CLIP over the DAMP views of every training image → the HDF5 cache.

dataset → views → CLIP → cache. DAMP selection is applied here only to store readable default
pseudo-labels; stage two re-derives them from the cached similarities with its own parameters.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from aevlp import distributed, shards
from aevlp.cache import (SCHEMA_VERSION, CacheLock, CacheWriter, dataset_hash, fingerprint_diff, partial_path,
                         read_fingerprint)
from aevlp.clip import ClipIdentity, ClipModel, file_sha256, identify_clip, load_clip
from aevlp.damp import pseudo_labels
from aevlp.data import load_dataset
from aevlp.errors import AevlpError, ConfigError
from aevlp.metrics import pseudo_label_quality
from aevlp.relation import load_relation, refine_text_features, relation_from_text
from aevlp.selection import selection_params
from aevlp.views import GlobalViews, ViewBatches, ViewSpec, expand_views, normalize, render_on_device

__all__ = ["run_pseudolabel", "plan_stage_one", "cache_path", "text_features",
           "stage_one_fingerprint"]

log = logging.getLogger("aevlp")
MAX_VIEWS_PER_FORWARD = 256


def cache_path(cfg: dict) -> Path:
    return Path(cfg["cache"]["path"] or f"cache/{cfg['dataset']['name']}.h5")


def view_spec(cfg: dict, image_size: int) -> ViewSpec:
    v = cfg["views"]
    return ViewSpec(grid=v["grid"], size=v["size"] or image_size, rounds=v["rounds"], resize=v["resize"],
                    flip=v["flip"], jitter=v["jitter"], seed=v["seed"])


def relation_id(cfg: dict) -> str:
    t = cfg["text"]
    if not t["gcn"]:
        return "none"
    return "text" if t["relation"] == "text" else "sha256:" + file_sha256(t["relation"])


def text_features(clip: ClipModel, classnames: list[str], cfg: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Refined, normalised class features [C, D] and the relation used (or None)."""
    t = cfg["text"]
    t0 = clip.encode_text(classnames, t["prompts"])
    relation = None
    if t["gcn"]:
        relation = relation_from_text(t0) if t["relation"] == "text" else load_relation(t["relation"], len(classnames))
    feats = refine_text_features(t0, relation=relation, sparse_topk=t["sparse_topk"], reweight_p=t["reweight_p"],
                                 seed=t["gcn_seed"], enabled=t["gcn"])
    return feats, relation


def stage_one_fingerprint(cfg: dict, clip: ClipIdentity, spec: ViewSpec, ids: list[str], observed: np.ndarray,
                          rel_id: str, eval_ids: dict[str, list[str]] | None = None) -> dict:
    """Everything that changes the cached numbers — and nothing that does not (e.g. DAMP selection)."""
    t = cfg["text"]
    return {
        "schema_version": SCHEMA_VERSION, "dataset": cfg["dataset"]["name"],
        "dataset_hash": dataset_hash(ids, observed), "num_images": len(ids), "num_classes": int(observed.shape[1]),
        "clip_arch": clip.arch, "clip_weights": clip.weights_id, "clip_config": clip.config_id,
        "precision": clip.precision, "prompts": list(t["prompts"]), "gcn": t["gcn"],
        "gcn_seed": t["gcn_seed"] if t["gcn"] else None, "sparse_topk": t["sparse_topk"] if t["gcn"] else None,
        "reweight_p": t["reweight_p"] if t["gcn"] else None, "relation": rel_id,
        "grid": spec.grid, "rounds": spec.rounds, "image_size": spec.size, "resize": spec.resize,
        "resize_on": cfg["views"]["resize_on"],
        "normalize": cfg["views"]["normalize"], "flip": spec.flip, "jitter": spec.jitter, "view_seed": spec.seed,
        "store_embeddings": cfg["cache"]["store_embeddings"],
        "eval_hash": dataset_hash(eval_ids["val"] + eval_ids["test"], np.zeros((0, 1))) if eval_ids else None,
    }


def _encode(clip: ClipModel, slots: torch.Tensor, stats: str) -> torch.Tensor:
    """[B, U, 3, S, S] uint8 → [B, U, D] normalised embeddings, in fixed-size forward chunks."""
    b, u = slots.shape[:2]
    flat = slots.reshape(b * u, *slots.shape[2:])
    step = -(-flat.shape[0] // -(-flat.shape[0] // MAX_VIEWS_PER_FORWARD))  # equal chunks: 272 -> 2 x 136
    out = [clip.encode_images(normalize(flat[i:i + step].to(clip.device, non_blocking=True), stats, clip.dtype))
           for i in range(0, flat.shape[0], step)]
    return torch.cat(out).reshape(b, u, -1)


def plan_stage_one(cfg: dict, limit: int | None = None) -> dict:
    """Everything stage one would do, decided without loading CLIP: data, fingerprint and the verdict.

    `status` is one of: up-to-date, missing, resume, stale (with `diff`: the changed fields).
    """
    ds = cfg["dataset"]
    if not ds["data_root"]:
        raise ConfigError("no data root", hint="pass --data-root DIR (a folder in the SPML layout)")
    data = load_dataset(ds["name"], ds["data_root"], image_root=ds["image_root"] or None,
                        val_frac=ds["val_frac"], split_seed=ds["split_seed"])
    n = len(data.train) if limit is None else min(limit, len(data.train))
    if n < 1:
        raise AevlpError(f"{data.root}: the train split is empty")
    c = cfg["clip"]
    ident = identify_clip(c["arch"], c["pretrained"], config=c["config"], device=c["device"], precision=c["precision"])
    spec = view_spec(cfg, ident.image_size)
    ids = list(data.train.images[:n])
    eval_ids = None if cfg["cache"]["store_embeddings"] == "none" else \
        {"val": list(data.val.images), "test": list(data.test.images)}
    fp = stage_one_fingerprint(cfg, ident, spec, ids, data.train.observed[:n], relation_id(cfg), eval_ids)
    target = cache_path(cfg)
    plan = {"data": data, "n": n, "spec": spec, "fingerprint": fp, "eval_ids": eval_ids, "target": target,
            "diff": []}
    if target.exists():
        old, complete = read_fingerprint(target)
        plan["diff"] = fingerprint_diff(old, fp)
        plan["status"] = "up-to-date" if (complete and not plan["diff"]) else "stale"
    elif partial_path(target).exists():
        try:
            old, _ = read_fingerprint(partial_path(target))
        except AevlpError:
            old = None
        plan["status"] = "resume" if old == fp else "missing"
    else:
        plan["status"] = "missing"
    return plan


def run_pseudolabel(cfg: dict, *, force: bool = False, limit: int | None = None, progress: bool = True,
                    shard: tuple[int, int] | None = None, plan: dict | None = None) -> dict:
    """Compute (or reuse, or resume) the cache the config asks for; returns a summary dict.

    A matching complete cache is reused without loading CLIP at all. Under torchrun each rank
    computes one shard and rank 0 merges them; `shard=(k, w)` computes shard k alone and merges
    when all W shards are complete (how a failed rank is re-run). `plan`: a `plan_stage_one` result
    for this very cfg and limit, when the caller already made one.
    """
    plan = plan or plan_stage_one(cfg, limit)
    data, n, spec, fp, eval_ids, target = (plan[k] for k in ("data", "n", "spec", "fingerprint", "eval_ids", "target"))
    if plan["status"] == "up-to-date" and not force:
        return {"cache": str(target), "status": "reused", "images": n}
    if plan["status"] == "stale" and not force:
        raise AevlpError(f"{target} was made with different settings:\n    " + "\n    ".join(plan["diff"]),
                         hint="pass --force to recompute (the old file stays until the new one is complete), "
                              "or --out another path")
    c = cfg["clip"]
    clip = load_clip(c["arch"], c["pretrained"], config=c["config"], device=c["device"], precision=c["precision"],
                     compile=c["compile"])
    feats, relation = text_features(clip, data.classnames, cfg)
    rank, world, _ = distributed.env()
    if shard is None and world > 1:
        distributed.init(clip.device.type)
        shard = (rank, world)
    if shard is None:
        stats, resumed = _compute(cfg, plan, clip, feats, relation, target, fp, (0, n), eval_ids, limit, progress)
        return {"cache": str(target), "status": "resumed" if resumed else "computed", **stats}
    k, w = shard
    bs = max(1, c["batch_size"])
    rows = [distributed.shard_rows(n, bs, i, w) for i in range(w)]
    if not shards.shard_complete(target, fp, k, w, rows[k]):
        _compute(cfg, plan, clip, feats, relation, shards.shard_path(target, k, w),
                 shards.shard_fingerprint(fp, k, w, rows[k]), rows[k], eval_ids if k == 0 else None, limit, progress)
    if world > 1:  # under torchrun: everyone waits, rank 0 merges
        distributed.barrier()
        if rank == 0:
            shards.merge_shards(target, fp, w, rows, _merged_summary)
        distributed.barrier()
        return {"cache": str(target), "status": "computed", "shard": f"{k}/{w}", "images": n}
    left = [i for i in range(w) if not shards.shard_complete(target, fp, i, w, rows[i])]
    if not left:
        shards.merge_shards(target, fp, w, rows, _merged_summary)
        return {"cache": str(target), "status": "merged", "shard": f"{k}/{w}", "images": n}
    return {"cache": str(shards.shard_path(target, k, w)), "status": "shard done", "shard": f"{k}/{w}",
            "images": rows[k][1] - rows[k][0], "shards_left": left}


def _compute(cfg: dict, plan: dict, clip: ClipModel, feats: torch.Tensor, relation, path: Path, fp: dict,
             rows: tuple[int, int], eval_ids: dict | None, limit: int | None, progress: bool) -> tuple[dict, bool]:
    """Fill (or resume) one cache file for rows [start, stop) of the train split."""
    data, spec, ds = plan["data"], plan["spec"], cfg["dataset"]
    start, stop = rows
    split = data.train
    ids, observed, labels = list(split.images[start:stop]), split.observed[start:stop], split.labels[start:stop]
    sel = selection_params(cfg["damp"])
    emb_mode = cfg["cache"]["store_embeddings"]
    t_start = time.time()
    with CacheLock(path):
        writer = CacheWriter(path, fp, rounds=spec.rounds, num_views=spec.num_views, image_ids=ids,
                             classnames=data.classnames, observed=observed, labels=labels,
                             text_features=feats.numpy(), relation=None if relation is None else relation.numpy(),
                             selection=sel, embeddings=emb_mode, embed_dim=clip.embed_dim, eval_ids=eval_ids,
                             info={"data_root": str(Path(ds["data_root"]).resolve()), "image_root": ds["image_root"],
                                   "limit": limit})
        try:
            done = _fill(writer, clip, spec, cfg, [str(data.image_root / i) for i in ids], observed, feats, sel,
                         emb_mode, progress, row_offset=start)
            if eval_ids and not writer.f.attrs["eval_done"]:
                for split_name, split_ids in eval_ids.items():
                    writer.write_eval(split_name, _embed_global(clip, [str(data.image_root / i) for i in split_ids],
                                                                spec, cfg, progress, split_name))
                writer.f.attrs["eval_done"] = True
            stats = _merged_summary(writer.f)
            stats.update({"computed_images": done, "seconds": round(time.time() - t_start, 2),
                          "images_per_s": round(done / max(time.time() - t_start, 1e-9), 2)})
            writer.finish(stats)
        except BaseException:
            writer.close()
            raise
    return stats, writer.resumed


def _merged_summary(f) -> dict:
    """Pseudo-label quality and counts of a filled cache file."""
    bad = f["bad"][:]
    stats = _quality(f["pseudo"][:], f["observed"][:], f["labels"][:], bad) if "labels" in f else {}
    return {**stats, "images": int(len(bad)), "bad_images": int(bad.sum())}


def _fill(writer: CacheWriter, clip: ClipModel, spec: ViewSpec, cfg: dict, paths: list[str], observed: np.ndarray,
          feats: torch.Tensor, sel: dict, emb_mode: str, progress: bool, row_offset: int = 0) -> int:
    n, bs = len(paths), max(1, cfg["clip"]["batch_size"])
    pending = set(writer.pending().tolist())
    batches = [list(range(s, min(s + bs, n))) for s in range(0, n, bs)]
    todo = [b for b in batches if pending.intersection(b)]
    workers = cfg["clip"]["workers"]
    on_device = cfg["views"]["resize_on"] == "device"
    loader = torch.utils.data.DataLoader(ViewBatches(paths, todo, spec, row_offset, decode_only=on_device),
                                         batch_size=None, num_workers=workers,
                                         pin_memory=clip.device.type == "cuda",
                                         prefetch_factor=2 if workers > 0 else None)
    text = feats.to(clip.device)
    obs_t = torch.as_tensor(observed)
    skip = cfg["cache"]["on_bad_image"] == "skip"
    bar = tqdm(total=n, initial=n - sum(len(b) for b in todo), unit="img", desc="stage one", disable=not progress,
               dynamic_ncols=True)
    computed = 0
    for rows, slots, index, errors in loader:
        if errors and not skip:
            listing = "\n    ".join(msg for _, msg in errors)
            raise AevlpError(f"{len(errors)} unreadable image(s):\n    {listing}",
                             hint="fix or remove them, or pass --on-bad-image skip (skipped rows are marked in the "
                                  "cache and ignored by stage two); finished rows are kept for the next run")
        for row, msg in errors:
            log.warning("skipping %s", msg)
        if on_device:  # the worker only decoded: crop and resize where CLIP runs
            slots, index = render_on_device(slots, rows, spec, clip.device, row_offset)
        emb = _encode(clip, slots, cfg["views"]["normalize"])  # [B, U, D]
        sims_u = (emb @ text.T).float().cpu()  # [B, U, C]
        sims = expand_views(sims_u, index).half()  # [R, B, V, C], rounded as stored
        r_obs = obs_t[rows]
        scores, pseudo = zip(*(pseudo_labels(sims[r].float(), r_obs, **sel) for r in range(spec.rounds)))
        scores, pseudo = torch.stack(scores), torch.stack(pseudo)
        bad = np.zeros(len(rows), dtype=bool)
        for row, _ in errors:
            bad[int(row) - int(rows[0])] = True
        if bad.any():
            sims[:, bad], scores[:, bad], pseudo[:, bad] = 0, 0, 0
        e = None
        if emb_mode != "none":
            e = expand_views(emb.cpu(), index)  # [R, B, V, D]
            e = e[:, :, 0] if emb_mode == "global" else e
            e = e.numpy()
        writer.write(int(rows[0]), sims.numpy(), scores.numpy(), pseudo.numpy(), bad, e)
        computed += len(rows)
        bar.update(len(rows))
    bar.close()
    return computed


def _embed_global(clip: ClipModel, paths: list[str], spec: ViewSpec, cfg: dict, progress: bool,
                  split: str) -> np.ndarray:
    """Unflipped global-view embeddings [N, D] of val/test images, for the clip-head backbone."""
    bs = max(1, cfg["clip"]["batch_size"]) * spec.num_views
    batches = [list(range(s, min(s + bs, len(paths)))) for s in range(0, len(paths), bs)]
    loader = torch.utils.data.DataLoader(GlobalViews(paths, batches, spec), batch_size=None,
                                         num_workers=cfg["clip"]["workers"])
    out = np.zeros((len(paths), clip.embed_dim), dtype=np.float32)
    for rows, slots, errors in tqdm(loader, desc=f"{split} embeddings", disable=not progress, unit="batch"):
        if errors:
            raise AevlpError(f"{len(errors)} unreadable {split} image(s):\n    " + "\n    ".join(m for _, m in errors))
        out[rows.numpy()] = _encode(clip, slots, cfg["views"]["normalize"])[:, 0].cpu().numpy()
    return out


def _quality(pseudo: np.ndarray, observed: np.ndarray, labels: np.ndarray, bad: np.ndarray) -> dict:
    """Mean over rounds of pseudo-label P/R/F1 against the ground truth (non-observed entries)."""
    keep = ~bad
    if not keep.any():
        return {}
    qs = [pseudo_label_quality(pseudo[r][keep], observed[keep], labels[keep]) for r in range(pseudo.shape[0])]
    return {f"pseudo_{k}": round(float(np.mean([q[k] for q in qs])), 3)
            for k in ("precision", "recall", "f1", "f1_official")} | \
        {"pseudo_positives_per_image": round(float(np.mean([(p[keep] == 1).sum(1).mean() for p in pseudo])), 3),
         "pseudo_negatives_per_image": round(float(np.mean([(p[keep] == -1).sum(1).mean() for p in pseudo])), 3)}
