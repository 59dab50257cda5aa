"""Label-relation refinement of class text features (AEVLP; docs/method.md, "Text features").

T = normalise(T0 + GCN(A, T0)) with a frozen three-layer GCN. The official code leaves the GCN
randomly initialised and unseeded (so T changes between runs); aevlp seeds it, which makes the
"noise based on label-to-label relation" reproducible and lets the cache fingerprint it.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aevlp.errors import ConfigError, DataError
from aevlp.settings import default_of

__all__ = ["relation_from_text", "build_adjacency", "TextGCN", "refine_text_features", "load_relation"]


def relation_from_text(text_features: torch.Tensor) -> torch.Tensor:
    """C×C cosine similarity of class-name text embeddings.

    The official `relation+{dataset}.npy` files look like exactly this (symmetric, diagonal 1,
    entries in [0.43, 1]) but their origin is undocumented; computing them from the CLIP in use
    keeps the matrix consistent with whatever checkpoint the user swaps in.
    """
    t = F.normalize(text_features.float(), dim=-1)
    return t @ t.T


def load_relation(path: str, num_classes: int) -> torch.Tensor:
    """A user's relation matrix (e.g. the official relation+voc.npy), validated."""
    try:
        r = np.load(path)
    except Exception as e:
        raise DataError(f"{path}: cannot be read as a .npy relation matrix ({e})") from e
    if r.shape != (num_classes, num_classes):
        raise DataError(f"{path}: relation matrix has shape {r.shape}, expected ({num_classes}, {num_classes})")
    return torch.as_tensor(r, dtype=torch.float32)


REWEIGHT_P = default_of("text.reweight_p")  # the official code's 0.2


def build_adjacency(relation: torch.Tensor, sparse_topk: int, reweight_p: float = REWEIGHT_P) -> torch.Tensor:
    """Row-normalised adjacency: top-k per row, diagonal 1-p, off-diagonals summing to p.

    Negative similarities (possible with untrained or unusual encoders; the official matrices lie in
    [0.43, 1]) are treated as "no relation" so that A stays a convex mixing matrix.
    """
    c = relation.shape[0]
    if relation.shape != (c, c):
        raise ConfigError(f"relation must be square, got {tuple(relation.shape)}")
    if not 1 <= sparse_topk <= c:
        raise ConfigError(f"sparse_topk must be in [1, {c}], got {sparse_topk}")
    if not 0.0 <= reweight_p < 1.0:
        raise ConfigError(f"reweight_p must be in [0, 1), got {reweight_p}")
    r = relation.float().clamp_min(0.0)
    _, idx = torch.topk(r, k=sparse_topk, dim=1)
    a = torch.zeros_like(r).scatter_(1, idx, r.gather(1, idx))
    a.fill_diagonal_(0.0)
    row = a.sum(dim=1, keepdim=True)
    has = row.squeeze(1) > 0
    a = torch.where(row > 0, a * (reweight_p / row.clamp_min(1e-12)), a)
    # A class related to no other keeps its own features whole, so every row still sums to 1.
    a.diagonal().copy_(torch.where(has, 1.0 - reweight_p, 1.0))
    return a


class TextGCN(nn.Module):
    """ML-GCN-style frozen refinement: D → 2D → 2D → D, no bias, LeakyReLU(0.2) between layers."""

    def __init__(self, dim: int, hidden: int | None = None, seed: int = 0):
        super().__init__()
        hidden = hidden or 2 * dim
        gen = torch.Generator().manual_seed(seed)
        self.weights = nn.ParameterList()
        for d_in, d_out in ((dim, hidden), (hidden, hidden), (hidden, dim)):
            bound = 1.0 / math.sqrt(d_out)
            w = (torch.rand(d_in, d_out, generator=gen) * 2 - 1) * bound
            self.weights.append(nn.Parameter(w, requires_grad=False))

    def forward(self, t0: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        h = t0.float()
        for i, w in enumerate(self.weights):
            h = adjacency @ (h @ w)
            if i < len(self.weights) - 1:
                h = F.leaky_relu(h, 0.2)
        return F.normalize(t0.float() + h, dim=-1)


@torch.no_grad()
def refine_text_features(t0: torch.Tensor, *, relation: torch.Tensor | None = None, sparse_topk: int,
                         reweight_p: float = REWEIGHT_P, seed: int = 0, enabled: bool = True) -> torch.Tensor:
    """Refined, L2-normalised class features; `enabled=False` only normalises T0 (no GCN)."""
    if not enabled:
        return F.normalize(t0.float(), dim=-1)
    rel = relation if relation is not None else relation_from_text(t0)
    adj = build_adjacency(rel, min(sparse_topk, t0.shape[0]), reweight_p)
    return TextGCN(t0.shape[1], seed=seed)(t0, adj)
