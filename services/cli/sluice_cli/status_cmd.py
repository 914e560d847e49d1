"""``sluice status``: queues, workers, task handles, breakers, limits and schedules, from the metrics
service's ``/api/summary``.

Tables by default, ``--json`` for scripts (the summary document as the service sent it), ``--watch`` to
refresh every ``--interval`` seconds until Ctrl-C. An unreachable service or a bad URL is one line on
stderr and exit 1.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import typer

from sluice.errors import ConfigError, SluiceError

__all__ = ["fetch_summary", "render", "status"]


def _default_url() -> str:
    from sluice.settings import Settings

    s = Settings()
    host = "127.0.0.1" if s.metrics_host in ("0.0.0.0", "", "::") else s.metrics_host
    return f"http://{host}:{s.metrics_port}"


def fetch_summary(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET ``{url}/api/summary``; :class:`SluiceError` with one clear line on any failure."""
    import httpx

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"bad metrics service URL {url!r}: use http://HOST:PORT")
    target = url.rstrip("/") + "/api/summary"
    try:
        resp = httpx.get(target, timeout=timeout)
    except httpx.HTTPError as e:
        raise SluiceError(f"cannot reach the metrics service at {target}: {e or type(e).__name__}") from None
    if resp.status_code != 200:
        raise SluiceError(f"the metrics service at {target} answered HTTP {resp.status_code}")
    try:
        doc = resp.json()
    except ValueError:
        raise SluiceError(f"{target} did not answer JSON: is this a sluice metrics service?") from None
    if not isinstance(doc, dict) or "queues" not in doc:
        raise SluiceError(f"{target} did not answer a sluice summary")
    return doc


def _num(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def render(doc: dict[str, Any]) -> Any:
    """The summary as a rich renderable (a group of tables)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    up = {True: "up", False: "DOWN", None: "?"}
    done = doc["totals"]["completed"]
    head = Text(
        f"sluice {doc['prefix']}  broker {up[doc['broker_up']]}  redis {up[doc['redis_up']]}  "
        f"workers alive {doc['workers_alive']}  in progress {_num(doc['in_progress'], 0)}  "
        f"published {doc['totals']['published']}  completed {sum(done.values())} "
        f"({', '.join(f'{k} {v}' for k, v in done.items() if v)})"
    )
    queues = Table("queue", "kind", "messages", "consumers", "rate/s", "oldest age s", title="queues")
    for q in doc["queues"]:
        if q["kind"] == "delay" and not q["messages"]:
            continue
        queues.add_row(
            q["queue"],
            q["kind"],
            str(q["messages"]),
            str(q["consumers"]),
            _num(q["rate"]),
            _num(q["oldest_age"]),
        )
    procs = Table("kind", "host", "pid", "state", "last seen s", "in progress", "done", title="workers")
    for p in [*doc["processes"], *doc.get("gone", [])]:
        state = "alive" if p["alive"] else (p["stopped"] or "silent")
        procs.add_row(
            p["kind"],
            p["host"],
            str(p["pid"]),
            state,
            _num(p["last_seen_seconds"]),
            _num(p["in_progress"], 0),
            str(p["completed"]),
        )
    breakers = Table("breaker", "state", title="breakers")
    for b in doc["breakers"]:
        breakers.add_row(b["name"], b["state"])
    limits = Table("limit", "override", "allowed", "deferred", title="limits")
    for lim in doc["limits"]:
        limits.add_row(lim["name"], lim["override"] or "declared", str(lim["allowed"]), str(lim["deferred"]))
    parts: list[Any] = [head, queues, procs, *_handles(doc["totals"].get("task_handles"))]
    parts += [breakers] if doc["breakers"] else []
    parts += [limits] if doc["limits"] else []
    parts += _schedules(doc.get("scheduler"))
    return Group(*parts)


HANDLE_COLUMNS = (
    ("tracked", "tracked"),
    ("results stored", "results_stored"),
    ("results refused", "results_refused"),
    ("tracking failures", "tracking_failures"),
    ("cancels recorded", "cancels_recorded"),
    ("batch cancels", "cancel_rules_recorded"),
    ("cancels honoured", "cancels_honoured"),
    ("unique duplicates refused", "unique_duplicates"),
    ("waiters", "waiters"),
)


def _handles(counts: dict[str, Any] | None) -> list[Any]:
    """The task handles table (one row; ``-`` where the service could not read Redis)."""
    from rich.table import Table

    if not counts:
        return []  # a metrics service older than these counts
    table = Table(*(title for title, _ in HANDLE_COLUMNS), title="task handles")
    table.add_row(*(_num(counts.get(key), 0) for _, key in HANDLE_COLUMNS))
    return [table]


def _schedules(sched: dict[str, Any] | None) -> list[Any]:
    """The schedules table, titled with the scheduler leader; nothing when no schedule exists."""
    from rich.table import Table

    if not sched or not sched.get("schedules"):
        return []
    leader = (
        f"{sched['leader']}, term {sched.get('term')}"
        if sched.get("leader")
        else "NONE (no scheduler leads: nothing fires)"
    )
    table = Table(
        "schedule",
        "task",
        "spec",
        "next fire",
        "last fire",
        "last task id",
        "fires",
        "caught up",
        "skipped",
        "last lag s",
        title=f"schedules (leader: {leader})",
    )
    for r in sched["schedules"]:
        nxt = "paused" if r["paused"] else r["next_fire"] or "-"
        spec = r["spec"] + (f" {r['tz']}" if r.get("tz") not in (None, "UTC") else "")
        lag = r.get("last_lag_ms")
        table.add_row(
            r["name"],
            r["task"],
            spec,
            nxt,
            r["last_fire"] or "-",
            r["last_task_id"] or "-",
            str(r.get("fires", 0)),
            str(r.get("caught_up", 0)),
            str(r.get("skipped", 0)),
            "-" if lag is None else f"{lag / 1000:.3f}",
        )
    return [table]


def status(
    url: str | None = typer.Option(
        None, "--url", help="the metrics service [default: http://SLUICE_METRICS_HOST:SLUICE_METRICS_PORT]"
    ),
    watch: bool = typer.Option(False, "--watch", "-w", help="refresh until Ctrl-C"),
    interval: float = typer.Option(2.0, "--interval", min=0.2, help="seconds between refreshes with --watch"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Queues (depth, rate, oldest age), workers, task handles, breakers, limits and schedules, from the
    metrics service."""
    target = url or _default_url()
    if not watch:
        doc = fetch_summary(target)
        if as_json:
            sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        else:
            from rich.console import Console

            Console().print(render(doc))
        return
    _watch(target, interval, as_json)


def _watch(target: str, interval: float, as_json: bool) -> None:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    doc = fetch_summary(target)  # the first read must work: a wrong URL fails at once
    try:
        if as_json:
            while True:
                sys.stdout.write(json.dumps(doc) + "\n")
                sys.stdout.flush()
                time.sleep(interval)
                doc = fetch_summary(target)
        with Live(render(doc), console=Console(), auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                try:
                    live.update(render(fetch_summary(target)), refresh=True)
                except SluiceError as e:
                    live.update(Text(f"{e} (retrying)"), refresh=True)
    except KeyboardInterrupt:
        return
