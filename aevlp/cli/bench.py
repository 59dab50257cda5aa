"""`aevlp bench`: several methods × seeds on one pipeline, one comparison table."""
from __future__ import annotations

import click

from aevlp.cli.common import set_option
from aevlp.cli.group import cli
from aevlp.cli.setting_option import setting_option


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected integers separated by commas, e.g. 0,1,2") from None
    if not seeds:
        raise click.BadParameter("give at least one seed")
    return seeds


@cli.command("bench")
@click.argument("pipeline")
@click.argument("methods", nargs=-1, required=True)
@click.option("--seeds", default="0", show_default=True, help="Training seeds, comma-separated (e.g. 0,1,2).")
@setting_option("dataset.data_root", type=click.Path())
@click.option("--out", default="bench", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the runs (OUT/runs/METHOD-sSEED) and the table.")
@set_option
@click.option("--no-progress", is_flag=True)
def bench_cmd(pipeline, methods, seeds, data_root, out, overrides, no_progress) -> None:
    """Train METHODS on PIPELINE's cache with every seed and write one table (mean ± sd).

    \b
    METHODS are loss names (aevlp train --help lists them: an, an-ls, wan, iun, iu, epr, role, em,
    em-apl, vlpl, ll-r, ll-ct, ll-cp, boostlu, mime, smile, gr, gpr, ...) or the presets gpr-damp,
    gpr-global, gpr-rate, gpr-ts, gpr-ts-em, gpr-ts-best, gpr-ts-soft and full-labels. Stage one runs once; each
    run is an ordinary `aevlp run` (reused when current). Writes OUT/bench.md, bench.csv (mean ± sd
    per method, and the zero-shot teacher), bench_runs.csv (every run) and bench.png (bars with error
    bars).

    \b
    Examples:
      aevlp bench voc an role em-apl ll-r gr gpr-damp --data-root data/voc --seeds 0,1,2
      aevlp bench demo an gr gpr-damp full-labels --seeds 0,1,2 --out demo/bench
    """
    from aevlp.cli.common import interrupted
    from aevlp.tools.bench import run_bench, write_bench

    base = [f'dataset.data_root="{data_root}"'] if data_root else []
    with interrupted("finished runs are kept (an interrupted one resumes); the same command goes on from there"):
        runs = run_bench(pipeline, list(methods), _seeds(seeds), out=out, base=[*base, *overrides],
                         progress=not no_progress, echo=click.echo)
    rep = write_bench(runs, out)
    click.echo(rep["markdown"])
    for kind, path in rep["files"].items():
        click.echo(f"{kind:6s} {path}")
