"""MIME (Liu et al., ICML 2023) and SMILE (Xu et al., NeurIPS 2022, the image version in the MIME authors'
code): methods that bring their own head (`aevlp.stage_two.heads`) and a loss over its latent variables.

MIME (palm-biaoliu/mime @06e15de, utils/losses.py:257-269 `loss_VIB`, train_mime.py): Assume-Negative
BCE on the predictions + β·KL(N(μ, σ) ‖ N(0, 1)) of the per-class latent; after each epoch from
`mime_warmup` on, the training images' predictions above θ join the observed positives for good.
SMILE (utils/losses.py:291-337 `loss_smile`; 1992209760/SPL_Image_DataSet train_smile.py): while warming
up, AN-BCE on the predictions and on the label distribution d; then θ·(d's cross-entropy with the
predictions) + α·AN(predictions) + β·AN(d) + 1e-5·KL(latent) + 1e-5·KL(Beta(a, b) ‖ Beta(1, 1)).
Cole's 1e-5 inside the logs, means over all B×C entries, as the official code.
"""
from __future__ import annotations

import numpy as np
import torch

from aevlp.errors import ConfigError, flag
from aevlp.losses.common import COLE_EPS, neg_log, prep
from aevlp.losses.method import LossSpec, Method, RunInfo

__all__ = ["gaussian_kl", "beta_kl", "mime_loss", "smile_loss", "MimeMethod", "SmileMethod"]


def gaussian_kl(mu: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """mean of KL(N(μ, σ) ‖ N(0, 1)) = −½(1 + 2 log σ − μ² − σ²) over every entry."""
    return -0.5 * (1 + 2 * std.log() - mu.pow(2) - std.pow(2)).mean()


def beta_kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean of KL(Beta(a, b) ‖ Beta(1, 1)) over every entry."""
    return (torch.lgamma(a + b) - torch.lgamma(a) - torch.lgamma(b) + (a - 1) * torch.digamma(a)
            + (b - 1) * torch.digamma(b) - (a + b - 2) * torch.digamma(a + b)).mean()


def _an(p: torch.Tensor, y: torch.Tensor, eps: float = COLE_EPS) -> torch.Tensor:
    return torch.where(y == 1, neg_log(p, eps), neg_log(1 - p, eps)).mean()


def mime_loss(logits: torch.Tensor, observed: torch.Tensor, mu: torch.Tensor, std: torch.Tensor, *,
              mime_beta: float) -> torch.Tensor:
    """AN on the predictions (observed ∪ MIME's pseudo-positives) + β·KL of the latent."""
    z, p, y = prep(logits, observed)
    return _an(p, y) + mime_beta * gaussian_kl(mu, std)


def smile_loss(logits: torch.Tensor, observed: torch.Tensor, stats: dict, *, smile_alpha: float, smile_beta: float,
               smile_theta: float, warm: bool = False) -> torch.Tensor:
    """SMILE's objective; `warm`: the warm-up's AN on the predictions and on d only."""
    z, p, y = prep(logits, observed)
    d = stats["d"].float()
    if warm:
        return _an(p, y) + _an(d, y)
    align = (d * neg_log(p, COLE_EPS) + (1 - d) * neg_log(1 - p, COLE_EPS)).mean()
    return smile_theta * align + smile_alpha * _an(p, y) + smile_beta * _an(d, y) + \
        1e-5 * gaussian_kl(stats["mu"], stats["std"]) + 1e-5 * beta_kl(stats["alpha"], stats["beta"])


class _HeadMethod(Method):
    """A method that brings its own head (`aevlp.stage_two.heads`) and reads the statistics it keeps."""

    head = ""

    def prepare_model(self, model) -> None:
        from aevlp.stage_two.heads import build_head, official_backbone

        if getattr(model, "features", None) is None:
            raise ConfigError(f"loss '{self.name}' reads the convolutional feature map through per-class queries, "
                              "and this backbone has none",
                              hint=f"use an image backbone: {flag('train.backbone', 'resnet50')} (or small-cnn)")
        model.head = build_head(self.head, model.head.in_features, model.head.out_features)
        model.frozen = set(official_backbone(model.backbone))
        self.model = model


class MimeMethod(_HeadMethod):
    """MIME: its head; after each epoch ≥ `mime_warmup`, predictions > θ become observed positives for good
    (kept in last.pt)."""

    head = "mime"
    needs_train_scores = True

    def __init__(self, spec: LossSpec, name: str, params: dict, run: RunInfo):
        super().__init__(spec, name, params, run)
        self.beta, self.theta = float(params["mime_beta"]), float(params["mime_theta"])
        self.warmup = int(params["mime_warmup"])
        self.added = torch.zeros((run.num_rows, run.num_classes), dtype=torch.bool)

    def loss(self, logits, observed, *, rows=None, pseudo=None, full=None, schedule=None, epoch: int = 1):
        extra = self.added[torch.as_tensor(rows).cpu()].to(observed.device)
        obs = torch.where(extra, torch.ones_like(observed), observed)
        s = self.model.head.stats
        return mime_loss(logits, obs, s["mu"], s["std"], mime_beta=self.beta)

    def end_epoch(self, epoch: int, scores) -> dict:
        if epoch < self.warmup:
            return {}
        self.added |= torch.as_tensor(np.asarray(scores()) > self.theta)
        return {"mime_added_positives": int(self.added.sum())}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"added": self.added.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.added = state["added"].clone().bool()


class SmileMethod(_HeadMethod):
    """SMILE: its head; the warm-up lasts through epoch `smile_warmup` + 1 (the official code counts epochs
    from 0 and warms up while epoch <= warmup_epoch)."""

    head = "smile"

    def __init__(self, spec: LossSpec, name: str, params: dict, run: RunInfo):
        super().__init__(spec, name, params, run)
        self.weights = {k: float(params[k]) for k in ("smile_alpha", "smile_beta", "smile_theta")}
        self.warmup = int(params["smile_warmup"])

    def loss(self, logits, observed, *, rows=None, pseudo=None, full=None, schedule=None, epoch: int = 1):
        return smile_loss(logits, observed, self.model.head.stats, warm=epoch <= self.warmup + 1, **self.weights)
