"""DAMP: dynamic augmentation multi-view pseudo-labels (AEVLP; docs/method.md, "DAMP"), vectorised over images.

`aggregate` turns raw CLIP cosine similarities of one global view and R local views into the
combined score f (for positives) and the negative score g; `select` turns those into pseudo-labels.
Keeping the two apart is what lets stage two re-tune τ, η, θ, k and the ratio from the cache.
"""
from __future__ import annotations

import torch

from aevlp.errors import ConfigError
from aevlp.settings import DampSpec, checked, default_of

__all__ = ["softmax", "aggregate", "select", "select_global", "pseudo_labels"]


def softmax(sims: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax over classes of cosine similarities / τ (float32, or float64 kept): the one place CLIP
    similarities become scores (DAMP, the zero-shot teacher, the galleries)."""
    checked(DampSpec, temperature=temperature)
    x = sims if sims.dtype == torch.float64 else sims.float()
    return torch.softmax(x / temperature, dim=-1)


def aggregate(global_sims: torch.Tensor, local_sims: torch.Tensor, observed: torch.Tensor, *,
              temperature: float, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(f, g) of §3.4 from `global_sims [N,C]`, `local_sims [N,R,C]` and observed labels `[N,C]`.

    The per-image gate η' = min(s^g of the observed positive, η) keeps a class's best local score
    α only when it beats how sure CLIP is about the known tag; otherwise the pessimistic β is used.
    Images without an observed positive get η' = 0 (the gate is always open).
    """
    if global_sims.ndim != 2 or local_sims.ndim != 3:
        raise ValueError(f"expected global [N,C] and local [N,R,C], got {tuple(global_sims.shape)} "
                         f"and {tuple(local_sims.shape)}")
    n, c = global_sims.shape
    if local_sims.shape[0] != n or local_sims.shape[2] != c or local_sims.shape[1] < 1:
        raise ValueError(f"local_sims {tuple(local_sims.shape)} does not fit global_sims {tuple(global_sims.shape)}")
    if observed.shape != global_sims.shape:
        raise ValueError(f"observed {tuple(observed.shape)} does not match global_sims {tuple(global_sims.shape)}")
    s_g = softmax(global_sims, temperature)
    s_r = softmax(local_sims, temperature)
    alpha = s_r.amax(dim=1)
    beta = s_r.amin(dim=1)
    mean = s_r.mean(dim=1)
    obs = (observed == 1).to(s_g.device)
    eta_img = torch.clamp((s_g * obs).amax(dim=1), max=eta).unsqueeze(1)
    a = torch.where(alpha > eta_img, alpha, beta)
    return 0.5 * (s_g + a), 0.5 * (s_g + mean)


def _check_selection(c: int, top_k: int, negative_ratio: float) -> int:
    checked(DampSpec, top_k=top_k, negative_ratio=negative_ratio)
    if top_k > c:
        raise ConfigError(f"damp.top_k = {top_k} is more than the {c} classes", hint=f"set damp.top_k <= {c}")
    return int(negative_ratio * c)


def select(score: torch.Tensor, neg_score: torch.Tensor, *, top_k: int, threshold,
           negative_ratio: float, negatives: bool = True, observed: torch.Tensor | None = None) -> torch.Tensor:
    """Pseudo-labels int8 `[N,C]` in {-1,0,1} from DAMP scores (docs/method.md, "DAMP", steps 5–7).

    Positives: the top-k classes of f with f ≥ threshold (one θ, or one per class: a [C] array, see
    `aevlp.stage_two.thresholds`). Negatives: the ⌊ratio·C⌋ lowest g, written last so a class picked as both ends
    negative, as in the code. `negatives=False` writes them as 0 (neutral) — the official code's
    behaviour ("official" mode). Observed positives, when given, are 1.
    """
    if score.shape != neg_score.shape or score.ndim != 2:
        raise ValueError(f"score {tuple(score.shape)} and neg_score {tuple(neg_score.shape)} must be one [N,C] shape")
    n, c = score.shape
    m = _check_selection(c, top_k, negative_ratio)
    values, idx = torch.topk(score, k=top_k, dim=1)
    thr = torch.as_tensor(threshold, dtype=score.dtype, device=score.device)
    if thr.ndim == 1:
        if thr.shape[0] != c:
            raise ValueError(f"{thr.shape[0]} class thresholds for {c} classes")
        thr = thr[idx]  # each top-k class against its own θ
    pseudo = torch.zeros((n, c), dtype=torch.int8, device=score.device)
    pseudo.scatter_(1, idx, (values >= thr).to(torch.int8))
    return _negatives_and_observed(pseudo, neg_score, m, negatives, observed)


def _negatives_and_observed(pseudo: torch.Tensor, low: torch.Tensor, m: int, negatives: bool,
                            observed: torch.Tensor | None) -> torch.Tensor:
    """The m lowest-scoring classes become -1 (0 in official mode), written after the positives;
    observed positives are 1 whatever was picked."""
    if m > 0:
        _, neg_idx = torch.topk(low, k=m, dim=1, largest=False)
        pseudo.scatter_(1, neg_idx, torch.full_like(neg_idx, -1 if negatives else 0, dtype=torch.int8))
    if observed is not None:
        pseudo[observed.to(pseudo.device) == 1] = 1
    return pseudo


def select_global(global_sims: torch.Tensor, *, temperature: float = default_of("loss.vlpl_temperature"),
                  threshold: float = default_of("loss.vlpl_threshold"),
                  negative_ratio: float = 0.0, negatives: bool = True,
                  observed: torch.Tensor | None = None) -> torch.Tensor:
    """VLPL-style pseudo-labels from the global view only (Xing et al., CVPRW 2024; §3.9).

    Positive where softmax(cos/τ) > θ (strict, as VLPL); the ⌊ratio·C⌋ lowest become negatives.
    The ablation "DAMP vs global-only" compares this with `select(aggregate(...))`.
    """
    s = softmax(global_sims, temperature)
    n, c = s.shape
    m = _check_selection(c, 1, negative_ratio)
    return _negatives_and_observed((s > threshold).to(torch.int8), s, m, negatives, observed)


def pseudo_labels(sims: torch.Tensor, observed: torch.Tensor, *, temperature: float, eta: float, top_k: int,
                  threshold: float, negative_ratio: float, negatives: bool = True,
                  source: str = "damp") -> tuple[torch.Tensor | None, torch.Tensor]:
    """(f, pseudo) for one round of per-view similarities [N, V, C] (view 0 = global).

    The one place both stages turn cached similarities into labels: stage one for the readable
    defaults it stores, stage two for every epoch. `source="global"` is the VLPL-style comparator
    (no f then: None).
    """
    if source == "global":
        return None, select_global(sims[:, 0], temperature=temperature, threshold=threshold,
                                   negative_ratio=negative_ratio, negatives=negatives, observed=observed)
    f, g = aggregate(sims[:, 0], sims[:, 1:], observed, temperature=temperature, eta=eta)
    return f, select(f, g, top_k=top_k, threshold=threshold, negative_ratio=negative_ratio, negatives=negatives,
                     observed=observed)
