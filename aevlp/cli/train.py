"""`aevlp train`, `aevlp eval`, `aevlp predict`: stage two from the command line."""
from __future__ import annotations

from pathlib import Path

import click

from aevlp.cli.common import RegistryChoice, check_limit, config_option, inference_options, resolve, set_option
from aevlp.cli.group import cli
from aevlp.data.registry import DATASETS
from aevlp.errors import AevlpError


def loss_presets() -> dict[str, str]:
    """The bench's method names that are a loss plus other settings, spelled as `aevlp train` flags."""
    from aevlp.bench import PRESETS
    from aevlp.cli.hints import FLAG_KEYS, command_flags
    from aevlp.config import _parse_value

    own = command_flags(train_cmd)
    flags = {keys[0]: f for f, keys in FLAG_KEYS.items() if len(keys) == 1 and f in own}  # setting -> train's flag

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
@click.option("--pseudo", "--cache", "cache", default=None, type=click.Path(dir_okay=False),
              help="Stage-one cache (HDF5) [default: cache/DATASET.h5].")
@click.option("--dataset", type=RegistryChoice(DATASETS), default=None, help="Dataset name [default: the cache's].")
@click.option("--data-root", default=None, type=click.Path(), help="SPML-layout folder [default: the cache's].")
@config_option
@click.option("--loss", type=RegistryChoice("aevlp.losses:LOSSES", also=loss_presets), default=None,
              help="Training loss / method (docs/training.md) [default: the pipeline's].")
@click.option("--backbone", type=RegistryChoice("aevlp.models:BACKBONES"), default=None,
              help="Classifier backbone [default: the pipeline's].")
@click.option("--weights", default=None, help="Backbone weights: default (ImageNet for the ResNets) | imagenet | "
                                              "none (from scratch) | a .pth/.safetensors state dict.")
@click.option("--labels", type=click.Choice(["observed", "full"]), default=None,
              help="Train on the single positives (the task) or the full ground truth (the upper bound).")
@click.option("--damp-source", type=click.Choice(["damp", "global", "global-plain"]), default=None,
              help="Pseudo-labels from DAMP (global + tiles), the global view only, or the global view against the "
                   "plain class text features (VLPL's).")
@click.option("--recipe", type=click.Choice(["shared", "official"]), default=None,
              help="shared: the pipeline's recipe for every method (like for like); official: the method's "
                   "authors' recipe on the benchmark datasets (docs/training.md).")
@click.option("--select", type=click.Choice(["auto", "val", "observed-auc", "observed", "observed+pseudo", "last"]),
              default=None, help="Which epoch is tested: auto (val with a fully labelled val split, else "
                                 "observed-auc), val, observed-auc, observed, observed+pseudo, last "
                                 "(docs/training.md).")
@click.option("--epochs", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None, help="Backbone learning rate (the head gets lr x lr_mult).")
@click.option("--image-size", type=int, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--device", default=None, help="auto, cpu, cuda, ...")
@click.option("--workers", type=int, default=None,
              help="DataLoader processes decoding images [default: -1, the machine's cores but one, at most 8].")
@click.option("--image-cache/--no-image-cache", default=None,
              help="Read images pre-resized from one HDF5 file per dataset and size (built once, shared by all "
                   "runs; 20-35x faster per core than decoding JPEGs; 3*S^2 bytes an image).")
@click.option("--run-dir", default=None, type=click.Path(file_okay=False), help="Output folder [default: runs/...].")
@click.option("--resume", default=None, type=click.Path(exists=True, file_okay=False),
              help="Continue an interrupted run directory from its last finished epoch (with its settings; "
                   "--epochs N trains on to N, --workers changes the loader).")
@click.option("--force", is_flag=True, help="Replace a finished (or interrupted) run in --run-dir.")
@click.option("--limit", type=int, default=None, callback=check_limit,
              help="Only the first N training images (match stage one's).")
@click.option("--no-progress", is_flag=True)
@set_option
def train_cmd(cache, dataset, data_root, config, loss, backbone, weights, labels, damp_source, recipe, select, epochs,
              batch_size, lr, image_size, seed, device, workers, image_cache, run_dir, resume, force, limit,
              no_progress, overrides) -> None:
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
      torchrun --nproc-per-node 4 -m aevlp train --pseudo cache/nus.h5      # DDP, global batch kept
    """
    from aevlp import distributed
    from aevlp.refine import taught
    from aevlp.train import TrainingInterrupted

    flags = {"loss": {"name": loss}, "damp": {"source": damp_source},
             "train": {"backbone": backbone, "weights": weights, "labels": labels, "recipe": recipe, "select": select,
                       "epochs": epochs, "batch_size": batch_size, "lr": lr, "image_size": image_size, "seed": seed,
                       "device": device, "workers": workers, "image_cache": image_cache}}
    cfg, limit = _train_config(cache, dataset, data_root, config, resume, limit, overrides, flags)
    run_dir = resume or run_dir

    try:
        explicit = tuple(o.split("=", 1)[0].strip() for o in overrides)
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
@click.option("--dataset", type=RegistryChoice(DATASETS), default=None, help="Dataset name [default: the run's].")
@click.option("--data-root", default=None, type=click.Path(), help="SPML-layout folder [default: the run's].")
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
    from aevlp.evaluate import evaluate_checkpoint

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
    from aevlp.evaluate import predict_images

    df = predict_images(checkpoint, list(images), threshold, device, batch_size)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    for _, row in df.head(20).iterrows():
        click.echo(f"  {row['path']}: {row['top3']}")
    if len(df) > 20:
        click.echo(f"  ... and {len(df) - 20} more")
    click.echo(f"wrote {out} ({len(df)} images)")
