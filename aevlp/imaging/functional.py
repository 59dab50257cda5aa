"""Image preprocessing as plain functions on uint8 tensors and files (the twin of `transforms`, which
configures them once): decoding, the CLIP views' resize and normalisation, and the classifier's input.

Images are decoded to uint8 [3, H, W] RGB tensors with torchvision (PIL where torchvision's decoders
are gone), so crops and resizes run on uint8 tensors (cheaper than PIL per tile: docs/performance.md).
The classifier's images are resized by PIL (the official loaders' pixels) and shipped as uint8 HWC;
float conversion, normalisation and the training flip happen on the device. Normalisation constants
are made once per (device, statistics). A leaf: imports nothing of aevlp but the errors.
"""
from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from aevlp.errors import DataError

with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of torchcodec
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        from torchvision.io import ImageReadMode, decode_image, read_file
    except ImportError:  # pragma: no cover - future torchvision without image decoders
        decode_image = None

__all__ = ["CLIP_MEAN", "CLIP_STD", "IMAGENET_MEAN", "IMAGENET_STD", "STATS", "INTERPOLATIONS", "RESIZE_MODES",
           "decode", "bad_image", "resize_view", "normalize", "load_uint8", "to_model_input"]

# the statistics as the library that defines them exports them: OpenAI CLIP's training set and ImageNet's (open_clip)
from open_clip.constants import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from open_clip.constants import OPENAI_DATASET_MEAN as CLIP_MEAN  # noqa: E402
from open_clip.constants import OPENAI_DATASET_STD as CLIP_STD  # noqa: E402

STATS = {"clip": (CLIP_MEAN, CLIP_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}
RESIZE_MODES = ("squash", "shortest", "longest")  # open_clip's names
INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
                  "nearest": InterpolationMode.NEAREST}


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


def resize_view(crop: torch.Tensor, size: int, mode: str, interpolation: str) -> torch.Tensor:
    """uint8 [3, h, w] → [3, S, S]: squash, shorter side + centre crop, or longer side + zero padding."""
    interp = INTERPOLATIONS[interpolation]
    aa = interpolation != "nearest"
    if mode == "squash":
        return TF.resize(crop, [size, size], interpolation=interp, antialias=aa)
    if mode == "shortest":
        return TF.center_crop(TF.resize(crop, size, interpolation=interp, antialias=aa), [size, size])
    h, w = crop.shape[-2:]
    scale = size / max(h, w)
    out = TF.resize(crop, [max(1, round(h * scale)), max(1, round(w * scale))], interpolation=interp, antialias=aa)
    top, left = (size - out.shape[-2]) // 2, (size - out.shape[-1]) // 2
    return TF.pad(out, [left, top, size - out.shape[-1] - left, size - out.shape[-2] - top], fill=0)


@functools.cache
def _stats(device: torch.device, mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[torch.Tensor, ...]:
    """mean·255, std·255 and 1/(std·255) as [3, 1, 1] on the device, made once per (device, statistics): a
    fresh host-to-device copy per batch would make the host wait for the GPU every step."""
    m = torch.tensor(mean, device=device).view(3, 1, 1) * 255
    s = torch.tensor(std, device=device).view(3, 1, 1) * 255
    return m, s, 1 / s


def normalize(batch: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [..., 3, S, S] → float (x/255 − mean)/std, in `dtype`."""
    m, s, _ = _stats(batch.device, tuple(mean), tuple(std))
    return ((batch.float() - m) / s).to(dtype)


def load_uint8(path: str | Path, size: int) -> torch.Tensor:
    """The classifier's image: uint8 [S, S, 3] (HWC, as decoded), resized by PIL (plain resize, aspect not
    kept, bilinear: the same pixels as the official loaders' `Resize((S, S))`, and faster per core than
    torchvision's uint8 tensor resize here: docs/performance.md). HWC batches stack with one memcpy and
    arrive on the device already in the channels_last layout the ResNets use."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            img = (im if im.mode == "RGB" else im.convert("RGB")).resize((size, size), Image.BILINEAR)
    except Exception as e:
        raise DataError(f"cannot read image {bad_image(path, e)}") from e
    return torch.from_numpy(np.array(img))


def _decode_on_device(data: list[torch.Tensor], device: torch.device, size: int) -> torch.Tensor:
    from torchvision.io import decode_jpeg
    imgs = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    return torch.stack([TF.resize(im, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
                        for im in imgs]).permute(0, 2, 3, 1)  # HWC, as the workers ship


def to_model_input(x, device: torch.device, flip: torch.Tensor | None = None, *, size: int = 0,
                   channels_last: bool = False, mean: tuple[float, ...] = IMAGENET_MEAN,
                   std: tuple[float, ...] = IMAGENET_STD) -> torch.Tensor:
    """A batch as the classifier takes it. uint8 images [B, S, S, 3]: to the device (non-blocking), float
    [B, 3, S, S], normalised (ImageNet statistics), the training flips (`flip`: bool [B]); a list of encoded
    JPEGs is decoded (and resized to `size`) on the device first. Embeddings: just moved."""
    if isinstance(x, list):
        x = _decode_on_device(x, device, size)
    x = x.to(device, non_blocking=True)
    if x.dtype != torch.uint8:
        return x
    m, _, scale = _stats(device, tuple(mean), tuple(std))
    out = x.permute(0, 3, 1, 2).float()  # NCHW view of NHWC memory: channels_last strides
    out.sub_(m).mul_(scale)  # (x / 255 - mean) / std, in place on the one float copy
    if flip is not None and flip.any():
        f = flip.to(device)
        out[f] = out[f].flip(-1)
    return out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
