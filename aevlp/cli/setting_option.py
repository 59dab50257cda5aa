"""Click options made from the settings' declarations (aevlp/settings.py), so a flag never restates them.

`setting_option("train.labels")` is `--labels`, typed and limited to the declared choices, its help the
declaration's line, default None (the pipeline's value stands unless the flag is given). A command reads what
was passed as settings with `setting_values(ctx)`, and the message renderer (aevlp/cli/hints.py) asks
`flags_of(command)` which setting each of its flags sets.
"""
from __future__ import annotations

from typing import Any

import click

from aevlp.settings import SECTIONS, declared

__all__ = ["SettingOption", "setting_option", "setting_values", "flags_of", "declaration"]


def declaration(dotted: str):
    """The dataclass field that declares `section.key`."""
    section, name = dotted.split(".", 1)
    return declared(SECTIONS[section])[name]


class SettingOption(click.Option):
    """A click option that sets one declared setting (`self.setting`, e.g. "train.lr")."""

    def __init__(self, *args, setting: str, **kwargs):
        self.setting = setting
        super().__init__(*args, **kwargs)


def _type(default: Any, choices: tuple[str, ...]) -> Any:
    if choices:
        return click.Choice(list(choices))
    if isinstance(default, bool):
        return None  # a --x/--no-x switch
    if isinstance(default, tuple):
        return str  # a list setting: the option is `multiple`
    return type(default)


def setting_option(dotted: str, *decls: str, type: Any = None, more: str = "",  # noqa: A002
                   default_text: str = "the pipeline's", **kwargs):
    """The click option of setting `dotted`: `decls` (default `--key-name`, `--x/--no-x` for a switch), the
    declared type and choices (`type` overrides them where the CLI reads the value otherwise, e.g. a registry's
    names), the declaration's doc as help with `more` after it and `default_text` as its default; `kwargs` go
    to click."""
    f = declaration(dotted)
    name = dotted.split(".", 1)[1]
    flag = "--" + name.replace("_", "-")
    if not decls:
        decls = (f"{flag}/--no-{flag[2:]}",) if isinstance(f.default, bool) else (flag,)
    doc = f.metadata["doc"]
    text = doc[0].upper() + doc[1:] + "." + (f" {more}" if more else "")
    text += "" if kwargs.get("required") else f" [default: {default_text}]"
    kwargs.setdefault("type", type if type is not None else _type(f.default, f.metadata["choices"]))
    if isinstance(f.default, tuple):
        kwargs.setdefault("multiple", True)
    return click.option(*decls, cls=SettingOption, setting=dotted, default=None, help=text, **kwargs)


def setting_options(command: click.Command) -> list[SettingOption]:
    return [p for p in command.params if isinstance(p, SettingOption)]


def setting_values(ctx: click.Context) -> dict[str, dict[str, Any]]:
    """{section: {key: value}} of the setting flags given on the command line (lists for list settings)."""
    out: dict[str, dict[str, Any]] = {}
    for p in setting_options(ctx.command):
        value = ctx.params.get(p.name)
        if p.multiple:
            value = list(value) or None
        if value is not None:
            section, name = p.setting.split(".", 1)
            out.setdefault(section, {})[name] = value
    return out


def flags_of(command: click.Command | None) -> dict[str, str]:
    """{setting: the flag that sets it} of a command (its first spelling)."""
    return {} if command is None else {p.setting: p.opts[0] for p in setting_options(command)}
