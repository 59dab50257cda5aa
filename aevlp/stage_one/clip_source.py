"""Which CLIP a user means, resolved without building it: model config, preprocessing, tokenizer, identity.

A CLIP choice is one of
  * an open_clip architecture and pretrained tag (`ViT-B-16` + `openai`): the tag's own settings
    (QuickGELU, mean/std, interpolation, resize mode) come from `open_clip.get_pretrained_cfg`;
  * an architecture and a local weights file, optionally saying which tag's settings it carries
    (`--pretrained-cfg openai`); without that, open_clip's defaults are used, with a warning where
    the architecture's known tags disagree with them;
  * a local HF-layout folder (open_clip_config.json + open_clip_model.safetensors or
    open_clip_pytorch_model.bin): its `model_cfg` defines the model, its `preprocess_cfg` the inputs;
  * an `hf-hub:org/name` repository: the same layout, fetched once into the Hugging Face cache.

open_clip ≥ 2.29 builds `ViT-B-16` with plain GELU even for the OpenAI weights, which were trained
with QuickGELU; resolving here is what makes the model built the one the weights were trained as.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from aevlp.errors import AevlpError, flag
from aevlp.hashing import file_sha256

__all__ = ["Preprocess", "ClipSource", "resolve_clip", "weights_available_locally", "write_clip_folder",
           "register_model_config", "quiet_random_init",
           "FOLDER_WEIGHTS"]

log = logging.getLogger("aevlp")
FOLDER_CONFIG = "open_clip_config.json"
FOLDER_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                  "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
_warned: set[str] = set()


@dataclass(frozen=True)
class Preprocess:
    """A checkpoint's input preprocessing, in open_clip's terms (PreprocessCfg)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str  # bicubic | bilinear | nearest
    resize_mode: str  # shortest (resize + centre crop) | squash | longest (resize + pad)
    image_size: int

    @classmethod
    def merged(cls, image_size: int, *overrides: dict) -> Preprocess:
        """open_clip's defaults, then each dict's known keys in turn (a tag's cfg, a folder's preprocess_cfg)."""
        from open_clip.transform import PreprocessCfg

        d = PreprocessCfg()
        v = {"mean": tuple(d.mean), "std": tuple(d.std), "interpolation": d.interpolation,
             "resize_mode": d.resize_mode, "image_size": image_size}
        for o in overrides:
            for key in ("mean", "std", "interpolation", "resize_mode"):
                if o.get(key) is not None:
                    v[key] = tuple(o[key]) if key in ("mean", "std") else o[key]
            if o.get("size") is not None:
                size = o["size"]
                v["image_size"] = int(size[0] if isinstance(size, (list, tuple)) else size)
        return cls(**v)


@dataclass(frozen=True)
class ClipSource:
    """A resolved CLIP choice: what is built, how its inputs are prepared, and how it is identified."""

    kind: str  # tag | file | folder | hf-hub | random
    arch: str  # the open_clip model name it is built from (a registered name for folders)
    name: str  # how the user named it, for messages
    pretrained: str  # the tag, the weights file, or ""
    preprocess: Preprocess
    quick_gelu: bool
    tokenizer: str  # an HF tokenizer name or folder, or "" for open_clip's bundled SimpleTokenizer
    weights_id: str  # the tag, "sha256:..." of a weights file, "hf-hub:org/name@commit", or "random"
    config_id: str  # "" or "sha256:..." of a custom model config
    embed_dim: int
    model_cfg: dict = field(compare=False, repr=False, default_factory=dict)

    def describe(self) -> dict:
        """What `aevlp clip info` reports (plain types)."""
        p = self.preprocess
        return {"name": self.name, "kind": self.kind, "arch": self.arch, "pretrained": self.pretrained,
                "activation": "QuickGELU" if self.quick_gelu else "GELU", "quick_gelu": self.quick_gelu,
                "embed_dim": self.embed_dim, "image_size": p.image_size, "mean": list(p.mean), "std": list(p.std),
                "interpolation": p.interpolation, "resize_mode": p.resize_mode,
                "tokenizer": self.tokenizer or "open_clip SimpleTokenizer (bundled, no download)",
                "weights_id": self.weights_id, "weights_local": weights_available_locally(self)}


def _image_size(model_config: dict) -> int:
    size = model_config.get("vision_cfg", {}).get("image_size", 224)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def _hf_tokenizer(model_config: dict, override: str) -> str:
    name = model_config.get("text_cfg", {}).get("hf_tokenizer_name", "")
    return (override or name) if name or override else ""


def register_model_config(model_config: dict, name: str) -> str:
    """Register a model config with open_clip under `name` (its public add_model_config reads files)."""
    import open_clip

    if name not in open_clip.list_models():
        folder = Path(tempfile.mkdtemp(prefix="aevlp-clip-cfg-"))
        (folder / f"{name}.json").write_text(json.dumps(model_config))
        open_clip.add_model_config(folder / f"{name}.json")
    return name


def _read_folder_config(folder: Path) -> dict:
    path = folder / FOLDER_CONFIG
    if not path.is_file():
        raise AevlpError(f"{folder} is not an HF-layout CLIP folder: {FOLDER_CONFIG} is missing",
                         hint="such a folder holds open_clip_config.json (model_cfg, preprocess_cfg) and "
                              "open_clip_model.safetensors or open_clip_pytorch_model.bin")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AevlpError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_cfg"), dict):
        raise AevlpError(f"{path}: no 'model_cfg' table", hint="open_clip writes it with push_to_hf_hub / "
                                                                "save_for_hf; check the file came from there")
    return cfg


def _from_folder(folder: Path, name: str, weights_id: str = "", tokenizer: str = "") -> ClipSource:
    folder_config = _read_folder_config(folder)
    weights = next((folder / w for w in FOLDER_WEIGHTS if (folder / w).is_file()), None)
    if weights is None:
        raise AevlpError(f"{folder}: no weights file", hint=f"expected one of {', '.join(FOLDER_WEIGHTS)}")
    model_config = folder_config["model_cfg"]
    config_id = "sha256:" + file_sha256(folder / FOLDER_CONFIG)
    arch = register_model_config(model_config, f"{folder.name}-{config_id[7:15]}")
    if not tokenizer and model_config.get("text_cfg", {}).get("hf_tokenizer_name") and \
            any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "spiece.model")):
        tokenizer = str(folder)  # a tokenizer saved beside the weights is used offline
    return ClipSource(kind="hf-hub" if weights_id else "folder", arch=arch, name=name, pretrained=str(weights),
                      preprocess=Preprocess.merged(_image_size(model_config),
                                                   folder_config.get("preprocess_cfg") or {}),
                      quick_gelu=bool(model_config.get("quick_gelu", False)),
                      tokenizer=_hf_tokenizer(model_config, tokenizer),
                      weights_id=weights_id or "sha256:" + file_sha256(weights), config_id=config_id,
                      embed_dim=int(model_config["embed_dim"]), model_cfg=model_config)


def _from_hub(repo: str, tokenizer: str) -> ClipSource:
    """An hf-hub: repository, via the Hugging Face cache (offline: only what is already cached)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:  # pragma: no cover - huggingface_hub comes with open_clip
        raise AevlpError("hf-hub: names need the huggingface_hub package") from e
    try:
        config = Path(hf_hub_download(repo, FOLDER_CONFIG))
    except Exception as e:  # offline, unknown repo, no permission: many exception types
        raise AevlpError(f"could not fetch hf-hub:{repo} ({type(e).__name__}: {e})",
                         hint=f"offline? on a machine with internet run `huggingface-cli download {repo}` and copy "
                              f"the folder, then pass {flag('clip.pretrained', 'PATH/TO/FOLDER')}") from e
    for w in FOLDER_WEIGHTS[:3]:
        try:
            hf_hub_download(repo, w)
            break
        except Exception:  # try the next file name
            continue
    commit = config.parent.name if config.parent.parent.name == "snapshots" else file_sha256(config)[:16]
    return _from_folder(config.parent, f"hf-hub:{repo}", weights_id=f"hf-hub:{repo}@{commit}", tokenizer=tokenizer)


def _tag_settings(arch: str, tag: str) -> dict:
    import open_clip

    return dict(open_clip.get_pretrained_cfg(arch, tag) or {})


def _warn_defaults(arch: str, quick_gelu: bool, pre: Preprocess) -> None:
    """A weights file that says nothing of its settings: warn (once) if the arch's tags disagree."""
    import open_clip

    tags = [t for a, t in open_clip.list_pretrained() if a == arch]
    differ = []
    for tag in tags:
        s = _tag_settings(arch, tag)
        mine = Preprocess.merged(pre.image_size, s)
        if mine != pre or bool(s.get("quick_gelu", quick_gelu)) != quick_gelu:
            differ.append(tag)
    key = f"{arch}:{pre}:{quick_gelu}"
    if differ and key not in _warned:
        _warned.add(key)
        log.warning("%s weights file: using %s, mean %s, std %s, %s %s resize (open_clip's defaults); the tags %s "
                    "of %s differ. If the file is one of them, pass " + flag("clip.pretrained_cfg", "TAG") + " "
                    "so it is used exactly as trained", arch, "QuickGELU" if quick_gelu else "GELU",
                    list(pre.mean), list(pre.std), pre.interpolation, pre.resize_mode, ", ".join(differ), arch)


def _builtin(arch: str, pretrained: str, config: str, pretrained_cfg: str, tokenizer: str) -> ClipSource:
    import open_clip

    config_id = ""
    if config:
        cfg_path = Path(config)
        if not cfg_path.is_file():
            raise AevlpError(f"{flag('clip.config', config)}: file not found")
        try:
            json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise AevlpError(f"{flag('clip.config', config)}: not valid JSON ({e})") from e
        open_clip.add_model_config(cfg_path)
        arch, config_id = cfg_path.stem, "sha256:" + file_sha256(cfg_path)
    if arch not in open_clip.list_models():
        raise AevlpError(f"unknown CLIP architecture '{arch}'",
                         hint=f"`aevlp clip ls` lists them; a custom one needs {flag('clip.config', 'FILE.json')}, "
                              f"an HF-layout folder is passed as {flag('clip.pretrained', 'DIR')}")
    model_config = open_clip.get_model_config(arch)
    tags = [t for a, t in open_clip.list_pretrained() if a == arch]
    is_file = bool(pretrained) and (Path(pretrained).suffix in WEIGHT_SUFFIXES or Path(pretrained).is_file())
    if pretrained and not is_file and pretrained not in tags:
        raise AevlpError(f"'{pretrained}' is not a pretrained tag of {arch}",
                         hint=f"tags for {arch}: {', '.join(tags) or 'none'}; or pass a local weights file or folder")
    settings_tag = pretrained if (pretrained and not is_file) else pretrained_cfg
    if settings_tag and settings_tag not in tags:
        raise AevlpError(f"{flag('clip.pretrained_cfg', settings_tag)} is not a pretrained tag of {arch}",
                         hint=f"tags for {arch}: {', '.join(tags) or 'none'}")
    s = _tag_settings(arch, settings_tag) if settings_tag else {}
    quick_gelu = bool(model_config.get("quick_gelu", False) or s.get("quick_gelu", False))
    pre = Preprocess.merged(_image_size(model_config), s)
    if is_file:
        if not Path(pretrained).is_file():
            raise AevlpError(f"{flag('clip.pretrained', pretrained)}: weights file not found",
                             hint="give an existing .pt/.safetensors file, an HF-layout folder or an open_clip tag")
        if not settings_tag:
            _warn_defaults(arch, quick_gelu, pre)
        kind, weights_id = "file", "sha256:" + file_sha256(pretrained)
    else:
        kind, weights_id = ("tag", pretrained) if pretrained else ("random", "random")
    return ClipSource(kind=kind, arch=arch, name=arch, pretrained=pretrained, preprocess=pre, quick_gelu=quick_gelu,
                      tokenizer=_hf_tokenizer(model_config, tokenizer), weights_id=weights_id, config_id=config_id,
                      embed_dim=int(model_config["embed_dim"]), model_cfg=model_config)


def resolve_clip(arch: str = "", pretrained: str = "", *, config: str = "", pretrained_cfg: str = "",
                 tokenizer: str = "") -> ClipSource:
    """Resolve a CLIP choice (see the module docstring) without building the model or downloading weights."""
    for value in (pretrained, arch):
        if value.startswith("hf-hub:"):
            return _from_hub(value[len("hf-hub:"):].strip("/"), tokenizer)
    for value in (pretrained, arch):
        if value and Path(os.path.expanduser(value)).is_dir():
            folder = Path(os.path.expanduser(value))
            return _from_folder(folder, str(folder), tokenizer=tokenizer)
    if not arch and not config:
        if pretrained and not Path(pretrained).exists():
            raise AevlpError(f"{flag('clip.pretrained', pretrained)}: not found (no such file or folder)",
                             hint=f"pass an HF-layout folder, or {flag('clip.arch', 'ARCH')} with a tag or weights "
                                  "file")
        raise AevlpError("no CLIP architecture given", hint=f"pass {flag('clip.arch', 'ARCH')} (aevlp clip ls) with "
                                                            f"{flag('clip.pretrained', 'TAG|FILE')}, or "
                                                            f"{flag('clip.pretrained', 'DIR')} for an HF-layout folder")
    return _builtin(arch, pretrained, config, pretrained_cfg, tokenizer)


@contextlib.contextmanager
def quiet_random_init():
    """Drop open_clip's 'No pretrained weights loaded' warning for a model whose weights we load ourselves."""
    class Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "No pretrained weights loaded" not in record.getMessage()
    root, f = logging.getLogger(), Drop()
    root.addFilter(f)
    try:
        yield
    finally:
        root.removeFilter(f)


def write_clip_folder(folder: str | Path, model_cfg: dict, state_dict: dict,
                      preprocess_cfg: dict | None = None) -> Path:
    """Save a model as an HF-layout folder (open_clip_config.json + open_clip_model.safetensors), the
    form `--pretrained DIR` reads and the one to copy to an offline cluster."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}}
    (folder / FOLDER_CONFIG).write_text(json.dumps(cfg, indent=1))
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(folder / FOLDER_WEIGHTS[0]))
    return folder


def weights_available_locally(source: ClipSource) -> bool:
    """True when building the model needs no download (a file, a folder, or a tag already cached)."""
    if source.kind in ("file", "folder", "hf-hub", "random"):
        return source.kind == "random" or Path(source.pretrained).is_file()
    cfg = _tag_settings(source.arch, source.pretrained)
    hub = cfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover
            return False
        repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        return any(isinstance(try_to_load_from_cache(repo, n), str) for n in names)
    url = cfg.get("url", "")
    return bool(url) and (Path.home() / ".cache" / "clip" / os.path.basename(url)).is_file()
