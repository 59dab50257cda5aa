"""Messages and hints that name flags the command which prints them really has.

The library names settings by the flag of the stage that owns them (`--weights FILE`, `--pretrained
DIR`, `--store-embeddings global`). A command without that flag gets the setting's other spelling:
`--set train.weights=FILE` where it takes `--set` (`aevlp run`, `bench`), the pipeline key otherwise;
in an error message (which names the bad input rather than a fix) it reads `train.weights = FILE`.
Spans in backticks that start with `aevlp ` name their own command and are left as they are.
"""
from __future__ import annotations

import logging
import re

import click

__all__ = ["FLAG_KEYS", "SWAPS", "for_command", "command_flags", "HintFilter"]

# Flags the library's messages name, and the setting each one sets (`--set KEY=VALUE` elsewhere).
FLAG_KEYS = {
    "--weights": ("train.weights",), "--backbone": ("train.backbone",), "--loss": ("loss.name",),
    "--labels": ("train.labels",), "--damp-source": ("damp.source",), "--lr": ("train.lr",),
    "--epochs": ("train.epochs",),
    "--pretrained": ("clip.pretrained",), "--pretrained-cfg": ("clip.pretrained_cfg",), "--clip": ("clip.arch",),
    "--clip-config": ("clip.config",), "--store-embeddings": ("cache.store_embeddings",),
    "--on-bad-image": ("cache.on_bad_image",), "--data-root": ("dataset.data_root",), "--dataset": ("dataset.name",),
    "--device": ("clip.device", "train.device"), "--grid": ("views.grid",), "--rounds": ("views.rounds",),
    # --out as pseudolabel's messages mean it (a command with an --out of its own keeps it)
    "--out": ("cache.path",), "--pseudo": ("cache.path",),
}
# Flags with a different spelling on some commands: {flag: {command path: its spelling there}}.
SWAPS = {"--force": {"aevlp run": "--force-stage pseudolabel"}}

_FLAG = re.compile(r"(?<![\w`-])(--[a-z][a-z-]*)(?:(=|\s+)(?!-)([^\s,;)]+))?")
_OWN_COMMAND = re.compile(r"`aevlp [^`]*`")


def command_flags(command: click.Command) -> set[str]:
    """Every option spelling of a command (`--weights`, `--no-progress`, `--help`, ...)."""
    opts = {o for p in command.params for o in (*getattr(p, "opts", ()), *getattr(p, "secondary_opts", ()))}
    return opts | {"--help", "-h"}


def _render(match: re.Match, flags: set[str], path: str, kind: str) -> str:
    flag, value = match.group(1), match.group(3)
    if flag in flags:
        return match.group(0)
    if flag == "--set" and value and "=" in value:  # a command without --set: the pipeline key
        k, v = value.split("=", 1)
        return f"{k} = {v} in the pipeline"
    swap = SWAPS.get(flag, {}).get(path)
    if swap:
        return swap + match.group(0)[len(flag):]
    keys = FLAG_KEYS.get(flag)
    if not keys or value is None:
        return match.group(0)
    if kind == "message":
        return " / ".join(f"{k} = {value}" for k in keys)
    if "--set" in flags:
        return " ".join(f"--set {k}={value}" for k in keys)
    return " / ".join(f"{k} = {value} in the pipeline" for k in keys)


def for_command(text: str | None, command: click.Command | None, path: str = "", kind: str = "hint") -> str | None:
    """`text` with every flag the command lacks spelled as it works there (see the module docstring);
    `kind` "message" names settings, "hint" tells what to pass."""
    if not text or command is None:
        return text
    flags = command_flags(command)
    parts, last = [], 0
    for own in _OWN_COMMAND.finditer(text):  # `aevlp pseudolabel ... --force` names its own command's flags
        parts.append(_FLAG.sub(lambda m: _render(m, flags, path, kind), text[last:own.start()]))
        parts.append(own.group(0))
        last = own.end()
    parts.append(_FLAG.sub(lambda m: _render(m, flags, path, kind), text[last:]))
    return "".join(parts)


class HintFilter(logging.Filter):
    """Warnings from the library rewritten for the running command, as its errors are."""

    def __init__(self):
        super().__init__()
        self.command: click.Command | None = None
        self.path = ""

    def filter(self, record: logging.LogRecord) -> bool:
        if self.command is not None and isinstance(record.msg, str):
            record.msg = for_command(record.msg, self.command, self.path)
        return True
