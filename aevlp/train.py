"""Stage two: a multi-label classifier trained from the stage-one cache (cache → selection → loss → model).

The recipe is the papers' (docs/training.md): Adam, backbone lr and head lr × lr_mult, GR schedules per epoch,
val mAP on clean labels each epoch, early stopping, test once with the best checkpoint. Everything
a run needs to be resumed or compared is written to its run directory.

`run_train` reads top to bottom: set up, (resume,) then per epoch train → judge → save, then test.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from aevlp import distributed
from aevlp.cache import Cache, fingerprint_id
from aevlp.checkpoint import has_training_state, load_checkpoint, load_training_state, rng_state, save_checkpoint
from aevlp.config import dump_config, updated
from aevlp.data import SPMLData, training_data_hash
from aevlp.data.registry import expected_positives
from aevlp.device import autocast, resolve_device, resolve_train_precision
from aevlp.errors import AevlpError, ConfigError
from aevlp.evaluate import predict_scores
from aevlp.imaging import ModelInput
from aevlp.inputs import flips, input_size, make_loader, stage_two_inputs
from aevlp.labeler import PseudoLabeler
from aevlp.losses import LOSSES, LossSpec, Method, RunInfo, build_method, check_labels_available
from aevlp.metrics import (
    evaluation_report,
    mean_average_precision,
    per_class_ap,
    pseudo_label_quality,
    pseudo_label_quality_per_class,
)
from aevlp.models import BACKBONES, Classifier, build_model
from aevlp.progress import bar
from aevlp.recipe import as_trained, dated_run, lr_source, recipe_line, wants_student
from aevlp.run_folder import claim, resume_changes
from aevlp.schedules import gr_schedule
from aevlp.specs import Specs, TrainSpec
from aevlp.stopping import should_stop, stop_reason
from aevlp.thresholds import write_thresholds

__all__ = ["run_train", "as_trained", "TrainingInterrupted"]


@dataclass
class TrainRun:
    """Everything one training run uses, built once by `_setup`."""

    cfg: dict  # the run's resolved config (what config.toml records)
    specs: Specs
    data: SPMLData
    cache: Cache
    keep: np.ndarray  # training rows stage one could read
    observed: np.ndarray  # [N, C] observed labels of the covered rows
    truth: np.ndarray  # [N, C] full labels (pseudo-label quality; the full-label upper bound)
    method: Method  # the loss as the loop runs it, with any per-run state (ROLE, LL-Cp, APL)
    loss_spec: LossSpec
    labeler: PseudoLabeler
    device: torch.device
    precision: str  # resolved autocast dtype of the forward passes: fp32 | bf16 | fp16
    core: Classifier
    model: torch.nn.Module  # core, or its DistributedDataParallel wrapper
    opt: torch.optim.Optimizer
    inputs: tuple  # train, val, test datasets
    train_loader: torch.utils.data.DataLoader  # built once (persistent workers); reshuffled per epoch
    run: Path
    main: bool
    meta: dict

    @property
    def t(self) -> TrainSpec:
        return self.specs.train

    def batch(self, x, rows: torch.Tensor, epoch: int | None = None) -> torch.Tensor:
        """A loader batch as the model takes it, on the device; `epoch`: apply that epoch's training flips."""
        flip = flips(self.t.seed, epoch, rows) if epoch is not None and self.inputs[0].input == "image" else None
        return ModelInput(self.meta["image_size"], _channels_last(self.t))(x, self.device, flip)

    def ordered(self, split: int) -> torch.utils.data.DataLoader:
        return make_loader(self.inputs[split], self.t.batch_size * 2, self.t.workers, self.device)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: which run directory, and how many finished epochs it holds (0: nothing)."""

    def __init__(self, run_dir: Path, epochs_saved: int):
        super().__init__(str(run_dir))
        self.run_dir, self.epochs_saved = run_dir, epochs_saved


def run_train(cfg: dict, *, cache: str | Path | None = None, run_dir: str | Path | None = None,
              resume: bool = False, limit: int | None = None, progress: bool = True, force: bool = False,
              explicit: tuple[str, ...] = (), echo: Callable[[str], None] | None = tqdm.write,
              student: str = "") -> dict:
    """Train, evaluate and write the run directory; with `resume`, continue `run_dir` from its last epoch
    (a run directory whose first epoch never finished starts over).

    `cache`: the stage-one cache to train from [default: the config's cache.path, else cache/DATASET.h5].
    The run's config is `cfg` with that cache path and the cache's own stage-one sections ([clip],
    [text], [views]), so the run records what its pseudo-labels really came from; a key named in
    `explicit` (the user's --set keys) that contradicts the cache is refused. `cfg` itself is not changed.
    `progress`: progress bars; `echo`: where the run's first line, per-epoch summaries and notes go (None: quiet).
    The folder is locked while it is written; a finished (or interrupted) one is replaced only with `force`;
    a resume may change only `run_folder.RESUMABLE` settings (aevlp.run_folder). `student`: the stored scores
    of the student `damp.student_loss` asks for (`aevlp.refine.taught`, which trains it first).
    """
    echo = echo or (lambda _: None)
    if cache is not None:
        cfg = updated(cfg, {"cache": {"path": str(cache)}})
    lr_from = lr_source(cfg)
    if resume and not has_training_state(Path(run_dir)):
        echo(f"note: {run_dir} holds no finished epoch (interrupted before the first ended): starting it over")
        resume = False
    changes = resume_changes(Path(run_dir), as_trained(cfg)) if resume else []
    if wants_student(cfg) and not student:
        raise ConfigError("damp.student_loss needs its student trained first", hint="train with `aevlp train` or "
                          "`aevlp run` (aevlp.refine.taught in Python)")
    main = distributed.env()[0] == 0
    lock = claim(Path(run_dir), resume=resume, force=force, echo=echo) if run_dir is not None and main else None
    try:  # a named folder is claimed before the set-up's work; a new, dated one once it is named
        r = _setup(as_trained(cfg), run_dir, limit, explicit, resume, student)
        lock = lock or (claim(r.run, resume=resume, force=force, echo=echo) if r.main else None)
        state = load_training_state(r.run, r.core, r.opt, r.method) if resume else _fresh_state()
        if r.t.epochs < state["epoch"]:
            raise AevlpError(f"--epochs {r.t.epochs}: {r.run} has already finished {state['epoch']} epochs",
                             hint=f"resume with --epochs {state['epoch']} or more")
        if r.main:
            _start(r, echo, lr_from, changes)
        return _train_and_test(r, state, progress, echo)
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)


def _start(r: TrainRun, echo: Callable[[str], None], lr_from: str, changes: list[str]) -> None:
    """config.toml (what runs, resumed changes included), the run's first line, the class thresholds."""
    (r.run / "config.toml").write_text(dump_config(r.cfg))
    echo(recipe_line(r.t, lr_from))
    if changes:
        echo("resumed with: " + "; ".join(changes) + " (config.toml records them)")
    if r.labeler.thresholds is not None:  # RUN/class_thresholds.csv: the θ per class it selects with, and why
        path = write_thresholds(r.run / "class_thresholds.csv", r.data.classnames, r.labeler.thresholds,
                                r.labeler.threshold_table)
        off = int((r.labeler.thresholds > 1).sum())
        echo(f"class thresholds ({r.specs.damp.class_thresholds}): {path}"
             + (f"; {off} class(es) without pseudo-positives (teacher unreliable)" if off else ""))


def _train_and_test(r: TrainRun, state: dict, progress: bool, echo: Callable[[str], None]) -> dict:
    try:
        _epochs(r, state, progress, echo)
    except KeyboardInterrupt:
        raise TrainingInterrupted(r.run, state["epoch"]) from None
    if not r.main:
        r.cache.close()
        return {"rank": distributed.env()[0], "run_dir": str(r.run)}
    if not r.data.train_labels_known:
        echo("note: observed-only data: pseudo-label precision/recall are not reported (no full training "
             f"labels); val mAP is measured on {r.data.val_labels} labels")
    return _test_and_write_results(r, state)


def _epochs(r: TrainRun, state: dict, progress: bool, echo: Callable[[str], None]) -> None:
    """Every epoch left: train, judge on val, save (rank 0), until the last or an early stop."""
    t0 = time.time()
    for epoch in range(state["epoch"] + 1, r.t.epochs + 1):
        if state["stopped_early"]:
            break
        rec, z_all = _train_epoch(r, epoch, progress)
        improved = _judge(r, state, rec, z_all, t0)
        if r.main:
            _save_epoch(r, state, improved, z_all, echo)


def _fresh_state() -> dict:
    return {"epoch": 0, "best_val": -1.0, "best_epoch": 0, "counter": 0, "history": [], "stopped_early": False}


def _setup(cfg: dict, run_dir: str | Path | None, limit: int | None, explicit: tuple[str, ...] = (),
           resume: bool = False, student: str = "") -> TrainRun:
    cache = Cache(Specs.of(cfg).cache_path)
    cfg = cache.aligned_config(cfg, explicit)
    specs = Specs.of(cfg)
    t = specs.train
    data = specs.dataset.load()
    n = len(data.train) if limit is None else min(limit, len(data.train))
    observed, truth = data.train.observed[:n], data.train.labels[:n]
    cache.check_matches(list(data.train.images[:n]), observed, data.classnames)
    if cache.check_images(data.image_root) == "absent":
        logging.getLogger("aevlp").warning("the images of %s are absent under %s: they could not be checked",
                                           cache.path, data.image_root)
    keep = ~cache.f["bad"][:]  # unreadable images were skipped in stage one
    params = dict(specs.loss, expected_pos=expected_positives(specs.loss["expected_pos"], data.info.name, truth))
    name, spec = specs.loss["name"], LOSSES.get(specs.loss["name"])
    check_labels_available(name, t.labels, data.train_labels_known)
    method = build_method(name, params, RunInfo(num_rows=int(keep.sum()), num_classes=data.num_classes,
                                                observed=observed[keep], seed=t.seed, epochs=t.epochs, lr=t.lr))
    device, main = _device(t, stateful=spec.method is not None)
    core, model, opt = _model(t, data.num_classes, cache, device, method, pretrained=not resume)
    run = Path(run_dir) if run_dir else dated_run(cfg)
    run = Path(distributed.broadcast(str(run)))  # one run directory for all ranks
    if main:
        run.mkdir(parents=True, exist_ok=True)
    meta = {"backbone": t.backbone, "classnames": data.classnames,
            "image_size": input_size(t.backbone, t.image_size, data),
            "boost_alpha": float(core.boost_alpha),
            "embed_dim": core.head.in_features if BACKBONES.get(t.backbone).input == "embedding" else 0,
            "dataset": data.info.name, "loss": specs.loss["name"], **_clip_meta(cache, t),
            "channels_last": _channels_last(t), **({"head": core.head.spec()} if hasattr(core.head, "spec") else {})}
    damp = spec.pseudo_labels(specs.damp, params) if spec.pseudo_labels else specs.damp
    damp = dataclasses.replace(damp, student=student, student_loss="") if student else damp  # config.toml: as given
    inputs = stage_two_inputs(specs, data, cache, n, keep, meta["image_size"], device, main)
    return TrainRun(cfg=cfg, specs=specs, data=data, cache=cache, keep=keep, observed=observed, truth=truth,
                    method=method, loss_spec=spec, device=device,
                    labeler=PseudoLabeler(cache, damp, observed, params["expected_pos"]),
                    precision=resolve_train_precision(t.precision, device), core=core, model=model,
                    opt=opt, inputs=inputs, run=run, main=main, meta=meta,
                    train_loader=make_loader(inputs[0], t.batch_size, t.workers, device, shuffle_seed=t.seed))


def _device(t: TrainSpec, stateful: bool) -> tuple[torch.device, bool]:
    """The device this process trains on (its local GPU under torchrun), and whether it is rank 0."""
    device = resolve_device(t.device)
    rank, world, local = distributed.env()
    if world > 1 and stateful:
        raise ConfigError("this method keeps per-entry state (ROLE, LL, APL, BoostLU) and is not supported under "
                          "torchrun", hint="train it in one process")
    if distributed.init(device.type) and device.type == "cuda":
        device = torch.device("cuda", local)
    if world > 1 and t.linear_init > 0:
        raise ConfigError("train.linear_init > 0 is not supported under torchrun "
                          "(DDP needs fixed trainable parameters)")
    return device, rank == 0


def _model(t: TrainSpec, num_classes: int, cache: Cache, device: torch.device, method: Method,
           pretrained: bool = True):
    """(model, the module the loop calls, optimiser): seeded init; DDP under torchrun; head at lr × lr_mult;
    the method's own parameters (ROLE's label estimator) in their own group. Without `pretrained` (a resumed
    run: its checkpoint replaces every weight) no backbone weights are fetched."""
    torch.manual_seed(t.seed)
    weights = t.weights if pretrained else "none"
    core = build_model(t.backbone, num_classes, weights=weights, embed_dim=cache.embed_dim).to(device)
    method.prepare_model(core)
    if _channels_last(t):
        core = core.to(memory_format=torch.channels_last)
    model = core
    if distributed.env()[1] > 1:  # same seed on every rank, so the replicas start identical
        model = torch.nn.parallel.DistributedDataParallel(
            core, device_ids=[distributed.env()[2]] if device.type == "cuda" else None)
    if t.compile:
        model = torch.compile(model)
    optimizer = {"adam": torch.optim.Adam, "adamax": torch.optim.Adamax}[t.optimizer]
    opt = optimizer([{"params": core.backbone.parameters(), "lr": t.lr},
                     {"params": core.head.parameters(), "lr": t.lr * t.lr_mult}, *method.param_groups()])
    return core, model, opt


def _channels_last(t: TrainSpec) -> bool:
    """Image backbones in channels_last memory format unless train.channels_last = off ("auto" is on:
    1.1-1.3x faster training steps on CPU and on GPU, docs/performance.md; the batches arrive in it)."""
    return BACKBONES.get(t.backbone).input == "image" and t.channels_last != "off"


def _clip_meta(cache: Cache, t: TrainSpec) -> dict:
    """What a clip-head model needs to embed new images itself: the CLIP the cache was made with."""
    if BACKBONES.get(t.backbone).input != "embedding":
        return {}
    return {"clip": cache.info.get("clip"), "clip_weights": cache.fingerprint.get("clip_weights"),
            "clip_preprocess": json.loads(cache.f.attrs.get("clip_preprocess", "{}"))}


def _train_epoch(r: TrainRun, epoch: int, progress: bool) -> tuple[dict, np.ndarray]:
    """One pass over the training rows with this epoch's schedule and pseudo-labels."""
    t, keep = r.t, r.keep
    sched = gr_schedule(epoch, t.epochs, r.specs.loss["beta"], r.specs.loss["alpha"], t.linear_init)
    z_all = r.labeler.for_epoch(epoch) if r.loss_spec.uses_pseudo else np.zeros_like(r.observed)
    z = torch.as_tensor(z_all[keep])
    y_obs = torch.as_tensor((r.truth if t.labels == "full" else r.observed)[keep])
    y_full = torch.as_tensor(r.truth[keep])
    r.core.backbone.requires_grad_(epoch > t.linear_init)
    r.opt.param_groups[1]["lr"] = t.linear_init_lr if epoch <= t.linear_init and t.linear_init_lr else t.lr * t.lr_mult
    r.inputs[0].set_epoch(epoch)
    r.train_loader.batch_sampler.set_epoch(epoch)
    r.model.train()
    scaler = torch.amp.GradScaler(r.device.type, enabled=r.precision == "fp16")  # fp16 needs loss scaling
    total, count = 0.0, 0
    for x, rows in bar(r.train_loader, desc=f"epoch {epoch}/{t.epochs}", disable=not (progress and r.main),
                        leave=False):
        with autocast(r.device, r.precision):
            logits = r.model(r.batch(x, rows, epoch))
        loss = r.method.loss(logits.float(), y_obs[rows].to(r.device), rows=rows, pseudo=z[rows].to(r.device),
                             full=y_full[rows].to(r.device), schedule=sched, epoch=epoch)
        if not torch.isfinite(loss):
            raise AevlpError(f"the loss became {loss.item()} at epoch {epoch}",
                             hint="lower train.lr, or check the pseudo-labels (aevlp cache inspect)")
        r.opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(r.opt)
        scaler.update()
        total += loss.item() * len(rows)
        count += len(rows)
    total, count = distributed.all_sum([total, count])
    extra = r.method.end_epoch(epoch, lambda: _train_scores(r, epoch))
    return {"epoch": epoch, "loss": total / max(count, 1), "round": r.labeler.round_for(epoch), **sched,
            **extra}, z_all


def _train_scores(r: TrainRun, epoch: int) -> np.ndarray:
    """Predictions [N, C] on the training rows, in order, with this epoch's training flips (APL's input)."""
    return predict_scores(r.core, r.ordered(0), r.device, r.precision, prepare=lambda x, rows: r.batch(x, rows, epoch))


def _judge(r: TrainRun, state: dict, rec: dict, z_all: np.ndarray, t0: float) -> bool:
    """Val mAP (rank 0 computes, every rank receives it) and the early-stopping decision; True if improved."""
    val_map = distributed.broadcast(
        mean_average_precision(predict_scores(r.core, r.ordered(1), r.device, r.precision, prepare=r.batch),
                               r.data.val.labels) if r.main else None)
    keep = r.keep
    q = pseudo_label_quality(z_all[keep], r.observed[keep], r.truth[keep]) \
        if r.loss_spec.uses_pseudo and r.data.train_labels_known else {}
    head = {k: rec[k] for k in ("epoch", "loss")}
    rec = {**head, "val_map": val_map, **{k: v for k, v in rec.items() if k not in head},
           **{f"pseudo_{k}": v for k, v in q.items() if k in ("precision", "recall", "f1")},
           "seconds": round(time.time() - t0, 2)}
    state["history"].append(rec)
    state["epoch"] = rec["epoch"]
    improved = val_map > state["best_val"]
    if improved:
        state.update(best_val=val_map, best_epoch=rec["epoch"], counter=0)
    else:
        state["counter"] += 1
    state["stopped_early"] = should_stop(state, r.t) and rec["epoch"] < r.t.epochs
    if state["stopped_early"]:
        state["stop_reason"] = stop_reason(state, r.t)
    return improved


def _save_epoch(r: TrainRun, state: dict, improved: bool, z_all: np.ndarray, echo: Callable[[str], None]) -> None:
    """best.pt when val improved, last.pt and metrics.jsonl always (rank 0 only)."""
    keep = r.keep
    if improved:
        save_checkpoint(r.run / "best.pt", r.core, meta=r.meta)
        if r.loss_spec.uses_pseudo and r.data.train_labels_known:
            pseudo_label_quality_per_class(z_all[keep], r.observed[keep], r.truth[keep], r.data.classnames).to_csv(
                r.run / "pseudo_per_class.csv", index=False)
    save_checkpoint(r.run / "last.pt", r.core, keep_previous=True, optimizer=r.opt.state_dict(), state=state,
                    method=r.method.state_dict(), rng=rng_state())
    (r.run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in state["history"]))
    rec = state["history"][-1]
    q = (f"  pseudo P/R/F1 {rec['pseudo_precision']:.1f}/{rec['pseudo_recall']:.1f}/{rec['pseudo_f1']:.1f}"
         if "pseudo_f1" in rec else "")
    echo(f"epoch {rec['epoch']}: loss {rec['loss']:.4f}  val mAP {rec['val_map']:.2f}" + q)
    if state["stopped_early"]:
        echo(state["stop_reason"])


def _test_and_write_results(r: TrainRun, state: dict) -> dict:
    """Test the best checkpoint once; write per_class_ap.csv and results.json."""
    best, _ = load_checkpoint(r.run / "best.pt")
    best.to(r.device)
    if _channels_last(r.t):
        best = best.to(memory_format=torch.channels_last)
    test_scores = predict_scores(best, r.ordered(2), r.device, r.precision, prepare=r.batch)
    test_metrics = evaluation_report(test_scores, r.data.test.labels)
    test_map = test_metrics["map"]
    per_class_ap(test_scores, r.data.test.labels, r.data.classnames).to_csv(r.run / "per_class_ap.csv", index=False)
    best_rec = next(x for x in state["history"] if x["epoch"] == state["best_epoch"])
    results = {"dataset": r.data.info.name, "loss": r.specs.loss["name"], "backbone": r.t.backbone,
               "labels": r.t.labels, "damp_source": r.specs.damp.source if r.loss_spec.uses_pseudo else None,
               "best_epoch": state["best_epoch"], "epochs_run": state["epoch"],
               "stopped_early": state["stopped_early"], "stop_reason": state.get("stop_reason"),
               "early_stop": r.t.early_stop, "val_map": state["best_val"], "val_labels": r.data.val_labels,
               "train_labels": "full" if r.data.train_labels_known else "observed only", "test_map": test_map,
               "test_metrics": test_metrics,
               **{k: best_rec[k] for k in best_rec if k.startswith("pseudo_")},
               "cache": str(r.cache.path), "cache_fingerprint": fingerprint_id(r.cache.fingerprint),
               **({"student": r.labeler.provenance} if r.labeler.provenance else {}),
               "data_hash": training_data_hash(r.data, r.specs.dataset.image_check),
               "train_images": int(r.keep.sum()), "run_dir": str(r.run)}
    (r.run / "results.json").write_text(json.dumps(results, indent=1))
    r.cache.close()
    return results
