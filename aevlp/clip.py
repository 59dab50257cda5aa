"""The frozen open_clip model of stage one: loading by name + tag or local file, precision, prompts.

Only stage one loads CLIP; stage two reads what it wrote to the cache.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from aevlp.device import DTYPES, resolve_device, resolve_precision
from aevlp.errors import AevlpError, ConfigError

__all__ = ["ClipModel", "ClipIdentity", "identify_clip", "load_clip", "prompt_name", "file_sha256"]

log = logging.getLogger("aevlp")


def prompt_name(classname: str) -> str:
    """Readable class phrase: underscores → spaces; CUB's 'has_wing_color::blue' → 'blue wing color'."""
    if "::" in classname:
        part, value = classname.split("::", 1)
        part = part.removeprefix("has_").replace("_", " ")
        return f"{value.replace('_', ' ')} {part}"
    return classname.replace("_", " ")


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class ClipModel:
    """A loaded, frozen open_clip model with the facts the cache fingerprint needs."""

    model: torch.nn.Module
    tokenizer: object
    arch: str
    pretrained: str
    weights_id: str  # the tag, or "sha256:..." of a local file, or "random"
    config_id: str  # "" or "sha256:..." of a local model config JSON
    device: torch.device
    precision: str
    image_size: int
    embed_dim: int
    encoder: object = None  # torch.compile'd encode_image when asked for

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised float32 embeddings of normalised pixel batches."""
        x = pixels.to(self.device, self.dtype, non_blocking=True)
        return F.normalize((self.encoder or self.model.encode_image)(x).float(), dim=-1)

    @torch.inference_mode()
    def encode_text(self, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """Raw (un-normalised) class text features T0, averaged over prompt templates.

        With one template this is exactly the official code's T0 (it feeds the GCN un-normalised).
        """
        if not templates or any("{}" not in t for t in templates):
            raise ConfigError(f"each prompt template needs a '{{}}' for the class name, got {list(templates)}")
        feats = []
        for t in templates:
            tokens = self.tokenizer([t.format(prompt_name(c)) for c in classnames]).to(self.device)
            feats.append(self.model.encode_text(tokens).float())
        return torch.stack(feats).mean(0).cpu()


def _is_file(pretrained: str) -> bool:
    return bool(pretrained) and (Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors")
                                 or Path(pretrained).is_file())


@dataclass(frozen=True)
class ClipIdentity:
    """What identifies a CLIP setup's numbers, known without loading the model (for fingerprints)."""

    arch: str
    weights_id: str
    config_id: str
    precision: str
    image_size: int


def identify_clip(arch: str, pretrained: str = "", *, config: str = "", device: str = "auto",
                  precision: str = "auto") -> ClipIdentity:
    """Validate a CLIP choice and identify it (weights file hashed), without building the model.

    `pretrained`: an open_clip tag ('openai', 'laion2b_s34b_b88k'), a local checkpoint file, or ''
    for random weights (tests, benchmarks). `config`: a local model-config JSON; its file stem
    becomes the architecture name, as open_clip's `add_model_config` registers it.
    """
    import open_clip

    config_id = ""
    if config:
        cfg_path = Path(config)
        if not cfg_path.is_file():
            raise AevlpError(f"--clip-config {config}: file not found")
        try:
            json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise AevlpError(f"--clip-config {config}: not valid JSON ({e})") from e
        open_clip.add_model_config(cfg_path)
        arch, config_id = cfg_path.stem, "sha256:" + file_sha256(cfg_path)
    if arch not in open_clip.list_models():
        raise AevlpError(f"unknown CLIP architecture '{arch}'",
                         hint="`aevlp clip ls` lists them; a custom one needs --clip-config FILE.json")
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if _is_file(pretrained):
        if not Path(pretrained).is_file():
            raise AevlpError(f"--pretrained {pretrained}: weights file not found",
                             hint="give an existing .pt/.safetensors file or an open_clip tag (aevlp clip ls)")
        weights_id = "sha256:" + file_sha256(pretrained)
    elif pretrained:
        tags = [t for a, t in open_clip.list_pretrained() if a == arch]
        if pretrained not in tags:
            raise AevlpError(f"'{pretrained}' is not a pretrained tag of {arch}",
                             hint=f"tags for {arch}: {', '.join(tags) or 'none'}; or pass a local weights file")
        weights_id = pretrained
    else:
        weights_id = "random"
    size = open_clip.get_model_config(arch)["vision_cfg"]["image_size"]
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    return ClipIdentity(arch, weights_id, config_id, prec, size)


def load_clip(arch: str, pretrained: str = "", *, config: str = "", device: str = "auto",
              precision: str = "auto", compile: bool = False) -> ClipModel:
    """Create a frozen open_clip model (see `identify_clip` for the arguments).

    `compile=True` wraps the image encoder in torch.compile: a one-off compilation (seconds to a
    minute) for a faster steady state, worth it for large datasets.
    """
    import open_clip

    ident = identify_clip(arch, pretrained, config=config, device=device, precision=precision)
    arch, prec, dev = ident.arch, ident.precision, resolve_device(device)
    if ident.weights_id == "random":
        log.warning("no --pretrained given: %s has RANDOM weights (fine for tests and benchmarks only)", arch)
    try:
        model = open_clip.create_model(arch, pretrained=pretrained or None, device=dev)
    except Exception as e:  # download failures surface as many exception types (HTTP, OSError, hub errors)
        if _is_file(pretrained):
            raise AevlpError(f"could not load weights {pretrained} into {arch}: {e}",
                             hint="check that the file matches the architecture (and --clip-config)") from e
        raise AevlpError(f"could not fetch pretrained weights '{pretrained}' for {arch} ({type(e).__name__}: {e})",
                         hint="offline? download the checkpoint elsewhere and pass it with "
                              "--pretrained PATH/TO/weights.safetensors (open_clip_pytorch_model.bin works too)") from e
    model = model.to(DTYPES[prec]).eval().requires_grad_(False)
    encoder = torch.compile(model.encode_image) if compile else None
    return ClipModel(encoder=encoder, model=model, tokenizer=open_clip.get_tokenizer(arch), arch=arch,
                     pretrained=pretrained,
                     weights_id=ident.weights_id, config_id=ident.config_id, device=dev, precision=prec,
                     image_size=ident.image_size, embed_dim=int(model.text_projection.shape[-1])
                     if hasattr(model, "text_projection") and model.text_projection is not None
                     else int(model.visual.output_dim))
