"""Options and config resolution shared by the stage commands."""
from __future__ import annotations

import click

from aevlp.config import find_pipeline, load_config
from aevlp.errors import ConfigError


def default_pipeline(dataset: str | None) -> str | None:
    """The pipeline named after the dataset (or one of its aliases), if one can be found."""
    if not dataset:
        return None
    from aevlp.data.registry import get_dataset

    info = get_dataset(dataset)
    for name in (dataset, info.name, *info.aliases):
        try:
            return str(find_pipeline(name))
        except ConfigError:
            continue
    return None


def resolve(config: str | None, dataset_name: str | None, overrides: tuple[str, ...], **sections) -> dict:
    """Defaults ← pipeline (--config, or the dataset's own) ← flags ← --set."""
    pipeline = config or default_pipeline(dataset_name)
    if dataset_name:
        sections.setdefault("dataset", {})["name"] = dataset_name
    cfg = load_config(pipeline, overrides, **sections)
    if not cfg["dataset"]["name"]:
        raise ConfigError("no dataset given", hint="pass --dataset NAME or a --config pipeline that sets it")
    from aevlp.data.registry import get_dataset

    cfg["dataset"]["name"] = get_dataset(cfg["dataset"]["name"]).name
    return cfg


set_option = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                          help="Override any pipeline key, e.g. --set damp.threshold=0.4 (repeatable).")
config_option = click.option("--config", default=None, metavar="PIPELINE",
                             help="Pipeline TOML (a path, or a name in pipelines/) [default: the dataset's].")
