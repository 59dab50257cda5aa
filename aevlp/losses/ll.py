"""Large Loss Matters (Kim et al., CVPR 2022): LL-R, LL-Ct, LL-Cp; and BoostLU (Kim et al., CVPR 2023).

BCE-with-logits against the observed labels (unobserved = negative). From epoch 2 on, the
unobserved entries of a batch with the largest losses are treated as false negatives: rejected
(loss 0, LL-R), or corrected to positive for this batch (LL-Ct) or for good (LL-Cp). The share of
the batch's B×C entries so treated grows by Δrel per epoch (LL-R/Ct) or is Δrel (LL-Cp).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from aevlp.errors import ConfigError, flag
from aevlp.losses.common import prep
from aevlp.losses.method import LossSpec, Method, RunInfo

__all__ = ["ll_loss", "large_loss", "ll_rate", "LargeLossMethod", "boost_lu", "BoostLUMethod"]


def large_loss(logits: torch.Tensor, observed: torch.Tensor, k: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss, mask of the modified entries): the unobserved entries whose loss is at least the
    k-th largest unobserved loss are rejected (mode "r") or corrected to positive (mode "ct")."""
    if mode not in ("r", "ct"):
        raise ConfigError(f"large-loss mode must be 'r' or 'ct', got {mode!r}")
    z, _, y = prep(logits, observed)
    target = (y == 1).to(z.dtype)
    loss = F.binary_cross_entropy_with_logits(z, target, reduction="none")
    unobserved = y == 0
    k = min(int(k), int(unobserved.sum()))
    if k <= 0:
        return loss.mean(), torch.zeros_like(unobserved)
    threshold = torch.topk(loss.detach()[unobserved], k).values[-1]
    mask = unobserved & (loss.detach() >= threshold)
    if mode == "r":
        modified = torch.zeros_like(loss)
    else:
        modified = F.binary_cross_entropy_with_logits(z, torch.ones_like(z), reduction="none")
    return torch.where(mask, modified, loss).mean(), mask


def ll_loss(logits: torch.Tensor, observed: torch.Tensor, *, rate: float, mode: str) -> torch.Tensor:
    """One batch of the large-loss rule: k = ⌈B·C·rate⌉ (docs/training.md); mean over all B×C entries."""
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"the large-loss rate must be in [0, 1], got {rate}")
    return large_loss(logits, observed, math.ceil(logits.numel() * rate), mode)[0]


def ll_rate(variant: str, epoch: int, delta_rel_pct: float) -> float:
    """Share of a batch's entries modified at `epoch` (from 1): 0 at epoch 1; then Δrel·(e−1) for
    LL-R/LL-Ct, Δrel for LL-Cp. Δrel is given in percent, as the authors' --delta_rel."""
    if epoch <= 1:
        return 0.0
    d = delta_rel_pct / 100.0
    return min(1.0, d if variant == "cp" else d * (epoch - 1))


class LargeLossMethod(Method):
    """LL-R / LL-Ct / LL-Cp; LL-Cp's permanent corrections are kept (and checkpointed) per entry."""

    variant = "r"

    def __init__(self, spec: LossSpec, name: str, params: dict, run: RunInfo):
        super().__init__(spec, name, params, run)
        self.delta = float(params.get("ll_delta_rel") or spec.defaults["ll_delta_rel"])  # 0: the scheme's own
        self.corrected = torch.zeros((run.num_rows, run.num_classes), dtype=torch.bool)

    def loss(self, logits, observed, *, rows=None, pseudo=None, full=None, schedule=None, epoch: int = 1):
        rows = torch.as_tensor(rows).cpu()
        obs = torch.where(self.corrected[rows].to(observed.device), torch.ones_like(observed), observed)
        rate = ll_rate(self.variant, epoch, self.delta)
        k = math.ceil(logits.numel() * rate)
        value, mask = large_loss(logits, obs, k, "r" if self.variant == "r" else "ct")
        if self.variant == "cp":
            self.corrected[rows] |= mask.cpu()
        return value

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"corrected": self.corrected.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.corrected = state["corrected"].clone().bool()


class LLRMethod(LargeLossMethod):
    variant = "r"


class LLCtMethod(LargeLossMethod):
    variant = "ct"


class LLCpMethod(LargeLossMethod):
    variant = "cp"


def boost_lu(cam: torch.Tensor, alpha: float) -> torch.Tensor:
    """BoostLU: the positive part of class activation maps multiplied by α, the negative part kept."""
    return torch.where(cam > 0, alpha * cam, cam)


class BoostLUMethod(LLRMethod):
    """BoostLU on top of LL-R: logits are the spatial mean of BoostLU(CAM), CAM = head applied at every
    position of the backbone's last feature map. The trained model keeps this pooling for evaluation."""

    def __init__(self, spec: LossSpec, name: str, params: dict, run: RunInfo):
        super().__init__(spec, name, params, run)
        self.alpha = float({**spec.defaults, **params}["boost_alpha"])

    def prepare_model(self, model) -> None:
        if getattr(model, "features", None) is None:
            raise ConfigError("loss 'boostlu' needs a convolutional feature map (class activation maps), which "
                              "this backbone does not have",
                              hint=f"use an image backbone: {flag('train.backbone', 'resnet50')} (or small-cnn)")
        model.boost_alpha = self.alpha


