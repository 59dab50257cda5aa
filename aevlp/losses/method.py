"""A method as the training loop runs it: a loss per batch, plus whatever state it keeps across a run.

Most losses are pure functions of (logits, labels); `Method` wraps them. Methods that learn or
rewrite something during training (ROLE's label matrix, LL-Cp's permanent corrections, APL's soft
negatives) subclass it, keep that state in tensors, and save it with the checkpoint
(`state_dict`), so `--resume` continues exactly.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from aevlp.errors import ConfigError

__all__ = ["LossSpec", "Method", "RunInfo"]


@dataclass(frozen=True)
class LossSpec:
    """How a named method is run: its loss function, which inputs it reads, and its per-run state.

    `method`: the Method subclass for stateful methods. `pseudo_labels`: how it turns the [damp]
    settings into its own pseudo-label selection (VLPL uses the global view only). `needs_spatial`:
    it needs a convolutional feature map (BoostLU's CAMs). `defaults`: hyperparameters the method
    takes where the [loss] table does not set them.
    """

    fn: Callable
    uses_pseudo: bool = False
    reads_scores: bool = False  # learns from the teacher's scores without a selection (gpr-soft): a student fuses in
    uses_schedule: bool = False
    uses_full_labels: bool = False
    needs_truth: bool = False  # reads the full labels beside the observed ones (IUN, an oracle)
    source: str = ""
    method: type = None  # type: ignore[assignment]  # Method when None
    pseudo_labels: Callable | None = None
    needs_spatial: bool = False
    defaults: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RunInfo:
    """What a method may need to know about the run it is part of."""

    num_rows: int  # training rows (the kept ones)
    num_classes: int
    observed: np.ndarray  # [N, C] observed labels of those rows
    seed: int
    epochs: int
    lr: float
    soft_targets: Callable[[], np.ndarray] | None = None  # [N, C] the teacher's calibrated targets (gpr-soft)


def bind(spec: LossSpec, name: str, params: dict) -> tuple[dict, set[str]]:
    """The keyword arguments of spec.fn taken from params (schedule keys left to each call)."""
    sig = inspect.signature(spec.fn)
    kw = [n for n, prm in sig.parameters.items() if prm.kind is prm.KEYWORD_ONLY]
    sched_keys = {"w", "b", "mu", "sigma"} if spec.uses_schedule else set()
    merged = {**spec.defaults, **{k: v for k, v in params.items() if v is not None}}
    bound = {k: merged[k] for k in kw if k in merged and k not in sched_keys}
    missing = [k for k in kw if k not in bound and k not in sched_keys and sig.parameters[k].default is sig.empty
               and k not in Method.CALL_ARGS]
    if missing:
        raise ConfigError(f"loss '{name}' needs {', '.join(missing)}", hint="set them in the pipeline's [loss] table")
    return bound, sched_keys


class Method:
    """A stateless loss: `loss(...)` calls the function with its bound hyperparameters."""

    CALL_ARGS = ("epoch", "rate", "mode")  # keyword arguments some losses take per call, not from [loss]

    def __init__(self, spec: LossSpec, name: str, params: dict, run: RunInfo | None = None):
        self.spec, self.name, self.params, self.run = spec, name, params, run
        self.bound, self.sched_keys = bind(spec, name, params)

    # --- what the training loop calls ---------------------------------------------------------
    def param_groups(self) -> list[dict]:
        """Extra parameter groups for the optimiser (ROLE's label estimator); none by default."""
        return []

    def prepare_model(self, model: torch.nn.Module) -> None:
        """Adjust the model before training (BoostLU switches it to boosted CAM pooling)."""

    def loss(self, logits, observed, *, rows=None, pseudo=None, full=None, schedule=None, epoch: int = 1):
        args = [full if self.spec.uses_full_labels else observed]
        if self.spec.uses_pseudo:
            if pseudo is None:
                raise ValueError(f"loss '{self.name}' needs pseudo-labels")
            args.append(pseudo)
        if self.spec.needs_truth:
            if full is None:
                raise ValueError(f"loss '{self.name}' needs the full labels")
            args.append(full)
        extra = {k: schedule[k] for k in self.sched_keys} if self.spec.uses_schedule else {}
        return self.spec.fn(logits, *args, **self.bound, **extra)

    needs_train_scores = False

    def end_epoch(self, epoch: int, scores: Callable[[], np.ndarray]) -> dict:
        """Called after each epoch; `scores()` gives [N, C] predictions on the training rows."""
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def __call__(self, logits, observed, pseudo=None, full=None, schedule=None):
        """The plain calling convention of `build_loss` (logits, observed, pseudo=, full=, schedule=)."""
        return self.loss(logits, observed, pseudo=pseudo, full=full, schedule=schedule)
