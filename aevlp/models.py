"""Stage-two classifiers: a backbone with global average pooling and a linear head.

`resnet50`/`resnet101`: the papers' recipe (ImageNet weights, 448 px). `clip-head`: a linear head
on cached CLIP image embeddings (stage one's --store-embeddings), which trains in seconds on a CPU.
`small-cnn`: a few conv layers for tiny images (the demo). The head is kept apart so the optimiser
can give it lr × lr_mult, as the official code does.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from aevlp.errors import AevlpError
from aevlp.registry import Registry

__all__ = ["Classifier", "Backbone", "BACKBONES", "register_backbone", "build_model"]


@dataclass(frozen=True)
class Backbone:
    """How a backbone is built: `build(weights, embed_dim) -> (module, feature_dim)`; what it reads."""

    build: Callable[[str, int], tuple[nn.Module, int]]
    input: str  # "image" (image files) or "embedding" (stage one's cached CLIP embeddings)
    description: str = ""


BACKBONES: Registry[Backbone] = Registry("backbone")


def register_backbone(name: str, backbone: Backbone) -> Backbone:
    return BACKBONES.register(name, backbone)


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, feat_dim: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feat_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _small_cnn(width: int = 32) -> tuple[nn.Module, int]:
    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                             nn.Conv2d(o, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                             nn.MaxPool2d(2))
    net = nn.Sequential(block(3, width), block(width, 2 * width), block(2 * width, 4 * width),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return net, 4 * width


def _resnet(name: str, weights: str) -> tuple[nn.Module, int]:
    import torchvision

    ctor = getattr(torchvision.models, name)
    if weights == "imagenet":
        enum = {"resnet50": torchvision.models.ResNet50_Weights,
                "resnet101": torchvision.models.ResNet101_Weights}[name]
        try:
            net = ctor(weights=enum.IMAGENET1K_V1)  # the papers' torchvision `pretrained=True`
        except Exception as e:  # offline download failures take many forms
            raise AevlpError(f"could not download ImageNet weights for {name} ({type(e).__name__}: {e})",
                             hint=f"offline? pass --weights PATH/TO/{name}.pth (torchvision's file), "
                                  "or --weights none") from e
    else:
        net = ctor(weights=None)
        if weights not in ("none", ""):
            _load_file(net, weights)
    dim = net.fc.in_features
    net.fc = nn.Identity()  # torchvision's ResNet already ends in global average pooling
    return net, dim


def _load_file(net: nn.Module, path: str) -> None:
    if not Path(path).is_file():
        raise AevlpError(f"--weights {path}: file not found", hint="use imagenet, none, or an existing .pth file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    missing, unexpected = net.load_state_dict(state, strict=False)
    if [k for k in missing if not k.startswith("fc.")] or unexpected:
        raise AevlpError(f"--weights {path} does not match the backbone "
                         f"(missing {len(missing)}, unexpected {len(unexpected)} keys)")


def _clip_head(weights: str, embed_dim: int) -> tuple[nn.Module, int]:
    if embed_dim < 1:
        raise AevlpError("the clip-head backbone needs stored CLIP embeddings",
                         hint="run stage one with --store-embeddings global")
    return nn.Identity(), embed_dim


register_backbone("resnet50", Backbone(lambda w, d: _resnet("resnet50", w), "image",
                                       "ResNet-50 (the papers' backbone; ImageNet weights, 448 px)"))
register_backbone("resnet101", Backbone(lambda w, d: _resnet("resnet101", w), "image", "ResNet-101"))
register_backbone("clip-head", Backbone(_clip_head, "embedding",
                                        "a linear head on cached CLIP embeddings (a linear probe; seconds on a CPU)"))
register_backbone("small-cnn", Backbone(lambda w, d: _small_cnn(), "image",
                                        "six conv layers for tiny images (the demo)"))


def build_model(backbone: str, num_classes: int, *, weights: str = "none", embed_dim: int = 0) -> Classifier:
    net, dim = BACKBONES.get(backbone).build(weights, embed_dim)
    return Classifier(net, dim, num_classes)
