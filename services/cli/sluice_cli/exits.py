"""The exit statuses of every ``sluice`` command, in one table: shown at the end of each command's
``--help`` and listed in docs/cli.md (a test checks both against this table, and the statuses
themselves through the installed console script).

0 is always success and 2 always a usage error (an unknown option, a bad argument); 1 is a failure
sluice expected and said in one line; 130 an interrupt (Ctrl-C).
"""

from __future__ import annotations

import typer

__all__ = ["EXITS", "apply_epilogs", "epilog"]

COMMON = "2 usage error (unknown option, bad argument); 130 interrupted"

EXITS: dict[str, str] = {
    "config": "0 settings printed; 1 a setting in the environment is invalid",
    "status": "0 summary printed (with --watch: until Ctrl-C); 1 the metrics service cannot be reached or "
    "did not answer a summary",
    "publish": "0 every task confirmed by the broker; 1 some task not confirmed (each one named on "
    "stderr), a bad input, an unknown queue, or the broker cannot be reached",
    "producer": "0 stopped by SIGTERM/SIGINT after a drain; 1 cannot start (taken port, bad settings, "
    "auth on with no token). An unreachable broker does not stop it: /readyz answers 503 until it is back",
    "worker": "0 stopped by SIGTERM/SIGINT after a drain, or with --burst once nothing was left to do; 1 cannot start (the broker cannot be reached "
    "at start, a task module cannot be imported, bad settings)",
    "metrics": "0 stopped by SIGTERM/SIGINT after a drain; 1 cannot start (taken port, bad settings). An "
    "unreachable broker does not stop it: sluice_broker_up is 0 until it is back",
    "dlq ls": "0 listed (also when empty); 1 the broker cannot be reached",
    "dlq show": "0 shown; 1 no dead letter with that id, or the broker cannot be reached",
    "dlq replay": "0 every selected dead letter replayed; 1 some could not be (each named on stderr, "
    "left in the DLQ) or the broker cannot be reached. Nothing to replay is 0",
    "dlq purge": "0 purged; 1 not at a terminal and no --yes, or the broker cannot be reached",
    "limits ls": "0 listed (also when empty); 1 Redis cannot be reached",
    "limits set": "0 set; 1 Redis cannot be reached (a bad rate, window or burst is a usage error)",
    "limits rm": "0 removed; 1 the task had no run-time limit, or Redis cannot be reached",
    "limits thaw": "0 thawed; 1 the key was not frozen, or Redis cannot be reached (a malformed key is a "
    "usage error)",
    "task status": "0 shown (also a task in state unknown); 1 Redis cannot be reached",
    "task wait": "0 the task succeeded; 1 it failed, is dead or was cancelled, or Redis cannot be reached; "
    "3 timed out (--timeout) before it ended",
    "task cancel": "0 every cancel recorded (a task that had ended is left as it was, and said); 1 Redis "
    "cannot be reached",
    "scheduler": "0 stopped by SIGTERM/SIGINT (the lease given up); 1 cannot start (taken port, a module "
    "that cannot be imported or declares no task nor schedule, a bad schedule, bad settings). Redis or the "
    "broker down does not stop it: it waits, then fires what fell due",
    "schedule add": "0 added or replaced; 1 Redis cannot be reached (a bad cron expression, time zone, "
    "interval, payload or catch-up is a usage error)",
    "schedule ls": "0 listed (also when empty); 1 Redis cannot be reached",
    "schedule rm": "0 removed; 1 no schedule of that name, or Redis cannot be reached",
    "schedule pause": "0 paused; 1 no schedule of that name, or Redis cannot be reached",
    "schedule resume": "0 resumed; 1 no schedule of that name, or Redis cannot be reached",
    "schedule run": "0 fired and confirmed by the broker (the task id printed); 1 no schedule of that name, "
    "or Redis or the broker cannot be reached",
}


def epilog(command: str) -> str:
    """The ``Exit status:`` paragraph of one command."""
    return f"Exit status: {EXITS[command]}; {COMMON}."


def apply_epilogs(app: typer.Typer, parent: str = "") -> None:
    """Give every registered command (and subcommand) its exit-status epilog."""
    for info in app.registered_commands:
        name = info.name or (info.callback.__name__ if info.callback else "")
        full = f"{parent} {name}".strip()
        if full in EXITS and not info.epilog:
            info.epilog = epilog(full)
    for group in app.registered_groups:
        if group.typer_instance is not None and group.name:
            apply_epilogs(group.typer_instance, f"{parent} {group.name}".strip())
