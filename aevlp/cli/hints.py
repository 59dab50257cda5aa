"""Messages and hints rendered for the command that prints them.

The library names a setting in a message by its key (`aevlp.errors.flag("train.weights", "FILE")`) and a
command's own flag as `flag("--force")`. Here, and only here, such a marker becomes what the running command
takes: its own flag for the setting (`--weights FILE`, from the command's setting options), `--set
train.weights=FILE` where it takes `--set` (`aevlp run`, `bench`), the pipeline key otherwise; an error
message (which names the bad input rather than a fix) reads `train.weights = FILE` where the command has no
flag for it. A command flag another command spells differently is looked up in SWAPS.
"""
from __future__ import annotations

import logging
import re

import click

from aevlp.cli.setting_option import flags_of
from aevlp.errors import MARKER, plain

__all__ = ["SWAPS", "for_command", "command_flags", "flag_keys", "HintFilter"]

# Command flags with a different spelling on some commands: {flag: {command path: its spelling there}}.
SWAPS = {"--force": {"aevlp run": "--force-stage pseudolabel"}}


ROOT_FLAGS = {"--debug", "--verbose", "-v", "--block-mb", "--version"}  # `aevlp --block-mb 16 COMMAND ...`


def command_flags(command: click.Command) -> set[str]:
    """Every option spelling of a command (`--weights`, `--no-progress`, `--help`, ...), and the `aevlp` group's
    own, which any command takes before its name."""
    opts = {o for p in command.params for o in (*getattr(p, "opts", ()), *getattr(p, "secondary_opts", ()))}
    return opts | {"--help", "-h"} | ROOT_FLAGS


def flag_keys(commands) -> dict[str, tuple[str, ...]]:
    """{flag: the settings it sets} over `commands` (`--device` sets clip.device on one, train.device on another)."""
    out: dict[str, set[str]] = {}
    for command in commands:
        for setting, f in flags_of(command).items():
            out.setdefault(f, set()).add(setting)
    return {f: tuple(sorted(s)) for f, s in out.items()}


def _render(m: re.Match, command: click.Command, path: str, kind: str) -> str:
    name, value = m.group(1), m.group(2)
    tail = "" if value is None else f" {value}"
    if name.startswith("--"):
        return SWAPS.get(name, {}).get(path, name) + tail
    own = flags_of(command).get(name)
    if own:
        return own + tail
    if value is None:
        return name
    if kind == "message":
        return f"{name} = {value}"
    if "--set" in command_flags(command):
        return f"--set {name}={value}"
    return f"{name} = {value} in the pipeline"


def for_command(text: str | None, command: click.Command | None, path: str = "", kind: str = "hint") -> str | None:
    """`text` with every marker rendered for `command` (see the module docstring); `kind` "message" names
    settings, "hint" tells what to pass. Without a command, the markers read plainly."""
    if not text or command is None:
        return plain(text)
    return MARKER.sub(lambda m: _render(m, command, path, kind), text)


class HintFilter(logging.Filter):
    """Warnings from the library rendered for the running command, as its errors are (plainly outside one)."""

    def __init__(self):
        super().__init__()
        self.command: click.Command | None = None
        self.path = ""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = for_command(record.msg, self.command, self.path)
        return True
