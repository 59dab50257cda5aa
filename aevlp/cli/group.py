"""The `aevlp` click group and entry point; every command module adds itself to `cli`."""
from __future__ import annotations

import logging
import sys

import click

from aevlp import __version__
from aevlp.cli.hints import HintFilter, for_command
from aevlp.errors import PLAIN_LOGS, AevlpError

__all__ = ["AevlpGroup", "AevlpCommand", "cli", "main"]

RUNNING = HintFilter()  # the command being run: its flags are what messages and hints name


class AevlpCommand(click.Command):
    """A command that makes itself the one whose flags messages, hints and warnings name."""

    def invoke(self, ctx: click.Context):
        RUNNING.command, RUNNING.path = self, ctx.command_path
        return super().invoke(ctx)


class AevlpGroup(click.Group):
    """Prints user errors as one line plus a hint, naming the running command's own flags; `--debug`
    shows the traceback instead."""

    command_class = AevlpCommand
    group_class = type  # subgroups are AevlpGroups too

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AevlpError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            command, path = RUNNING.command, RUNNING.path
            click.secho(f"error: {for_command(e.raw_message, command, path, 'message')}", fg="red", err=True)
            if e.raw_hint:
                click.echo(f"  hint: {for_command(e.raw_hint, command, path)}", err=True)
            sys.exit(2)
        finally:
            if ctx.parent is None:  # the command is over: library use afterwards (a notebook, a test) is not it
                RUNNING.command = None


@click.group(cls=AevlpGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="aevlp")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.option("-v", "--verbose", is_flag=True, help="Log more detail (INFO level).")
@click.option("--block-mb", type=float, default=64, envvar="AEVLP_BLOCK_MB", show_envvar=True,
              help="Memory (MB) a block of rows may take where a command reads every row of a cache (labels, "
                   "thresholds, verify, exports, review): lower bounds the peak, higher reads in fewer pieces.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool, block_mb: float) -> None:
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
    from aevlp.cache.reader import set_block_mb

    set_block_mb(block_mb)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    if RUNNING not in logging.getLogger("aevlp").filters:
        logging.getLogger("aevlp").removeFilter(PLAIN_LOGS)  # the running command renders them instead
        logging.getLogger("aevlp").addFilter(RUNNING)


def main() -> None:
    cli(prog_name="aevlp")
