"""Stage-two inputs: images (resize + seeded flip) or cached CLIP embeddings, one row per item.

The training flip of row i at epoch e is drawn from a generator seeded by (seed, epoch, row), so a
resumed run sees exactly the augmentations an uninterrupted one would, with no RNG state to save.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from aevlp.clip import IMAGENET_MEAN, IMAGENET_STD
from aevlp.errors import DataError
from aevlp.views import bad_image, decode

__all__ = ["ImageRows", "EmbeddingRows", "load_image"]

_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """Float [3, S, S]: plain resize (aspect not kept, as the papers) and ImageNet normalisation."""
    try:
        img = decode(path)
    except Exception as e:
        raise DataError(f"cannot read image {bad_image(path, e)}") from e
    img = TF.resize(img, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return (img.float() / 255 - _MEAN) / _STD


class ImageRows(torch.utils.data.Dataset):
    """Items (image, row); `train=True` flips each row with probability 1/2, seeded per epoch."""

    def __init__(self, paths: Sequence[str | Path], size: int, *, train: bool = False, seed: int = 0):
        self.paths, self.size, self.train, self.seed, self.epoch = list(paths), size, train, seed, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        x = load_image(self.paths[i], self.size)
        if self.train and np.random.default_rng([self.seed, self.epoch, i]).random() < 0.5:
            x = x.flip(-1)
        return x, i


class EmbeddingRows(torch.utils.data.Dataset):
    """Items (embedding, row) from [N, D], or from [R, N, D] where epoch e reads round (e-1) mod R."""

    def __init__(self, embeddings: np.ndarray):
        self.emb = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.emb.shape[-2]

    def __getitem__(self, i: int):
        if self.emb.ndim == 3:
            return self.emb[(self.epoch - 1) % self.emb.shape[0], i], i
        return self.emb[i], i
