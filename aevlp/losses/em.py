"""Entropy maximisation (Zhou et al., ECCV 2022), its asymmetric pseudo-labelling (APL), and VLPL's
EM-PL (Xing et al., CVPRW 2024; docs/training.md, "Comparison methods"). Cole's 1e-5 inside the logs."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from aevlp.losses.common import COLE_EPS, entropy, neg_log, prep
from aevlp.losses.method import LossSpec, Method, RunInfo
from aevlp.settings import default_of

__all__ = ["em_loss", "em_pl_loss", "em_apl_loss", "AplMethod", "apl_selection_size", "vlpl_selection"]


def em_loss(logits: torch.Tensor, observed: torch.Tensor, *, em_alpha: float = 0.1,
            eps: float = COLE_EPS) -> torch.Tensor:
    """-log p on observed positives, -α·H(p) on the unobserved (maximising their entropy)."""
    z, p, y = prep(logits, observed)
    return torch.where(y == 1, neg_log(p, eps), -em_alpha * entropy(p, eps)).mean()


def em_pl_loss(logits: torch.Tensor, observed: torch.Tensor, pseudo: torch.Tensor, *, em_alpha: float = 0.1,
               pl_weight: float = 0.7, rho: float = 0.9, eps: float = COLE_EPS) -> torch.Tensor:
    """VLPL's EM_PL: positive pseudo-labels get pl_weight·[ρ(-log p) + (1-ρ)(-log(1-p))], negative ones no
    loss at all (VLPL's code has their term commented out, losses.py:187-247), the rest EM's -α·H(p)."""
    z, p, y, zl = prep(logits, observed, pseudo)
    positive = pl_weight * (rho * neg_log(p, eps) + (1 - rho) * neg_log(1 - p, eps))
    loss = torch.where(zl == 1, positive, torch.where(zl == -1, torch.zeros_like(p), -em_alpha * entropy(p, eps)))
    return torch.where(y == 1, neg_log(p, eps), loss).mean()


def em_apl_loss(logits: torch.Tensor, observed: torch.Tensor, soft: torch.Tensor, *, em_alpha: float = 0.1,
                apl_beta: float = 0.02, eps: float = COLE_EPS) -> torch.Tensor:
    """EM + APL: `soft` holds the soft-negative value p_s of entries APL selected (in [0, 1]) and -1
    elsewhere; those entries get β·(p_s(-log p) + (1-p_s)(-log(1-p))), the others EM's loss."""
    z, p, y, s = prep(logits, observed, soft)
    s_val = s.clamp_min(0).to(p.dtype)
    soft_term = apl_beta * (s_val * neg_log(p, eps) + (1 - s_val) * neg_log(1 - p, eps))
    loss = torch.where(s >= 0, soft_term, -em_alpha * entropy(p, eps))
    return torch.where(y == 1, neg_log(p, eps), loss).mean()


def apl_selection_size(unobserved: int, neg_proportion: float, epochs: int, warmup: int) -> int:
    """How many entries of a class APL turns into soft negatives after each epoch from `warmup` on:
    ⌊neg_proportion · U_c / (T − warmup)⌋, T = `apl_epochs` (Zhou et al.'s code fixes T at 10)."""
    return int(neg_proportion * unobserved / max(epochs - warmup, 1))


class AplMethod(Method):
    """APL's soft negatives: after each epoch e ≥ apl_warmup, per class the lowest-scored unobserved,
    not yet selected entries become soft negatives valued at their prediction, kept to the end."""

    needs_train_scores = True

    def __init__(self, spec: LossSpec, name: str, params: dict, run: RunInfo):
        super().__init__(spec, name, params, run)
        p = {**spec.defaults, **params}
        self.warmup, self.proportion = int(p["apl_warmup"]), float(p["apl_neg_proportion"])
        self.observed = np.asarray(run.observed)
        self.unobserved = (self.observed == 0).sum(0)
        self.epochs = int(p.get("apl_epochs", default_of("loss.apl_epochs")))  # the official denominator, not T
        self.soft = torch.full((run.num_rows, run.num_classes), -1.0)

    def loss(self, logits, observed, *, rows=None, pseudo=None, full=None, schedule=None, epoch: int = 1):
        return em_apl_loss(logits, observed, self.soft[torch.as_tensor(rows).cpu()], **self.bound)

    def end_epoch(self, epoch: int, scores) -> dict:
        if epoch < self.warmup:
            return {}
        s = scores()
        soft = self.soft.numpy()
        added = 0
        for c in range(s.shape[1]):
            free = np.flatnonzero((self.observed[:, c] == 0) & (soft[:, c] < 0))
            n = min(apl_selection_size(int(self.unobserved[c]), self.proportion, self.epochs, self.warmup), len(free))
            pick = free[np.argsort(s[free, c], kind="stable")[:n]]
            soft[pick, c] = s[pick, c]
            added += len(pick)
        return {"apl_soft_negatives": int((soft >= 0).sum()), "apl_added": added}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"soft": self.soft.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.soft = state["soft"].clone().float()


def vlpl_selection(damp, params: dict):
    """VLPL's pseudo-labels from the cache: the global view against the plain class text features (no GCN,
    as VLPL's fixed text features), positive where softmax(cos/τ) > θ, no negatives (disabled for ResNet
    backbones in VLPL's code); one θ for all classes and no student, as its authors ran it."""
    return dataclasses.replace(damp, source="global-plain",
                               threshold=float(params.get("vlpl_threshold", default_of("loss.vlpl_threshold"))),
                               temperature=float(params.get("vlpl_temperature", default_of("loss.vlpl_temperature"))),
                               negative_ratio=0.0,
                               mode="official", class_thresholds="", student="", student_loss="")
