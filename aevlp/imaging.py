"""Image decoding and the normalisation statistics both stages use (a leaf: imports nothing of aevlp).

Images are decoded to uint8 [3, H, W] RGB tensors with torchvision (PIL where torchvision's decoders
are gone), so crops and resizes can run on uint8 tensors (cheaper than PIL: docs/performance.md).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of torchcodec
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        from torchvision.io import ImageReadMode, decode_image, read_file
    except ImportError:  # pragma: no cover - future torchvision without image decoders
        decode_image = None

__all__ = ["CLIP_MEAN", "CLIP_STD", "IMAGENET_MEAN", "IMAGENET_STD", "STATS", "decode", "bad_image"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STATS = {"clip": (CLIP_MEAN, CLIP_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}


def bad_image(path: str | Path, error: Exception) -> str:
    """'path: reason' for an image that failed to decode, without torchvision's C++ source location."""
    return f"{path}: {str(error).split('.cpp:')[-1].split(', ', 1)[-1]}"


def decode(path: str | Path) -> torch.Tensor:
    """uint8 [3, H, W] RGB; raises on unreadable or truncated files."""
    if decode_image is not None:
        return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    from PIL import Image  # pragma: no cover

    with Image.open(path) as im:  # pragma: no cover
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
