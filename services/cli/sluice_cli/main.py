"""``sluice``: one command, every subcommand.

Each service keeps its commands in its own ``cli`` module, which imports only typer at the top and
everything heavy inside the command, so ``sluice worker`` never loads the HTTP stack and
``sluice --help`` stays fast.

Errors: a bad argument or a failure sluice expected prints one line, ``sluice: error: ...``, on
stderr and exits non-zero (2 for usage, 1 otherwise); never a traceback. Each command's exit statuses
are in :mod:`sluice_cli.exits` (shown by its ``--help``, listed in docs/cli.md).
"""

from __future__ import annotations

import logging
import os
import sys

import typer
from pydantic import ValidationError

from sluice.errors import SluiceError
from sluice_cli import config_cmd, dlq_cmd, exits, limits_cmd, schedule_cmd, status_cmd, task_cmd

try:  # typer >= 0.23 vendors click; older releases use the click package
    from typer._click import exceptions as cx
except ImportError:  # pragma: no cover
    import click.exceptions as cx  # type: ignore[no-redef]

app = typer.Typer(
    name="sluice",
    help="sluice: async tasks on RabbitMQ with global rate limits, retries, breakers and dedup on Redis.",
    epilog="Exit status: 0 success; 1 a failure sluice expected, said in one line (see each command's "
    "--help); 2 usage error; 130 interrupted.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root() -> None:
    """sluice: async tasks on RabbitMQ with global rate limits, retries, breakers and dedup on Redis."""


def _register() -> None:
    from sluice_metrics import cli as metrics_cli
    from sluice_producer import cli as producer_cli
    from sluice_worker import cli as worker_cli

    app.command("config")(config_cmd.config)
    app.add_typer(dlq_cmd.app, name="dlq")
    app.command("status")(status_cmd.status)
    app.add_typer(limits_cmd.app, name="limits")
    app.add_typer(task_cmd.app, name="task")
    schedule_cmd.register(app)  # `sluice schedule ...` and `sluice scheduler`
    producer_cli.register(app)
    worker_cli.register(app)
    metrics_cli.register(app)
    exits.apply_epilogs(app)


SERVICES = frozenset({"worker", "producer", "metrics", "scheduler"})  # long-running: their own logging


def _quiet_libraries(argv: list[str]) -> None:
    """A short command says what went wrong in one line of its own; the AMQP libraries would print a
    second one ("error when creating transport") through logging's last-resort handler. Services keep
    their logs, and so does SLUICE_LOG_LEVEL=DEBUG."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in SERVICES or os.environ.get("SLUICE_LOG_LEVEL", "").upper() == "DEBUG":
        return
    for name in ("aio_pika", "aiormq"):
        logging.getLogger(name).addHandler(logging.NullHandler())
        logging.getLogger(name).propagate = False


def _one_line(e: BaseException) -> str:
    if isinstance(e, ValidationError):
        errs = e.errors()
        first = errs[0]
        loc = ".".join(str(p) for p in first["loc"]) or "value"
        more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
        return f"invalid setting {loc}: {first['msg']}{more}"
    # a click error's format_message names the option: "Invalid value for '--prefetch': ..."
    text = e.format_message() if isinstance(e, cx.ClickException) else str(e)
    return " ".join(text.split()) or type(e).__name__


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``sluice`` console script."""
    _register()
    _quiet_libraries(sys.argv[1:] if argv is None else argv)
    try:
        # standalone_mode=False: click *returns* the code of a typer.Exit instead of raising it, and
        # returns None for a command that simply finished. Dropping it made every failure exit 0.
        code = app(args=argv, standalone_mode=False, prog_name="sluice")
    except cx.NoArgsIsHelpError as e:
        # `sluice` alone: the help text is what the user asked for
        typer.echo(e.ctx.get_help() if e.ctx else str(e))
        sys.exit(0)
    except cx.UsageError as e:
        sys.stderr.write(f"sluice: error: {_one_line(e)} (try 'sluice --help')\n")
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.stderr.write("sluice: aborted\n")
        sys.exit(130)
    except cx.ClickException as e:
        sys.stderr.write(f"sluice: error: {_one_line(e)}\n")
        sys.exit(e.exit_code)
    except (SluiceError, ValidationError) as e:
        sys.stderr.write(f"sluice: error: {_one_line(e)}\n")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.stderr.write("sluice: interrupted\n")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
