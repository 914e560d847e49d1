"""``python -m sluice_scheduler [options]`` is ``sluice scheduler [options]``."""

from __future__ import annotations

import importlib
import sys

from sluice_scheduler.cli import register

if __name__ == "__main__":
    cli = importlib.import_module("sluice_cli.main")  # the module (the package exports its main function)
    register(cli.app)  # until sluice_cli.main registers the command itself (then this line goes)
    cli.main(["scheduler", *sys.argv[1:]])
