"""DAMP views: one global view plus a G×G grid of tiles per image, for R seeded augmentation rounds.

Images are decoded once and cropped/resized as uint8 tensors with torchvision straight into the
batch's output buffer (cheaper than PIL per tile: see docs/performance.md). Per-view random flips
are drawn from a generator seeded by (seed, image row, round), so any subset of rows, in any batch
order or process, renders bit-identical views; the rounds are the cached counterpart of the
official code's per-batch re-drawn flips.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from aevlp.errors import ConfigError
from aevlp.imaging import CLIP_MEAN, CLIP_STD, RESIZE_MODES, STATS, ViewTransform, bad_image, decode
from aevlp.settings import ViewsSpec, check_value

__all__ = ["ViewSpec", "tile_boxes", "view_boxes", "unique_slots", "render_views", "expand_views",
           "ViewBatches", "GlobalViews", "render_on_device"]

_D = ViewsSpec  # the declared [views] keys: their defaults and checks are the resolved spec's too


@dataclass(frozen=True)
class ViewSpec:
    """The [views] settings resolved against a CLIP checkpoint's own preprocessing (`of`): how each view is
    cropped, flipped and, by `transform`, resized and normalised. The keys it shares with [views] take
    their defaults and checks from `aevlp.settings.ViewsSpec`; size, resize, interpolation and the
    statistics default to what "checkpoint" gives for the default CLIP (ViT-B-16, openai)."""

    grid: int = _D.grid
    size: int = 224
    rounds: int = _D.rounds
    resize: str = "shortest"  # squash (distorting, official) | shortest (+ centre crop, CLIP's) | longest (+ pad)
    flip: bool = _D.flip
    jitter: float = _D.jitter
    seed: int = _D.seed
    interpolation: str = "bicubic"  # bilinear | bicubic | nearest
    mean: tuple[float, ...] = CLIP_MEAN  # the statistics the CLIP input is normalised with
    std: tuple[float, ...] = CLIP_STD
    resize_on: str = "worker"  # worker | device: where crops are resized (device: the GPU path)
    decode_on: str = "worker"  # worker | device: where JPEGs are decoded (device: the GPU's decoder)

    @classmethod
    def of(cls, views: ViewsSpec | Mapping[str, Any], pre, *, resize_on: str = "worker",
           decode_on: str = "worker") -> ViewSpec:
        """The spec a pipeline's [views] section (or its table) asks for, given the checkpoint's `Preprocess`:
        size 0 and "checkpoint" take the checkpoint's own values; "clip"/"imagenet" name fixed statistics.
        `resize_on`, `decode_on`: the places `aevlp.placement` resolved (a device decode resizes there too)."""
        views = views if isinstance(views, ViewsSpec) else ViewsSpec(**views)
        mean, std = (pre.mean, pre.std) if views.normalize == "checkpoint" else STATS[views.normalize]
        resize = pre.resize_mode if views.resize == "checkpoint" else views.resize
        interp = pre.interpolation if views.interpolation == "checkpoint" else views.interpolation
        return cls(grid=views.grid, size=views.size or pre.image_size, rounds=views.rounds,
                   resize="shortest" if resize == "crop" else resize, flip=views.flip, jitter=views.jitter,
                   seed=views.seed, interpolation=interp, mean=tuple(mean), std=tuple(std),
                   resize_on="device" if decode_on == "device" else resize_on, decode_on=decode_on)

    def __post_init__(self):
        for name in ("grid", "rounds", "jitter", "seed", "flip", "resize_on", "decode_on", "interpolation"):
            check_value(ViewsSpec, name, getattr(self, name))
        if "auto" in (self.resize_on, self.decode_on):
            raise ConfigError("a resolved view spec places its work: resize_on and decode_on are worker or device "
                              "(aevlp.placement resolves auto)")
        if self.size < 8:
            raise ConfigError(f"views.size must be >= 8, got {self.size}")
        if self.resize not in RESIZE_MODES or self.interpolation == "checkpoint":
            raise ConfigError(f"a resolved view spec needs a resize of {', '.join(RESIZE_MODES)} and a named "
                              f"interpolation, got {self.resize!r} and {self.interpolation!r}")

    @cached_property
    def transform(self) -> ViewTransform:
        """Resize and normalise a view as the checkpoint expects (`aevlp.imaging.ViewTransform`)."""
        return ViewTransform(self.size, self.resize, self.interpolation, tuple(self.mean), tuple(self.std))

    def preprocess_json(self) -> dict:
        """The preprocessing applied to every view, in open_clip's terms (the cache's clip_preprocess)."""
        return self.transform.json()

    @property
    def num_views(self) -> int:
        return self.grid * self.grid + 1


def tile_boxes(width: int, height: int, grid: int) -> list[tuple[int, int, int, int]]:
    """Row-major (y outer, x inner) boxes (x0, y0, x1, y1) of ⌊W/G⌋×⌊H/G⌋ tiles; remainders dropped."""
    tw, th = width // grid, height // grid
    if tw < 1 or th < 1:
        raise ValueError(f"a {width}x{height} image is too small for a {grid}x{grid} grid")
    return [(x * tw, y * th, (x + 1) * tw, (y + 1) * th) for y in range(grid) for x in range(grid)]


def _generator(spec: ViewSpec, row: int, rnd: int) -> torch.Generator:
    return torch.Generator().manual_seed((((spec.seed * 1_000_003) + row) * 1_009 + rnd) % (2 ** 63))


def view_boxes(width: int, height: int, spec: ViewSpec, row: int, rnd: int) -> list[tuple[int, int, int, int]]:
    """Global box then tiles; with jitter > 0 each tile grows by a random 0..jitter share per side."""
    boxes = [(0, 0, width, height)] + tile_boxes(width, height, spec.grid)
    if spec.jitter > 0:
        g = _generator(spec, row, rnd)
        r = (torch.rand(len(boxes), 4, generator=g) * spec.jitter).tolist()
        out = [boxes[0]]
        for (x0, y0, x1, y1), (a, b, c, d) in zip(boxes[1:], r[1:]):
            tw, th = x1 - x0, y1 - y0
            out.append((max(0, int(x0 - a * tw)), max(0, int(y0 - b * th)),
                        min(width, int(x1 + c * tw)), min(height, int(y1 + d * th))))
        boxes = out
    return boxes


def _flips(spec: ViewSpec, row: int, rnd: int) -> list[bool]:
    if not spec.flip:
        return [False] * spec.num_views
    g = _generator(spec, row, rnd)
    if spec.jitter > 0:  # keep the jitter draws and the flip draws independent
        torch.rand(spec.num_views, 4, generator=g)
    return (torch.rand(spec.num_views, generator=g) < 0.5).tolist()


def unique_slots(spec: ViewSpec) -> int:
    """Distinct views to encode per image: V for one round, 2V (each box both ways) when rounds only
    differ by flips, R·V when jitter moves the boxes. Encoding each distinct view once is what makes
    R rounds cost at most 2 rounds of CLIP work."""
    if spec.jitter > 0:
        return spec.rounds * spec.num_views
    return spec.num_views if (spec.rounds == 1 or not spec.flip) else 2 * spec.num_views


def render_views(image: torch.Tensor, spec: ViewSpec, row: int, out: torch.Tensor) -> torch.Tensor:
    """Write the distinct views into `out` uint8 [U, 3, S, S]; return the index [rounds, V] into U."""
    _, h, w = image.shape
    u = out.shape[0]
    index = torch.empty((spec.rounds, spec.num_views), dtype=torch.long)
    resized: dict[tuple, torch.Tensor] = {}
    for rnd in range(spec.rounds):
        for v, (box, flip) in enumerate(zip(view_boxes(w, h, spec, row, rnd), _flips(spec, row, rnd))):
            if u == spec.rounds * spec.num_views and spec.jitter > 0:
                slot = rnd * spec.num_views + v
            elif u == 2 * spec.num_views:
                slot = 2 * v + int(flip)
            else:
                slot = v
            index[rnd, v] = slot
            if box not in resized:
                x0, y0, x1, y1 = box
                resized[box] = spec.transform.resize(image[:, y0:y1, x0:x1])
            out[slot] = resized[box].flip(-1) if flip else resized[box]
    if u == 2 * spec.num_views:  # fill the orientation no round drew, so every slot is defined
        for v, box in enumerate(view_boxes(w, h, spec, row, 0)):
            for flip in (False, True):
                if not (index[:, v] == 2 * v + int(flip)).any():
                    out[2 * v + int(flip)] = resized[box].flip(-1) if flip else resized[box]
    return index


def expand_views(slots: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """[B, U, ...] per-slot values → [rounds, B, V, ...] per round and view."""
    b, r, v = index.shape
    gathered = torch.stack([slots[i, index[i].reshape(-1)] for i in range(b)])  # [B, R*V, ...]
    return gathered.reshape(b, r, v, *slots.shape[2:]).transpose(0, 1)


class ViewBatches(torch.utils.data.Dataset):
    """Item i = batch i of rows: decoded, cropped and resized into one uint8 buffer (DataLoader-friendly).

    Returns (rows, slots uint8 [B, U, 3, S, S], index [B, rounds, V], errors: list of (row, message));
    a row that cannot be decoded is left as zeros and reported, so the caller applies the bad-image
    policy.
    """

    def __init__(self, paths: Sequence[str | Path], batches: Sequence[Sequence[int]], spec: ViewSpec,
                 row_offset: int = 0, ship: str = "views"):
        self.paths, self.batches, self.spec = list(paths), [list(b) for b in batches], spec
        self.row_offset = row_offset  # a shard's first global row: view seeds use global rows
        # views: rendered here; decoded: whole images, `render_on_device` crops them; encoded: a JPEG's bytes
        # (decoded on the device) or any other image decoded
        self.ship = ship

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        rows = self.batches[i]
        s = self.spec
        if self.ship != "views":
            images, errors = [], []
            for row in rows:
                try:
                    images.append(_read(self.paths[row]) if self.ship == "encoded" else decode(self.paths[row]))
                except Exception as e:
                    images.append(torch.zeros(3, 1, 1, dtype=torch.uint8))
                    errors.append((row, bad_image(self.paths[row], e)))
            return torch.as_tensor(rows), images, None, errors
        out = torch.empty((len(rows), unique_slots(s), 3, s.size, s.size), dtype=torch.uint8)
        index = torch.zeros((len(rows), s.rounds, s.num_views), dtype=torch.long)
        errors = []
        for j, row in enumerate(rows):
            try:
                index[j] = render_views(decode(self.paths[row]), s, row + self.row_offset, out[j])
            except Exception as e:  # corrupt, truncated, missing or too-small images
                out[j].zero_()
                errors.append((row, bad_image(self.paths[row], e)))
        return torch.as_tensor(rows), out, index, errors


def _read(path: str | Path) -> torch.Tensor:
    """A JPEG's bytes (1-D uint8, decoded on the device), any other image decoded here ([3, H, W])."""
    from torchvision.io import read_file

    if Path(path).suffix.lower() in (".jpg", ".jpeg"):
        # a copy: read_file's tensor cannot be sent to the main process (its storage has no shareable file
        # descriptor; the worker's queue thread fails and the loader waits forever)
        data = read_file(str(path)).clone()
        if data.numel() < 4 or data[0] != 0xFF or data[1] != 0xD8:  # not a JPEG inside: refuse as the decoder would
            raise ValueError("not a JPEG file")
        return data
    return decode(path)


def _decode_batch(images: list[torch.Tensor], device: torch.device) -> tuple[list[torch.Tensor], dict[int, str]]:
    """The encoded JPEGs of a batch decoded on `device` in one call (nvJPEG on a GPU; libjpeg on a CPU, as
    `decode` does), the already decoded ones moved there; a batch the decoder refuses is decoded one by one, and
    the images that fail are returned as 1x1 placeholders with their reasons ({position: message})."""
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [j for j, im in enumerate(images) if im.ndim == 1]
    out = [im.to(device, non_blocking=True) for im in images]
    failed: dict[int, str] = {}
    try:
        decoded = decode_jpeg([images[j] for j in encoded], mode=ImageReadMode.RGB, device=device) if encoded else []
    except RuntimeError:
        decoded = []
        for j in encoded:
            try:
                decoded.append(decode_jpeg(images[j], mode=ImageReadMode.RGB, device=device))
            except RuntimeError as e:
                decoded.append(torch.zeros(3, 1, 1, dtype=torch.uint8, device=device))
                failed[j] = f"not a readable JPEG ({str(e).splitlines()[0][:120]})"
    for j, im in zip(encoded, decoded):
        out[j] = im
    return out, failed


def render_on_device(images: list[torch.Tensor], rows: torch.Tensor, spec: ViewSpec, device: torch.device,
                     row_offset: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, str]]]:
    """Crops and resizes images on `device` (the GPU path; JPEG bytes are decoded there first, all of a batch in
    one call): slots [B,U,3,S,S], index [B,R,V], and (row, reason) of every JPEG the device could not decode.

    Bad images arrive as 1x1 placeholders and stay zero, as in the worker path."""
    out = torch.zeros((len(images), unique_slots(spec), 3, spec.size, spec.size), dtype=torch.uint8, device=device)
    index = torch.zeros((len(images), spec.rounds, spec.num_views), dtype=torch.long)
    decoded, failed = _decode_batch(images, device)
    for j, (img, row) in enumerate(zip(decoded, rows.tolist())):
        if img.shape[-1] > 1:
            index[j] = render_views(img, spec, row + row_offset, out[j])
    return out, index, [(rows.tolist()[j], msg) for j, msg in failed.items()]


class GlobalViews(torch.utils.data.Dataset):
    """The unflipped global view of each image (for val/test embeddings): (rows, [B,1,3,S,S], errors)."""

    def __init__(self, paths: Sequence[str | Path], batches: Sequence[Sequence[int]], spec: ViewSpec):
        self.paths, self.batches, self.spec = list(paths), [list(b) for b in batches], spec

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        rows = self.batches[i]
        out = torch.zeros((len(rows), 1, 3, self.spec.size, self.spec.size), dtype=torch.uint8)
        errors = []
        for j, row in enumerate(rows):
            try:
                out[j, 0] = self.spec.transform.resize(decode(self.paths[row]))
            except Exception as e:
                errors.append((row, bad_image(self.paths[row], e)))
        return torch.as_tensor(rows), out, errors
