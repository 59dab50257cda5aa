"""Where and in which dtype a stage runs: device and precision resolution, shared by both stages."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from aevlp.errors import ConfigError, flag

__all__ = ["DTYPES", "cpu_supports_bf16", "resolve_device", "resolve_precision", "resolve_train_precision",
           "autocast", "memory_bytes", "check_fits", "Inference", "inference"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """bf16 *weights* are 3-5x faster than fp32 on CPUs with AMX/AVX512-BF16, slower elsewhere."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_device(device: str, setting: str = "--device") -> torch.device:
    """'auto' → cuda when available, else cpu; a CUDA device where there is none is an error (naming `setting`,
    the setting or flag the device came from)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"unknown device '{device}'", hint="use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{flag(setting, device)}: CUDA is not available here",
                          hint=f"use {flag(setting, 'cpu')} or auto")
    return dev


def _check(precision: str) -> None:
    if precision != "auto" and precision not in DTYPES:
        raise ConfigError(f"unknown precision '{precision}'", hint="choose auto, fp32, bf16 or fp16")


def resolve_precision(precision: str, device: torch.device) -> str:
    """CLIP weights dtype. 'auto' → fp16 on CUDA (CLIP's release dtype, and the official code's
    `convert_weights`), bf16 on a CPU with bf16 instructions (3x faster there), else fp32."""
    _check(precision)
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


def resolve_train_precision(precision: str, device: torch.device) -> str:
    """Stage two's autocast dtype. 'auto' → bf16 on a CUDA GPU that supports it, else fp32 (the
    official code trains in fp32; bf16 autocast is about twice as fast on recent GPUs)."""
    _check(precision)
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


@dataclass(frozen=True)
class Inference:
    """Where and how a trained model scores images outside training (eval, predict, the student's scores, review,
    the teacher row): the device, the autocast precision training used there, images per forward pass."""

    device: torch.device
    precision: str
    batch_size: int = 64

    def describe(self) -> str:
        return f"{self.device.type}, {self.precision}, batch {self.batch_size}"


def inference(device: str = "auto", batch_size: int = 64, precision: str = "auto") -> Inference:
    """The one rule every command that runs a trained model resolves its device by: `auto` is the GPU when there
    is one; the precision is stage two's (`auto`: bf16 autocast on a CUDA GPU that has it, else fp32)."""
    dev = resolve_device(device)
    if batch_size < 1:
        raise ConfigError(f"a batch of {batch_size} images: give a positive number of images per forward pass")
    return Inference(dev, resolve_train_precision(precision, dev), batch_size)


def autocast(device: torch.device, precision: str):
    """An autocast context for a resolved precision ('fp32' disables it): stage two's mixed precision."""
    return torch.autocast(device.type, dtype=DTYPES.get(precision, torch.float32),
                          enabled=precision in ("bf16", "fp16"))


def memory_bytes(device: torch.device) -> int:
    """What one process can hold: the GPU's memory on CUDA, the machine's RAM otherwise (0: unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        import os

        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def check_fits(what: str, need: int, device: torch.device, hint: str, share: float = 0.5) -> None:
    """Refuse settings whose buffers alone (`need` bytes, estimated) would take over `share` of the memory,
    before anything is allocated: the estimate, the memory and the settings to lower, in one message."""
    have = memory_bytes(device)
    if have and need > share * have:
        raise ConfigError(f"{what} would need about {need / 2 ** 30:.1f} GiB, more than {share:.0%} of the "
                          f"{have / 2 ** 30:.0f} GiB {'on the GPU' if device.type == 'cuda' else 'of RAM'} here",
                          hint=hint)
