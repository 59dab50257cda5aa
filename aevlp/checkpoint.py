"""Stage-two checkpoints: best.pt (the model and what using it needs) and last.pt (for --resume)."""
from __future__ import annotations

from pathlib import Path

import torch

from aevlp.errors import AevlpError
from aevlp.models import Classifier, build_model

__all__ = ["save_checkpoint", "load_checkpoint", "load_training_state"]


def save_checkpoint(path: Path, model: torch.nn.Module, **extra) -> None:
    """The model's state dict plus `extra` entries (meta, optimizer, state)."""
    torch.save({"model": model.state_dict(), **extra}, path)


def load_checkpoint(path: str | Path) -> tuple[Classifier, dict]:
    """(model in eval mode, meta) from a best.pt."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "meta" not in ckpt:
        raise AevlpError(f"{path} is not an aevlp checkpoint (best.pt of a run directory)")
    m = ckpt["meta"]
    model = build_model(m["backbone"], len(m["classnames"]), weights="none", embed_dim=m.get("embed_dim", 0))
    model.load_state_dict(ckpt["model"])
    model.boost_alpha = float(m.get("boost_alpha", 0.0))
    return model.eval(), m


def load_training_state(run: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, method=None) -> dict:
    """Restore model, optimizer and the method's state from RUN/last.pt; returns the loop state."""
    if not (run / "last.pt").exists():
        raise AevlpError(f"{run}: nothing to resume (no last.pt)", hint="start a new run without --resume")
    ck = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    if method is not None:
        method.load_state_dict(ck.get("method", {}))
    return ck["state"]
