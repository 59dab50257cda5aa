"""Stage-two inputs: images (resize + seeded flip) or cached CLIP embeddings, one row per item,
and the DataLoaders that feed them to training (shuffled per epoch, or ordered for evaluation).

The training flip of row i at epoch e is drawn from a generator seeded by (seed, epoch, row), so a
resumed run sees exactly the augmentations an uninterrupted one would, with no RNG state to save.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torch.utils.data import DataLoader
from torchvision.transforms import InterpolationMode

from aevlp import distributed
from aevlp.errors import DataError
from aevlp.imaging import IMAGENET_MEAN, IMAGENET_STD, bad_image, decode

__all__ = ["ImageRows", "EmbeddingRows", "load_image", "make_loader"]

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


def make_loader(ds, batch_size: int, workers: int, device: torch.device, *, shuffle_seed: int | None = None,
                epoch: int = 0) -> DataLoader:
    """Shuffled (seeded per epoch) or ordered; under torchrun each rank reads its DistributedSampler share."""
    rank, world, _ = distributed.env()
    if shuffle_seed is not None and world > 1:
        sampler = torch.utils.data.DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True,
                                                      seed=shuffle_seed)
        sampler.set_epoch(epoch)
        return DataLoader(ds, batch_size=max(1, batch_size // world), sampler=sampler, num_workers=workers,
                          pin_memory=device.type == "cuda")
    gen = torch.Generator().manual_seed(shuffle_seed * 1000 + epoch) if shuffle_seed is not None else None
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle_seed is not None, generator=gen,
                      num_workers=workers, pin_memory=device.type == "cuda", drop_last=False)
