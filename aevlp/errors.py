"""User-facing errors: one clear line plus a hint, printed by the CLI without a traceback."""
from __future__ import annotations


class AevlpError(Exception):
    """An error caused by user input (a file, a flag, a config key), not by a bug in aevlp."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class DataError(AevlpError):
    """Missing, malformed or inconsistent dataset files."""


class ConfigError(AevlpError):
    """Invalid hyperparameters or configuration values."""
