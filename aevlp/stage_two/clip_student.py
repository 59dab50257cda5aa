"""The CLIP-initialised student (`train.backbone = "clip"`): the image tower of the very CLIP that made the cache,
fine-tuned end to end, with its head initialised from the cache's class text features, so that before training
the model is CLIP's zero-shot classifier (logits = CLIP's logit scale × the cosine of the image and class
embeddings). docs/training.md, "A CLIP-initialised student".

What a run needs to build it again (for `predict`, `evaluate`, `refine`) is the [clip] section stage one ran with,
the hash of its weights and its preprocessing; a run records them in its checkpoint's meta, as a clip-head run does.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aevlp.errors import AevlpError, flag

__all__ = ["ClipStudent", "ClipTower", "build_clip_student", "decayed_groups", "layers_above", "zero_shot_weights"]


@dataclass(frozen=True)
class ClipStudent:
    """The CLIP a cache was made with, as a student is built from it: its [clip] settings, the hash of its weights,
    its preprocessing (image_size, mean, std, ...) and the class text features its head starts from."""

    clip: dict
    weights_id: str
    preprocess: dict
    text: np.ndarray | None = None  # [C, D]; only to initialise a new head

    @classmethod
    def of_cache(cls, cache, with_text: bool = True) -> ClipStudent:
        """From a cache: the zero-shot classifier's text features are the prompts' own (before the relation GCN)
        where stage one stored them, else the cache's class text features (`with_text=False`: none, for a model
        that only records the CLIP, as clip-head does)."""
        text = None
        if with_text:
            plain = cache.plain_text_features()
            text = np.asarray(plain if plain is not None else cache.f["text_features"][()], dtype=np.float32)
        return cls(clip=dict(cache.info.get("clip") or {}), weights_id=str(cache.fingerprint.get("clip_weights", "")),
                   preprocess=json.loads(cache.f.attrs.get("clip_preprocess", "{}")), text=text)

    @classmethod
    def of_meta(cls, meta: dict) -> ClipStudent:
        """From a checkpoint's meta (`meta()` of a trained run)."""
        if not meta.get("clip") or not meta.get("clip_preprocess"):
            raise AevlpError("this CLIP-initialised model does not record the CLIP it was built from")
        return cls(clip=meta["clip"], weights_id=meta.get("clip_weights", ""), preprocess=meta["clip_preprocess"])

    def meta(self) -> dict:
        return {"clip": self.clip, "clip_weights": self.weights_id, "clip_preprocess": self.preprocess}

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.preprocess["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.preprocess["std"])


class ClipTower(nn.Module):
    """CLIP's image tower with its output L2-normalised, as CLIP compares images with text."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(x).float(), dim=-1)


def zero_shot_weights(text: np.ndarray, logit_scale: float) -> torch.Tensor:
    """The zero-shot classifier as a linear layer's weight [C, D]: logit_scale × the L2-normalised text features."""
    return logit_scale * F.normalize(torch.as_tensor(text, dtype=torch.float32), dim=-1)


def build_clip_student(student: ClipStudent, load_weights: bool) -> tuple[nn.Module, int, float]:
    """(the trainable image tower, its embedding width, CLIP's logit scale). `load_weights`: the checkpoint's own
    weights, checked to be the file the cache was made with; without, the architecture only (a checkpoint of a
    trained run replaces every weight)."""
    from aevlp.specs import ClipSpec
    from aevlp.stage_one.clip import load_clip

    if not student.clip:
        raise AevlpError("the cache records no CLIP to build a student from (an older cache)",
                         hint=f"re-run stage one, or choose another {flag('train.backbone')}")
    spec = ClipSpec(**{**student.clip, "device": "cpu", "precision": "fp32", "compile": False})
    clip = load_clip(spec, load_weights=load_weights)
    if load_weights and student.weights_id and clip.weights_id != student.weights_id:
        raise AevlpError(f"the CLIP weights {student.clip.get('pretrained')} differ from the ones the cache was "
                         "made with", hint=f"point {flag('clip.pretrained')} at the original checkpoint")
    visual = clip.model.visual.float().train().requires_grad_(True)
    scale = float(clip.model.logit_scale.exp()) if hasattr(clip.model, "logit_scale") else 100.0
    return ClipTower(visual), clip.embed_dim, scale


_VIT_BELOW = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "patch_dropout")  # below the first block


def layers_above(visual: nn.Module) -> dict[str, int]:
    """parameter name -> how many layers of a CLIP image tower lie above it, for layer-wise lr decay (BEiT's
    count): a ViT's L blocks are its layers, the patch and position embeddings lie below the first (L above
    them), the last block has one above it (the final norm and projection: 0); a ModifiedResNet's layer1-layer4
    are its layers, the stem below them (5 above), the attention pool on top (0)."""
    names = [n for n, _ in visual.named_parameters()]
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is not None:
        top = len(blocks) + 1

        def layer(name: str) -> int:
            part = name.split(".")
            return int(part[2]) + 1 if part[0] == "transformer" else 0 if part[0] in _VIT_BELOW else top
    elif all(hasattr(visual, f"layer{i}") for i in range(1, 5)):
        top = 5

        def layer(name: str) -> int:
            head = name.split(".")[0]
            return int(head[5:]) if head[:5] == "layer" else top if head == "attnpool" else 0
    else:
        raise AevlpError(f"train.layer_decay: the image tower {type(visual).__name__} is neither a CLIP ViT nor a "
                         "ModifiedResNet, so its layers are not known", hint=f"set {flag('train.layer_decay', '1')}")
    return {n: top - layer(n) for n in names}


def decayed_groups(tower: ClipTower, lr: float, decay: float) -> list[dict]:
    """The tower's parameters as optimiser groups, one per depth: lr × decay^(layers above), each with that factor
    as its `lr_mult` (the training loop sets a group's lr as lr × lr_mult); the top group first."""
    above = layers_above(tower.visual)
    by_depth: dict[int, list] = {}
    for name, p in tower.visual.named_parameters():
        by_depth.setdefault(above[name], []).append(p)
    return [{"params": ps, "lr": lr * decay ** k, "lr_mult": decay ** k} for k, ps in sorted(by_depth.items())]

