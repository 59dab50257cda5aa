"""Stage two: a multi-label classifier trained from the stage-one cache (cache → selection → loss → model).

The recipe is the papers' (§3.6): Adam, backbone lr and head lr × lr_mult, GR schedules per epoch,
val mAP on clean labels each epoch, early stopping, test once with the best checkpoint. Everything
a run needs to be resumed or compared is written to its run directory.
"""
from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from aevlp import distributed
from aevlp.cache import Cache
from aevlp.clip import resolve_device
from aevlp.config import dump_config
from aevlp.data import load_dataset
from aevlp.data.images import EmbeddingRows, ImageRows
from aevlp.errors import AevlpError, ConfigError
from aevlp.losses import LOSSES, build_loss
from aevlp.metrics import mean_average_precision, per_class_ap, pseudo_label_quality, pseudo_label_quality_per_class
from aevlp.models import INPUTS, build_model
from aevlp.schedules import gr_schedule
from aevlp.selection import PseudoLabeler

__all__ = ["run_train", "check_cache_matches", "predict_scores", "load_checkpoint"]


def check_cache_matches(cache: Cache, ids: list[str], observed: np.ndarray, classnames: list[str]) -> None:
    """Refuse a cache made for other images, labels or classes, saying which and how to fix it."""
    fix = "re-run stage one for this dataset (aevlp pseudolabel), or pass the matching --pseudo file"
    if cache.classnames() != list(classnames):
        raise AevlpError(f"{cache.path}: its {len(cache.classnames())} classes differ from the dataset's "
                         f"{len(classnames)}", hint=fix)
    cids = cache.image_ids()
    if cids != list(ids):
        if len(cids) < len(ids) and cids == list(ids[:len(cids)]):
            raise AevlpError(f"{cache.path} covers only the first {len(cids)} of {len(ids)} training images",
                             hint=f"it was made with --limit {len(cids)}: pass --limit {len(cids)} here too")
        first = next((i for i, (a, b) in enumerate(zip(cids, ids)) if a != b), min(len(cids), len(ids)))
        raise AevlpError(f"{cache.path}: image ids differ from the dataset's train split "
                         f"({len(cids)} vs {len(ids)} rows; first difference at row {first})", hint=fix)
    if not np.array_equal(cache.array("observed"), observed.astype(np.int8)):
        raise AevlpError(f"{cache.path}: observed labels differ from the dataset's", hint=fix)


def _loader(ds, batch_size: int, workers: int, shuffle_seed: int | None, device: torch.device,
            epoch: int = 0) -> DataLoader:
    """Shuffled (seeded per epoch) or ordered; under torchrun each rank reads its DistributedSampler share."""
    rank, world, _ = distributed.env()
    if shuffle_seed is not None and world > 1:
        sampler = torch.utils.data.DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True,
                                                      seed=shuffle_seed)
        sampler.set_epoch(epoch)
        return DataLoader(ds, batch_size=max(1, batch_size // world), sampler=sampler, num_workers=workers,
                          pin_memory=device.type == "cuda")
    gen = torch.Generator().manual_seed(shuffle_seed * 1000 + epoch) if shuffle_seed is not None else None
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle_seed is not None, generator=gen,
                      num_workers=workers, pin_memory=device.type == "cuda", drop_last=False)


@torch.no_grad()
def predict_scores(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> np.ndarray:
    model.eval()
    out = np.zeros((len(loader.dataset), model.head.out_features), dtype=np.float32)
    for x, rows in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x.to(device, non_blocking=True))
        out[rows.numpy()] = torch.sigmoid(logits.float()).cpu().numpy()
    return out


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "meta" not in ckpt:
        raise AevlpError(f"{path} is not an aevlp checkpoint (best.pt of a run directory)")
    m = ckpt["meta"]
    model = build_model(m["backbone"], len(m["classnames"]), weights="none", embed_dim=m.get("embed_dim", 0))
    model.load_state_dict(ckpt["model"])
    return model.eval(), m


def _inputs(cfg: dict, data, cache: Cache, n: int, keep: np.ndarray):
    """Train/val/test datasets for the backbone's input type (image files or cached embeddings)."""
    t = cfg["train"]
    if INPUTS[t["backbone"]] == "embedding":
        if "embeddings" not in cache.f or "test_embeddings" not in cache.f:
            raise AevlpError(f"{cache.path} has no stored embeddings for the clip-head backbone",
                             hint="re-run stage one with --store-embeddings global")
        emb = cache.f["embeddings"][:]
        emb = emb[:, :, 0] if emb.ndim == 4 else emb
        return (EmbeddingRows(emb[:, keep]), EmbeddingRows(cache.f["val_embeddings"][:]),
                EmbeddingRows(cache.f["test_embeddings"][:]))
    root = data.image_root
    size = t["image_size"]
    return (ImageRows([root / p for p in data.train.images[:n][keep]], size, train=True, seed=t["seed"]),
            ImageRows([root / p for p in data.val.images], size), ImageRows([root / p for p in data.test.images], size))


def run_train(cfg: dict, *, pseudo: str | Path, run_dir: str | Path | None = None, resume: bool = False,
              limit: int | None = None, progress: bool = True) -> dict:
    """Train, evaluate and write the run directory; with `resume`, continue `run_dir` from its last epoch."""
    t, lcfg, ds = cfg["train"], cfg["loss"], cfg["dataset"]
    if t["epochs"] < 1 or t["batch_size"] < 1:
        raise ConfigError("train.epochs and train.batch_size must be >= 1")
    data = load_dataset(ds["name"], ds["data_root"], image_root=ds["image_root"] or None,
                        val_frac=ds["val_frac"], split_seed=ds["split_seed"])
    n = len(data.train) if limit is None else min(limit, len(data.train))
    observed, truth = data.train.observed[:n], data.train.labels[:n]
    cache = Cache(pseudo)
    check_cache_matches(cache, list(data.train.images[:n]), observed, data.classnames)
    keep = ~cache.f["bad"][:]  # unreadable images were skipped in stage one
    params = dict(lcfg, expected_pos=lcfg["expected_pos"] or data.info.expected_pos or
                  float(truth.sum(1).mean()))
    loss_fn = build_loss(lcfg["name"], params)
    spec = LOSSES[lcfg["name"]]
    labeler = PseudoLabeler(cache, cfg["damp"], observed)
    y_obs = truth if t["labels"] == "full" else observed
    device = resolve_device(t["device"])
    rank, world, local = distributed.env()
    if distributed.init(device.type) and device.type == "cuda":
        device = torch.device("cuda", local)
    if world > 1 and t["linear_init"] > 0:
        raise ConfigError("train.linear_init > 0 is not supported under torchrun (DDP needs fixed trainable parameters)")
    main = rank == 0
    torch.manual_seed(t["seed"])
    core = build_model(t["backbone"], data.num_classes, weights=t["weights"],
                       embed_dim=cache.f["embeddings"].shape[-1] if "embeddings" in cache.f else 0).to(device)
    if device.type == "cuda" and INPUTS[t["backbone"]] == "image":
        core = core.to(memory_format=torch.channels_last)
    model = core
    if world > 1:  # same seed on every rank, so the replicas start identical
        model = torch.nn.parallel.DistributedDataParallel(core, device_ids=[local] if device.type == "cuda" else None)
    opt = torch.optim.Adam([{"params": core.backbone.parameters(), "lr": t["lr"]},
                            {"params": core.head.parameters(), "lr": t["lr"] * t["lr_mult"]}])
    train_ds, val_ds, test_ds = _inputs(cfg, data, cache, n, keep)
    val_loader = _loader(val_ds, t["batch_size"] * 2, t["workers"], None, device)
    run = Path(run_dir) if run_dir else Path(t["out"]) / f"{data.info.name}-{lcfg['name']}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    run = Path(distributed.broadcast(str(run)))  # one run directory for all ranks
    if main:
        run.mkdir(parents=True, exist_ok=True)
    state = {"epoch": 0, "best_val": -1.0, "best_epoch": 0, "counter": 0, "history": [], "stopped_early": False}
    if resume:
        if not (run / "last.pt").exists():
            raise AevlpError(f"{run}: nothing to resume (no last.pt)", hint="start a new run without --resume")
        ck = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
        core.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        state = ck["state"]
    if main:
        (run / "config.toml").write_text(dump_config(cfg))
    meta = {"backbone": t["backbone"], "classnames": data.classnames, "image_size": t["image_size"],
            "embed_dim": core.head.in_features if t["backbone"] == "clip-head" else 0,
            "dataset": data.info.name, "loss": lcfg["name"]}
    idx_obs, idx_truth = torch.as_tensor(y_obs[keep]), torch.as_tensor(truth[keep])
    t0 = time.time()
    for epoch in range(state["epoch"] + 1, t["epochs"] + 1):
        if state["stopped_early"]:
            break
        sched = gr_schedule(epoch, t["epochs"], lcfg["beta"], lcfg["alpha"], t["linear_init"])
        z_all = labeler.for_epoch(epoch) if spec.uses_pseudo else np.zeros_like(observed)
        z = torch.as_tensor(z_all[keep])
        core.backbone.requires_grad_(epoch > t["linear_init"])
        train_ds.set_epoch(epoch)
        loader = _loader(train_ds, t["batch_size"], t["workers"], t["seed"], device, epoch)
        model.train()
        total, count = 0.0, 0
        for x, rows in tqdm(loader, desc=f"epoch {epoch}/{t['epochs']}", disable=not (progress and main), leave=False):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(x.to(device, non_blocking=True))
            loss = loss_fn(logits.float(), idx_obs[rows].to(device), pseudo=z[rows].to(device),
                           full=idx_truth[rows].to(device), schedule=sched)
            if not torch.isfinite(loss):
                raise AevlpError(f"the loss became {loss.item()} at epoch {epoch}",
                                 hint="lower train.lr, or check the pseudo-labels (aevlp cache inspect)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(rows)
            count += len(rows)
        total, count = distributed.all_sum([total, count])
        # rank 0 judges; every rank receives the same number, so all take the same decisions
        val_map = distributed.broadcast(
            mean_average_precision(predict_scores(core, val_loader, device), data.val.labels) if main else None)
        q = pseudo_label_quality(z_all[keep], observed[keep], truth[keep]) if spec.uses_pseudo else {}
        rec = {"epoch": epoch, "loss": total / max(count, 1), "val_map": val_map, "round": labeler.round_for(epoch),
               **{k: v for k, v in sched.items()}, **{f"pseudo_{k}": v for k, v in q.items() if k in
                                                       ("precision", "recall", "f1")},
               "seconds": round(time.time() - t0, 2)}
        state["history"].append(rec)
        state["epoch"] = epoch
        improved = val_map > state["best_val"]
        if improved:
            state.update(best_val=val_map, best_epoch=epoch, counter=0)
        else:
            state["counter"] += 1
        state["stopped_early"] = _should_stop(state, t) and epoch < t["epochs"]
        if not main:
            continue
        if improved:
            torch.save({"model": core.state_dict(), "meta": meta}, run / "best.pt")
            if spec.uses_pseudo:
                pseudo_label_quality_per_class(z_all[keep], observed[keep], truth[keep], data.classnames).to_csv(
                    run / "pseudo_per_class.csv", index=False)
        torch.save({"model": core.state_dict(), "optimizer": opt.state_dict(), "state": state}, run / "last.pt")
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in state["history"]))
        if progress:
            tqdm.write(f"epoch {epoch}: loss {rec['loss']:.4f}  val mAP {val_map:.2f}" +
                       (f"  pseudo P/R/F1 {q['precision']:.1f}/{q['recall']:.1f}/{q['f1']:.1f}" if q else ""))
    if not main:
        cache.close()
        return {"rank": rank, "run_dir": str(run)}
    best, _ = load_checkpoint(run / "best.pt")
    best.to(device)
    test_scores = predict_scores(best, _loader(test_ds, t["batch_size"] * 2, t["workers"], None, device), device)
    test_map = mean_average_precision(test_scores, data.test.labels)
    per_class_ap(test_scores, data.test.labels, data.classnames).to_csv(run / "per_class_ap.csv", index=False)
    best_rec = next(r for r in state["history"] if r["epoch"] == state["best_epoch"])
    results = {"dataset": data.info.name, "loss": lcfg["name"], "backbone": t["backbone"], "labels": t["labels"],
               "damp_source": cfg["damp"]["source"] if spec.uses_pseudo else None,
               "best_epoch": state["best_epoch"], "epochs_run": state["epoch"], "stopped_early": state["stopped_early"],
               "val_map": state["best_val"],
               "test_map": test_map, **{k: best_rec[k] for k in best_rec if k.startswith("pseudo_")},
               "cache": str(pseudo), "train_images": int(keep.sum()), "run_dir": str(run)}
    (run / "results.json").write_text(json.dumps(results, indent=1))
    cache.close()
    return results


def _should_stop(state: dict, t: dict) -> bool:
    """AEVLP: patience or a drop > max_drop below the best; GR: the drop only; none: never."""
    if t["early_stop"] == "none":
        return False
    drop = state["best_val"] - state["history"][-1]["val_map"]
    if drop > t["max_drop"]:
        return True
    return t["early_stop"] == "aevlp" and state["counter"] >= t["patience"]
