"""Stage-two inputs: images or cached CLIP embeddings, one row per item, and the loaders that feed them.

Images travel as uint8 [S, S, 3] (decoded and resized by PIL in the DataLoader workers, or read
ready-made from the pre-resized image cache, `aevlp.stage_two.image_cache`, or decoded and resized on the GPU);
conversion to float, ImageNet normalisation and the training flip happen on the device
(`aevlp.imaging.ModelInput`), so the workers ship a quarter of the bytes and do the least work.

The training flip of row i at epoch e is drawn from a generator seeded by (seed, epoch, row), so a
resumed run sees exactly the augmentations an uninterrupted one would, with no RNG state to save.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from aevlp import distributed
from aevlp.errors import AevlpError, ConfigError, flag
from aevlp.imaging import load_uint8

__all__ = ["ImageRows", "EmbeddingRows", "EpochBatches", "flips", "make_loader", "default_workers", "stage_two_inputs",
           "input_size", "input_layout"]


def flips(seed: int, epoch: int, rows: torch.Tensor) -> torch.Tensor:
    """The training flips of these rows at this epoch: each drawn from a generator seeded by (seed, epoch, row)."""
    return torch.tensor([np.random.default_rng([seed, epoch, int(r)]).random() < 0.5 for r in rows], dtype=torch.bool)


class ImageRows(torch.utils.data.Dataset):
    """Items (uint8 image [S, S, 3], row). `images`: a pre-resized array of rows (an image-cache split,
    `CachedImages`) read instead of decoding. `encoded=True` ships the raw JPEG bytes instead, for
    decoding on the GPU (`aevlp.imaging.to_model_input`). The training flips are applied later, on the device."""

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


class EpochBatches(torch.utils.data.Sampler):
    """Shuffled batches: a fresh permutation each epoch, seeded by (seed, epoch), cut into global batches of
    `batch_size`; under torchrun rank r of W takes its contiguous share of every global batch. The order is
    the same whether or not the run was resumed, `set_epoch` lets one loader (and its persistent workers)
    serve all epochs, and W ranks see exactly the global batches one process would, so DDP's averaged
    gradient is the single-process one (for losses that are means over entries; shares differ by at most
    one row, and a rank left without a row of the last batch repeats its first)."""

    def __init__(self, n: int, seed: int, batch_size: int, rank: int = 0, world: int = 1):
        self.n, self.seed, self.batch_size, self.rank, self.world, self.epoch = n, seed, batch_size, rank, world, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
        for start in range(0, self.n, self.batch_size):
            chunk = order[start:start + self.batch_size]
            share = torch.tensor_split(chunk, self.world)[self.rank]
            yield (share if len(share) else chunk[:1]).tolist()


def default_workers() -> int:
    """DataLoader workers when train.workers is -1: the machine's cores but one (at most 8)."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def make_loader(ds, batch_size: int, workers: int, device: torch.device, *,
                shuffle_seed: int | None = None) -> DataLoader:
    """Shuffled (`shuffle_seed`; call `loader.batch_sampler.set_epoch(e)` before each epoch: `EpochBatches`,
    under torchrun each rank's share of every global batch) or ordered. workers -1: `default_workers()`;
    a shuffled loader keeps its workers across epochs; pinned memory on CUDA; in-memory embeddings are
    read without workers."""
    workers = default_workers() if workers < 0 else workers
    workers = 0 if getattr(ds, "input", "image") == "embedding" else workers
    kw = {"num_workers": workers, "pin_memory": device.type == "cuda",
          # the loader's own generator: its worker seeds never draw from torch's global random state, which
          # belongs to the model (dropout, latent samples) and is restored exactly on --resume
          "generator": torch.Generator().manual_seed(shuffle_seed or 0),
          "persistent_workers": workers > 0 and shuffle_seed is not None,
          "collate_fn": _collate_encoded if getattr(ds, "encoded", False) else None,
          "prefetch_factor": 4 if workers > 0 else None}
    if shuffle_seed is None:
        return DataLoader(ds, batch_size=batch_size, drop_last=False, **kw)
    rank, world, _ = distributed.env()
    return DataLoader(ds, batch_sampler=EpochBatches(len(ds), shuffle_seed, batch_size, rank, world), **kw)


SPLITS = ("train", "val", "test")


def input_layout(meta: dict, channels_last: bool):
    """How a run's model takes its images (`ModelInput`): its size, memory format and normalisation (ImageNet's,
    or the checkpoint's own for a CLIP-initialised model, which records it in `meta`)."""
    from aevlp.imaging import ModelInput

    norm = {"mean": tuple(meta["mean"]), "std": tuple(meta["std"])} if "mean" in meta else {}
    return ModelInput(meta["image_size"], channels_last, **norm)


def input_size(backbone: str, image_size: int, data) -> int:
    """The classifier's input size: train.image_size, or the backbone's own (448 for the ResNets), or the
    training images' own size (small-cnn); 0 for a backbone that reads embeddings."""
    from aevlp.stage_two.models import BACKBONES

    if image_size or BACKBONES.get(backbone).input != "image":
        return image_size
    if BACKBONES.get(backbone).image_size:
        return BACKBONES.get(backbone).image_size
    from PIL import Image

    with Image.open(data.image_root / data.train.images[0]) as im:
        return max(im.size)


def stage_two_inputs(specs, data, cache, n: int, keep: np.ndarray, size: int, device: torch.device,
                     main: bool) -> tuple:
    """Train/val/test datasets (`specs`: the run's `Specs`; `cache`: its stage-one `Cache`; the first `n`
    training rows, of which `keep` could be read) for the backbone's input type: cached embeddings, or
    images decoded in the workers, decoded on the GPU (train.decode_on), or read pre-resized (train.image_cache)."""
    from aevlp.stage_two.image_cache import CachedImages, ensure_image_cache, image_cache_path
    from aevlp.stage_two.models import BACKBONES

    t = specs.train
    if BACKBONES.get(t.backbone).input == "embedding":
        if not cache.has_eval_embeddings():
            raise AevlpError(f"{cache.path} has no stored embeddings for the clip-head backbone",
                             hint=f"re-run stage one with {flag('cache.store_embeddings', 'global')}")
        return (EmbeddingRows(cache.global_embeddings()[:, keep]), EmbeddingRows(cache.eval_embeddings("val")),
                EmbeddingRows(cache.eval_embeddings("test")))
    root = data.image_root
    paths = {"train": [root / p for p in data.train.images[:n][keep]], "val": [root / p for p in data.val.images],
             "test": [root / p for p in data.test.images]}
    if t.image_cache:
        path = image_cache_path(specs.cache_path, data.info.name, size)
        if main:
            ensure_image_cache(data, size, path)
        distributed.barrier()
        rows = {"train": np.flatnonzero(keep), "val": None, "test": None}
        return tuple(ImageRows(paths[s], size, images=CachedImages(path, s, rows[s])) for s in SPLITS)
    if t.decode_on == "device":
        _check_device_decode(device, paths)
    return tuple(ImageRows(paths[s], size, encoded=t.decode_on == "device") for s in SPLITS)


def _check_device_decode(device: torch.device, paths: dict) -> None:
    """train.decode_on = device needs a CUDA device and JPEG files (the GPU decoder reads JPEG only)."""
    if device.type != "cuda":
        raise ConfigError(f"train.decode_on = device needs a CUDA device (training runs on {device})",
                          hint="leave train.decode_on = worker")
    other = next((p for ps in paths.values() for p in ps if Path(p).suffix.lower() not in (".jpg", ".jpeg")), None)
    if other is not None:
        raise ConfigError(f"train.decode_on = device decodes JPEG only, and {other} is not one",
                          hint="leave train.decode_on = worker, or use train.image_cache = true")
