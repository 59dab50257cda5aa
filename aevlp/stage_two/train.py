"""Stage two: a multi-label classifier trained from the stage-one cache (cache → selection → loss → model).

The recipe is the papers' (docs/training.md): Adam, backbone lr and head lr × lr_mult, GR schedules per epoch,
val mAP on clean labels each epoch, early stopping, test once with the best checkpoint. Everything
a run needs to be resumed or compared is written to its run directory.

`run_train` plans (`aevlp.stage_two.plan`), `execute` carries the plan out, reading top to bottom: set up,
(resume,) then per epoch train → judge → save, then test.
"""
from __future__ import annotations

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
from aevlp.cache import Cache
from aevlp.config import updated
from aevlp.data import SPMLData
from aevlp.device import autocast
from aevlp.errors import AevlpError, ConfigError, flag
from aevlp.losses import LOSSES, LossSpec, Method, RunInfo, build_method, check_labels_available
from aevlp.metrics import (
    pseudo_label_quality,
    pseudo_label_quality_per_class,
)
from aevlp.progress import bar
from aevlp.schedules import gr_schedule
from aevlp.specs import Specs, TrainSpec
from aevlp.stage_two.checkpoint import load_training_state, read_checkpoint, rng_state, save_checkpoint
from aevlp.stage_two.clip_student import ClipStudent, decayed_groups
from aevlp.stage_two.evaluate import predict_scores
from aevlp.stage_two.inputs import flips, input_layout, input_size, make_loader, stage_two_inputs
from aevlp.stage_two.labeler import PseudoLabeler, labeler_for
from aevlp.stage_two.model_selection import ModelSelection, resolve_selection, val_pseudo_labels
from aevlp.stage_two.models import BACKBONES, Classifier, build_model
from aevlp.stage_two.plan import StageTwoPlan, as_trained, plan_stage_two
from aevlp.stage_two.run_folder import RunFolder
from aevlp.stage_two.run_record import announce, test_and_write_results
from aevlp.stage_two.soft_targets import soft_targets
from aevlp.stage_two.stopping import should_stop, stop_reason
from aevlp.stage_two.wise_ft import wise_ft

__all__ = ["run_train", "execute", "as_trained", "TrainingInterrupted"]


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
    selection: ModelSelection  # which epoch is tested: the criterion and the targets of each proxy
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
        return input_layout(self.meta, _channels_last(self.t))(x, self.device, flip)

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
    """Plan (`aevlp.stage_two.plan.plan_stage_two`: the same arguments) and train: evaluate and write the run
    directory; with `resume`, continue `run_dir` from its last epoch (a folder whose first epoch never finished
    starts over). `progress`: progress bars; `echo`: where the run's first lines, per-epoch summaries and notes go
    (None: quiet). `cfg` itself is not changed."""
    plan = plan_stage_two(cfg, cache=cache, run_dir=run_dir, resume=resume, force=force, limit=limit,
                          explicit=explicit, student=student)
    return execute(plan, progress=progress, echo=echo)


def execute(plan: StageTwoPlan, *, progress: bool = True, echo: Callable[[str], None] | None = tqdm.write) -> dict:
    """Carry out a plan: claim the run folder (locked while it is written; a finished or interrupted one is
    replaced only when the plan says `force`), build the run, (resume,) train, test, write the results."""
    echo = echo or (lambda _: None)
    for note in plan.notes:
        echo(note)
    main = distributed.env()[0] == 0
    run = Path(distributed.broadcast(str(plan.run_dir)))  # one folder for every rank (a dated name: rank 0's)
    lock = RunFolder(run).claim(resume=plan.resume, force=plan.force, echo=echo) if main else None
    try:
        r = _setup(plan, run)
        state = load_training_state(r.run, r.core, r.opt, r.method) if plan.resume else _fresh_state()
        RunFolder(r.run).check_record(state.get("record"), r.cfg, str(r.cache.path))
        state["record"] = {"config": r.cfg, "cache": str(Path(r.cache.path).resolve())}  # last.pt's own record
        if r.t.epochs < state["epoch"]:
            raise AevlpError(f"{flag('train.epochs', r.t.epochs)}: {r.run} has already finished {state['epoch']} "
                             "epochs",
                             hint=f"resume with {flag('train.epochs', state['epoch'])} or more")
        if r.main:
            announce(r, echo, plan)
        return _train_and_test(r, state, progress, echo)
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)


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
    if r.t.wise_ft:  # mixed with the weights training started from, rebuilt as `_model` built them
        wise_ft(r, state, echo, initial=lambda: _initial_model(r.t, r.data.num_classes, r.cache, r.device, r.method,
                                                               clip=ClipStudent.of_cache(r.cache)))
    return test_and_write_results(r, state)


def _epochs(r: TrainRun, state: dict, progress: bool, echo: Callable[[str], None]) -> None:
    """Every epoch left: train, judge on val, save (rank 0), until the last or an early stop."""
    t0 = time.time()
    for epoch in range(state["epoch"] + 1, r.t.epochs + 1):
        if state["stopped_early"]:
            break
        if epoch == r.t.linear_init + 1 > 1:
            _leave_linear_phase(r, state, echo)
        rec, z_all = _train_epoch(r, epoch, progress)
        improved = _judge(r, state, rec, z_all, t0)
        if r.main:
            _save_epoch(r, state, improved, z_all, echo)


def _leave_linear_phase(r: TrainRun, state: dict, echo: Callable[[str], None]) -> None:
    """Cole et al.'s code fine-tunes from the best linear epoch (its weights and label estimate) with a fresh
    optimiser, and tests an epoch of the fine-tuning: the selection starts again."""
    best = r.run / "best.pt"
    if best.exists():
        ckpt = read_checkpoint(best)
        r.core.load_state_dict(ckpt["model"])
        if ckpt.get("method"):
            r.method.load_state_dict(ckpt["method"])
        echo(f"fine-tuning from the best linear epoch ({state['best_epoch']}, val {state['best_val']:.2f})")
    r.opt.state.clear()
    state.update(best_val=-1.0, best_epoch=0, counter=0, linear_best=state["best_epoch"])


def _fresh_state() -> dict:
    return {"epoch": 0, "best_val": -1.0, "best_epoch": 0, "counter": 0, "history": [], "stopped_early": False}


def _setup(plan: StageTwoPlan, run: Path) -> TrainRun:
    """The run a plan describes: its cache (checked), data, labeler, method, model, optimiser and loaders."""
    cache = Cache(plan.cache)
    specs, cfg = plan.specs, plan.cfg
    t = specs.train
    data = plan.data  # checked against the cache by the plan
    n = len(data.train) if plan.limit is None else min(plan.limit, len(data.train))
    observed, truth = data.train.observed[:n], data.train.labels[:n]
    if cache.check_images(data.image_root) == "absent":
        logging.getLogger("aevlp").warning("the images of %s are absent under %s: they could not be checked",
                                           cache.path, data.image_root)
    keep = ~cache.f["bad"][:]  # unreadable images were skipped in stage one
    full = plan.student.kind == "none"  # no student's scores are fused (full labels, or none asked for)
    labeler = labeler_for(cache, updated(cfg, {"damp": {"student": ""}}) if full else cfg, data=data,
                          student="" if full else plan.student.name, observed=observed,
                          decided=None if plan.selection.before_student else plan.selection)
    params = dict(specs.loss, expected_pos=labeler.expected.value)
    name, spec = specs.loss["name"], LOSSES.get(specs.loss["name"])
    check_labels_available(name, t.labels, data.train_labels_known)
    method = build_method(name, params, RunInfo(num_rows=int(keep.sum()), num_classes=data.num_classes,
                                                observed=observed[keep], seed=t.seed, epochs=t.epochs, lr=t.lr,
                                                soft_targets=lambda: soft_targets(labeler, keep)))
    device, main = _device(plan, stateful=spec.method is not None)
    clip = ClipStudent.of_cache(cache) if BACKBONES.get(t.backbone).reads_clip else None
    core, model, opt = _model(t, data.num_classes, cache, device, method, pretrained=not plan.resume, clip=clip)
    if main:
        run.mkdir(parents=True, exist_ok=True)
    meta = {"backbone": t.backbone, "classnames": data.classnames,
            "image_size": clip.preprocess["image_size"] if clip else input_size(t.backbone, t.image_size, data),
            **({"mean": clip.mean, "std": clip.std} if clip else {}),
            "boost_alpha": float(core.boost_alpha),
            "embed_dim": core.head.in_features if BACKBONES.get(t.backbone).input == "embedding" else 0,
            "dataset": data.info.name, "loss": specs.loss["name"], **_clip_meta(cache, t, clip),
            "channels_last": _channels_last(t), **({"head": core.head.spec()} if hasattr(core.head, "spec") else {})}
    inputs = stage_two_inputs(specs, data, cache, n, keep, meta["image_size"], device, main)
    pseudo = val_pseudo_labels(labeler, cache, data.val.observed) if t.select == "observed+pseudo" else None
    selection = resolve_selection(t.select, val_full=data.val_labels == "full", val_labels=data.val.labels,
                                  val_observed=data.val.observed, val_pseudo=pseudo)
    return TrainRun(cfg=cfg, specs=specs, data=data, cache=cache, keep=keep, observed=observed, truth=truth,
                    method=method, loss_spec=spec, device=device, labeler=labeler, selection=selection,
                    precision=plan.precision, core=core, model=model, opt=opt, inputs=inputs, run=run, main=main,
                    meta=meta, train_loader=make_loader(inputs[0], t.batch_size, t.workers, device,
                                                        shuffle_seed=t.seed))


def _device(plan: StageTwoPlan, stateful: bool) -> tuple[torch.device, bool]:
    """The device this process trains on (the plan's; its local GPU under torchrun), and whether it is rank 0."""
    t, device = plan.t, torch.device(plan.device)
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
           pretrained: bool = True, clip=None):
    """(model, the module the loop calls, optimiser): seeded init; DDP under torchrun; head at lr × lr_mult;
    the method's own parameters (ROLE's label estimator) in their own group, then the decayed layers of a CLIP
    tower (`train.layer_decay`). Without `pretrained` (a resumed
    run: its checkpoint replaces every weight) no backbone weights are fetched."""
    core = _initial_model(t, num_classes, cache, device, method, pretrained, clip)
    model = core
    if distributed.env()[1] > 1:  # same seed on every rank, so the replicas start identical
        model = torch.nn.parallel.DistributedDataParallel(
            core, device_ids=[distributed.env()[2]] if device.type == "cuda" else None)
    if t.compile:
        model = torch.compile(model)
    optimizer = {"adam": torch.optim.Adam, "adamax": torch.optim.Adamax}[t.optimizer]
    backbone = [{"params": core.backbone.parameters(), "lr": t.lr}] if t.layer_decay == 1 else \
        decayed_groups(core.backbone, t.lr, t.layer_decay)  # a CLIP tower, its lower layers slower
    opt = optimizer([backbone[0], {"params": core.head.parameters(), "lr": t.lr * t.lr_mult},
                     *method.param_groups(), *backbone[1:]])
    return core, model, opt


def _initial_model(t: TrainSpec, num_classes: int, cache: Cache, device: torch.device, method: Method,
                   pretrained: bool = True, clip=None) -> Classifier:
    """The model before training, on the device: seeded init, the method's changes to it, the memory format."""
    torch.manual_seed(t.seed)
    weights = t.weights if pretrained else "none"
    core = build_model(t.backbone, num_classes, weights=weights, embed_dim=cache.embed_dim, clip=clip).to(device)
    method.prepare_model(core)
    return core.to(memory_format=torch.channels_last) if _channels_last(t) else core


def _channels_last(t: TrainSpec) -> bool:
    """Image backbones in channels_last memory format unless train.channels_last = off ("auto" is on:
    1.1-1.3x faster training steps on CPU and on GPU, docs/performance.md; the batches arrive in it)."""
    return BACKBONES.get(t.backbone).input == "image" and t.channels_last != "off"


def _clip_meta(cache: Cache, t: TrainSpec, clip: ClipStudent | None) -> dict:
    """What a model on CLIP needs to be rebuilt (clip) or to embed new images itself (clip-head): the CLIP the cache
    was made with."""
    if clip is not None:
        return clip.meta()
    if BACKBONES.get(t.backbone).input != "embedding":
        return {}
    return ClipStudent.of_cache(cache, with_text=False).meta()


def _train_epoch(r: TrainRun, epoch: int, progress: bool) -> tuple[dict, np.ndarray]:
    """One pass over the training rows with this epoch's schedule and pseudo-labels."""
    t, keep = r.t, r.keep
    sched = gr_schedule(epoch, t.epochs, r.specs.loss["beta"], r.specs.loss["alpha"], t.linear_init)
    z_all = r.labeler.for_epoch(epoch) if r.loss_spec.uses_pseudo else np.zeros_like(r.observed)
    z = torch.as_tensor(z_all[keep])
    y_obs = torch.as_tensor((r.truth if t.labels == "full" else r.observed)[keep])
    y_full = torch.as_tensor(r.truth[keep])
    linear = epoch <= t.linear_init
    _phase(r, linear)
    r.inputs[0].set_epoch(epoch)
    r.train_loader.batch_sampler.set_epoch(epoch)
    scaler = torch.amp.GradScaler(r.device.type, enabled=r.precision == "fp16")  # fp16 needs loss scaling
    # the loss is summed on the device and read back every CHECK_EVERY steps: a read after each step would make
    # the host wait for the GPU at every batch (the recipe's batch of 8 is short work for a GPU)
    total_t, count = torch.zeros((), dtype=torch.float64, device=r.device), 0
    for i, (x, rows) in enumerate(bar(r.train_loader, desc=f"epoch {epoch}/{t.epochs}",
                                      disable=not (progress and r.main), leave=False)):
        with autocast(r.device, r.precision):
            logits = r.model(r.batch(x, rows, None if linear else epoch))  # the linear phase: fixed features
        loss = r.method.loss(logits.float(), y_obs[rows].to(r.device), rows=rows, pseudo=z[rows].to(r.device),
                             full=y_full[rows].to(r.device), schedule=sched, epoch=epoch)
        r.opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(r.opt)
        scaler.update()
        total_t += loss.detach().double() * len(rows)
        count += len(rows)
        if (i + 1) % CHECK_EVERY == 0 or r.device.type == "cpu":
            _check_finite(total_t, epoch)
    _check_finite(total_t, epoch)
    total, count = distributed.all_sum([total_t.item(), count])
    extra = r.method.end_epoch(epoch, lambda: _train_scores(r, epoch))
    return {"epoch": epoch, "loss": total / max(count, 1), "round": r.labeler.round_for(epoch), **sched,
            **extra}, z_all


CHECK_EVERY = 16  # steps between reads of the summed loss on a GPU (every step on a CPU, where reads are free)


def _phase(r: TrainRun, linear: bool) -> None:
    """The linear phase (`train.linear_init`) as Cole et al.'s code runs it, on fixed features: the backbone not
    trained and in eval mode (its BatchNorm statistics as loaded), no flips, the head and the method's own
    parameters (ROLE's label estimator) at `train.linear_init_lr` (× their multiplier). After it: everything
    trained at `train.lr`, the head at lr × lr_mult. Parameters a method froze (`Classifier.frozen`) stay so."""
    t = r.t
    for name, p in r.core.backbone.named_parameters():
        p.requires_grad_(not linear and name not in r.core.frozen)
    lr = t.linear_init_lr if linear and t.linear_init_lr else t.lr
    r.opt.param_groups[1]["lr"] = lr if linear and t.linear_init_lr else t.lr * t.lr_mult
    for group in r.opt.param_groups[2:]:
        group["lr"] = lr * group.get("lr_mult", 1.0)
    r.model.train()
    if linear:
        r.core.backbone.eval()


def _check_finite(total: torch.Tensor, epoch: int) -> None:
    if not torch.isfinite(total):
        raise AevlpError(f"the loss became {total.item()} at epoch {epoch}",
                         hint="lower train.lr, or check the pseudo-labels (aevlp cache inspect)")


def _train_scores(r: TrainRun, epoch: int) -> np.ndarray:
    """Predictions [N, C] on the training rows, in order, with this epoch's training flips (APL's input)."""
    return predict_scores(r.core, r.ordered(0), r.device, r.precision, prepare=lambda x, rows: r.batch(x, rows, epoch))


def _judge(r: TrainRun, state: dict, rec: dict, z_all: np.ndarray, t0: float) -> bool:
    """Val mAP and the selection criterion's value (rank 0 computes, every rank receives them) and the
    early-stopping decision; True if the criterion improved (`train.select = last`: every epoch)."""
    val = predict_scores(r.core, r.ordered(1), r.device, r.precision, prepare=r.batch) if r.main else None
    measures = distributed.broadcast(r.selection.measures(val) if r.main else None)
    if r.main and r.t.save_scores:  # train.save_scores: every epoch's predictions, for model-selection studies
        (r.run / "scores").mkdir(exist_ok=True)
        test = predict_scores(r.core, r.ordered(2), r.device, r.precision, prepare=r.batch)
        np.savez(r.run / "scores" / f"epoch-{rec['epoch']}.npz", val=val.astype(np.float16),
                 test=test.astype(np.float16))
    keep = r.keep
    q = pseudo_label_quality(z_all[keep], r.observed[keep], r.truth[keep]) \
        if r.loss_spec.uses_pseudo and r.data.train_labels_known else {}
    head = {k: rec[k] for k in ("epoch", "loss")}
    rec = {**head, **measures, "select": r.selection.value(measures), **{k: v for k, v in rec.items() if k not in head},
           **{f"pseudo_{k}": v for k, v in q.items() if k in ("precision", "recall", "f1")},
           "seconds": round(time.time() - t0, 2)}
    state["history"].append(rec)
    state["epoch"] = rec["epoch"]
    improved = rec["select"] > state["best_val"] or r.selection.criterion == "last"
    if improved:
        state.update(best_val=rec["select"], best_epoch=rec["epoch"], counter=0)
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
        save_checkpoint(r.run / "best.pt", r.core, meta=r.meta,
                        **({"method": r.method.state_dict()} if state["epoch"] <= r.t.linear_init else {}))
        if r.loss_spec.uses_pseudo and r.data.train_labels_known:
            pseudo_label_quality_per_class(z_all[keep], r.observed[keep], r.truth[keep], r.data.classnames).to_csv(
                r.run / "pseudo_per_class.csv", index=False)
    save_checkpoint(r.run / "last.pt", r.core, keep_previous=True, optimizer=r.opt.state_dict(), state=state,
                    method=r.method.state_dict(), rng=rng_state())
    (r.run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in state["history"]))
    rec = state["history"][-1]
    q = (f"  pseudo P/R/F1 {rec['pseudo_precision']:.1f}/{rec['pseudo_recall']:.1f}/{rec['pseudo_f1']:.1f}"
         if "pseudo_f1" in rec else "")
    crit = r.selection.criterion
    sel = f"  [{crit} {rec['select']:.2f}]" if crit not in ("val", "last") else ""
    echo(f"epoch {rec['epoch']}: loss {rec['loss']:.4f}  val mAP {rec['val_map']:.2f}{sel}" + q)
    if state["stopped_early"]:
        echo(state["stop_reason"])
