"""`aevlp clip ...`: what CLIP models open_clip knows, and what a choice would build."""
from __future__ import annotations

import json

import click

from aevlp.cli.group import cli


@cli.group("clip")
def clip_group() -> None:
    """Inspect the CLIP models open_clip knows."""


@clip_group.command("ls")
@click.option("--arch", default=None, help="Only this architecture (substring match).")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def clip_ls(arch: str | None, as_json: bool) -> None:
    """List architectures and their pretrained tags (any pair works with --clip/--pretrained).

    Example: aevlp clip ls --arch ViT-B-16
    """
    import open_clip

    tags: dict[str, list[str]] = {}
    for a, t in open_clip.list_pretrained():
        tags.setdefault(a, []).append(t)
    rows = {a: tags.get(a, []) for a in open_clip.list_models() if not arch or arch.lower() in a.lower()}
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for a, ts in rows.items():
        click.echo(f"{a:40s} {', '.join(ts) if ts else '(no pretrained tags: pass a local weights file)'}")
