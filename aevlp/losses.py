"""GR Loss, GPR Loss and the SPML baselines, as pure functions of logits and label matrices.

Label encodings: `observed` 1 = observed positive, 0 = unknown; `pseudo` 1 = positive,
0 = neutral, -1 = negative. Every loss works on float32 internally (safe under bf16 autocast),
and powers of p are computed from log-sigmoids so gradients stay finite for logits in ±50.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from aevlp.errors import ConfigError
from aevlp.registry import Registry

__all__ = ["LOG_EPS", "soft_pseudo_label", "reweight", "gce_positive", "gce_negative", "gr_loss", "gpr_loss",
           "expected_positive_regularizer", "bce_full_loss", "an_loss", "an_pl_loss", "em_loss", "em_pl_loss",
           "epr_loss", "LossSpec", "LOSSES", "register_loss", "build_loss"]

LOG_EPS = 1e-7  # GR/AEVLP's epsilon inside -log(p + eps); Cole's and VLPL's losses use 1e-5


def _neg_log(p: torch.Tensor, eps: float = LOG_EPS) -> torch.Tensor:
    return -torch.log(p + eps)


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
    if q <= 0:
        raise ConfigError(f"q2 must be > 0, got {q}")
    return (1 - torch.exp(q * F.logsigmoid(logits))) / q


def gce_negative(logits: torch.Tensor, q: float) -> torch.Tensor:
    """L3(p;q) = (1 - (1-p)^q)/q; equals p when q = 1."""
    if q <= 0:
        raise ConfigError(f"q3 must be > 0, got {q}")
    return (1 - torch.exp(q * F.logsigmoid(-logits))) / q


def expected_positive_regularizer(p: torch.Tensor, expected_pos: float) -> torch.Tensor:
    """Cole et al.'s EPR: (batch-mean row sum of p − E_pos)² / C², on p *with* gradient."""
    return (p.sum(1).mean(0) - expected_pos) ** 2 / p.shape[1] ** 2


def _prep(logits: torch.Tensor, *labels: torch.Tensor | None) -> tuple:
    # Half precision (bf16 autocast) is lifted to float32; float64 stays for gradient checks.
    z = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    out = [z, torch.sigmoid(z)]
    for lab in labels:
        if lab is None:
            out.append(None)
            continue
        if lab.shape != z.shape:
            raise ValueError(f"label matrix of shape {tuple(lab.shape)} does not match logits {tuple(z.shape)}")
        out.append(lab.to(z.device))
    return tuple(out)


def _gr_terms(z, p, w, b, mu, sigma, q2, q3):
    K = soft_pseudo_label(p, w, b)
    V = reweight(p, mu, sigma)
    return K, V, V * (K * gce_positive(z, q2) + (1 - K) * gce_negative(z, q3))


def gr_loss(logits: torch.Tensor, observed: torch.Tensor, *, w: float, b: float, mu: float, sigma: float,
            q2: float, q3: float) -> torch.Tensor:
    """GR Loss (Chen et al., IJCAI 2024), mean over all B×C entries."""
    z, p, y = _prep(logits, observed)
    _, _, unknown = _gr_terms(z, p, w, b, mu, sigma, q2, q3)
    return torch.where(y == 1, _neg_log(p), unknown).mean()


def gpr_loss(logits: torch.Tensor, observed: torch.Tensor, pseudo: torch.Tensor, *, w: float, b: float,
             mu: float, sigma: float, q2: float, q3: float, lam1: float, lam2: float, rho: float,
             reg: float, expected_pos: float) -> torch.Tensor:
    """GPR Loss (AEVLP, ICCV 2025; METHOD.md §3.5).

    Observed positives: -log p. Unknown (z=0): the GR term. Positive pseudo-labels: label-smoothed
    CE towards ρ, weighted by 1-clip(v, 1-λ1, 1-λ2) ∈ [λ2, λ1]. Negative pseudo-labels: v·(-log(1-p)).
    Plus reg·EPR on p with gradient. Equals `gr_loss` when pseudo ≡ 0 and reg = 0.
    """
    if lam1 < lam2:
        raise ConfigError(f"lam1 must be >= lam2 (the positive pseudo-label weight lies in [lam2, lam1]), "
                          f"got lam1={lam1}, lam2={lam2}")
    if not 0.0 <= rho <= 1.0:
        raise ConfigError(f"rho must be in [0, 1], got {rho}")
    z, p, y, zl = _prep(logits, observed, pseudo)
    _, V, unknown = _gr_terms(z, p, w, b, mu, sigma, q2, q3)
    v_clip = V.clamp(min=1 - lam1, max=1 - lam2)
    positive = (1 - v_clip) * (rho * _neg_log(p) + (1 - rho) * _neg_log(1 - p))
    negative = V * _neg_log(1 - p)
    loss = torch.where(zl == 1, positive, torch.where(zl == -1, negative, unknown))
    loss = torch.where(y == 1, _neg_log(p), loss)
    total = loss.mean()
    if reg:
        total = total + reg * expected_positive_regularizer(p, expected_pos)
    return total


def bce_full_loss(logits: torch.Tensor, full: torch.Tensor, *, eps: float = 1e-5) -> torch.Tensor:
    """Full-label BCE: the upper-bound row of the benchmark (`--labels full`)."""
    z, p, y = _prep(logits, full)
    return torch.where(y == 1, _neg_log(p, eps), _neg_log(1 - p, eps)).mean()


def an_loss(logits: torch.Tensor, observed: torch.Tensor, *, eps: float = 1e-5) -> torch.Tensor:
    """Assume Negative (Cole et al.): every unobserved label is treated as negative."""
    return bce_full_loss(logits, (observed == 1).to(logits.dtype), eps=eps)


def an_pl_loss(logits: torch.Tensor, observed: torch.Tensor, pseudo: torch.Tensor, *,
               eps: float = 1e-5) -> torch.Tensor:
    """AN with pseudo-labels (AEVLP's `AN_PL_loss`): pseudo positives join the positives."""
    z, p, y, zl = _prep(logits, observed, pseudo)
    return torch.where((y == 1) | (zl == 1), _neg_log(p, eps), _neg_log(1 - p, eps)).mean()


def _entropy(p: torch.Tensor, eps: float) -> torch.Tensor:
    return -(p * torch.log(p + eps) + (1 - p) * torch.log(1 - p + eps))


def em_loss(logits: torch.Tensor, observed: torch.Tensor, *, em_alpha: float = 0.1,
            eps: float = 1e-5) -> torch.Tensor:
    """Entropy maximisation on unknowns (Zhou et al., ECCV 2022): -log p on positives, -α·H(p) else."""
    z, p, y = _prep(logits, observed)
    return torch.where(y == 1, _neg_log(p, eps), -em_alpha * _entropy(p, eps)).mean()


def em_pl_loss(logits: torch.Tensor, observed: torch.Tensor, pseudo: torch.Tensor, *, em_alpha: float = 0.1,
               pl_weight: float = 0.7, rho: float = 0.9, eps: float = 1e-5) -> torch.Tensor:
    """VLPL's EM_PL (Xing et al., CVPRW 2024; METHOD.md §3.9).

    Positive pseudo-labels get pl_weight·[ρ(-log p) + (1-ρ)(-log(1-p))]; negative ones -log(1-p).
    """
    z, p, y, zl = _prep(logits, observed, pseudo)
    positive = pl_weight * (rho * _neg_log(p, eps) + (1 - rho) * _neg_log(1 - p, eps))
    loss = torch.where(zl == 1, positive, torch.where(zl == -1, _neg_log(1 - p, eps), -em_alpha * _entropy(p, eps)))
    return torch.where(y == 1, _neg_log(p, eps), loss).mean()


def epr_loss(logits: torch.Tensor, observed: torch.Tensor, *, expected_pos: float, reg: float = 1.0,
             eps: float = 1e-5) -> torch.Tensor:
    """Expected Positive Regularization (Cole et al.): -log p on observed positives + reg·EPR."""
    z, p, y = _prep(logits, observed)
    return torch.where(y == 1, _neg_log(p, eps), torch.zeros_like(p)).mean() + \
        reg * expected_positive_regularizer(p, expected_pos)


@dataclass(frozen=True)
class LossSpec:
    """How a named loss is called: which inputs it reads and whether it follows the GR schedules."""

    fn: Callable
    uses_pseudo: bool = False
    uses_schedule: bool = False
    uses_full_labels: bool = False
    source: str = ""


LOSSES: Registry[LossSpec] = Registry("loss")


def register_loss(name: str, spec: LossSpec) -> LossSpec:
    """Make a loss available by name (`--loss NAME`, pipelines, `build_loss`); a taken name is refused."""
    return LOSSES.register(name, spec)


register_loss("gpr", LossSpec(gpr_loss, uses_pseudo=True, uses_schedule=True, source="AEVLP (Tran et al., ICCV 2025)"))
register_loss("gr", LossSpec(gr_loss, uses_schedule=True, source="GR Loss (Chen et al., IJCAI 2024)"))
register_loss("an", LossSpec(an_loss, source="Assume Negative (Cole et al., CVPR 2021)"))
register_loss("an-pl", LossSpec(an_pl_loss, uses_pseudo=True, source="AN with pseudo-labels (AEVLP code's AN_PL_loss)"))
register_loss("em", LossSpec(em_loss, source="Entropy maximisation (Zhou et al., ECCV 2022)"))
register_loss("em-pl", LossSpec(em_pl_loss, uses_pseudo=True, source="VLPL's EM_PL (Xing et al., CVPRW 2024)"))
register_loss("epr", LossSpec(epr_loss, source="Expected Positive Regularization (Cole et al., CVPR 2021)"))
register_loss("bce-full", LossSpec(bce_full_loss, uses_full_labels=True, source="full-label BCE (upper bound)"))


def build_loss(name: str, params: dict) -> Callable[..., torch.Tensor]:
    """A loss by name with its hyperparameters bound; unknown or missing keys are config errors.

    The returned callable takes (logits, observed, pseudo=None, full=None, schedule=None), so a
    training loop calls every loss the same way. Keys of `params` the loss does not take are
    ignored: one pipeline [loss] table serves several losses.
    """
    spec = LOSSES.get(name)
    sig = inspect.signature(spec.fn)
    kw = [n for n, prm in sig.parameters.items() if prm.kind is prm.KEYWORD_ONLY]
    sched_keys = {"w", "b", "mu", "sigma"} if spec.uses_schedule else set()
    bound = {k: params[k] for k in kw if k in params and k not in sched_keys}
    missing = [k for k in kw if k not in bound and k not in sched_keys and sig.parameters[k].default is sig.empty]
    if missing:
        raise ConfigError(f"loss '{name}' needs {', '.join(missing)}", hint="set them in the pipeline's [loss] table")

    def loss(logits, observed, pseudo=None, full=None, schedule=None):
        args = [full if spec.uses_full_labels else observed]
        if spec.uses_pseudo:
            if pseudo is None:
                raise ValueError(f"loss '{name}' needs pseudo-labels")
            args.append(pseudo)
        extra = {k: schedule[k] for k in sched_keys} if spec.uses_schedule else {}
        return spec.fn(logits, *args, **bound, **extra)

    loss.spec = spec  # type: ignore[attr-defined]
    return loss
