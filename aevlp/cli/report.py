"""`aevlp report`: one table and plots across training runs."""
from __future__ import annotations

import click

from aevlp.cli.group import cli


@cli.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", default="report", type=click.Path(file_okay=False), help="Output folder.")
@click.option("--compare", nargs=2, default=None, metavar="RUN_A RUN_B",
              help="The two runs of per_class_ap.png [default: the best GPR+DAMP run vs the best other "
                   "single-positive run].")
def report_cmd(run_dirs: tuple[str, ...], out: str, compare: tuple[str, str] | None) -> None:
    """One results table (markdown + CSV) and PNG plots across training runs.

    \b
    The table: test mAP, micro mAP, CF1 and OF1 at 0.5, val mAP, pseudo-label quality; the zero-shot
    teacher (the CLIP model's own test mAP, from the cache) is a row. Plots: per-class AP of two
    runs, pseudo-label precision/recall per class, val mAP and loss per epoch.

    Example: aevlp report runs/voc-an runs/voc-gr runs/voc --out report/
    """
    from aevlp.tools.report import write_report

    r = write_report(list(run_dirs), out, compare)
    for note in r["notes"]:
        click.secho(f"note: {note}", fg="yellow", err=True)
    click.echo(r["markdown"])
    for kind, path in r["files"].items():
        click.echo(f"{kind:14s} {path}")
