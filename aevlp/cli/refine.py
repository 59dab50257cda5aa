"""`aevlp refine`: teacher–student rounds from a finished run (no stage one)."""
from __future__ import annotations

import click

from aevlp.cli.common import RegistryChoice, set_option
from aevlp.cli.group import cli
from aevlp.cli.setting_option import setting_option


@cli.command("refine")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--rounds", type=click.IntRange(1, 10), default=1, show_default=True,
              help="Teacher–student rounds at most: each student's scores teach the next run; they stop at the "
                   "first round whose val mAP is not above its teacher's.")
@click.option("--all-rounds", is_flag=True, help="Run every round of --rounds, whether or not val improves.")
@setting_option("loss.name", "--loss", type=RegistryChoice("aevlp.losses:LOSSES"), default_text="the run's",
                more="The new rounds' method; a GR run's student teaching GPR: --loss gpr.")
@click.option("--device", default=None, help="Where the student scores its images and the new rounds train "
                                             "[default: the run's train.device, auto: the GPU when there is one].")
@click.option("--no-progress", is_flag=True)
@set_option
def refine_cmd(run_dir: str, rounds: int, all_rounds: bool, loss: str | None, device: str | None,
               no_progress: bool, overrides: tuple[str, ...]) -> None:
    """Teacher–student rounds: the run's student labels its own training images (both flips averaged), its
    scores are stored beside the cache with their provenance (CACHE.sources/RUN-r1.h5), and RUN-r1 trains from them
    fused with the teacher's DAMP scores (damp.student_weight, per-class thresholds as the run's).

    \b
    Stage one is never re-run. Each round is reused when done and resumed when interrupted; RUN-r1,
    RUN-r2, ... are ordinary run directories (aevlp report compares them).

    \b
    Examples:
      aevlp refine runs/voc-gpr                 # one round: runs/voc-gpr-r1
      aevlp refine demo/runs/gpr-damp-s0 --rounds 2
      aevlp refine runs/voc-gr --loss gpr --set damp.student_weight=0.7
    """
    from aevlp.stage_two.refine import refine
    from aevlp.stage_two.train import TrainingInterrupted

    try:
        extra = ((f'loss.name="{loss}"',) if loss else ()) + ((f'train.device="{device}"',) if device else ()) \
            + tuple(overrides)
        results = refine(run_dir, rounds, overrides=extra, progress=not no_progress, echo=click.echo, device=device,
                         until_worse=not all_rounds)
    except (TrainingInterrupted, KeyboardInterrupt):
        click.secho("interrupted: the same `aevlp refine` command goes on from there", fg="yellow", err=True)
        raise SystemExit(130) from None
    for i, r in enumerate(results, 1):
        click.echo(f"round {i}: test mAP {r['test_map']:.2f}  (val mAP {r['val_map']:.2f}, {r['round_gain']:+.2f} on "
                   f"its teacher; {r['round_seconds']:.0f} s of training); {r['run_dir']}")
