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


@clip_group.command("info")
@click.argument("arch", required=False, default="")
@click.option("--pretrained", default="", help="A tag, a local weights file, an HF-layout folder or hf-hub:ORG/NAME.")
@click.option("--pretrained-cfg", default="", metavar="TAG",
              help="For a weights file: the tag whose settings (QuickGELU, preprocessing) it carries.")
@click.option("--clip-config", default="", type=click.Path(dir_okay=False), help="Local model-config JSON.")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def clip_info(arch: str, pretrained: str, pretrained_cfg: str, clip_config: str, as_json: bool) -> None:
    """What stage one would build for a CLIP choice, without downloading anything.

    \b
    Activation (QuickGELU or GELU), embedding size, input size, preprocessing (mean, std,
    interpolation, resize mode), tokenizer, and whether the weights are already on this machine.

    \b
    Examples:
      aevlp clip info ViT-B-16 --pretrained openai            # QuickGELU, CLIP statistics
      aevlp clip info ViT-B-16-SigLIP --pretrained webli --json   # mean = std = 0.5
      aevlp clip info --pretrained ~/ckpt/my-clip-folder      # an HF-layout folder needs no ARCH
      aevlp clip info ViT-B-32 --pretrained vitb32.pt --pretrained-cfg openai
    """
    from aevlp.errors import AevlpError
    from aevlp.stage_one.clip_source import resolve_clip

    if not arch and not pretrained:
        raise AevlpError("name a CLIP", hint="aevlp clip info ARCH [--pretrained TAG|FILE|DIR|hf-hub:NAME]")
    info = resolve_clip(arch, pretrained, config=clip_config, pretrained_cfg=pretrained_cfg).describe()
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    for key, value in info.items():
        click.echo(f"  {key:14s} {value}")
