"""``sluice config``: the effective settings, secrets masked."""

from __future__ import annotations

import json

import typer


def config(
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Print the effective settings (environment SLUICE_*), passwords masked."""
    from sluice.settings import Settings

    settings = Settings()
    values = settings.masked()
    if as_json:
        typer.echo(json.dumps(values, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("setting", "environment", "value", title="sluice settings")
    for name, value in values.items():
        table.add_row(name, f"SLUICE_{name.upper()}", str(value))
    Console().print(table)
