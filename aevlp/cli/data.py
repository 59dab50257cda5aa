"""`aevlp data ...`: prepare benchmarks and your own data in the SPML layout, and inspect them."""
from __future__ import annotations

import json

import click

from aevlp.cli.group import cli
from aevlp.cli.setting_option import setting_option


def _print_summary(summary: dict) -> None:
    for key, value in summary.items():
        click.echo(f"  {key:34s} {value}")
    for key, value in summary.items():
        if "without_positive" in key and value:
            click.secho(f"  note: {value} rows reported under '{key}'", fg="yellow")


@cli.group()
def data() -> None:
    """Prepare and inspect datasets (SPML layout: formatted_*.npy files)."""


@data.group()
def prepare() -> None:
    """Turn a raw download (or your CSV) into the SPML layout.

    \b
    Examples:
      aevlp data prepare voc  --raw ~/VOCdevkit --out data/voc
      aevlp data prepare coco --raw ~/coco --out data/coco
      aevlp data prepare cub  --raw ~/CUB_200_2011 --out data/cub
      aevlp data prepare table --csv tags.csv --images photos/ --out data/mine

    NUS-WIDE is distributed already formatted: see docs/datasets.md.
    """


_raw = click.option("--raw", required=True, type=click.Path(exists=True, file_okay=False),
                    help="Folder of the unpacked official download.")
_out = click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (SPML layout).")


@prepare.command("voc")
@_raw
@_out
@click.option("--source", type=click.Choice(["auto", "lists", "xml"]), default="auto",
              help="Read labels from ImageSets/Main per-class lists or from Annotations/*.xml.")
def prepare_voc_cmd(raw: str, out: str, source: str) -> None:
    """PASCAL VOC 2012 (20 classes). Example: aevlp data prepare voc --raw VOCdevkit --out data/voc"""
    from aevlp.data.voc import prepare_voc

    _print_summary(prepare_voc(raw, out, source=source))


@prepare.command("coco")
@_raw
@_out
@click.option("--year", default="2014", help="Annotation year: reads annotations/instances_{train,val}YEAR.json.")
def prepare_coco_cmd(raw: str, out: str, year: str) -> None:
    """MS-COCO (80 classes). Example: aevlp data prepare coco --raw ~/coco --out data/coco"""
    from aevlp.data.coco import prepare_coco

    _print_summary(prepare_coco(raw, out, year=year))


@prepare.command("cub")
@_raw
@_out
def prepare_cub_cmd(raw: str, out: str) -> None:
    """CUB-200-2011 attributes (312 labels). Example: aevlp data prepare cub --raw ~/CUB --out data/cub"""
    from aevlp.data.cub import prepare_cub

    _print_summary(prepare_cub(raw, out))


@prepare.command("table")
@click.option("--csv", "csv_path", required=True, type=click.Path(dir_okay=False), help="CSV, one row per image.")
@click.option("--images", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder the CSV's image paths are relative to.")
@_out
@click.option("--image-col", default=None, help="Image path column [default: image/path/file/filename].")
@click.option("--labels-col", default="labels", help="Column of tag names joined by --sep.")
@click.option("--sep", default="|", help="Separator inside the labels column.")
@click.option("--test-frac", default=0.2, type=float, help="Test fraction when the CSV has no 'split' column.")
@click.option("--seed", default=0, type=int, help="Seed of that train/test draw.")
@click.option("--observed-only", is_flag=True,
              help="The training rows' labels are only what is known (one tag, or a few positives), as real "
                   "single-positive data is; test (and val) rows carry full labels.")
@click.option("--allow-outside-images", is_flag=True,
              help="Accept image paths that resolve outside --images (absolute paths, ../).")
@click.option("--reviewed", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A Label Studio JSON export of the tasks `aevlp cache export --format label-studio` wrote: each "
                   "annotated training image's chosen classes become observed positives, the others negatives.")
def prepare_table_cmd(csv_path: str, images: str, out: str, image_col: str | None, labels_col: str,
                      sep: str, test_frac: float, seed: int, observed_only: bool, allow_outside_images: bool,
                      reviewed: str | None) -> None:
    """Your own images from a CSV.

    \b
    Either a labels column:      image,labels            or 0/1 columns:  image,cat,dog
                                 a.jpg,cat|dog                            a.jpg,1,1
    An optional 'split' column: train, test (the held-out test split, full labels) and, if you
    have one, val (a fully labelled validation split for early stopping; otherwise a seeded 20 %
    of the train rows is held out as val).

    \b
    Examples:
      aevlp data prepare table --csv tags.csv --images photos/ --out data/mine
      aevlp data prepare table --csv one_tag_each.csv --images photos/ --out data/mine --observed-only
      aevlp data prepare table --csv tags.csv --images photos/ --out data/mine --reviewed ls-export.json
    """
    from aevlp.data.table import prepare_table

    _print_summary(prepare_table(csv_path, images, out, image_col=image_col, labels_col=labels_col, sep=sep,
                                 test_frac=test_frac, seed=seed, observed_only=observed_only,
                                 allow_outside_images=allow_outside_images, reviewed=reviewed))


@data.command("info")
@setting_option("dataset.name", "--dataset", required=True)
@setting_option("dataset.data_root", type=click.Path(), required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--check-images/--no-check-images", default=True, show_default=True,
              help="Open every image's header (missing, empty or unreadable files are listed; exit 1).")
def info_cmd(dataset: str, data_root: str, as_json: bool, check_images: bool) -> None:
    """Validate a prepared dataset and print its splits; exit 1 listing any missing, empty or unreadable image.

    Example: aevlp data info --dataset voc --data-root data/voc
    """
    from aevlp.data import image_problems, load_dataset

    d = load_dataset(dataset, data_root)
    out = {"dataset": d.info.name, "classes": d.num_classes, "image_root": str(d.image_root),
           **{f"{s}_images": len(d.split(s)) for s in ("train", "val", "test")},
           "train_labels": "full" if d.train_labels_known else "observed only",
           "val_labels": d.val_labels if d.val_labels == "full" else "observed (a proxy: no fully labelled val)",
           "mean_positives_train": round(float(d.train.labels.sum(1).mean()), 3) if len(d.train) else 0.0, **d.report}
    problems = []
    if check_images:
        paths = [p for s in ("train", "val", "test") for p in d.split(s).images]
        problems = image_problems(d.image_root, paths, progress=not as_json)
        out["image_problems"] = len(problems)
    if as_json:
        click.echo(json.dumps({**out, "problems": problems}, indent=1))
    else:
        _print_summary(out)
        for p in problems[:50]:
            click.secho(f"  bad image: {p}", fg="red")
        if len(problems) > 50:
            click.echo(f"  ... and {len(problems) - 50} more")
    if problems:
        raise SystemExit(1)


@data.command("ls")
def ls_cmd() -> None:
    """List the datasets aevlp knows, with their aliases."""
    from aevlp.data.registry import DATASETS

    rows = [(name, info.description, ", ".join(info.aliases) or "-") for name, info in DATASETS.items()]
    widths = [max(len(r[i]) for r in rows + [("dataset", "description", "aliases")]) for i in range(3)]
    for row in [("dataset", "description", "aliases"), *rows]:
        click.echo("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
