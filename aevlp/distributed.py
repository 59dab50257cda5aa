"""torch.distributed glue for both stages: torchrun's environment, process groups, shards.

aevlp never schedules processes itself: `torchrun` (or SLURM's srun calling torchrun) starts them
and sets RANK / WORLD_SIZE / LOCAL_RANK; this module reads those and does the rest.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from aevlp.errors import ConfigError

__all__ = ["env", "is_distributed", "init", "barrier", "broadcast", "all_sum", "shard_rows", "parse_shard",
           "cleanup"]


def env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) as torchrun sets them; (0, 1, 0) for a plain process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def is_distributed() -> bool:
    return env()[1] > 1


def init(device_type: str = "cpu") -> bool:
    """Join the process group once (NCCL on CUDA, gloo on CPU); False when not under torchrun."""
    if not is_distributed():
        return False
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" and dist.is_nccl_available() else "gloo"
        dist.init_process_group(backend=backend)
        if device_type == "cuda":
            torch.cuda.set_device(env()[2])
    return True


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast(obj, src: int = 0):
    """The `src` rank's object on every rank (a no-op without a process group)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_sum(values: list[float]) -> list[float]:
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard_rows(n: int, batch_size: int, shard: int, num_shards: int) -> tuple[int, int]:
    """Contiguous rows [start, stop) of shard k: whole batches, so every batch has exactly the
    rows a single-process run gives it (and its numbers are bit-identical)."""
    batches = -(-n // batch_size)
    first, last = batches * shard // num_shards, batches * (shard + 1) // num_shards
    return min(first * batch_size, n), min(last * batch_size, n)


def parse_shard(text: str) -> tuple[int, int]:
    """'K/W' → (K, W) with 0 <= K < W."""
    try:
        k, w = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected K/W, e.g. --shard 2/8") from None
    if not 0 <= k < w:
        raise ConfigError(f"--shard {text!r}: need 0 <= K < W")
    return k, w
