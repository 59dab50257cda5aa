"""Stage-two classifiers: a backbone with global average pooling and a linear head.

`resnet50`/`resnet101`: the papers' recipe (ImageNet weights, 448 px). `clip-head`: a linear head
on cached CLIP image embeddings (stage one's --store-embeddings), which trains in seconds on a CPU.
`small-cnn`: a few conv layers for tiny images (the demo). `clip`: the image tower of the CLIP that made the
cache, its head starting as CLIP's zero-shot classifier (`aevlp.stage_two.clip_student`). The head is kept
apart so the optimiser can give it lr × lr_mult, as the official code does.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from aevlp.errors import AevlpError, flag
from aevlp.registry import Registry

__all__ = ["Classifier", "Backbone", "BACKBONES", "register_backbone", "build_model", "load_backbone_weights",
           "weights_to_download"]


@dataclass(frozen=True)
class Backbone:
    """How a backbone is built: `build(weights, embed_dim) -> (module, feature_dim)`; what it reads.

    `image_size`: its default input size (0: the size of the training images themselves). `lr`: its
    default learning rate (train.lr = 0): a rate belongs to a backbone and its pretraining, not to a pipeline.
    """

    build: Callable[[str, int], tuple[nn.Module, int]]
    input: str  # "image" (image files) or "embedding" (stage one's cached CLIP embeddings)
    description: str = ""
    image_size: int = 0
    features: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None  # last conv map [B, D, H, W]
    lr: float = 1e-5
    reads_clip: bool = False  # built from the cache's CLIP (`build_model(clip=...)`), not from `build`


BACKBONES: Registry[Backbone] = Registry("backbone")


def register_backbone(name: str, backbone: Backbone) -> Backbone:
    return BACKBONES.register(name, backbone)


class Classifier(nn.Module):
    """backbone → (global average pooling) → linear head. With `boost_alpha` > 0 (BoostLU), the logits
    are the spatial mean of BoostLU(CAM) instead, CAM = the head applied at every feature-map position. A
    spatial head (`aevlp.stage_two.heads`: MIME's, SMILE's) reads the last feature map instead of the pooled
    features."""

    def __init__(self, backbone: nn.Module, feat_dim: int, num_classes: int, features=None):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feat_dim, num_classes)
        self.features = features
        self.boost_alpha = 0.0
        self.frozen: set[str] = set()  # backbone parameters a method keeps untrained (MIME's, SMILE's stem)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.boost_alpha:
            return self.boosted(x, self.boost_alpha)
        if getattr(self.head, "spatial", False):  # a head that reads the feature map (MIME, SMILE: stage_two.heads)
            return self.head(self.features(self.backbone, x))
        return self.head(self.backbone(x))

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """Class activation maps [B, C, H, W] (bias included at every position)."""
        if self.features is None:
            raise AevlpError("this backbone has no convolutional feature map for class activation maps")
        f = self.features(self.backbone, x)
        return torch.einsum("bdhw,cd->bchw", f, self.head.weight) + self.head.bias[None, :, None, None]

    def boosted(self, x: torch.Tensor, alpha: float) -> torch.Tensor:
        cam = self.cam(x)
        return torch.where(cam > 0, alpha * cam, cam).mean(dim=(2, 3))


WEIGHT_KEYWORDS = ("", "none", "default", "imagenet")  # train.weights values that are not files


def names_file(weights: str) -> bool:
    """Whether a train.weights value names a weights file (anything but the keywords)."""
    return weights not in WEIGHT_KEYWORDS


def _small_cnn(weights: str, width: int = 32) -> tuple[nn.Module, int]:
    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                             nn.Conv2d(o, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                             nn.MaxPool2d(2))
    net = nn.Sequential(block(3, width), block(width, 2 * width), block(2 * width, 4 * width),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    if weights == "imagenet":
        raise AevlpError("small-cnn has no ImageNet weights (the default for it is none: from scratch)",
                         hint=f"use {flag('train.weights', 'none')} (from scratch) or a .pth/.safetensors file of a "
                              "small-cnn")
    if names_file(weights):
        load_backbone_weights(net, weights)
    return net, 4 * width


def _resnet(name: str, weights: str) -> tuple[nn.Module, int]:
    import torchvision

    ctor = getattr(torchvision.models, name)
    if weights in ("imagenet", "default"):
        enum = {"resnet50": torchvision.models.ResNet50_Weights,
                "resnet101": torchvision.models.ResNet101_Weights}[name]
        try:
            net = ctor(weights=enum.IMAGENET1K_V1)  # the papers' torchvision `pretrained=True`
        except Exception as e:  # offline download failures take many forms
            raise AevlpError(f"could not download ImageNet weights for {name} ({type(e).__name__}: {e})",
                             hint=f"offline? pass {flag('train.weights', f'PATH/TO/{name}.pth')} (torchvision's file), "
                                  f"or {flag('train.weights', 'none')}") from e
    else:
        net = ctor(weights=None)
        if names_file(weights):
            load_backbone_weights(net, weights, ignore=("fc.",))
    dim = net.fc.in_features
    net.fc = nn.Identity()  # torchvision's ResNet already ends in global average pooling
    return net, dim


def weights_to_download(backbone: str, weights: str) -> str | None:
    """What building this backbone would download (ImageNet weights not yet in torch's cache), or None."""
    if BACKBONES.canonical(backbone) not in ("resnet50", "resnet101") or weights not in ("imagenet", "default"):
        return None
    import torchvision

    enum = {"resnet50": torchvision.models.ResNet50_Weights,
            "resnet101": torchvision.models.ResNet101_Weights}[BACKBONES.canonical(backbone)].IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
    return None if cached.is_file() else f"ImageNet weights for {backbone} ({enum.url})"


def _read_state(path: str) -> dict:
    """A state dict from .safetensors or a torch file loaded with weights_only (never runs pickled code)."""
    if not Path(path).is_file():
        raise AevlpError(f"{flag('train.weights', path)}: file not found",
                         hint="use imagenet, none, or an existing weights file")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for pickled objects, OSError/RuntimeError for garbage
        raise AevlpError(f"{flag('train.weights', path)} is not a weights file aevlp can load safely "
                         f"({type(e).__name__})",
                         hint="give a state dict saved with torch.save(model.state_dict()) or safetensors; "
                              "files that need pickled code to load are refused") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AevlpError(f"{flag('train.weights', path)} holds no state dict of tensors")
    return state


def load_backbone_weights(net: nn.Module, path: str, ignore: tuple[str, ...] = ()) -> None:
    """Load a backbone state dict (a whole aevlp Classifier's works too: its head is dropped)."""
    state = _read_state(path)
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(ignore)] if ignore else missing
    unexpected = [k for k in unexpected if not k.startswith(ignore)] if ignore else unexpected
    if missing or unexpected:
        raise AevlpError(f"{flag('train.weights', path)} does not match the backbone "
                         f"(missing {len(missing)}, unexpected {len(unexpected)} keys, e.g. "
                         f"{(missing + unexpected)[:2]})")


def _resnet_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
        x = getattr(net, name)(x)
    return x


def _small_cnn_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net[:-2](x)  # before AdaptiveAvgPool2d and Flatten


def _clip_head(weights: str, embed_dim: int) -> tuple[nn.Module, int]:
    if embed_dim < 1:
        raise AevlpError("the clip-head backbone needs stored CLIP embeddings",
                         hint=f"run stage one with {flag('cache.store_embeddings', 'global')}")
    if weights not in ("none", "", "default"):
        raise AevlpError(f"{flag('train.weights', weights)}: clip-head has no backbone to load weights into (it is "
                         "a linear head on CLIP embeddings)",
                         hint=f"pass {flag('train.weights', 'none')}, or choose an image backbone (resnet50, "
                              "small-cnn)")
    return nn.Identity(), embed_dim


# Default learning rates: the ResNets fine-tune at the papers' 1e-5 (head x lr_mult); small-cnn and
# clip-head at the rates the demo chose on its val split (3e-4 beat 1e-3 and 1e-4 end to end; 1e-3 for
# the linear probe), docs/demo.md.
register_backbone("resnet50", Backbone(lambda w, d: _resnet("resnet50", w), "image",
                                       "ResNet-50 (the papers' backbone; ImageNet weights, 448 px)", 448,
                                       _resnet_features, lr=1e-5))
register_backbone("resnet101", Backbone(lambda w, d: _resnet("resnet101", w), "image", "ResNet-101", 448,
                                        _resnet_features, lr=1e-5))
register_backbone("clip-head", Backbone(_clip_head, "embedding",
                                        "a linear head on cached CLIP embeddings (a linear probe; seconds on a CPU)",
                                        lr=1e-3))
register_backbone("small-cnn", Backbone(lambda w, d: _small_cnn(w), "image",
                                        "six conv layers for tiny images (the demo); its data's own size", 0,
                                        _small_cnn_features, lr=3e-4))


def _from_cache(weights: str, embed_dim: int):
    raise AevlpError("the clip backbone is built from a cache's CLIP", hint="train it with `aevlp train` on a cache")


register_backbone("clip", Backbone(_from_cache, "image", "the image tower of the CLIP that made the cache, its head "
                                                         "CLIP's zero-shot classifier at the start", 0, lr=1e-5,
                                   reads_clip=True))


def build_model(backbone: str, num_classes: int, *, weights: str = "none", embed_dim: int = 0,
                clip=None) -> Classifier:
    """`weights`: "default" (ImageNet for the ResNets, none otherwise), "imagenet", "none", or a weights file.
    `clip`: for the clip backbone, the `ClipStudent` it is built from (with its text features and weights other than
    "none": the CLIP's own weights, the head its zero-shot classifier)."""
    spec = BACKBONES.get(backbone)
    if not spec.reads_clip:
        net, dim = spec.build(weights, embed_dim)
        return Classifier(net, dim, num_classes, features=spec.features)
    from aevlp.stage_two.clip_student import build_clip_student, zero_shot_weights

    if weights not in ("none", "default", ""):
        raise AevlpError(f"{flag('train.weights', weights)}: the clip backbone takes the weights of the CLIP that "
                         "made the cache", hint=f"pass {flag('train.weights', 'default')} (or none: random init)")
    net, dim, scale = build_clip_student(clip, load_weights=weights != "none")
    model = Classifier(net, dim, num_classes)
    if clip.text is not None:
        with torch.no_grad():
            model.head.weight.copy_(zero_shot_weights(clip.text, scale))
            model.head.bias.zero_()
    return model
