"""`aevlp pseudolabel`: stage one from the command line."""
from __future__ import annotations

import click

from aevlp.cli.common import RegistryChoice, check_limit, config_option, resolve, set_option
from aevlp.cli.group import cli
from aevlp.cli.setting_option import setting_option, setting_values
from aevlp.data.registry import DATASETS


@cli.command("pseudolabel")
@setting_option("dataset.name", "--dataset", type=RegistryChoice(DATASETS))
@setting_option("dataset.data_root", type=click.Path())
@config_option
@setting_option("cache.path", "--out", "--cache", "out", type=click.Path(dir_okay=False),
                default_text="cache/DATASET.h5")
@setting_option("clip.arch", "--clip", "arch", more="E.g. ViT-B-16 (aevlp clip ls).")
@setting_option("clip.pretrained", more="A weights file may need --pretrained-cfg; an HF-layout folder needs no "
                                                   "--clip.")
@setting_option("clip.pretrained_cfg", metavar="TAG", more="Its QuickGELU, mean/std and resize.")
@setting_option("clip.config", "--clip-config", type=click.Path(dir_okay=False))
@setting_option("text.prompts", "--prompt", "prompts", more="Repeat the flag to ensemble.")
@setting_option("text.phrases", type=click.Path(dir_okay=False))
@setting_option("views.grid")
@setting_option("views.rounds")
@setting_option("clip.batch_size")
@setting_option("clip.workers")
@setting_option("clip.device")
@setting_option("clip.precision")
@setting_option("cache.store_embeddings")
@setting_option("cache.on_bad_image")
@click.option("--limit", type=int, default=None, callback=check_limit,
              help="Only the first N training images (a quick try).")
@click.option("--force", is_flag=True, help="Recompute even if a matching cache exists.")
@click.option("--no-reprompt", is_flag=True,
              help="When only prompts/phrases/classes/GCN changed, recompute fully (with --force) instead of "
                   "re-deriving the cache from its stored embeddings.")
@click.option("--shard", default=None, metavar="K/W",
              help="Compute only shard K of W (e.g. to re-run a failed torchrun rank alone); the cache is "
                   "merged once all W shards are complete. Under torchrun, shards are the ranks.")
@click.option("--profile", default=None, type=click.Path(dir_okay=False), metavar="PATH",
              help="Profile the run with torch.profiler: PATH.txt (the steps by total time: waiting for the "
                   "workers, rendering, copies, normalisation, encoding, DAMP, writes) and PATH.json (a Chrome trace).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@set_option
@click.pass_context
def pseudolabel_cmd(ctx, dataset, config, limit, force, no_reprompt, shard, profile, no_progress, overrides,
                    **_settings) -> None:
    """Stage one: score DAMP views of every training image with a frozen CLIP into an HDF5 cache.

    \b
    The cache holds raw per-view similarities, so DAMP selection (tau, eta, theta, k, ratio) can be
    re-tuned in stage two without CLIP. An interrupted run resumes where it stopped; a cache made
    with other settings is refused (the message lists what differs).

    \b
    Examples:
      aevlp pseudolabel --dataset voc --data-root data/voc
      aevlp pseudolabel --dataset nus --data-root data/nus --clip ViT-L-14 --pretrained openai
      aevlp pseudolabel --dataset voc --data-root data/voc --clip ViT-B-32 --pretrained ~/ckpt/vitb32.safetensors \\
          --pretrained-cfg openai
      aevlp pseudolabel --dataset voc --data-root data/voc --pretrained ~/ckpt/ViT-B-16-SigLIP   # HF-layout folder
      aevlp pseudolabel --dataset cub --data-root data/cub --phrases cub_phrases.csv
      torchrun --nproc-per-node 8 -m aevlp pseudolabel --dataset nus --data-root data/nus   # 8 shards
    """
    from aevlp import distributed
    from aevlp.distributed import parse_shard
    from aevlp.stage_one.pseudolabel import run_pseudolabel

    cfg = resolve(config, dataset, overrides, **setting_values(ctx))
    rank = distributed.env()[0]
    try:
        summary = run_pseudolabel(cfg, force=force, limit=limit, progress=not no_progress and rank == 0,
                                  shard=parse_shard(shard) if shard else None, reprompt=not no_reprompt,
                                  profile=profile, echo=click.echo if rank == 0 else None)
    except KeyboardInterrupt:
        click.secho("interrupted: finished rows are kept; run the same command again to resume", fg="yellow", err=True)
        raise SystemExit(130) from None
    finally:
        distributed.cleanup()
    if rank != 0:
        return
    if summary["status"] == "shard done":
        click.echo(f"wrote shard {summary['shard']} ({summary['cache']}); still missing shards "
                   f"{summary['shards_left']}: run them with --shard K/W, the last one merges the cache")
        return
    if summary["status"] == "reused":
        click.echo(f"{summary['cache']} is up to date ({summary['images']} images); --force recomputes it")
        return
    click.echo(f"wrote {summary['cache']} ({summary['status']})")
    for key, value in summary.items():
        if key not in ("cache", "status"):
            click.echo(f"  {key:28s} {value}")
