"""`aevlp pseudolabel`: stage one from the command line."""
from __future__ import annotations

import click

from aevlp.cli.common import RegistryChoice, check_limit, config_option, resolve, set_option
from aevlp.cli.group import cli
from aevlp.data.registry import DATASETS


@cli.command("pseudolabel")
@click.option("--dataset", type=RegistryChoice(DATASETS), default=None, help="Dataset name (aevlp data ls).")
@click.option("--data-root", default=None, type=click.Path(), help="Folder in the SPML layout.")
@config_option
@click.option("--out", "--cache", "out", default=None, type=click.Path(dir_okay=False),
              help="Cache file [default: cache/DATASET.h5].")
@click.option("--clip", "arch", default=None, help="open_clip architecture, e.g. ViT-B-16 (aevlp clip ls).")
@click.option("--pretrained", default=None, help="A pretrained tag (openai, laion2b_s34b_b88k, ...), a local weights "
                                                  "file, an HF-layout folder (needs no --clip) or hf-hub:ORG/NAME; "
                                                  "'' for random weights.")
@click.option("--pretrained-cfg", default=None, metavar="TAG",
              help="For a local weights file: the tag whose settings it carries (QuickGELU, mean/std, resize).")
@click.option("--clip-config", default=None, type=click.Path(dir_okay=False),
              help="Local open_clip model config JSON (its file name is the architecture).")
@click.option("--prompt", "prompts", multiple=True, help="Prompt template with {} (repeat to ensemble).")
@click.option("--phrases", default=None, type=click.Path(dir_okay=False),
              help="Class phrases: CSV classname,phrase or one phrase per line in class order.")
@click.option("--grid", type=int, default=None, help="G: global view + G x G tiles.")
@click.option("--rounds", type=int, default=None,
              help="Augmentation rounds R (training epoch e reads round (e-1) mod R).")
@click.option("--batch-size", type=int, default=None, help="Source images per batch.")
@click.option("--workers", type=int, default=None, help="DataLoader worker processes decoding images.")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default=None,
              help="CLIP weights dtype (auto: fp16 on CUDA, bf16 on a bf16-capable CPU, else fp32).")
@click.option("--store-embeddings", type=click.Choice(["none", "global", "all"]), default=None,
              help="Also store L2-normalised image embeddings (for clip-head training or new prompts).")
@click.option("--on-bad-image", type=click.Choice(["fail", "skip"]), default=None,
              help="Unreadable images: stop with their paths, or mark them skipped in the cache.")
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
def pseudolabel_cmd(dataset, data_root, config, out, arch, pretrained, pretrained_cfg, clip_config, prompts, phrases,
                    grid, rounds, batch_size, workers, device, precision, store_embeddings, on_bad_image, limit,
                    force, no_reprompt, shard, profile, no_progress, overrides) -> None:
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
    from aevlp.pseudolabel import run_pseudolabel

    cfg = resolve(config, dataset, overrides,
                  dataset={"data_root": data_root},
                  clip={"arch": arch, "pretrained": pretrained, "pretrained_cfg": pretrained_cfg,
                        "config": clip_config, "batch_size": batch_size, "workers": workers, "device": device,
                        "precision": precision},
                  text={"prompts": list(prompts) or None, "phrases": phrases},
                  views={"grid": grid, "rounds": rounds},
                  cache={"path": out, "store_embeddings": store_embeddings, "on_bad_image": on_bad_image})
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
