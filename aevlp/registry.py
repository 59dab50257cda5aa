"""Named things users choose by name (losses, backbones, datasets): one small registry per kind.

Modelled on torchvision's `register_model` / `get_model` / `list_models`: one dict per kind, a
duplicate name is refused, and an unknown name is an error that lists the choices and the closest
one. The CLI's choices, help and "did you mean" are read from these registries when they are shown,
so anything registered later (a plug-in loss, a notebook's backbone) appears there too.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from aevlp.errors import ConfigError

__all__ = ["Registry", "did_you_mean"]

T = TypeVar("T")


def did_you_mean(name: str, options) -> str:
    """' (did you mean 'x'?)' for the closest option, or ''."""
    near = difflib.get_close_matches(str(name).lower(), [str(o).lower() for o in options], n=1)
    if not near:
        return ""
    original = next(o for o in options if str(o).lower() == near[0])
    return f" (did you mean '{original}'?)"


class Registry(Generic[T]):
    """name -> object, with optional aliases. `register` refuses a name (or alias) already taken."""

    def __init__(self, kind: str, error: type[Exception] = ConfigError):
        self.kind = kind
        self.error = error
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, obj: T | None = None, *, aliases: tuple[str, ...] = ()):
        """Register `obj` under `name`; without `obj`, a decorator that registers what it decorates."""
        if obj is None:
            def decorator(o: T) -> T:
                self.register(name, o, aliases=aliases)
                return o
            return decorator
        for key in (name, *aliases):
            if key.lower() in self._aliases:
                raise ValueError(f"{self.kind} '{key}' is already registered")
        for key in (name, *aliases):
            self._aliases[key.lower()] = name
        self._items[name] = obj
        return obj

    def unregister(self, name: str) -> None:
        """Remove a name and its aliases (tests and plug-ins that replace an entry)."""
        self._items.pop(name, None)
        self._aliases = {k: v for k, v in self._aliases.items() if v != name}

    def canonical(self, name: str) -> str:
        key = self._aliases.get(str(name).lower())
        if key is None:
            raise self.error(f"unknown {self.kind} '{name}'{did_you_mean(name, self.names(aliases=True))}",
                             hint=f"choose one of: {', '.join(self.names())}")
        return key

    def get(self, name: str) -> T:
        return self._items[self.canonical(name)]

    def names(self, aliases: bool = False) -> list[str]:
        """Registered names in registration order (with `aliases`, every accepted spelling)."""
        return list(self._aliases) if aliases else list(self._items)

    def aliases_of(self, name: str) -> list[str]:
        return [a for a, n in self._aliases.items() if n == name and a != name.lower()]

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(list(self._items.items()))

    def __contains__(self, name: object) -> bool:
        return str(name).lower() in self._aliases

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def filter(self, pred: Callable[[T], bool]) -> list[str]:
        return [n for n, o in self._items.items() if pred(o)]
