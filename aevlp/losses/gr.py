"""GR Loss (Chen et al., IJCAI 2024) and GPR Loss (AEVLP, Tran et al., ICCV 2025; docs/method.md).

Powers of p are computed from log-sigmoids so gradients stay finite for logits in ±50.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from aevlp.errors import ConfigError
from aevlp.losses.common import expected_positive_regularizer, neg_log, prep
from aevlp.losses.method import Method
from aevlp.settings import LossParams, checked

__all__ = ["soft_pseudo_label", "reweight", "gce_positive", "gce_negative", "gr_loss", "gpr_loss", "gpr_soft_loss",
           "SoftTargetMethod"]


def soft_pseudo_label(p: torch.Tensor, w: float, b: float) -> torch.Tensor:
    """k̂ = σ(w·p̄ + b): estimated chance that an unobserved entry is positive (no gradient)."""
    return torch.sigmoid(w * p.detach() + b)


def reweight(p: torch.Tensor, mu: float, sigma: float) -> torch.Tensor:
    """v = exp(-(p̄-μ)²/2σ²): down-weights entries the model is confident about (no gradient)."""
    if sigma <= 0:
        raise ConfigError(f"sigma must be > 0, got {sigma}")
    return torch.exp(-((p.detach() - mu) ** 2) / (2 * sigma ** 2))


def gce_positive(logits: torch.Tensor, q: float) -> torch.Tensor:
    """L2(p;q) = (1 - p^q)/q, from logits so that d/dz stays finite when p underflows to 0."""
    checked(LossParams, q2=q)
    return (1 - torch.exp(q * F.logsigmoid(logits))) / q


def gce_negative(logits: torch.Tensor, q: float) -> torch.Tensor:
    """L3(p;q) = (1 - (1-p)^q)/q; equals p when q = 1."""
    checked(LossParams, q3=q)
    return (1 - torch.exp(q * F.logsigmoid(-logits))) / q


def _gr_terms(z, p, w, b, mu, sigma, q2, q3):
    K = soft_pseudo_label(p, w, b)
    V = reweight(p, mu, sigma)
    return K, V, V * (K * gce_positive(z, q2) + (1 - K) * gce_negative(z, q3))


def gr_loss(logits: torch.Tensor, observed: torch.Tensor, *, w: float, b: float, mu: float, sigma: float,
            q2: float, q3: float) -> torch.Tensor:
    """GR Loss (Chen et al., IJCAI 2024), mean over all B×C entries. Observed negatives (y = -1, from a
    review: not in the single-positive benchmark) get -log(1-p)."""
    z, p, y = prep(logits, observed)
    _, _, unknown = _gr_terms(z, p, w, b, mu, sigma, q2, q3)
    return torch.where(y == 1, neg_log(p), torch.where(y == -1, neg_log(1 - p), unknown)).mean()


def gpr_loss(logits: torch.Tensor, observed: torch.Tensor, pseudo: torch.Tensor, *, w: float, b: float,
             mu: float, sigma: float, q2: float, q3: float, lam1: float, lam2: float, rho: float,
             reg: float, expected_pos: float) -> torch.Tensor:
    """GPR Loss (AEVLP, ICCV 2025; docs/method.md, "GPR Loss").

    Observed positives: -log p; observed negatives (y = -1, from a review): -log(1-p). Unknown (z=0):
    the GR term. Positive pseudo-labels: label-smoothed CE towards ρ, weighted by 1-clip(v, 1-λ1, 1-λ2)
    ∈ [λ2, λ1]. Negative pseudo-labels: v·(-log(1-p)).
    Plus reg·EPR on p with gradient. Equals `gr_loss` when pseudo ≡ 0 and reg = 0.
    """
    checked(LossParams, lam1=lam1, lam2=lam2, rho=rho)
    z, p, y, zl = prep(logits, observed, pseudo)
    _, V, unknown = _gr_terms(z, p, w, b, mu, sigma, q2, q3)
    v_clip = V.clamp(min=1 - lam1, max=1 - lam2)
    positive = (1 - v_clip) * (rho * neg_log(p) + (1 - rho) * neg_log(1 - p))
    negative = V * neg_log(1 - p)
    loss = torch.where(zl == 1, positive, torch.where(zl == -1, negative, unknown))
    loss = torch.where(y == 1, neg_log(p), torch.where(y == -1, neg_log(1 - p), loss))
    total = loss.mean()
    if reg:
        total = total + reg * expected_positive_regularizer(p, expected_pos)
    return total


def gpr_soft_loss(logits: torch.Tensor, observed: torch.Tensor, target: torch.Tensor, *, w: float, b: float,
                  mu: float, sigma: float, q2: float, q3: float, reg: float, expected_pos: float) -> torch.Tensor:
    """GR Loss whose unknown entries learn towards the teacher's calibrated chance π (`target`, NaN where a class
    could not be calibrated: GR's own k̂ there) instead of a hard selection: V·(π·L2 + (1−π)·L3); plus reg·EPR as
    GPR. Equals `gr_loss` (+ reg·EPR) when every target is NaN (docs/method.md, "Soft targets")."""
    z, p, y, t = prep(logits, observed, target)
    V = reweight(p, mu, sigma)
    K = torch.where(torch.isnan(t), soft_pseudo_label(p, w, b), t.to(p.dtype))
    unknown = V * (K * gce_positive(z, q2) + (1 - K) * gce_negative(z, q3))
    total = torch.where(y == 1, neg_log(p), torch.where(y == -1, neg_log(1 - p), unknown)).mean()
    if reg:
        total = total + reg * expected_positive_regularizer(p, expected_pos)
    return total


class SoftTargetMethod(Method):
    """gpr-soft: the calibrated targets of the run's training rows (`RunInfo.soft_targets`, computed once from the
    cache: `aevlp.stage_two.soft_targets`) handed to `gpr_soft_loss` batch by batch."""

    def __init__(self, spec, name: str, params: dict, run=None):
        super().__init__(spec, name, params, run)
        if run is None or run.soft_targets is None:
            raise ConfigError(f"loss '{name}' learns towards the teacher's calibrated scores: it runs in `aevlp "
                              "train` on a cache", hint="train it with `aevlp train --pseudo CACHE --loss gpr-soft`")
        self.targets = torch.as_tensor(np.asarray(run.soft_targets(), dtype=np.float32))

    def loss(self, logits, observed, *, rows=None, pseudo=None, full=None, schedule=None, epoch: int = 1):
        extra = {k: schedule[k] for k in self.sched_keys}
        return gpr_soft_loss(logits, observed, self.targets[torch.as_tensor(rows).cpu()].to(logits.device),
                             **self.bound, **extra)
