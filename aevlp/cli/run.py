"""`aevlp run`: both stages of a pipeline, each only when stale."""
from __future__ import annotations

import click

from aevlp.cli.common import check_limit, set_option
from aevlp.cli.group import cli
from aevlp.cli.setting_option import setting_option


@cli.command("run")
@click.argument("pipeline")
@setting_option("dataset.data_root", type=click.Path())
@set_option
@click.option("--dry-run", is_flag=True, help="Only say which stages would run and why (like make -n).")
@click.option("--force-stage", type=click.Choice(["pseudolabel", "train"]), default=None,
              help="Run this stage even if it is up to date (forcing pseudolabel re-trains too).")
@click.option("--limit", type=int, default=None, callback=check_limit, help="Only the first N training images.")
@click.option("--no-reprompt", is_flag=True,
              help="When only prompts/phrases/classes/GCN changed, recompute stage one fully instead of re-deriving "
                   "the cache from its stored embeddings.")
@click.option("--no-progress", is_flag=True)
def run_cmd(pipeline, data_root, overrides, dry_run, force_stage, limit, no_reprompt, no_progress) -> None:
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
    from aevlp.tools.run import plan_pipeline, run_pipeline

    path = find_pipeline(pipeline)
    extra = {"dataset": {"data_root": data_root}} if data_root else {}
    cfg = load_config(path, overrides, **extra)
    name = path.stem
    if dry_run:
        pipeline_plan = plan_pipeline(cfg, name, force_stage=force_stage, limit=limit, reprompt=not no_reprompt)
        for plan in pipeline_plan.stages:
            click.echo(f"{plan.stage}: {'would run' if plan.run else 'up to date'} - {plan.reason}")
            for line in plan.details:
                click.echo(f"    {line}")
        click.echo("downloads: " + ("; ".join(pipeline_plan.downloads) + " (offline? hint: `aevlp clip info`; "
                                    "--set clip.pretrained=DIR, --set train.weights=FILE or none)"
                                    if pipeline_plan.downloads else "none (everything needed is on this machine)"))
        return
    from aevlp.stage_two.train import TrainingInterrupted
    try:
        r = run_pipeline(cfg, name, force_stage=force_stage, limit=limit, progress=not no_progress, echo=click.echo,
                         reprompt=not no_reprompt)
    except (TrainingInterrupted, KeyboardInterrupt) as e:
        kept = f"{e.epochs_saved} finished epoch(s) in {e.run_dir}" if getattr(e, "epochs_saved", 0) else \
            "stage one's finished rows"
        click.secho(f"interrupted: {kept} are kept; the same `aevlp run` command goes on from there", fg="yellow",
                    err=True)
        raise SystemExit(130) from None
    click.echo(f"test mAP {r['test_map']:.2f}  (val mAP {r['val_map']:.2f}, best epoch {r['best_epoch']}); "
               f"run directory {r['run_dir']}")
