"""Stage-two checkpoints: best.pt (the model and what using it needs) and last.pt (for --resume).

Written atomically (a temporary file renamed into place; the previous last.pt is kept as
last.prev.pt), and read with `torch.load(weights_only=True)`: tensors, numbers, strings, lists and
dicts only, so a crafted file cannot run code. Anything else is refused with a clear error.
"""
from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import torch

from aevlp.errors import AevlpError
from aevlp.stage_two.models import BACKBONES, Classifier, build_model

__all__ = ["rng_state", "save_checkpoint", "load_checkpoint", "has_training_state", "load_training_state",
           "read_checkpoint"]

log = logging.getLogger("aevlp")


def save_checkpoint(path: Path, model: torch.nn.Module, *, keep_previous: bool = False, **extra) -> None:
    """The model's state dict plus `extra` entries (meta, optimizer, state, method), written atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": model.state_dict(), **extra}, tmp)
    if keep_previous and path.exists():
        os.replace(path, path.with_name(path.stem + ".prev" + path.suffix))
    os.replace(tmp, path)


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint's contents, loaded without running pickled code; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise AevlpError(f"{path}: no such checkpoint", hint="pass a run directory or its best.pt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        raise AevlpError(f"{path} is not an aevlp checkpoint aevlp can load safely ({type(e).__name__})",
                         hint="aevlp loads checkpoints with weights_only: a truncated file, or one holding "
                              "pickled Python objects (which could run code), is refused") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise AevlpError(f"{path} is not an aevlp checkpoint (best.pt or last.pt of a run directory)")
    return ckpt


def load_checkpoint(path: str | Path) -> tuple[Classifier, dict]:
    """(model in eval mode, meta) from a best.pt."""
    ckpt = read_checkpoint(path)
    m = ckpt.get("meta")
    if not isinstance(m, dict) or not {"backbone", "classnames"} <= set(m):
        raise AevlpError(f"{path} is not an aevlp model checkpoint (best.pt of a run directory)")
    clip = None
    if BACKBONES.get(m["backbone"]).reads_clip:
        from aevlp.stage_two.clip_student import ClipStudent
        clip = ClipStudent.of_meta(m)
    model = build_model(m["backbone"], len(m["classnames"]), weights="none", embed_dim=m.get("embed_dim", 0), clip=clip)
    if isinstance(m.get("head"), dict):  # MIME's or SMILE's head in place of the linear one
        from aevlp.stage_two.heads import build_head, official_backbone
        model.head = build_head(**m["head"])
        if not any(k.endswith("num_batches_tracked") for k in ckpt["model"]):  # its BatchNorm frozen (not before)
            official_backbone(model.backbone)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError) as e:
        raise AevlpError(f"{path}: its weights do not fit a {m['backbone']} with {len(m['classnames'])} classes "
                         f"({str(e).splitlines()[0]})") from None
    model.boost_alpha = float(m.get("boost_alpha", 0.0))
    return model.eval(), m


def rng_state() -> dict[str, torch.Tensor]:
    """torch's random states (CPU, and every CUDA device): saved with last.pt, so a resumed run draws the
    same dropout masks and latent samples as an uninterrupted one."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    cuda = [state[k] for k in sorted(k for k in state if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def has_training_state(run: Path) -> bool:
    """Whether a run directory holds a finished epoch to resume from (last.pt, or the previous one)."""
    return (run / "last.pt").exists() or (run / "last.prev.pt").exists()


def load_training_state(run: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, method=None) -> dict:
    """Restore model, optimizer and the method's state from RUN/last.pt (or, if that file is damaged,
    from the previous epoch's last.prev.pt, saying so); returns the loop state."""
    last, prev = run / "last.pt", run / "last.prev.pt"
    if not last.exists() and not prev.exists():
        raise AevlpError(f"{run}: nothing to resume (no last.pt)", hint="start a new run without --resume")
    try:
        ck = read_checkpoint(last)
    except AevlpError as e:
        if not prev.exists():
            raise
        log.warning("%s; resuming from the previous epoch's %s", e.message, prev.name)
        ck = read_checkpoint(prev)
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    if method is not None:
        method.load_state_dict(ck.get("method", {}))
    if isinstance(ck.get("rng"), dict):
        _set_rng_state(ck["rng"])
    return ck["state"]
