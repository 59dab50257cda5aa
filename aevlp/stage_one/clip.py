"""The frozen open_clip model of stage one, built exactly as its checkpoint was trained.

`clip_source.resolve_clip` decides what a CLIP choice means (config, QuickGELU, preprocessing,
tokenizer, identity) without building anything; `load_clip` builds it. Only stage one loads CLIP;
stage two reads what it wrote to the cache.
"""
from __future__ import annotations

import inspect
import logging
import pickle
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from aevlp.device import DTYPES, resolve_device, resolve_precision
from aevlp.errors import AevlpError, ConfigError, flag
from aevlp.hashing import file_sha256
from aevlp.specs import ClipSpec
from aevlp.stage_one.clip_source import ClipSource, Preprocess, quiet_random_init, resolve_clip

__all__ = ["ClipModel", "ClipIdentity", "identify_clip", "load_clip", "load_text_encoder", "prompt_name",
           "file_sha256"]

log = logging.getLogger("aevlp")


def prompt_name(classname: str) -> str:
    """Readable class phrase: underscores → spaces; CUB's 'has_wing_color::blue' → 'blue wing color'."""
    if "::" in classname:
        part, value = classname.split("::", 1)
        part = part.removeprefix("has_").replace("_", " ")
        return f"{value.replace('_', ' ')} {part}"
    return classname.replace("_", " ")


@dataclass(frozen=True)
class ClipIdentity:
    """What identifies a CLIP setup's numbers, known without loading the model (for fingerprints)."""

    source: ClipSource
    precision: str

    @property
    def arch(self) -> str:
        """The fingerprint's model name: what the user called it, except a folder, which its files identify
        (weights_id, config_id) wherever it lies — a moved or relatively named folder is the same model."""
        return "folder" if self.source.kind == "folder" else self.source.name

    @property
    def weights_id(self) -> str:
        return self.source.weights_id

    @property
    def config_id(self) -> str:
        return self.source.config_id

    @property
    def image_size(self) -> int:
        return self.source.preprocess.image_size

    @property
    def preprocess(self) -> Preprocess:
        return self.source.preprocess


def identify_clip(spec: ClipSpec) -> ClipIdentity:
    """Validate a CLIP choice and identify it (weights file hashed), without building the model."""
    source = resolve_clip(spec.arch, spec.pretrained, config=spec.config, pretrained_cfg=spec.pretrained_cfg,
                          tokenizer=spec.tokenizer)
    return ClipIdentity(source, resolve_precision(spec.precision, resolve_device(spec.device, "clip.device")))


@dataclass
class ClipModel:
    """A loaded, frozen open_clip model."""

    model: torch.nn.Module
    tokenizer: object
    identity: ClipIdentity
    device: torch.device
    encoder: object = None  # torch.compile'd encode_image when asked for

    @property
    def precision(self) -> str:
        return self.identity.precision

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    @property
    def embed_dim(self) -> int:
        return self.identity.source.embed_dim

    @property
    def image_size(self) -> int:
        return self.identity.image_size

    @property
    def weights_id(self) -> str:
        return self.identity.weights_id

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised float32 embeddings of normalised pixel batches."""
        x = pixels.to(self.device, self.dtype, non_blocking=True)
        return F.normalize((self.encoder or self.model.encode_image)(x).float(), dim=-1)

    @torch.inference_mode()
    def encode_text(self, phrases: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """Raw (un-normalised) class text features T0 of readable class phrases, averaged over templates.

        With one template this is exactly the official code's T0 (it feeds the GCN un-normalised).
        """
        if not templates or any(t.count("{}") != 1 for t in templates):
            raise ConfigError(f"each prompt template needs exactly one '{{}}' for the class, got {list(templates)}")
        feats = []
        for t in templates:
            tokens = self.tokenizer([t.format(p) for p in phrases]).to(self.device)
            feats.append(self.model.encode_text(tokens).float())
        return torch.stack(feats).mean(0).cpu()


def _create(source: ClipSource, dev: torch.device, load_weights: bool) -> torch.nn.Module:
    """Build the model source describes (QuickGELU as trained); load its weights safely unless told not to."""
    import open_clip

    kw = {"force_quick_gelu": source.quick_gelu, "device": dev}
    if "pretrained_text" in inspect.signature(open_clip.create_model).parameters:
        kw["pretrained_text"] = False  # never download a text tower's base weights behind the user's back
    if source.kind == "tag" and load_weights:
        return open_clip.create_model(source.arch, pretrained=source.pretrained, **kw)
    with quiet_random_init():  # open_clip warns "initialized randomly"; the weights are loaded next
        model = open_clip.create_model(source.arch, pretrained=None, **kw)
    if load_weights and source.kind != "random":
        try:
            open_clip.load_checkpoint(model, source.pretrained, weights_only=True)
        except TypeError:  # pragma: no cover - open_clip without weights_only
            open_clip.load_checkpoint(model, source.pretrained)
    return model


def _tokenizer(source: ClipSource):
    import open_clip

    try:
        if source.tokenizer and source.tokenizer != source.model_cfg.get("text_cfg", {}).get("hf_tokenizer_name"):
            from open_clip.tokenizer import HFTokenizer

            t = source.model_cfg.get("text_cfg", {})
            return HFTokenizer(source.tokenizer, context_length=t.get("context_length", 77),
                               **t.get("tokenizer_kwargs", {}))
        return open_clip.get_tokenizer(source.arch)
    except Exception as e:  # offline hub lookups and a missing `transformers` raise many types
        raise AevlpError(f"could not load the tokenizer {source.tokenizer or 'of ' + source.name} "
                         f"({type(e).__name__}: {e})",
                         hint=f"it comes from the Hugging Face hub: on a machine with internet run `huggingface-cli "
                              f"download {source.tokenizer}` (needs `pip install transformers`), then copy the "
                              f"folder here and pass {flag('clip.tokenizer', 'PATH')} (or put its files beside the "
                              "weights in an HF-layout folder)") from e


def _why(e: Exception) -> str:
    """A weights-loading failure in one line (torch's weights_only refusal suggests the unsafe way out)."""
    if isinstance(e, pickle.UnpicklingError):
        return "it is not plain tensors (a pickle that needs code to load, or not a torch file at all); refused"
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first[:300]}"


def load_clip(spec: ClipSpec, *, load_weights: bool = True) -> ClipModel:
    """Create the frozen open_clip model a ClipSpec names (see `clip_source` for what it can name).

    `clip.compile` wraps the image encoder in torch.compile: a one-off compilation (seconds to a
    minute) for a faster steady state, worth it for large datasets.
    """
    ident = identify_clip(spec)
    source, dev = ident.source, resolve_device(spec.device, "clip.device")
    if source.kind == "random":
        log.warning("no " + flag("clip.pretrained") + " given: %s has RANDOM weights (fine for tests and benchmarks "
                    "only)", source.name)
    try:
        model = _create(source, dev, load_weights)
    except AevlpError:
        raise
    except Exception as e:  # download failures and mismatched files surface as many exception types
        if source.kind != "tag":
            raise AevlpError(f"could not load weights {source.pretrained} into {source.name}: {_why(e)}",
                             hint=f"check that the file matches the architecture (and {flag('clip.config', 'FILE')}), "
                                  "and that it is a state dict (.safetensors/.bin/.pt), not a pickled program") from e
        raise AevlpError(f"could not fetch pretrained weights '{source.pretrained}' for {source.name} "
                         f"({type(e).__name__}: {e})",
                         hint=f"offline? download the checkpoint elsewhere and pass it with "
                              f"{flag('clip.pretrained', 'PATH/TO/weights.safetensors')} "
                              f"{flag('clip.pretrained_cfg', 'TAG')}, or an HF-layout folder") from e
    model = model.to(DTYPES[ident.precision]).eval().requires_grad_(False)
    encoder = torch.compile(model.encode_image) if spec.compile else None
    return ClipModel(model=model, tokenizer=_tokenizer(source), identity=ident, device=dev, encoder=encoder)


class _TextOnly(torch.nn.Module):
    """Just the text tower of a CLIP model, with CLIP's `encode_text` (for re-prompting a cache)."""

    def __init__(self, tower: torch.nn.Module):
        super().__init__()
        self.text = tower

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text(tokens)


def _text_weights(source: ClipSource) -> dict:
    """The text tower's part of the checkpoint (weights_only), keys as the tower names them."""
    import open_clip

    if source.kind == "tag":
        from open_clip.pretrained import download_pretrained

        path = download_pretrained(open_clip.get_pretrained_cfg(source.arch, source.pretrained))
    else:
        path = source.pretrained
    state = open_clip.factory.load_state_dict(path, weights_only=True)
    if any(k.startswith("text.") for k in state):
        return {k[5:]: v for k, v in state.items() if k.startswith("text.")}
    names = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
    return {k: v for k, v in state.items() if k.startswith(names)}


def load_text_encoder(spec: ClipSpec) -> ClipModel:
    """The text side only: what re-prompting a cache needs. Standard open_clip text towers are built
    alone (no image encoder); others (HF text models, converted checkpoints) fall back to the full model."""
    from open_clip.model import CLIPTextCfg, _build_text_tower

    ident = identify_clip(spec)
    source, dev = ident.source, resolve_device(spec.device, "clip.device")
    text_cfg = source.model_cfg.get("text_cfg", {})
    if "hf_model_name" in text_cfg or source.kind == "random":
        return load_clip(spec)
    try:
        tower = _build_text_tower(source.embed_dim, CLIPTextCfg(**text_cfg), source.quick_gelu)
        missing, unexpected = tower.load_state_dict(_text_weights(source), strict=False)
        if [k for k in missing if k != "attn_mask"] or unexpected:
            raise ValueError(f"text weights do not fit (missing {len(missing)}, unexpected {len(unexpected)})")
    except Exception as e:  # unusual checkpoint layouts: build the whole model rather than guess
        log.info("text tower alone not possible (%s): building the full CLIP", e)
        return load_clip(spec)
    model = _TextOnly(tower).to(dev, DTYPES[ident.precision]).eval().requires_grad_(False)
    return ClipModel(model=model, tokenizer=_tokenizer(source), identity=ident, device=dev)
