"""The ``sluice`` command with ``sluice schedule`` and ``sluice scheduler`` registered, as engineer C's
sluice_cli.main will register them (until then the installed script does not have them): the same
``main()``, so the same one-line errors and exit statuses."""

from __future__ import annotations

import importlib
import sys

if __name__ == "__main__":
    cli = importlib.import_module("sluice_cli.main")
    schedule_cmd = importlib.import_module("sluice_cli.schedule_cmd")
    schedule_cmd.register(cli.app)
    cli.main(sys.argv[1:])
