"""Heads that read the backbone's feature map through per-class queries: MIME's and SMILE's (the model
family of Liu et al., ICML 2023, whose code also holds the image version of SMILE, Xu et al., NeurIPS 2022).

The Query2Label transformer of the MIME code's LEModel (Liu et al. 2021; `QueryTransformer`): the feature
map [B, D, H, W] with DETR's 2-D sine positions through one encoder layer, then C learnt class queries through
two decoder layers that have no self-attention, D the backbone's feature width (2048 for ResNet-50, as the
official code; 128 for small-cnn). Per class, MIME's head samples a Gaussian latent (width D/8: 256 for
ResNet-50, as the official z_dim) and SMILE's a Beta-distributed label value; `stats` keeps what their losses
read. Their backbone is treated as the official code treats its ResNet (`official_backbone`).
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["EncoderLayer", "DecoderLayer", "QueryTransformer", "GroupWiseLinear", "MimeHead", "SmileHead", "HEADS",
           "build_head", "official_backbone"]


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


class EncoderLayer(nn.Module):
    """DETR's post-norm encoder layer: self-attention with the positions added to its queries and keys (not to
    its values), then a ReLU feed-forward; a residual and a LayerNorm after each."""

    def __init__(self, d: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.linear1, self.linear2 = nn.Linear(d, ff), nn.Linear(ff, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout, self.dropout1, self.dropout2 = (nn.Dropout(dropout) for _ in range(3))

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        q = k = src + pos
        src = self.norm1(src + self.dropout1(self.self_attn(q, k, src, need_weights=False)[0]))
        return self.norm2(src + self.dropout2(self.linear2(self.dropout(torch.relu(self.linear1(src))))))


class DecoderLayer(nn.Module):
    """Query2Label's decoder layer: DETR's, with the self-attention among the class queries removed (with its
    norm and dropout). Cross-attention reads the encoded map (keys: map + positions) with the target plus the
    class queries, then the feed-forward."""

    def __init__(self, d: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.linear1, self.linear2 = nn.Linear(d, ff), nn.Linear(ff, d)
        self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout, self.dropout2, self.dropout3 = (nn.Dropout(dropout) for _ in range(3))

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor, query: torch.Tensor):
        attn = self.multihead_attn(tgt + query, memory + pos, memory, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(attn))
        return self.norm3(tgt + self.dropout3(self.linear2(self.dropout(torch.relu(self.linear1(tgt))))))


class QueryTransformer(nn.Module):
    """Feature map [B, D, H, W] → one feature per class [B, C, D]: the MIME code's Query2Label transformer (one
    encoder layer, two decoder layers without self-attention, a final LayerNorm, 4 heads, feed-forward 4·D,
    dropout 0.1). Positions are added to the queries and keys of every attention and the class queries to every
    cross-attention's queries; the target starts at 0; every weight matrix of the layers is xavier-uniform
    (DETR's `_reset_parameters`), the class queries keep nn.Embedding's N(0, 1)."""

    def __init__(self, d: int, num_classes: int, heads: int = 4, encoders: int = 1, decoders: int = 2,
                 dropout: float = 0.1):
        super().__init__()
        self.encoder = nn.ModuleList(EncoderLayer(d, heads, 4 * d, dropout) for _ in range(encoders))
        self.decoder = nn.ModuleList(DecoderLayer(d, heads, 4 * d, dropout) for _ in range(decoders))
        self.decoder_norm = nn.LayerNorm(d)
        for p in (*self.encoder.parameters(), *self.decoder.parameters()):
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.queries = nn.Embedding(num_classes, d)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        b, d, h, w = fmap.shape
        memory, pos = fmap.flatten(2).transpose(1, 2), sine_positions(h, w, d, fmap.device).unsqueeze(0)
        for layer in self.encoder:
            memory = layer(memory, pos)
        query = self.queries.weight.unsqueeze(0).expand(b, -1, -1)
        tgt = torch.zeros_like(query)
        for layer in self.decoder:
            tgt = layer(tgt, memory, pos, query)
        return self.decoder_norm(tgt)


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


FROZEN_STEM = ("conv1.", "bn1.", "layer1.")  # what the official backbone does not train (ResNets)


def official_backbone(net: nn.Module) -> list[str]:
    """Treat a torchvision ResNet as the MIME code's backbone (DETR's `Backbone`) does: every BatchNorm frozen
    (torchvision's FrozenBatchNorm2d: its statistics and affine values fixed, as loaded) and the stem and first
    stage (conv1, bn1, layer1) not trained. Other backbones (small-cnn, trained from scratch) are left as they
    are. The names of the parameters it stopped training."""
    from torchvision.models import ResNet
    from torchvision.ops import FrozenBatchNorm2d

    if not isinstance(net, ResNet):
        return []
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, key).copy_(getattr(child, key).detach())
                setattr(parent, name, frozen)
    stopped = [(n, p) for n, p in net.named_parameters() if n.startswith(FROZEN_STEM)]
    for _, p in stopped:
        p.requires_grad_(False)
    return [n for n, _ in stopped]
