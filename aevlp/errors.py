"""User-facing errors: one clear line plus a hint, printed by the CLI without a traceback.

A message names a setting with `flag("train.weights", "FILE")` and a command's own flag with
`flag("--force")`: a marker that the CLI renders as the flag of the command that prints it
(aevlp/cli/hints.py) and that reads as the setting (`train.weights = FILE`) everywhere else (`plain`).
"""
from __future__ import annotations

import logging
import re

__all__ = ["AevlpError", "DataError", "ConfigError", "flag", "plain", "MARKER"]

MARKER = re.compile(r"\u27e6([^\u27e7=]+)(?:=([^\u27e7]*))?\u27e7")  # ⟦train.weights=FILE⟧, ⟦--force⟧


def flag(name: str, value: object = None) -> str:
    """A setting (`section.key`) or a command flag (`--force`) named in a message, with the value to give it."""
    return f"\u27e6{name}\u27e7" if value is None else f"\u27e6{name}={value}\u27e7"


def plain(text: str | None) -> str | None:
    """`text` with its markers read outside a command: the setting and its value, or the flag as written."""
    def one(m: re.Match) -> str:
        name, value = m.group(1), m.group(2)
        if value is None:
            return name
        return f"{name} {value}" if name.startswith("--") else f"{name} = {value}"
    return text if not text else MARKER.sub(one, text)


class PlainLogs(logging.Filter):
    """Markers in the library's log messages read plainly (the CLI swaps in its own renderer)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = plain(record.msg)
        return True


PLAIN_LOGS = PlainLogs()
logging.getLogger("aevlp").addFilter(PLAIN_LOGS)


class AevlpError(Exception):
    """An error caused by user input (a file, a flag, a config key), not by a bug in aevlp. `message` and `hint`
    read plainly; the CLI renders `raw_message` and `raw_hint` for its command."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(plain(message))
        self.raw_message, self.raw_hint = message, hint

    @property
    def message(self) -> str:
        return plain(self.raw_message)

    @property
    def hint(self) -> str | None:
        return plain(self.raw_hint)

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class DataError(AevlpError):
    """Missing, malformed or inconsistent dataset files."""


class ConfigError(AevlpError):
    """Invalid hyperparameters or configuration values."""
