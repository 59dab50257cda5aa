"""Stage-two inputs: images or cached CLIP embeddings, one row per item, and the loaders that feed them.

Images travel as uint8 [S, S, 3] (decoded and resized by PIL in the DataLoader workers, or read
ready-made from a pre-resized image cache, or decoded and resized on the GPU);
conversion to float, ImageNet normalisation and the training flip happen on the device, in
`to_model_input`, so the workers ship a quarter of the bytes and do the least work.

The training flip of row i at epoch e is drawn from a generator seeded by (seed, epoch, row), so a
resumed run sees exactly the augmentations an uninterrupted one would, with no RNG state to save.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torch.utils.data import DataLoader
from torchvision.transforms import InterpolationMode

from aevlp import distributed
from aevlp.errors import DataError
from aevlp.imaging import IMAGENET_MEAN, IMAGENET_STD, bad_image

__all__ = ["ImageRows", "EmbeddingRows", "EpochShuffle", "load_uint8", "flips", "to_model_input", "make_loader",
           "default_workers"]


def load_uint8(path: str | Path, size: int) -> torch.Tensor:
    """uint8 [S, S, 3] (HWC, as decoded): resized by PIL (plain resize, aspect not kept, bilinear: the
    same pixels as the official loaders' `Resize((S, S))`, and faster per core than torchvision's
    uint8 tensor resize here: docs/performance.md). HWC batches stack with one memcpy and arrive on the
    device already in the channels_last layout the ResNets use."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            img = (im if im.mode == "RGB" else im.convert("RGB")).resize((size, size), Image.BILINEAR)
    except Exception as e:
        raise DataError(f"cannot read image {bad_image(path, e)}") from e
    return torch.from_numpy(np.array(img))


def flips(seed: int, epoch: int, rows: torch.Tensor) -> torch.Tensor:
    """The training flips of these rows at this epoch: each drawn from a generator seeded by (seed, epoch, row)."""
    return torch.tensor([np.random.default_rng([seed, epoch, int(r)]).random() < 0.5 for r in rows], dtype=torch.bool)


class ImageRows(torch.utils.data.Dataset):
    """Items (uint8 image [S, S, 3], row). `images`: a pre-resized array of rows (an image-cache split,
    `CachedImages`) read instead of decoding. `encoded=True` ships the raw JPEG bytes instead, for
    decoding on the GPU (`to_model_input`). The training flips are applied later, on the device."""

    input = "image"

    def __init__(self, paths: Sequence[str | Path], size: int, *, images=None, encoded: bool = False):
        self.paths, self.size, self.images, self.encoded = list(paths), size, images, encoded

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        if self.images is not None:
            return torch.from_numpy(np.asarray(self.images[i])), i
        if self.encoded:
            from torchvision.io import read_file
            return read_file(str(self.paths[i])), i
        return load_uint8(self.paths[i], self.size), i


class EmbeddingRows(torch.utils.data.Dataset):
    """Items (embedding, row) from [N, D], or from [R, N, D] where epoch e reads round (e-1) mod R.
    In memory already: read in the main process (no workers)."""

    input = "embedding"

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


def _collate_encoded(items):
    return [x for x, _ in items], torch.as_tensor([i for _, i in items])


def _decode_on_device(data: list[torch.Tensor], device: torch.device, size: int) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg
    imgs = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    return torch.stack([TF.resize(im, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
                        for im in imgs]).permute(0, 2, 3, 1)  # HWC, as the workers ship


@functools.cache
def _normalisation(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean·255 and 1/(std·255) as [1, 3, 1, 1] on the device, made once per device (a fresh
    host-to-device copy per batch would make the host wait for the GPU every step)."""
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
    return mean, 1 / (torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255)


def to_model_input(x, device: torch.device, flip: torch.Tensor | None = None, *, size: int = 0,
                   channels_last: bool = False) -> torch.Tensor:
    """A batch as the model takes it. uint8 images [B, S, S, 3]: to the device (non-blocking), float
    [B, 3, S, S], ImageNet normalisation, the training flips (`flip`: bool [B]); a list of encoded JPEGs
    is decoded (and resized to `size`) on the device first. Embeddings: just moved."""
    if isinstance(x, list):
        x = _decode_on_device(x, device, size)
    x = x.to(device, non_blocking=True)
    if x.dtype != torch.uint8:
        return x
    mean, scale = _normalisation(device)
    out = x.permute(0, 3, 1, 2).float()  # NCHW view of NHWC memory: channels_last strides
    out.sub_(mean).mul_(scale)  # (x / 255 - mean) / std, in place on the one float copy
    if flip is not None and flip.any():
        f = flip.to(device)
        out[f] = out[f].flip(-1)
    return out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class EpochShuffle(torch.utils.data.Sampler):
    """A fresh permutation each epoch, seeded by (seed, epoch): the same order whether or not the
    run was resumed, and set by `set_epoch` so one loader (and its persistent workers) serves all epochs."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
                    .tolist())


def default_workers() -> int:
    """DataLoader workers when train.workers is -1: the machine's cores but one (at most 8)."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def make_loader(ds, batch_size: int, workers: int, device: torch.device, *,
                shuffle_seed: int | None = None) -> DataLoader:
    """Shuffled (`shuffle_seed`; call `loader.sampler.set_epoch(e)` before each epoch) or ordered.
    Under torchrun each rank reads its DistributedSampler share. workers -1: `default_workers()`;
    a shuffled loader keeps its workers across epochs; pinned memory on CUDA; in-memory embeddings are
    read without workers."""
    workers = default_workers() if workers < 0 else workers
    workers = 0 if getattr(ds, "input", "image") == "embedding" else workers
    kw = {"num_workers": workers, "pin_memory": device.type == "cuda",
          "persistent_workers": workers > 0 and shuffle_seed is not None,
          "collate_fn": _collate_encoded if getattr(ds, "encoded", False) else None,
          "prefetch_factor": 4 if workers > 0 else None}
    rank, world, _ = distributed.env()
    if shuffle_seed is not None and world > 1:
        sampler = torch.utils.data.DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True,
                                                      seed=shuffle_seed)
        return DataLoader(ds, batch_size=max(1, batch_size // world), sampler=sampler, **kw)
    sampler = EpochShuffle(len(ds), shuffle_seed) if shuffle_seed is not None else None
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, drop_last=False, **kw)
