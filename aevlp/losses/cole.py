"""The baselines of Cole et al. (CVPR 2021): full-label BCE, AN, AN-LS, WAN, IUN, IU, EPR and ROLE.

Probabilities with Cole's 1e-5 inside the logs; every loss is the mean over all B×C entries (plus
a regulariser where the method has one), as `compute_batch_loss` in their code.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from aevlp.losses.common import COLE_EPS, LOG_EPS, expected_positive_regularizer, neg_log, prep
from aevlp.losses.method import LossSpec, Method, RunInfo

__all__ = ["bce_full_loss", "an_loss", "an_ls_loss", "an_pl_loss", "wan_loss", "iun_loss", "iu_loss", "epr_loss",
           "role_loss", "RoleMethod"]


def bce_full_loss(logits: torch.Tensor, full: torch.Tensor, *, eps: float = COLE_EPS) -> torch.Tensor:
    """Full-label BCE: the upper-bound row of the benchmark (`--labels full`)."""
    z, p, y = prep(logits, full)
    return torch.where(y == 1, neg_log(p, eps), neg_log(1 - p, eps)).mean()


def an_loss(logits: torch.Tensor, observed: torch.Tensor, *, eps: float = COLE_EPS) -> torch.Tensor:
    """Assume Negative: every unobserved label is treated as negative."""
    return bce_full_loss(logits, (observed == 1).to(logits.dtype), eps=eps)


def an_ls_loss(logits: torch.Tensor, observed: torch.Tensor, *, ls_coef: float = 0.1,
               eps: float = COLE_EPS) -> torch.Tensor:
    """AN with label smoothing: targets 1-ls for observed positives, ls for the unobserved."""
    z, p, y = prep(logits, observed)
    pos = (1 - ls_coef) * neg_log(p, eps) + ls_coef * neg_log(1 - p, eps)
    unk = (1 - ls_coef) * neg_log(1 - p, eps) + ls_coef * neg_log(p, eps)
    return torch.where(y == 1, pos, unk).mean()


def an_pl_loss(logits: torch.Tensor, observed: torch.Tensor, pseudo: torch.Tensor, *,
               eps: float = LOG_EPS) -> torch.Tensor:
    """AN with pseudo-labels (the AEVLP code's `AN_PL_loss`): pseudo positives join the positives; ε 1e-7 as the
    AEVLP code's losses.py (GR's), not Cole's 1e-5."""
    z, p, y, zl = prep(logits, observed, pseudo)
    return torch.where((y == 1) | (zl == 1), neg_log(p, eps), neg_log(1 - p, eps)).mean()


def wan_loss(logits: torch.Tensor, observed: torch.Tensor, *, eps: float = COLE_EPS) -> torch.Tensor:
    """Weak AN: the assumed negatives weighted 1/(C-1)."""
    z, p, y = prep(logits, observed)
    return torch.where(y == 1, neg_log(p, eps), neg_log(1 - p, eps) / (p.shape[1] - 1)).mean()


def iun_loss(logits: torch.Tensor, observed: torch.Tensor, full: torch.Tensor, *,
             eps: float = COLE_EPS) -> torch.Tensor:
    """Ignore Unobserved Positives (an oracle): observed positives and the *true* negatives, nothing else."""
    z, p, y, t = prep(logits, observed, full)
    loss = torch.where(t != 1, neg_log(1 - p, eps), torch.zeros_like(p))
    return torch.where(y == 1, neg_log(p, eps), loss).mean()


def iu_loss(logits: torch.Tensor, observed: torch.Tensor, *, eps: float = COLE_EPS) -> torch.Tensor:
    """Ignore Unobserved: observed positives (1) and observed negatives (-1) only; with single
    positive labels there are no observed negatives, so only the positives train."""
    z, p, y = prep(logits, observed)
    loss = torch.where(y == -1, neg_log(1 - p, eps), torch.zeros_like(p))
    return torch.where(y == 1, neg_log(p, eps), loss).mean()


def epr_loss(logits: torch.Tensor, observed: torch.Tensor, *, expected_pos: float, epr_weight: float = 1.0,
             eps: float = COLE_EPS) -> torch.Tensor:
    """Expected Positive Regularization: -log p on observed positives + EPR, unweighted as in Cole et al.'s
    code (`epr_weight` is no [loss] key: GPR's `reg` does not apply here)."""
    z, p, y = prep(logits, observed)
    return torch.where(y == 1, neg_log(p, eps), torch.zeros_like(p)).mean() + \
        epr_weight * expected_positive_regularizer(p, expected_pos)


def role_loss(logits: torch.Tensor, observed: torch.Tensor, estimated: torch.Tensor, *, expected_pos: float,
              eps: float = COLE_EPS) -> torch.Tensor:
    """ROLE: classifier and label estimator Ŷ (probabilities, with gradient) each fit the observed
    positives, the other's stopped-gradient output, and EPR; the two halves are averaged."""
    z, p, y, est = prep(logits, observed, estimated)
    est_d, p_d = est.detach(), p.detach()
    zero = torch.zeros_like(p)
    pos = torch.where(y == 1, neg_log(p, eps), zero) + torch.where(y == 1, neg_log(est, eps), zero)
    cross = est_d * neg_log(p, eps) + (1 - est_d) * neg_log(1 - p, eps) + \
        p_d * neg_log(est, eps) + (1 - p_d) * neg_log(1 - est, eps)
    reg = 0.5 * (expected_positive_regularizer(p, expected_pos) + expected_positive_regularizer(est, expected_pos))
    return (0.5 * pos + 0.5 * cross).mean() + reg


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


class RoleMethod(Method):
    """ROLE's learned label matrix: one logit per training entry, its own lr (the phase's lr × role_lr_mult).

    Initialised as Cole et al. do: unobserved entries uniform in ±logit(0.6), observed positives at
    logit(0.995); the draw is seeded by train.seed.
    """

    def __init__(self, spec: LossSpec, name: str, params: dict, run: RunInfo):
        super().__init__(spec, name, params, run)
        gen = torch.Generator().manual_seed(run.seed)
        init = _logit(0.6) * (2 * torch.rand(run.num_rows, run.num_classes, generator=gen) - 1)
        init[torch.as_tensor(np.asarray(run.observed) == 1)] = _logit(0.995)
        self.estimator = torch.nn.Parameter(init)
        self.mult = float(params["role_lr_mult"])

    def param_groups(self) -> list[dict]:
        """The estimator at the phase's lr × role_lr_mult (Cole et al.'s lr_mult, which applies to it alone):
        train.linear_init_lr's during a linear phase, train.lr's after (the loop sets it each epoch)."""
        return [{"params": [self.estimator], "lr": self.run.lr * self.mult, "lr_mult": self.mult}]

    def loss(self, logits, observed, *, rows=None, pseudo=None, full=None, schedule=None, epoch: int = 1):
        est = torch.sigmoid(self.estimator[torch.as_tensor(rows).cpu()]).to(logits.device)
        return role_loss(logits, observed, est, **self.bound)

    def estimated_labels(self) -> np.ndarray:
        return torch.sigmoid(self.estimator.detach()).numpy()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"estimator": self.estimator.detach().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.estimator.copy_(state["estimator"])
