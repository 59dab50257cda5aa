"""Stage one's device work, overlapped with the host's: a batch's views → CLIP embeddings → similarities to the
class features, all on the device, and their copies into pinned host memory started at once (`launch`). The
host's share of a batch (DAMP selection for the readable pseudo-labels, the HDF5 writes) runs while the device
encodes the next one: `aevlp.stage_one.pseudolabel` lands batch i (`Launched.land`) only after batch i + 1 is
launched, so the GPU is handed work before the host waits for it. On a CPU every step runs in turn and the numbers
are the same.

Each step is marked for `torch.profiler` (`aevlp.profiling`): render on device, normalise, encode, copy to
host, wait for the device, DAMP, write.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from aevlp.profiling import step

__all__ = ["views_per_forward", "encode", "Launched", "launch"]


def views_per_forward(device: torch.device) -> int:
    """Views per CLIP forward pass: 512 on a GPU (where the bare ViT-B/16 reaches its rate, docs/performance.md),
    256 on a CPU (cache-friendly, no gain beyond)."""
    return 512 if device.type == "cuda" else 256


def encode(clip, slots: torch.Tensor, views) -> torch.Tensor:
    """[B, U, 3, S, S] uint8 (host or device) → [B, U, D] normalised embeddings on the device, in equal forward
    chunks of at most `views_per_forward`."""
    b, u = slots.shape[:2]
    flat = slots.reshape(b * u, *slots.shape[2:])
    most = views_per_forward(clip.device)
    chunk = -(-flat.shape[0] // -(-flat.shape[0] // most))  # equal chunks: 272 -> 2 x 136
    out = []
    for i in range(0, flat.shape[0], chunk):
        with step("copy to device"):
            x = flat[i:i + chunk].to(clip.device, non_blocking=True)
        with step("normalise"):
            x = views.transform.normalize(x, clip.dtype)
        with step("encode"):
            out.append(clip.encode_images(x))
    return torch.cat(out).reshape(b, u, -1)


def _to_host(x: torch.Tensor) -> torch.Tensor:
    """A copy on the host: pinned and non-blocking from a GPU (it lands when the device gets there)."""
    if x.device.type == "cpu":
        return x
    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    host.copy_(x, non_blocking=True)
    return host


@dataclass
class Launched:
    """A batch whose device work is queued: its rows, and host copies that are complete once `land` returns."""

    rows: torch.Tensor
    sims: torch.Tensor  # [B, U, C] float32 on the host
    emb: torch.Tensor | None  # [B, U, D] on the host, where the cache stores embeddings
    index: torch.Tensor  # [B, rounds, V]
    errors: list
    event: torch.cuda.Event | None

    def land(self) -> Launched:
        """Wait until the device has finished this batch (the host's copies are then complete)."""
        if self.event is not None:
            with step("wait for the device"):
                self.event.synchronize()
        return self


def launch(clip, text: torch.Tensor, slots: torch.Tensor, index: torch.Tensor, views, rows: torch.Tensor,
           errors: list, keep_embeddings: bool) -> Launched:
    """Queue a batch's encoding and similarities on the device and their copies to the host; returns at once on a
    GPU (after the host-side work of launching), after the work on a CPU."""
    emb = encode(clip, slots, views)  # [B, U, D]
    with step("similarities"):
        sims = (emb @ text.T).float()  # [B, U, C]
    with step("copy to host"):
        host_sims = _to_host(sims)
        host_emb = _to_host(emb) if keep_embeddings else None
    event = None
    if sims.device.type == "cuda":
        event = torch.cuda.Event()
        event.record()
    return Launched(rows, host_sims, host_emb, index, errors, event)
