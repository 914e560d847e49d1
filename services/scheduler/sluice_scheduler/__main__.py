"""``python -m sluice_scheduler [options]`` is ``sluice scheduler [options]``."""

from __future__ import annotations

import importlib
import sys

if __name__ == "__main__":
    cli = importlib.import_module("sluice_cli.main")  # the module (the package exports its main function)
    cli.main(["scheduler", *sys.argv[1:]])
