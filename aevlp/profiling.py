"""Where the time goes: `torch.profiler` around a stage, its steps marked by name (`step`), written as a table
(the steps by total time, CPU and CUDA) and a Chrome trace (open it in chrome://tracing or Perfetto).

    aevlp pseudolabel ... --profile out/stage-one      # out/stage-one.txt and out/stage-one.json

Without `--profile` the marks cost a function call each.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

__all__ = ["step", "profiled"]


def step(name: str):
    """Mark a step for the profiler (a no-op context otherwise)."""
    return torch.profiler.record_function(name)


@contextlib.contextmanager
def profiled(path: str | Path | None, echo=print):
    """Profile the block into PATH.txt (the steps and ops by total time) and PATH.json (a Chrome trace); a no-op
    for None. The data-loading workers are separate processes: their decoding shows as the main process's
    'wait for workers'."""
    if path is None:
        yield
        return
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.profiler.profile(activities=activities) as prof:
        yield
    sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=40)
    out.with_suffix(".txt").write_text(table)
    prof.export_chrome_trace(str(out.with_suffix(".json")))
    echo(f"profile: {out.with_suffix('.txt')} (steps by total time), {out.with_suffix('.json')} (Chrome trace)")
