"""`aevlp train`, `aevlp eval`, `aevlp predict`: stage two from the command line."""
from __future__ import annotations

from pathlib import Path

import click

from aevlp.cli.common import RegistryChoice, check_limit, config_option, inference_options, resolve, set_option
from aevlp.cli.group import cli
from aevlp.cli.setting_option import flags_of, setting_option, setting_values
from aevlp.data.registry import DATASETS
from aevlp.errors import AevlpError


def loss_presets() -> dict[str, str]:
    """The bench's method names that are a loss plus other settings, spelled as `aevlp train` flags."""
    from aevlp.config import _parse_value
    from aevlp.tools.bench import PRESETS

    flags = flags_of(train_cmd)  # setting -> train's flag

    def flag(override: str) -> str:
        k, v = override.split("=", 1)
        return f"{flags[k]} {_parse_value(v)}" if k in flags else f"--set {override}"
    return {name: " ".join(flag(o) for o in overrides) for name, (_, overrides) in PRESETS.items()}


def _cache_info(path: str) -> tuple[str | None, dict, str | None]:
    """Dataset name, what stage one recorded (data root, limit) and its pipeline file, so `--pseudo` alone is
    enough."""
    from aevlp.cache import Cache

    with Cache(path) as c:
        return c.fingerprint.get("dataset"), c.info, c.pipeline_file()


@cli.command("train")
@setting_option("cache.path", "--pseudo", "--cache", "cache", type=click.Path(dir_okay=False),
                default_text="cache/DATASET.h5")
@setting_option("dataset.name", "--dataset", type=RegistryChoice(DATASETS), default_text="the cache's")
@setting_option("dataset.data_root", type=click.Path(), default_text="the cache's")
@config_option
@setting_option("loss.name", "--loss", type=RegistryChoice("aevlp.losses:LOSSES", also=loss_presets))
@setting_option("train.backbone", type=RegistryChoice("aevlp.stage_two.models:BACKBONES"))
@setting_option("train.weights")
@setting_option("train.labels")
@setting_option("damp.source", "--damp-source")
@setting_option("train.recipe")
@setting_option("train.recipe_as")
@setting_option("train.select")
@setting_option("train.epochs")
@setting_option("train.batch_size")
@setting_option("train.lr")
@setting_option("train.image_size")
@setting_option("train.seed")
@setting_option("train.device")
@setting_option("train.workers")
@setting_option("train.image_cache")
@click.option("--run-dir", default=None, type=click.Path(file_okay=False), help="Output folder [default: runs/...].")
@click.option("--resume", default=None, type=click.Path(exists=True, file_okay=False),
              help="Continue an interrupted run directory from its last finished epoch (with its settings; "
                   "--epochs N trains on to N, --workers changes the loader).")
@click.option("--force", is_flag=True, help="Replace a finished (or interrupted) run in --run-dir.")
@click.option("--dry-run", is_flag=True, help="Print what the run would do (its plan: settings, student, E, model "
                                              "selection, run folder) and stop.")
@click.option("--limit", type=int, default=None, callback=check_limit,
              help="Only the first N training images (match stage one's).")
@click.option("--no-progress", is_flag=True)
@set_option
@click.pass_context
def train_cmd(ctx, cache, dataset, data_root, config, run_dir, resume, force, dry_run, limit, no_progress, overrides,
              **_settings) -> None:
    """Stage two: train a multi-label classifier with GPR Loss (or a baseline) from a stage-one cache.

    \b
    Pseudo-labels are rebuilt every epoch from the cached CLIP similarities with the [damp]
    parameters (epoch e reads round (e-1) mod R), so no CLIP model is loaded. Writes RUN_DIR/config.toml,
    metrics.jsonl, results.json, per_class_ap.csv, best.pt (and last.pt, for --resume).
    Without --config, the settings are those of the pipeline the cache was made with.

    \b
    Examples:
      aevlp train --pseudo cache/voc.h5
      aevlp train --pseudo cache/voc.h5 --loss an --run-dir runs/voc-an
      aevlp train --pseudo cache/voc.h5 --labels full --loss bce-full      # upper bound
      aevlp train --pseudo cache/voc.h5 --loss em-apl --recipe official    # as Zhou et al. trained it
      aevlp train --pseudo cache/voc.h5 --set damp.threshold=0.4           # re-tuned selection, no CLIP
      aevlp train --pseudo cache/coco.h5 --image-cache                      # decode the JPEGs once, for all runs
      aevlp train --resume runs/voc-gpr-20261124-101500
      aevlp train --pseudo cache/table.h5 --dry-run                         # what it would do, and why
      torchrun --nproc-per-node 4 -m aevlp train --pseudo cache/nus.h5      # DDP, global batch kept
    """
    from aevlp import distributed
    from aevlp.stage_two.refine import taught
    from aevlp.stage_two.train import TrainingInterrupted

    flags = setting_values(ctx)
    for section in ("cache", "dataset"):  # the cache and its data root are read before the pipeline
        flags.pop(section, None)
    cfg, limit = _train_config(cache, dataset, data_root, config, resume, limit, overrides, flags)
    run_dir = resume or run_dir
    explicit = tuple(o.split("=", 1)[0].strip() for o in overrides)
    if dry_run:
        from aevlp.stage_two.plan import plan_stage_two

        plan = plan_stage_two(cfg, run_dir=run_dir, resume=bool(resume), force=force, limit=limit, explicit=explicit,
                              dry=True)
        for line in plan.lines():
            click.echo(line)
        return

    try:
        r = taught(cfg, run_dir=run_dir, explicit=explicit, resume=bool(resume), limit=limit, force=force,
                      progress=not no_progress, echo=click.echo)
    except TrainingInterrupted as e:
        click.secho(interrupted_message(e), fg="yellow", err=True)
        raise SystemExit(130) from None
    except KeyboardInterrupt:
        click.secho("interrupted before training started: nothing was saved", fg="yellow", err=True)
        raise SystemExit(130) from None
    finally:
        distributed.cleanup()
    if "test_map" not in r:  # a torchrun rank other than 0
        return
    if r.get("stop_reason"):
        click.echo(r["stop_reason"])
    click.echo(f"test mAP {r['test_map']:.2f}  (val mAP {r['val_map']:.2f} at epoch {r['best_epoch']})")
    click.echo(f"run directory: {r['run_dir']}")


def _finite(value: float) -> float:
    """click's FloatRange lets NaN through (every comparison with it is false)."""
    if value != value:
        raise click.BadParameter("nan is not a probability: give a number in [0, 1]")
    return value


def _train_config(cache, dataset, data_root, config, resume, limit, overrides, flags) -> tuple[dict, int | None]:
    """(config, limit) of a new run (the cache's pipeline, dataset and data root unless given) or of a resumed
    one (its own config.toml; another --pseudo is refused; a flag or --set that changes a setting is checked
    by run_train)."""
    from aevlp.config import load_config

    if resume:
        cfg = load_config(Path(resume) / "config.toml", overrides, **flags)
        own = cfg["cache"]["path"]
        if cache and (not own or Path(cache).resolve() != Path(own).resolve()):
            raise AevlpError(f"--pseudo {cache}: {resume} was trained from {own or 'another cache'}; a resume goes "
                             "on with its own cache", hint="drop --pseudo to resume, or train a new run from "
                                                           f"{cache} (--run-dir OTHER)")
        return cfg, limit
    if cache is None and dataset is None:
        raise AevlpError("no cache given", hint="pass --pseudo cache/DATASET.h5 (made by aevlp pseudolabel)")
    cached_name, info, recorded = _cache_info(cache) if cache else (None, {}, None)
    cfg = resolve(config or recorded, dataset or cached_name, overrides,
                  dataset={"data_root": data_root or info.get("data_root")}, **flags,
                  cache={"path": str(cache) if cache else None})
    return cfg, info.get("limit") if limit is None else limit


def interrupted_message(e) -> str:
    """What a Ctrl-C left behind, and the command that goes on from there."""
    if e.epochs_saved:
        return (f"interrupted: {e.epochs_saved} finished epoch(s) are saved in {e.run_dir}; go on with "
                f"`aevlp train --resume {e.run_dir}`")
    return (f"interrupted before the first epoch ended: nothing was saved in {e.run_dir}; "
            f"`aevlp train --resume {e.run_dir}` starts it over")


@cli.command("eval")
@click.argument("checkpoint", type=click.Path(exists=True))
@setting_option("dataset.name", "--dataset", type=RegistryChoice(DATASETS), default_text="the run's")
@setting_option("dataset.data_root", type=click.Path(), default_text="the run's")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Per-class AP CSV.")
@inference_options
def eval_cmd(checkpoint, dataset, data_root, split, out, batch_size, device) -> None:
    """mAP and per-class AP of a trained model (RUN_DIR or its best.pt) on a split.

    The dataset is the run's (its config.toml) unless --dataset/--data-root name another copy.

    \b
    Examples:
      aevlp eval runs/voc-gpr                      # the run's own test split
      aevlp eval runs/voc-gpr --split val --out val_ap.csv
      aevlp eval best.pt --dataset voc --data-root /data/voc
    """
    from aevlp.stage_two.evaluate import evaluate_checkpoint

    r, table = evaluate_checkpoint(checkpoint, dataset, data_root, split, batch_size, device)
    click.echo(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    click.echo(f"{split} mAP {r['map']:.2f} over {r['images']} images")
    click.echo("  " + "  ".join(f"{k} {v:.2f}" for k, v in r.items() if k not in ("map", "images")))
    if out:
        table.to_csv(out, index=False)


@cli.command("predict")
@click.argument("checkpoint", type=click.Path(exists=True))
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--threshold", type=click.FloatRange(0, 1, clamp=False), default=0.5, callback=lambda c, p, v: _finite(v),
              help="Probability at which a label is predicted.")
@click.option("--out", default="out/preds.csv", type=click.Path(dir_okay=False), help="CSV output.")
@inference_options
def predict_cmd(checkpoint, images, threshold, out, batch_size, device) -> None:
    """Label image files (or every image in a folder) with a trained model (RUN_DIR or its best.pt).

    \b
    Prints each image's top three tags with their probabilities and writes a CSV: path, one
    probability column per class, labels (those >= --threshold, joined by |), num_labels, top3.
    A clip-head model embeds the images with the CLIP checkpoint its cache was made with.

    \b
    Examples:
      aevlp predict runs/voc-gpr/best.pt photos/*.jpg --out out/preds.csv
      aevlp predict demo/runs/gpr-damp-s0 demo/data/images/val
    """
    from aevlp.stage_two.evaluate import predict_images

    df = predict_images(checkpoint, list(images), threshold, device, batch_size)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    for _, row in df.head(20).iterrows():
        click.echo(f"  {row['path']}: {row['top3']}")
    if len(df) > 20:
        click.echo(f"  ... and {len(df) - 20} more")
    click.echo(f"wrote {out} ({len(df)} images)")
