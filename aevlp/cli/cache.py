"""`aevlp cache ...`: list, inspect, verify and clean stage-one caches."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from aevlp.cli.group import cli
from aevlp.errors import AevlpError


@cli.group("cache")
def cache_group() -> None:
    """List, inspect, verify and clean stage-one caches."""


@cache_group.command("ls")
@click.argument("folder", default="cache", type=click.Path(file_okay=False))
def cache_ls(folder: str) -> None:
    """A table of the caches in FOLDER. Example: aevlp cache ls cache/"""
    from aevlp.cache.admin import list_caches

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
    from aevlp.cache.admin import inspect_cache

    facts, table = inspect_cache(file)
    for key in ("file", "created"):
        click.echo(f"{key}: {facts[key]}")
    click.echo("fingerprint:")
    for k, v in facts["fingerprint"].items():
        click.echo(f"  {k:18s} {v}")
    click.echo(f"selection: {json.dumps(facts['selection'])}")
    click.echo(f"clip_preprocess: {json.dumps(facts['clip_preprocess'])}")
    click.echo("datasets: " + ", ".join(f"{k} {v} ({facts['sizes_mb'][k]} MB)" for k, v in facts["shapes"].items()))
    if facts["summary"]:
        click.echo("summary: " + ", ".join(f"{k} {v}" for k, v in facts["summary"].items()))
    click.echo(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    if csv_out:
        table.to_csv(csv_out, index=False)


@cache_group.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--data-root", default=None, type=click.Path(exists=True, file_okay=False),
              help="Also compare the class names and image ids with this dataset folder.")
def cache_verify(file: str, data_root: str | None) -> None:
    """Check everything in a cache: schema version, every dataset's dtype and shape against the
    fingerprint, finite values in range, the done mask, and the SHA-256 of every dataset and of the
    fingerprint written when it was finished. Exit 1 on a problem (docs/trust.md).

    Example: aevlp cache verify cache/voc.h5 --data-root data/voc
    """
    from aevlp.cache.admin import verify_cache

    problems = verify_cache(file, data_root)
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
    from aevlp.cache.admin import clean_candidates
    from aevlp.config import find_pipeline, load_config
    from aevlp.pseudolabel import plan_stage_one

    wanted = None
    if pipelines:
        wanted = []
        for p in pipelines:
            cfg = load_config(find_pipeline(p), **({"dataset": {"data_root": data_root}} if data_root else {}))
            plan = plan_stage_one(cfg)
            if plan.status == "up-to-date":
                wanted.append(plan.target)
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
    import shutil

    for path, _ in items:
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    click.echo(f"deleted {len(items)} files")


@cache_group.command("export")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--round", "rnd", type=int, default=0, show_default=True, help="Augmentation round to export.")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet", "npz", "label-studio", "fiftyone"]),
              default="csv", show_default=True)
@click.option("--out", default=None, type=click.Path(),
              help="Output file (label-studio: the tasks JSON; fiftyone: a folder) [default: beside FILE].")
def cache_export(file: str, rnd: int, fmt: str, out: str | None) -> None:
    """Pseudo-labels and DAMP scores per image, with image ids and class names, for training elsewhere or
    reviewing in Label Studio or FiftyOne (docs/cache.md has the one command that imports each).

    \b
    csv/parquet: image, unreadable, positives, negatives, pseudo:CLASS (1/0/-1), score:CLASS.
    npz: image_ids, classnames, pseudo [N, C], scores [N, C], bad [N].
    label-studio: tasks JSON (pseudo-positives as predictions with scores) + label_config.xml beside it;
      the reviewed export comes back with `aevlp data prepare table --reviewed EXPORT.json`.
    fiftyone: a FiftyOneImageClassificationDataset folder (labels.json, multilabel, with confidences).

    \b
    Examples:
      aevlp cache export cache/voc.h5 --round 0 --format csv --out voc_pseudo.csv
      aevlp cache export cache/voc.h5 --format label-studio --out out/ls/tasks.json
      aevlp cache export cache/voc.h5 --format fiftyone --out out/voc-fiftyone
    """
    from aevlp.cache.export import export_pseudo_labels

    suffix = {"label-studio": "tasks.json", "fiftyone": "fiftyone"}.get(fmt, fmt)
    target = out or f"{Path(file).with_suffix('')}.round{rnd}.{suffix}"
    click.echo(f"wrote {export_pseudo_labels(file, target, rnd=rnd, fmt=fmt)}")


@cache_group.command("gallery")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--class", "classname", default=None, help="One class: a PNG contact sheet [default: every class, "
                                                         "with an index.html].")
@click.option("--round", "rnd", type=int, default=0, show_default=True)
@click.option("--per-panel", type=int, default=24, show_default=True, help="At most this many images per panel.")
@click.option("--out", default=None, type=click.Path(), help="PNG (one class) or folder [default: out/gallery/].")
def cache_gallery(file: str, classname: str | None, rnd: int, per_panel: int, out: str | None) -> None:
    """Look at the pseudo-labels: the images given a class, with the tile that fired outlined in red.

    \b
    Beside them, where the cache holds the ground truth: the images wrongly given the class, and
    those that have it but were not pseudo-labelled. The image ids shown are listed in a JSON file
    next to each PNG.

    \b
    Examples:
      aevlp cache gallery demo/cache/fashion-mosaic.h5 --class sandal --out out/sandal.png
      aevlp cache gallery cache/voc.h5 --out out/gallery/      # every class + out/gallery/index.html
    """
    from aevlp.cache.export import RED_BOX, gallery, gallery_html

    if classname:
        g = gallery(file, classname, out or f"out/gallery/{classname}.png", rnd=rnd, per_panel=per_panel)
        for title, ids in g["panels"].items():
            click.echo(f"  {title}: {len(ids)} shown of {g['totals'][title]}")
        click.echo(f"  {RED_BOX.format(cls=classname)}")
        click.echo(f"wrote {g['png']}")
    else:
        click.echo(f"wrote {gallery_html(file, out or 'out/gallery', rnd=rnd, per_panel=per_panel)}")


@cache_group.command("thresholds")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--rule", type=click.Choice(["rate", "observed"]), default="rate", show_default=True,
              help="How θ_c is chosen from the observed positives (docs/method.md, per-class thresholds).")
@click.option("--config", default=None, metavar="PIPELINE",
              help="The [damp] settings to score with [default: the pipeline the cache was made with].")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Write the CSV (class,threshold,...) that damp.class_thresholds reads [default: none].")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a [damp] or [loss] key, e.g. --set damp.min_auc=0.8 (repeatable).")
def cache_thresholds(file: str, rule: str, config: str | None, out: str | None, overrides: tuple[str, ...]) -> None:
    """Per-class thresholds θ_c from the observed positives: per class the suggested θ_c, how many training
    images it and the global θ make positive, and their precision/recall where full labels exist.

    \b
    A class whose observed positives the teacher does not rank above its unknown entries (AUC below
    damp.min_auc) gets θ_c = 1.01: no pseudo-positives, GR's loss for it.

    \b
    Examples:
      aevlp cache thresholds demo/cache/fashion-mosaic.h5
      aevlp cache thresholds cache/voc.h5 --out out/voc_thresholds.csv
      aevlp train --pseudo cache/voc.h5 --set damp.class_thresholds='"out/voc_thresholds.csv"'
    """
    from aevlp.cache import Cache
    from aevlp.class_report import cache_expected_positives, class_scores, threshold_table
    from aevlp.config import find_pipeline, load_config
    from aevlp.labeler import PseudoLabeler
    from aevlp.specs import Specs
    from aevlp.thresholds import write_thresholds

    with Cache(file) as c:
        pipeline = config or c.pipeline_file()
        cfg = load_config(find_pipeline(pipeline) if pipeline else None,
                          [*overrides, f'damp.class_thresholds="{rule}"'],
                          dataset={"name": c.fingerprint.get("dataset")})
        specs = Specs.of(cfg)
        expected = cache_expected_positives(c, specs.loss["expected_pos"])
        scores = class_scores(PseudoLabeler(c, specs.damp, c.array("observed"), expected))
    table = threshold_table(scores, specs.damp.threshold)
    click.echo(table.to_string(index=False))
    off = int((scores.thresholds > 1).sum())
    click.echo(f"rule {rule}, expected positives per image {expected:g}, global θ {specs.damp.threshold:g}"
               + (f"; {off} class(es) without pseudo-positives (teacher unreliable)" if off else ""))
    if out:
        click.echo(f"wrote {write_thresholds(out, scores.classnames, scores.thresholds, scores.rule_table)}")
