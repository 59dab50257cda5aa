"""Options and config resolution shared by the commands; choices read from the registries."""
from __future__ import annotations

import importlib
from collections.abc import Callable

import click

from aevlp.config import find_pipeline, load_config
from aevlp.errors import ConfigError
from aevlp.registry import Registry, did_you_mean

__all__ = ["RegistryChoice", "default_pipeline", "resolve", "set_option", "config_option", "check_limit",
           "inference_options", "interrupted"]


class RegistryChoice(click.Choice):
    """A click choice whose values are a registry's names, read when shown or checked (so anything
    registered after import appears in --help and is accepted); aliases are accepted too.

    `registry` may be given as "module:NAME", imported on first use, so that a command line that
    does not need it (e.g. `aevlp data ls`) does not import torch."""

    def __init__(self, registry: Registry | str, also: Callable[[], dict[str, str]] | None = None):
        self._registry = registry
        self._also = also  # names that are not in the registry but mean something: name -> what to pass instead
        super().__init__((), case_sensitive=False)

    @property
    def registry(self) -> Registry:
        if isinstance(self._registry, str):
            module, name = self._registry.split(":")
            self._registry = getattr(importlib.import_module(module), name)
        return self._registry

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self.registry.names())

    @choices.setter
    def choices(self, value) -> None:  # click's __init__ assigns it; the registry is the source
        pass

    def convert(self, value, param, ctx):
        if value in self.registry:
            return self.registry.canonical(value)
        instead = (self._also() if self._also else {}).get(str(value).lower())
        if instead:
            self.fail(f"{value!r} is not a {self.registry.kind} but a combination: pass {instead}", param, ctx)
        self.fail(f"{value!r} is not a known {self.registry.kind}{did_you_mean(value, self.registry.names(True))}; "
                  f"choose one of: {', '.join(self.choices)}", param, ctx)


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


def check_limit(ctx, param, value):
    """--limit N: a positive number of training images."""
    if value is not None and value < 1:
        raise click.BadParameter(f"{value} images: give a positive number, or drop --limit to use every image")
    return value


set_option = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                          help="Override any pipeline key, e.g. --set damp.threshold=0.4 (repeatable).")
config_option = click.option("--config", default=None, metavar="PIPELINE",
                             help="Pipeline TOML (a path, or a name in pipelines/) [default: the dataset's].")


def interrupted(what: str):
    """A context that turns Ctrl-C into one line saying what was kept and how to go on (exit status 130)."""
    import contextlib

    @contextlib.contextmanager
    def handler():
        try:
            yield
        except KeyboardInterrupt:
            click.secho(f"interrupted: {what}", fg="yellow", err=True)
            raise SystemExit(130) from None
    return handler()


def inference_options(f):
    """--device and --batch-size of a command that runs a trained model (`aevlp.device.inference`: the one rule)."""
    f = click.option("--batch-size", type=click.IntRange(1, 65536), default=64, show_default=True,
                     help="Images per forward pass.")(f)
    return click.option("--device", default="auto", show_default=True,
                        help="Where the model runs: auto (the GPU when there is one), cpu, cuda, cuda:N; "
                             "bf16 autocast on a GPU, as training.")(f)
