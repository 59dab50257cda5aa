"""`aevlp report`: one table and plots across training runs."""
from __future__ import annotations

import click

from aevlp.cli.group import cli


@cli.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", default="report", type=click.Path(file_okay=False), help="Output folder.")
def report_cmd(run_dirs: tuple[str, ...], out: str) -> None:
    """One results table (markdown + CSV) and PNG plots across training runs.

    Example: aevlp report runs/voc-an runs/voc-gr runs/voc --out report/
    """
    from aevlp.report import write_report

    r = write_report(list(run_dirs), out)
    click.echo(r["markdown"])
    for kind, path in r["files"].items():
        click.echo(f"{kind:14s} {path}")
