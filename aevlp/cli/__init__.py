"""The `aevlp` command line. Importing this package registers every command on `cli`."""
from aevlp.cli import bench, cache, clip, data, demo, pseudolabel, refine, report, run, train  # noqa: F401 (register)
from aevlp.cli.group import cli, main

__all__ = ["cli", "main"]
