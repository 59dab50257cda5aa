"""A small CLIP for the demo's toy world, pretrained contrastively on single Fashion-MNIST items.

Like a real CLIP it never sees the downstream data: no mosaics, no multi-label annotations — only
single training items (at random scale and position in a 32-px frame) and captions built from a
few templates. It is saved as a local checkpoint + open_clip model config, and stage one loads it
through the same --clip-config/--pretrained PATH route users take for their own checkpoints.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from aevlp.imaging import CLIP_MEAN, CLIP_STD
from aevlp.progress import bar
from aevlp.stage_one.clip import prompt_name
from aevlp.stage_one.clip_source import FOLDER_WEIGHTS, quiet_random_init, register_model_config, write_clip_folder

__all__ = ["TOY_CONFIG", "TEMPLATES", "pretrain_toy_clip"]

TOY_CONFIG = {"embed_dim": 64,
              "vision_cfg": {"image_size": 32, "layers": 3, "width": 128, "patch_size": 8, "head_width": 32},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2}}
TEMPLATES = ["a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a {} on a dark background."]
ARCH = "fashion-clip"
# How the toy CLIP's inputs were prepared in pretraining (`_place`): bilinear, no crop, CLIP statistics.
PREPROCESS = {"mean": list(CLIP_MEAN), "std": list(CLIP_STD), "interpolation": "bilinear", "resize_mode": "squash",
              "size": 32}


def _place(items: np.ndarray, rng: np.random.Generator, train: bool) -> torch.Tensor:
    """28-px items → [B, 3, 32, 32] CLIP-normalised frames; in training at a random scale and spot."""
    n = len(items)
    out = torch.zeros(n, 1, 32, 32)
    x = torch.as_tensor(np.array(items), dtype=torch.float32).unsqueeze(1) / 255
    sizes = rng.integers(12, 29, size=n) if train else np.full(n, 28)
    flips = rng.random(n) < 0.5 if train else np.zeros(n, bool)
    spots = [rng.integers(0, 32 - s + 1, size=2) if train else ((32 - s) // 2,) * 2 for s in sizes]
    for size in np.unique(sizes):  # one resize per distinct size, not per item
        rows = np.flatnonzero(sizes == size)
        imgs = F.interpolate(x[rows], size=(int(size), int(size)), mode="bilinear", antialias=True,
                             align_corners=False)
        for img, i in zip(imgs, rows):
            ox, oy = spots[i]
            out[i, :, oy:oy + size, ox:ox + size] = img.flip(-1) if flips[i] else img
    out = out.expand(-1, 3, -1, -1)
    return (out - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def pretrain_toy_clip(fm: dict | Callable[[], dict], out_dir: str | Path, classnames: list[str], *, steps: int = 1200,
                      batch_size: int = 256, lr: float = 2e-3, seed: int = 0, progress: bool = True) -> dict:
    """Train and save the toy CLIP as an HF-layout folder; reuse it if made with the same settings.

    The folder (open_clip_config.json with its preprocessing + open_clip_model.safetensors) is what
    a user copies to an offline machine; stage one reads it with `--pretrained DIR` alone.
    """
    import open_clip

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "meta.json"
    params = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "config": TOY_CONFIG,
              "templates": TEMPLATES, "version": 3}
    if meta_path.exists() and (out / FOLDER_WEIGHTS[0]).exists() and \
            json.loads(meta_path.read_text()).get("params") == params:
        return {**json.loads(meta_path.read_text()), "folder": str(out), "status": "reused"}
    fm = fm() if callable(fm) else fm  # only loaded when training is needed
    arch = register_model_config(TOY_CONFIG, ARCH)
    torch.manual_seed(seed)
    with quiet_random_init():  # a fresh model is the point here: no "initialized randomly" warning
        model = open_clip.create_model(arch)
    tok = open_clip.get_tokenizer(arch)
    _train(model, tok, fm["train"], classnames, steps=steps, batch_size=batch_size, lr=lr,
           rng=np.random.default_rng(seed), progress=progress)
    acc = zero_shot_accuracy(model, tok, fm["test"], classnames)
    write_clip_folder(out, TOY_CONFIG, model.state_dict(), PREPROCESS)
    meta = {"params": params, "zero_shot_accuracy": acc, "test_items": int(len(fm["test"][1]))}
    meta_path.write_text(json.dumps(meta, indent=1))
    return {**meta, "folder": str(out), "status": "trained"}


def _train(model, tok, train: tuple[np.ndarray, np.ndarray], classnames: list[str], *, steps: int, batch_size: int,
           lr: float, rng: np.random.Generator, progress: bool) -> None:
    """Contrastive pretraining on single items against one random caption per class (InfoNCE both ways)."""
    captions = tok([t.format(prompt_name(c)) for c in classnames for t in TEMPLATES]).view(len(classnames),
                                                                                          len(TEMPLATES), -1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    images, labels = train
    model.train()
    for _ in bar(range(steps), desc="pretrain toy CLIP", disable=not progress, unit="step"):
        idx = rng.integers(0, len(images), size=batch_size)
        x = _place(images[idx], rng, train=True)
        pick = torch.as_tensor(rng.integers(0, len(TEMPLATES), size=len(classnames)))
        text = captions[torch.arange(len(classnames)), pick]  # one random caption per class
        img_f = F.normalize(model.encode_image(x), dim=-1)
        txt_f = F.normalize(model.encode_text(text), dim=-1)
        logits = model.logit_scale.exp() * img_f @ txt_f.T  # InfoNCE over the class captions
        y = torch.as_tensor(labels[idx], dtype=torch.long)
        loss = F.cross_entropy(logits, y) + F.cross_entropy(logits.T, _soft_targets(y, len(classnames)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
    model.eval()


def _soft_targets(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Text→image targets: each caption is matched by every image of its class in the batch."""
    m = F.one_hot(y, num_classes).T.float()
    return m / m.sum(1, keepdim=True).clamp_min(1)


@torch.no_grad()
def zero_shot_accuracy(model, tok, test: tuple[np.ndarray, np.ndarray], classnames: list[str]) -> float:
    """Top-1 zero-shot accuracy (%) on single centred test items with the 'a photo of a {}.' prompt."""
    model.eval()
    txt = F.normalize(model.encode_text(tok([f"a photo of a {prompt_name(c)}." for c in classnames])), dim=-1)
    images, labels = test
    rng = np.random.default_rng(0)
    correct = 0
    for i in range(0, len(images), 1000):
        f = F.normalize(model.encode_image(_place(images[i:i + 1000], rng, train=False)), dim=-1)
        correct += int(((f @ txt.T).argmax(1).numpy() == labels[i:i + 1000]).sum())
    return round(100.0 * correct / len(labels), 2)
