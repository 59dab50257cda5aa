"""Image preprocessing configured once (the twin of `functional`, as torchvision's transforms are of its
functional ops): how every CLIP view is resized and normalised, and how a classifier batch is made."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from aevlp.imaging.functional import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INTERPOLATIONS,
    RESIZE_MODES,
    load_uint8,
    normalize,
    resize_view,
    to_model_input,
)

__all__ = ["ViewTransform", "ModelInput"]


@dataclass(frozen=True)
class ViewTransform:
    """A CLIP view's preprocessing, in open_clip's terms: resize mode, size and interpolation, then the
    statistics it is normalised with (the cache's `clip_preprocess` records exactly this)."""

    size: int
    resize_mode: str
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self):
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, got {self.resize_mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")

    def resize(self, crop: torch.Tensor) -> torch.Tensor:
        """uint8 [3, h, w] → uint8 [3, S, S]."""
        return resize_view(crop, self.size, self.resize_mode, self.interpolation)

    def normalize(self, batch: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 [..., 3, S, S] → the encoder's float input."""
        return normalize(batch, self.mean, self.std, dtype)

    def json(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "interpolation": self.interpolation,
                "resize_mode": self.resize_mode, "image_size": self.size}


@dataclass(frozen=True)
class ModelInput:
    """The classifier's input: images read at `size` (uint8 HWC, in the loader's workers) and made float,
    normalised, flipped and laid out on the device (`channels_last` for image backbones)."""

    size: int = 0
    channels_last: bool = False
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def load(self, path: str | Path) -> torch.Tensor:
        return load_uint8(path, self.size)

    def __call__(self, x, device: torch.device, flip: torch.Tensor | None = None) -> torch.Tensor:
        return to_model_input(x, device, flip, size=self.size, channels_last=self.channels_last, mean=self.mean,
                              std=self.std)
