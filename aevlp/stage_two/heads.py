"""Heads that read the backbone's feature map through per-class queries: MIME's and SMILE's (the model
family of Liu et al., ICML 2023, whose code also holds the image version of SMILE, Xu et al., NeurIPS 2022).

A Query2Label-style transformer (Liu et al. 2021, as in the MIME code's LEModel): the feature map [B, D,
H, W] with 2-D sine positions through one encoder layer, then C learnt class queries through two
decoder layers, 4 heads, feed-forward 4·D, dropout 0.1, D the backbone's feature width (2048 for
ResNet-50, as the official code; 128 for small-cnn). Positions and queries are added once at the inputs
of torch's standard layers, where the DETR-style layers of the official code add them at every
attention. Per class, MIME's head samples a Gaussian latent (width D/8: 256 for ResNet-50, as the
official z_dim) and SMILE's a Beta-distributed label value; `stats` keeps what their losses read.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["QueryTransformer", "GroupWiseLinear", "MimeHead", "SmileHead", "HEADS", "build_head"]


def sine_positions(h: int, w: int, d: int, device) -> torch.Tensor:
    """[H·W, D] DETR's normalised 2-D sine positions: D/2 channels for y, D/2 for x."""
    half = d // 2
    y = (torch.arange(1, h + 1, device=device, dtype=torch.float32) / h * 2 * math.pi)[:, None].expand(h, w)
    x = (torch.arange(1, w + 1, device=device, dtype=torch.float32) / w * 2 * math.pi)[None, :].expand(h, w)
    dim_t = 10000 ** (2 * (torch.arange(half, device=device) // 2) / half)
    py, px = y[..., None] / dim_t, x[..., None] / dim_t
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=3).flatten(2)
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=3).flatten(2)
    return torch.cat((py, px), dim=2).reshape(h * w, -1)[:, :d]


class QueryTransformer(nn.Module):
    """Feature map [B, D, H, W] → one feature per class [B, C, D]."""

    def __init__(self, d: int, num_classes: int, heads: int = 4, encoders: int = 1, decoders: int = 2,
                 dropout: float = 0.1):
        super().__init__()
        kw = {"d_model": d, "nhead": heads, "dim_feedforward": 4 * d, "dropout": dropout, "batch_first": True}
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**kw), encoders, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**kw), decoders, norm=nn.LayerNorm(d))
        self.queries = nn.Embedding(num_classes, d)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        b, d, h, w = fmap.shape
        src = fmap.flatten(2).transpose(1, 2) + sine_positions(h, w, d, fmap.device)
        memory = self.encoder(src)
        return self.decoder(self.queries.weight.unsqueeze(0).expand(b, -1, -1), memory)


class GroupWiseLinear(nn.Module):
    """One linear output per class: [B, C, K] → [B, C] (the official code's GroupWiseLinear)."""

    def __init__(self, num_classes: int, width: int):
        super().__init__()
        bound = 1 / math.sqrt(width)
        self.weight = nn.Parameter(torch.empty(1, num_classes, width).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(1, num_classes).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.weight * x).sum(-1) + self.bias


class _LatentHead(nn.Module):
    spatial = True  # reads the backbone's feature map, not its pooled features (aevlp.stage_two.models.Classifier)
    kind = ""

    def __init__(self, d: int, num_classes: int, latent: int = 0):
        super().__init__()
        self.d, self.num_classes, self.latent = d, num_classes, latent or max(8, d // 8)
        self.transformer = QueryTransformer(d, num_classes)
        self.proj = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, 2 * self.latent))
        self.stats: dict[str, torch.Tensor] = {}

    @property
    def in_features(self) -> int:  # as nn.Linear's, so code that asks a head its sizes reads them the same
        return self.d

    @property
    def out_features(self) -> int:
        return self.num_classes

    def spec(self) -> dict:
        """What `build_head` needs to build this head again (recorded in best.pt's meta)."""
        return {"kind": self.kind, "d": self.d, "num_classes": self.num_classes, "latent": self.latent}


class MimeHead(_LatentHead):
    """MIME (LEModel_VIB): a Gaussian latent per class, z the mean of 10 reparametrised samples while
    training (its mean μ at evaluation, so predictions are deterministic), one linear output per class."""

    kind = "mime"

    def __init__(self, d: int, num_classes: int, latent: int = 0, samples: int = 10):
        super().__init__(d, num_classes, latent)
        self.samples = samples
        self.out = GroupWiseLinear(num_classes, self.latent)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        s = self.proj(self.transformer(fmap))
        mu, std = s[..., :self.latent], torch.exp(torch.clamp(s[..., self.latent:] / 2, -6, 6))
        z = torch.distributions.Normal(mu, std).rsample((self.samples,)).mean(0) if self.training else mu
        self.stats = {"mu": mu, "std": std}
        return self.out(z)


class SmileHead(_LatentHead):
    """SMILE (LEModel_smile): logits from the class features; a Beta(α, β) label value d per class (α, β
    softplus outputs); a Gaussian (μ, σ) per class that only its regulariser reads."""

    kind = "smile"

    def __init__(self, d: int, num_classes: int, latent: int = 0):
        super().__init__(d, num_classes, latent)
        self.out, self.alpha, self.beta = (GroupWiseLinear(num_classes, d) for _ in range(3))

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        feats = self.transformer(fmap)
        s = self.proj(feats)
        a = nn.functional.softplus(self.alpha(feats)) + 1e-6
        b = nn.functional.softplus(self.beta(feats)) + 1e-6
        self.stats = {"mu": s[..., :self.latent], "std": nn.functional.softplus(s[..., self.latent:]), "alpha": a,
                      "beta": b, "d": torch.distributions.Beta(a, b).rsample() if self.training else a / (a + b)}
        return self.out(feats)


HEADS = {"mime": MimeHead, "smile": SmileHead}


def build_head(kind: str, d: int, num_classes: int, latent: int = 0) -> nn.Module:
    return HEADS[kind](d, num_classes, latent)
