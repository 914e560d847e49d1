"""``python -m sluice_worker [options]`` is ``sluice worker [options]``."""

from __future__ import annotations

import sys

from sluice_cli.main import main

if __name__ == "__main__":
    main(["worker", *sys.argv[1:]])
