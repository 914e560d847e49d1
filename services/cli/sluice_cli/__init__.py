"""The ``sluice`` command: every subcommand of every service."""

from sluice_cli.main import app, main

__all__ = ["app", "main"]
