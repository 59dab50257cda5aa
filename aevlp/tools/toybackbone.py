"""The demo's analogue of ImageNet pretraining: the small-cnn trained to classify single Fashion-MNIST items.

The papers fine-tune an ImageNet-pretrained ResNet-50; the toy world's counterpart is a small-cnn
whose backbone has learnt single items (never mosaics, never their labels), at random scales and
positions in a small frame, normalised as stage two normalises its inputs. It is saved as a
safetensors state dict that `--weights FILE` loads, like a user's own pretrained backbone.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from aevlp.imaging import IMAGENET_MEAN, IMAGENET_STD
from aevlp.progress import bar
from aevlp.stage_two.models import build_model

__all__ = ["pretrain_small_cnn"]


def _frames(items: np.ndarray, rng: np.random.Generator, size: int) -> torch.Tensor:
    """28-px items → [B, 3, size, size] ImageNet-normalised frames, each at a random scale and spot."""
    out = torch.zeros(len(items), 1, size, size)
    x = torch.as_tensor(np.array(items), dtype=torch.float32).unsqueeze(1) / 255
    for i in range(len(items)):
        s = int(rng.integers(size // 2, size + 1))
        img = F.interpolate(x[i:i + 1], size=(s, s), mode="bilinear", antialias=True, align_corners=False)[0]
        if rng.random() < 0.5:
            img = img.flip(-1)
        ox, oy = rng.integers(0, size - s + 1, size=2)
        out[i, :, oy:oy + s, ox:ox + s] = img
    out = out.expand(-1, 3, -1, -1)
    return (out - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def pretrain_small_cnn(fm: dict | Callable[[], dict], out_dir: str | Path, *, steps: int = 300, batch_size: int = 128,
                       frame: int = 16, lr: float = 2e-3, seed: int = 0, progress: bool = True) -> dict:
    """Train (or reuse) `small-cnn.safetensors` in `out_dir`; returns its path and test accuracy."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights, meta_path = out / "small-cnn.safetensors", out / "meta.json"
    params = {"steps": steps, "batch_size": batch_size, "frame": frame, "lr": lr, "seed": seed, "version": 1}
    if weights.exists() and meta_path.exists() and json.loads(meta_path.read_text()).get("params") == params:
        return {**json.loads(meta_path.read_text()), "weights": str(weights), "status": "reused"}
    fm = fm() if callable(fm) else fm
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model("small-cnn", 10, weights="none")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    images, labels = fm["train"]
    model.train()
    for _ in bar(range(steps), desc="pretrain small-cnn", disable=not progress, unit="step"):
        idx = rng.integers(0, len(images), size=batch_size)
        loss = F.cross_entropy(model(_frames(images[idx], rng, frame)), torch.as_tensor(labels[idx], dtype=torch.long))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    test_x, test_y = fm["test"]
    with torch.no_grad():
        pred = torch.cat([model(_frames(test_x[i:i + 1000], rng, frame)).argmax(1)
                          for i in range(0, len(test_x), 1000)])
    acc = round(100.0 * float((pred.numpy() == test_y).mean()), 2)
    save_file({k: v.contiguous() for k, v in model.backbone.state_dict().items()}, str(weights))
    meta = {"params": params, "item_accuracy": acc}
    meta_path.write_text(json.dumps(meta, indent=1))
    return {**meta, "weights": str(weights), "status": "trained"}
