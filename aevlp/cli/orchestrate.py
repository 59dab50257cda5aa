"""`aevlp run`, `aevlp cache ...`, `aevlp report`: both stages together, caches, results."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from aevlp.cli import cli
from aevlp.cli.common import set_option
from aevlp.errors import AevlpError


@cli.command("run")
@click.argument("pipeline")
@click.option("--data-root", default=None, type=click.Path(), help="SPML-layout folder (overrides dataset.data_root).")
@set_option
@click.option("--dry-run", is_flag=True, help="Only say which stages would run and why (like make -n).")
@click.option("--force-stage", type=click.Choice(["pseudolabel", "train"]), default=None,
              help="Run this stage even if it is up to date (forcing pseudolabel re-trains too).")
@click.option("--limit", type=int, default=None, help="Only the first N training images.")
@click.option("--no-progress", is_flag=True)
def run_cmd(pipeline, data_root, overrides, dry_run, force_stage, limit, no_progress) -> None:
    """Run a pipeline: stage one if its cache is missing or stale, then stage two if stale.

    \b
    Changing a [damp], [loss] or [train] key re-trains without touching CLIP; changing the CLIP
    model, prompts, grid or rounds recomputes the cache first. The training run goes to
    runs/PIPELINE-NAME (train.out).

    \b
    Examples:
      aevlp run pipelines/voc.toml --data-root data/voc --dry-run
      aevlp run voc --data-root data/voc
      aevlp run voc --data-root data/voc --set damp.threshold=0.4     # re-trains only
    """
    from aevlp.config import find_pipeline, load_config
    from aevlp.run import plan_pipeline, run_pipeline

    path = find_pipeline(pipeline)
    extra = {"dataset": {"data_root": data_root}} if data_root else {}
    cfg = load_config(path, overrides, **extra)
    name = path.stem
    if dry_run:
        for plan in plan_pipeline(cfg, name, force_stage=force_stage, limit=limit):
            click.echo(f"{plan.stage}: {'would run' if plan.run else 'up to date'} - {plan.reason}")
            for line in plan.details:
                click.echo(f"    {line}")
        return
    r = run_pipeline(cfg, name, force_stage=force_stage, limit=limit, progress=not no_progress, echo=click.echo)
    click.echo(f"test mAP {r['test_map']:.2f}  (val mAP {r['val_map']:.2f}, best epoch {r['best_epoch']}); "
               f"run directory {r['run_dir']}")


@cli.group("cache")
def cache_group() -> None:
    """List, inspect, verify and clean stage-one caches."""


@cache_group.command("ls")
@click.argument("folder", default="cache", type=click.Path(file_okay=False))
def cache_ls(folder: str) -> None:
    """A table of the caches in FOLDER. Example: aevlp cache ls cache/"""
    from aevlp.cachetools import list_caches

    if not Path(folder).is_dir():
        raise AevlpError(f"{folder} is not a folder")
    df = list_caches(folder)
    click.echo(df.to_string(index=False) if len(df) else f"no caches in {folder}")


@cache_group.command("inspect")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--csv", "csv_out", default=None, type=click.Path(dir_okay=False), help="Write the per-class table.")
def cache_inspect(file: str, csv_out: str | None) -> None:
    """Fingerprint, shapes and per-class pseudo-label counts (and precision/recall where ground truth is stored).

    Example: aevlp cache inspect cache/voc.h5
    """
    from aevlp.cachetools import inspect_cache

    facts, table = inspect_cache(file)
    for key in ("file", "created"):
        click.echo(f"{key}: {facts[key]}")
    click.echo("fingerprint:")
    for k, v in facts["fingerprint"].items():
        click.echo(f"  {k:18s} {v}")
    click.echo(f"selection: {json.dumps(facts['selection'])}")
    click.echo("shapes: " + ", ".join(f"{k} {v}" for k, v in facts["shapes"].items()))
    if facts["summary"]:
        click.echo("summary: " + ", ".join(f"{k} {v}" for k, v in facts["summary"].items()))
    click.echo(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    if csv_out:
        table.to_csv(csv_out, index=False)


@cache_group.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def cache_verify(file: str) -> None:
    """Check a cache: complete flag, shapes, NaN/inf, done mask, fingerprint. Exit 1 on a problem.

    Example: aevlp cache verify cache/voc.h5
    """
    from aevlp.cachetools import verify_cache

    problems = verify_cache(file)
    if problems:
        for p in problems:
            click.secho(f"FAIL {file}: {p}", fg="red")
        raise SystemExit(1)
    click.echo(f"OK {file}")


@cache_group.command("clean")
@click.argument("folder", default="cache", type=click.Path(file_okay=False))
@click.option("--stale-for", "pipelines", multiple=True, metavar="PIPELINE",
              help="Also remove complete caches none of these pipelines wants (repeatable).")
@click.option("--data-root", default=None, type=click.Path(), help="Data root for --stale-for pipelines.")
@click.option("--yes", is_flag=True, help="Delete without asking.")
def cache_clean(folder: str, pipelines: tuple[str, ...], data_root: str | None, yes: bool) -> None:
    """Remove unfinished runs, stale locks and (with --stale-for) caches no pipeline wants.

    A complete cache that one of the given pipelines still wants is never removed; nothing is
    removed without confirmation (or --yes).

    Example: aevlp cache clean cache/ --stale-for voc --data-root data/voc
    """
    from aevlp.cachetools import clean_candidates
    from aevlp.config import find_pipeline, load_config
    from aevlp.pseudolabel import plan_stage_one

    wanted = None
    if pipelines:
        wanted = []
        for p in pipelines:
            cfg = load_config(find_pipeline(p), **({"dataset": {"data_root": data_root}} if data_root else {}))
            plan = plan_stage_one(cfg)
            if plan["status"] == "up-to-date":
                wanted.append(plan["target"])
    items = clean_candidates(folder, wanted)
    if not items:
        click.echo(f"nothing to clean in {folder}")
        return
    for path, why in items:
        click.echo(f"  {path}  ({why})")
    if not yes:
        if not sys.stdin or not sys.stdin.isatty():
            click.echo("not deleting: pass --yes to delete these files")
            return
        if not click.confirm(f"delete these {len(items)} files?"):
            return
    for path, _ in items:
        path.unlink(missing_ok=True)
    click.echo(f"deleted {len(items)} files")


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
