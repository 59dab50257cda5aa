"""The key tables of pipelines/README.md, written from the declarations in `aevlp.settings` (`make docs`;
a test fails when the file is stale)."""
from __future__ import annotations

from typing import Any

from aevlp.settings import SECTIONS, _kind, declared

__all__ = ["key_tables", "write_key_tables", "write_between", "TABLES_BEGIN", "TABLES_END"]


def _allowed(f) -> str:
    if f.metadata["choices"]:
        return " \\| ".join(f"`{c}`" for c in f.metadata["choices"])
    if f.metadata["check"]:
        return f.metadata["check"].allowed
    return {"bool": "true or false", "int": "an integer", "float": "a number", "list": "a list",
            "str": "a string"}[_kind(f.default)]


def key_tables() -> str:
    """The markdown tables of every section's keys (pipelines/README.md holds them; a test keeps them current)."""
    out = []
    for s, cls in SECTIONS.items():
        if s == "pipeline":
            continue
        out += [f"### `[{s}]` ({cls.STAGE})", "", "| key | default | allowed | what it does |", "|---|---|---|---|"]
        for name, f in declared(cls).items():
            default = list(f.default) if isinstance(f.default, tuple) else f.default
            doc = f.metadata["doc"].replace("|", "\\|")
            if cls.STAGE != "stage two" and not f.metadata["cache"]:
                doc += " (does not change the cache)"
            out.append(f"| `{name}` | `{_toml(default)}` | {_allowed(f)} | {doc} |")
        out.append("")
    return "\n".join(out)


TABLES_BEGIN = "<!-- key tables: generated from aevlp/settings.py by `make docs`; do not edit by hand -->"
TABLES_END = "<!-- end of generated key tables -->"


def write_between(path: str, begin: str, end: str, content: str) -> bool:
    """Put `content` between the marker lines `begin` and `end` of a text file; True if the file changed."""
    from pathlib import Path

    p = Path(path)
    text = p.read_text()
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{begin}\n\n{content}\n{end}{tail}"
    if new != text:
        p.write_text(new)
    return new != text


def write_key_tables(path: str) -> bool:
    """Put `key_tables()` between the markers of pipelines/README.md; True if the file changed."""
    return write_between(path, TABLES_BEGIN, TABLES_END, key_tables())


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)
