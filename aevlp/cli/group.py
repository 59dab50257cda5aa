"""The `aevlp` click group and entry point; every command module adds itself to `cli`."""
from __future__ import annotations

import logging
import sys

import click

from aevlp import __version__
from aevlp.errors import AevlpError

__all__ = ["AevlpGroup", "cli", "main"]


class AevlpGroup(click.Group):
    """Prints user errors as one line plus a hint; `--debug` shows the traceback instead."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AevlpError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.secho(f"error: {e.message}", fg="red", err=True)
            if e.hint:
                click.echo(f"  hint: {e.hint}", err=True)
            sys.exit(2)


@click.group(cls=AevlpGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="aevlp")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.option("-v", "--verbose", is_flag=True, help="Log more detail (INFO level).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """aevlp: vision-language pseudo-labels (DAMP) + GPR Loss for single-positive multi-label learning.

    \b
    Stage one  `aevlp pseudolabel`  CLIP scores DAMP views into an HDF5 cache
    Stage two  `aevlp train`        a classifier trained with GPR Loss from that cache
    Both       `aevlp run PIPELINE` each stage only when stale (like make)
    Data       `aevlp data prepare` raw VOC/COCO/CUB downloads or your CSV -> SPML layout
    Try it     `aevlp demo`         the whole pipeline offline on a toy world

    \b
    Example:
      aevlp data prepare voc --raw ~/VOCdevkit --out data/voc
      aevlp run voc --data-root data/voc
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s")


def main() -> None:
    cli(prog_name="aevlp")
