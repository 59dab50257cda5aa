"""`aevlp review`: the pseudo-labels class by class in a browser, from the file system."""
from __future__ import annotations

import click

from aevlp.cli.common import inference_options
from aevlp.cli.group import cli


@cli.command("review")
@click.argument("cache", type=click.Path(exists=True, dir_okay=False))
@click.argument("run_dirs", nargs=-1, type=click.Path(exists=True, file_okay=False))
@click.option("--out", default="out/review", show_default=True, type=click.Path(file_okay=False),
              help="Folder of the site (open OUT/index.html).")
@click.option("--per-class", type=click.IntRange(4, 1000), default=60, show_default=True,
              help="Thumbnails per class page (half the highest-scoring, half spread over the rest).")
@click.option("--config", default=None, metavar="PIPELINE",
              help="The [damp] settings to show [default: the pipeline the cache was made with].")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a [damp] key, e.g. --set damp.class_thresholds='\"rate\"' (repeatable).")
@click.option("--no-progress", is_flag=True)
@inference_options
def review_cmd(cache: str, run_dirs: tuple[str, ...], out: str, per_class: int, config: str | None,
               overrides: tuple[str, ...], no_progress: bool, batch_size: int, device: str) -> None:
    """A static site of the cache's pseudo-labels, class by class: counts at θ, precision/recall where
    full labels exist, thumbnails marked observed / pseudo-positive / pseudo-negative / unknown with the
    tile that scored highest outlined, a θ slider per class, and "download thresholds" (the CSV that
    damp.class_thresholds reads). With RUN_DIRs: their per-class test AP beside the zero-shot teacher's,
    and the test images where student and teacher disagree most.

    \b
    It opens from the file system (no server, no network): open OUT/index.html in a browser.

    \b
    Examples:
      aevlp review demo/cache/fashion-mosaic.h5 demo/runs/gpr-damp-s0
      aevlp review cache/voc.h5 runs/voc --out out/voc-review --per-class 40
    """
    from aevlp.cache import Cache
    from aevlp.config import config_for_cache
    from aevlp.tools.review import write_review

    with Cache(cache) as c:
        cfg = config_for_cache(c, config, overrides)
    from aevlp.cli.common import interrupted

    with interrupted(f"{out} is incomplete; run the same command again (thumbnails made so far are reused)"):
        page = write_review(cache, out, list(run_dirs), per_class=per_class, cfg=cfg, progress=not no_progress,
                            device=device, batch_size=batch_size)
    click.echo(f"wrote {page} (open it in a browser; it needs no server)")
