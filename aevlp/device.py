"""Where and in which dtype a stage runs: device and precision resolution, shared by both stages."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from aevlp.errors import ConfigError

__all__ = ["DTYPES", "cpu_supports_bf16", "resolve_device", "resolve_precision", "autocast"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """bf16 *weights* are 3-5x faster than fp32 on CPUs with AMX/AVX512-BF16, slower elsewhere."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_device(device: str) -> torch.device:
    """'auto' → cuda when available, else cpu; a CUDA device where there is none is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"unknown device '{device}'", hint="use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available here", hint="use --device cpu or auto")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' → bf16 (fp16 where bf16 is unsupported) on CUDA, bf16 on a bf16-capable CPU, else fp32."""
    if precision != "auto":
        if precision not in DTYPES:
            raise ConfigError(f"unknown precision '{precision}'", hint="choose auto, fp32, bf16 or fp16")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    """An autocast context for `precision` ('fp32' disables it): stage two's mixed precision."""
    return torch.autocast(device.type, dtype=DTYPES.get(precision, torch.float32),
                          enabled=precision in ("bf16", "fp16"))
