"""The `aevlp` command line. Importing this package registers every command on `cli`."""
from aevlp.cli import bench, cache, clip, data, demo, pseudolabel, refine, report, review, run, train  # noqa: F401
from aevlp.cli.group import cli, main

__all__ = ["cli", "main"]
