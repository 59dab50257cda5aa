"""Shared helpers for the benchmarks: machine description and realistic test images."""
from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path

import numpy as np


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def today() -> str:
    return dt.date.today().isoformat()


def make_jpeg_dataset(root: Path, n: int, c: int = 20, size=(500, 375)) -> Path:
    """A VOC-layout folder of n photo JPEGs (scikit-image's photos, resized to a VOC-like 500x375)."""
    from PIL import Image
    from skimage import data as sk

    photos = [sk.astronaut(), sk.chelsea(), sk.coffee(), sk.rocket(), np.stack([sk.camera()] * 3, -1),
              sk.hubble_deep_field()]
    img = root / "VOCdevkit" / "VOC2012" / "JPEGImages"
    img.mkdir(parents=True, exist_ok=True)
    rs = np.random.RandomState(0)
    for phase, count in (("train", n), ("val", 2)):
        names = []
        for i in range(count):
            name = f"{phase}{i:05d}.jpg"
            if not (img / name).exists():
                Image.fromarray(photos[i % len(photos)]).resize(size).save(img / name, quality=90)
            names.append(name)
        y = (rs.rand(count, c) < 0.1).astype(np.float32)
        y[:, 0] = 1
        np.save(root / f"formatted_{phase}_images.npy", np.array(names))
        np.save(root / f"formatted_{phase}_labels.npy", y)
    return root
