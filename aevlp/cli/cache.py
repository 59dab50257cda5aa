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


def label_options(f):
    """--config, --set and --run: the settings (and student) the labels are selected with, as training would."""
    f = click.option("--run", "run_dir", default=None, type=click.Path(exists=True, file_okay=False),
                     help="Select as this training run did: its settings and its student (GPR-TS) [default: the "
                          "pipeline the cache was made with, no student].")(f)
    f = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                     help="Override a setting, e.g. --set damp.threshold=0.4 (repeatable).")(f)
    return click.option("--config", default=None, metavar="PIPELINE",
                        help="The pipeline whose settings select the labels [default: the cache's own].")(f)


def label_settings(file: str, config: str | None, overrides: tuple[str, ...], run_dir: str | None) -> tuple[dict, str]:
    """(config, student source) the labels of cache FILE are selected with (`label_options`)."""
    from aevlp.cache import Cache, fingerprint_id
    from aevlp.config import apply_overrides, config_for_cache

    with Cache(file) as c:
        if not run_dir:
            return config_for_cache(c, config, overrides), ""
        if config:
            raise AevlpError("--run and --config both name settings", hint="pass one of them")
        from aevlp.stage_two.refine import run_selection
        from aevlp.stage_two.run_folder import RunFolder

        cfg, student = run_selection(run_dir)
        made = (RunFolder(run_dir).results() or {}).get("cache_fingerprint")
        if made != fingerprint_id(c.fingerprint):
            raise AevlpError(f"{run_dir} was not trained from {file}" + ("" if made else " (it has no results.json)"),
                             hint="pass the cache the run was trained from, or a run of this cache")
        return apply_overrides(cfg, overrides), student


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
    from aevlp.stage_one.pseudolabel import plan_stage_one

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
@label_options
def cache_export(file: str, rnd: int, fmt: str, out: str | None, config: str | None, overrides: tuple[str, ...],
                 run_dir: str | None) -> None:
    """Pseudo-labels and their scores per image, with image ids and class names, for training elsewhere or
    reviewing in Label Studio or FiftyOne (docs/cache.md has the one command that imports each).

    \b
    The labels are those a training run selects in that round (epoch e reads round (e-1) mod R) with the
    same settings: the cache's pipeline, --config/--set, or --run RUN (its settings and its student). What
    they were selected with is written beside them (OUT.provenance.json; a folder: provenance.json inside).

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
      aevlp cache export cache/table.h5 --run runs/table-gpr-... --format label-studio   # what that run trained on
    """
    from aevlp.cache.export import export_pseudo_labels

    cfg, student = label_settings(file, config, overrides, run_dir)
    suffix = {"label-studio": "tasks.json", "fiftyone": "fiftyone"}.get(fmt, fmt)
    target = out or f"{Path(file).with_suffix('')}.round{rnd}.{suffix}"
    click.echo(f"wrote {export_pseudo_labels(file, target, rnd=rnd, fmt=fmt, cfg=cfg, student=student)}")


@cache_group.command("gallery")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--class", "classname", default=None, help="One class: a PNG contact sheet [default: every class, "
                                                         "with an index.html].")
@click.option("--round", "rnd", type=int, default=0, show_default=True)
@click.option("--per-panel", type=int, default=24, show_default=True, help="At most this many images per panel.")
@click.option("--out", default=None, type=click.Path(), help="PNG (one class) or folder [default: out/gallery/].")
@label_options
def cache_gallery(file: str, classname: str | None, rnd: int, per_panel: int, out: str | None, config: str | None,
                  overrides: tuple[str, ...], run_dir: str | None) -> None:
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

    cfg, student = label_settings(file, config, overrides, run_dir)
    if classname:
        g = gallery(file, classname, out or f"out/gallery/{classname}.png", rnd=rnd, per_panel=per_panel, cfg=cfg,
                    student=student)
        for title, ids in g["panels"].items():
            click.echo(f"  {title}: {len(ids)} shown of {g['totals'][title]}")
        click.echo(f"  {RED_BOX.format(cls=classname)}")
        click.echo(f"wrote {g['png']}")
    else:
        page = gallery_html(file, out or "out/gallery", rnd=rnd, per_panel=per_panel, cfg=cfg, student=student)
        click.echo(f"wrote {page}")


@cache_group.command("thresholds")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--rule", type=click.Choice(["rate", "observed"]), default="rate", show_default=True,
              help="How θ_c is chosen from the observed positives (docs/method.md, per-class thresholds).")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Write the CSV (class,threshold,...) that damp.class_thresholds reads [default: none].")
@label_options
def cache_thresholds(file: str, rule: str, out: str | None, config: str | None, overrides: tuple[str, ...],
                     run_dir: str | None) -> None:
    """Per-class thresholds θ_c from the observed positives: per class the positives it hides among its unknown
    entries (and where that number comes from; the truth beside it where full labels exist), the suggested θ_c,
    how many training images it and the global θ make positive, and their precision/recall where full labels
    exist.

    \b
    The hidden positives come from E where it is known (loss.expected_pos, the dataset's published value, the
    full training labels), from a fully labelled val split, or are estimated from the scores (damp.prior: a
    student's on the val rows with --run of a GPR-TS run, else the teacher's). A class whose observed positives
    the teacher does not rank above its unknown entries (AUC below damp.min_auc) gets θ_c = 1.01: no
    pseudo-positives, GR's loss for it.

    \b
    Examples:
      aevlp cache thresholds demo/cache/fashion-mosaic.h5
      aevlp cache thresholds cache/voc.h5 --out out/voc_thresholds.csv
      aevlp cache thresholds cache/table.h5 --run runs/table-gpr-...    # as that run selected (its student)
      aevlp train --pseudo cache/voc.h5 --set damp.class_thresholds='"out/voc_thresholds.csv"'
    """
    from aevlp.cache import Cache
    from aevlp.config import updated
    from aevlp.specs import Specs
    from aevlp.stage_two.class_report import class_scores, threshold_table
    from aevlp.stage_two.labeler import labeler_for
    from aevlp.stage_two.thresholds import write_thresholds

    cfg, student = label_settings(file, config, overrides, run_dir)
    cfg = updated(cfg, {"damp": {"class_thresholds": rule}})
    with Cache(file) as c:
        lab = labeler_for(c, cfg, student=student)
        scores = class_scores(lab)
    theta = Specs.of(cfg).damp.threshold
    table = threshold_table(scores, theta)
    click.echo(table.to_string(index=False))
    off = int((scores.thresholds > 1).sum())
    click.echo(f"rule {rule}; expected positives per image E = {lab.expected.value:.3g} ({lab.expected.source}); "
               f"global θ {theta:g}" + (f"; {off} class(es) without pseudo-positives (teacher unreliable)" if off
                                        else ""))
    if out:
        click.echo(f"wrote {write_thresholds(out, scores.classnames, scores.thresholds, table)}")
