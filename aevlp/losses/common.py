"""Shared pieces of every loss: epsilons, input preparation, the expected-positive regulariser.

Label encodings: `observed` 1 = observed positive, 0 = unknown; `pseudo` 1 = positive,
0 = neutral, -1 = negative. Every loss works on float32 internally (safe under bf16 autocast).
"""
from __future__ import annotations

import torch

__all__ = ["LOG_EPS", "COLE_EPS", "neg_log", "prep", "entropy", "expected_positive_regularizer"]

LOG_EPS = 1e-7  # GR/AEVLP's epsilon inside -log(p + eps)
COLE_EPS = 1e-5  # Cole's, Zhou's and VLPL's


def neg_log(p: torch.Tensor, eps: float = LOG_EPS) -> torch.Tensor:
    return -torch.log(p + eps)


def prep(logits: torch.Tensor, *labels: torch.Tensor | None) -> tuple:
    """(z, p, labels...): float32 logits (float64 kept for gradient checks), sigmoid, labels on z's device."""
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


def entropy(p: torch.Tensor, eps: float = COLE_EPS) -> torch.Tensor:
    """Binary entropy H(p) with Cole's epsilon inside the logs."""
    return -(p * torch.log(p + eps) + (1 - p) * torch.log(1 - p + eps))


def expected_positive_regularizer(p: torch.Tensor, expected_pos: float) -> torch.Tensor:
    """Cole et al.'s EPR: (batch-mean row sum of p − E_pos)² / C², on p *with* gradient."""
    return (p.sum(1).mean(0) - expected_pos) ** 2 / p.shape[1] ** 2
