"""What the review site and the gallery draw: which tile of an image made a class's label, and thumbnails (plain,
or with that tile outlined in red)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["fired_tile", "fired_tiles", "tile_box_percent", "thumbnail", "outlined_thumbnail"]


def fired_tile(sims: np.ndarray, k: int, temperature: float) -> int:
    """The tile (1..G²) whose softmax score for class k is highest among an image's views `sims` [V, C] (view 0:
    the global one): the evidence DAMP used for the class."""
    return int(fired_tiles(np.asarray(sims)[None], temperature)[0, k])


def fired_tiles(sims: np.ndarray, temperature: float) -> np.ndarray:
    """[M, C] `fired_tile` of every class of M images' views `sims` [M, V, C] at once."""
    import torch

    from aevlp.damp import softmax

    soft = softmax(torch.as_tensor(np.asarray(sims, dtype=np.float64)), temperature)
    return (1 + torch.argmax(soft[:, 1:], dim=1)).numpy()


def tile_box_percent(width: int, height: int, grid: int, tile: int) -> list[float]:
    """Tile `tile` (1..G²) of a width × height image as [left, top, width, height] in % of the image."""
    from aevlp.stage_one.views import tile_boxes

    x0, y0, x1, y1 = tile_boxes(width, height, grid)[tile - 1]
    return [round(100 * v, 2) for v in (x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height)]


def thumbnail(src: Path, size: int):
    """The image as an RGB size × size PIL image (bilinear, aspect not kept)."""
    from PIL import Image

    with Image.open(src) as im:
        return im.convert("RGB").resize((size, size), Image.BILINEAR)


def outlined_thumbnail(src: Path, tile: int, grid: int, size: int = 128):
    """A thumbnail with tile `tile` (1..G²) outlined in red."""
    from PIL import Image, ImageDraw

    from aevlp.stage_one.views import tile_boxes

    with Image.open(src) as im:
        w, h = im.size
        x0, y0, x1, y1 = tile_boxes(w, h, grid)[tile - 1]
        im = im.convert("RGB").resize((size, size), Image.BILINEAR)
    sx, sy = size / w, size / h
    ImageDraw.Draw(im).rectangle([x0 * sx, y0 * sy, x1 * sx - 1, y1 * sy - 1], outline=(255, 40, 40), width=2)
    return im
