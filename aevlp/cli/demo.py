"""`aevlp demo` and `aevlp data prepare fashion-mosaic`: the offline toy world."""
from __future__ import annotations

import click

from aevlp.cli.data import _print_summary, prepare
from aevlp.cli.group import cli


@cli.command("demo")
@click.option("--quick", is_flag=True, help="A smaller world and fewer steps, into OUT/quick (what the tests run).")
@click.option("--seeds", type=int, default=1, show_default=True,
              help="Train every method with this many seeds (SEED, SEED+1, ...); the table shows mean ± sd.")
@click.option("--out", default="demo", type=click.Path(file_okay=False), help="Folder for everything the demo makes.")
@click.option("--raw", default=None, type=click.Path(exists=True, file_okay=False),
              help="Folder with Fashion-MNIST's idx files [default: Debian's package, else a download].")
@click.option("--seed", type=int, default=0, help="Seed of the data, the toy CLIP and training.")
@click.option("--no-progress", is_flag=True)
def demo_cmd(quick: bool, seeds: int, out: str, raw: str | None, seed: int, no_progress: bool) -> None:
    """Run the whole pipeline offline on a toy world (Fashion-MNIST mosaics + a small CLIP).

    \b
    Prepares the data, pretrains a small CLIP and a small-cnn backbone on single items, runs stage
    one, trains AN, GR, GPR with global-only and with DAMP pseudo-labels, and full labels end to
    end (plus a linear probe on CLIP features), and writes the table (mean ± sd over --seeds) with
    the zero-shot teacher beside it. Steps whose outputs are still valid are reused.

    \b
    Examples:
      aevlp demo                    # seed 0, about 9 minutes on 2 CPU cores (make demo)
      aevlp demo --seeds 3          # the README's table: seeds 0-2 (16 minutes; seed 0 is reused if run)
      aevlp demo --quick --seeds 2  # half the data and steps, into demo/quick (what the tests run)
    """
    from aevlp.tools.demo import run_demo

    if seeds < 1:
        raise click.BadParameter("must be >= 1", param_hint="--seeds")
    from aevlp.cli.common import interrupted

    with interrupted("every finished step and run is kept; `aevlp demo` with the same options goes on from there"):
        run_demo(out, quick=quick, seeds=seeds, raw=raw, seed=seed, progress=not no_progress, echo=click.echo)


@prepare.command("fashion-mosaic")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (SPML layout).")
@click.option("--raw", default=None, type=click.Path(exists=True, file_okay=False),
              help="Folder with Fashion-MNIST's idx files [default: /usr/share/datasets/fashion-mnist].")
@click.option("--train", "n_train", type=int, default=8000, help="Training mosaics (from Fashion-MNIST train).")
@click.option("--test", "n_test", type=int, default=2000, help="Test mosaics (from Fashion-MNIST test).")
@click.option("--seed", type=int, default=0)
def prepare_fashion_cmd(out: str, raw: str | None, n_train: int, n_test: int, seed: int) -> None:
    """2x2 mosaics of Fashion-MNIST items (10 classes), the demo's toy world.

    Example: aevlp data prepare fashion-mosaic --out data/fashion-mosaic --train 8000 --test 2000
    """
    from aevlp.data.fashion import prepare_fashion_mosaic

    _print_summary(prepare_fashion_mosaic(out, raw=raw, n_train=n_train, n_test=n_test, seed=seed,
                                          download_to=f"{out}/fashion-mnist-raw"))
