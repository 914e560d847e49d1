"""When a schedule's occurrences fall, and what a scheduler fires now: the catch-up plan.

Occurrences are instants in ms since the Unix epoch (UTC). An interval schedule's are the whole multiples
of its interval; a cron schedule's are cronsim's, evaluated in the schedule's time zone, so DST follows
cronsim (Debian cron's rules): a job whose local time is skipped by a spring-forward transition (02:30 on
a day that goes from 02:00 to 03:00) runs once, right after the jump (03:00); a job whose local time is
repeated by a fall-back transition (01:30 twice) runs once, at the first one. Jobs that run every hour
or more often keep their wall-clock pattern (an hourly job runs twice in a repeated hour).

:func:`plan` is pure: given the last fired occurrence (the cursor), the time now and when the current
leader's term began, it says what to fire. Occurrences due before the term began (less a grace of
:data:`GRACE_MS`) were missed while no scheduler ran: the schedule's catch-up policy decides about them.
Occurrences due during the term are all fired (a broker outage delays them, never drops them), at most
:data:`BACKLOG_CAP` of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from cronsim import CronSim

from .spec import CatchUp, Schedule

__all__ = ["BACKLOG_CAP", "GRACE_MS", "Plan", "count_between", "jitter_ms", "next_after", "plan", "tail"]

#: an occurrence due this little before a term began still counts as on time
GRACE_MS = 1000
#: at most this many occurrences due during one term are fired at once (a very long broker outage)
BACKLOG_CAP = 1000
#: counts of missed occurrences stop here (a cron schedule counted over a long outage)
COUNT_CAP = 100_000


def _local(s: Schedule, ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(s.zone)


def _forward(s: Schedule, after_ms: int) -> Iterator[int]:
    """The occurrences strictly after ``after_ms``, in order."""
    step = s.interval_ms
    if step is not None:
        o = (after_ms // step + 1) * step
        while True:
            yield o
            o += step
    assert s.cron is not None
    for when in CronSim(s.cron, _local(s, after_ms)):
        o = int(when.timestamp() * 1000)
        if o > after_ms:  # never before the start (a repeated hour's second pass yields a later instant)
            yield o


def next_after(s: Schedule, after_ms: int) -> int:
    """The first occurrence strictly after ``after_ms``."""
    return next(_forward(s, after_ms))


def between(s: Schedule, after_ms: int, until_ms: int, limit: int) -> list[int]:
    """The first ``limit`` occurrences in ``(after_ms, until_ms]``."""
    out: list[int] = []
    if until_ms <= after_ms:
        return out
    for o in _forward(s, after_ms):
        if o > until_ms or len(out) >= limit:
            break
        out.append(o)
    return out


def count_between(s: Schedule, after_ms: int, until_ms: int) -> int:
    """How many occurrences fall in ``(after_ms, until_ms]`` (at most :data:`COUNT_CAP`)."""
    step = s.interval_ms
    if until_ms <= after_ms:
        return 0
    if step is not None:
        return min(COUNT_CAP, until_ms // step - after_ms // step)
    return len(between(s, after_ms, until_ms, COUNT_CAP))


def tail(s: Schedule, after_ms: int, until_ms: int, n: int) -> list[int]:
    """The last ``n`` occurrences in ``(after_ms, until_ms]``, in order (a window that doubles backwards
    from ``until_ms``, so a long gap costs about ``2 n`` evaluations, not one per missed occurrence)."""
    if until_ms <= after_ms or n <= 0:
        return []
    step = s.interval_ms
    if step is not None:
        last = until_ms // step * step
        first = max(after_ms // step + 1, last // step - n + 1) * step
        return list(range(first, last + 1, step)) if last > after_ms else []
    width = 1000
    while True:
        start = max(after_ms, until_ms - width)
        found = between(s, start, until_ms, COUNT_CAP)
        if len(found) >= n or start == after_ms:
            return found[-n:]
        width *= 2


def jitter_ms(s: Schedule, occurrence_ms: int) -> int:
    """The fire delay of one occurrence, in ``[0, jitter)``: the same on every replica."""
    span = round(s.jitter * 1000)
    if span <= 0:
        return 0
    digest = hashlib.blake2b(f"{s.name}:{occurrence_ms}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % span


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do now for one schedule.

    ``fire``: the occurrences to fire, in order (each as ``(occurrence, caught_up)``); ``skip_to``: move
    the cursor there without firing (the missed occurrences a policy drops) before them; ``skipped``: how
    many occurrences are dropped; ``next_due``: when (ms, jitter included) the first occurrence after this
    plan is due.
    """

    fire: tuple[tuple[int, bool], ...] = ()
    skip_to: int | None = None
    skipped: int = 0
    next_due: int | None = None


def plan(s: Schedule, cursor_ms: int, now_ms: int, term_start_ms: int) -> Plan:
    """What to fire at ``now_ms`` after the last fired occurrence ``cursor_ms`` (see the module doc)."""
    boundary = term_start_ms - GRACE_MS  # occurrences before it were missed while no scheduler ran
    fire: list[tuple[int, bool]] = []
    skip_to: int | None = None
    skipped = 0
    last = cursor_ms
    missed_until = min(boundary - 1, now_ms)
    if missed_until > cursor_ms and next_after(s, cursor_ms) <= missed_until:  # something was missed
        if s.catch_up is CatchUp.ALL:
            latest = tail(s, cursor_ms, missed_until, s.max_catch_up)
        else:
            latest = tail(s, cursor_ms, missed_until, 1)
        if latest:
            total = count_between(s, cursor_ms, missed_until)
            if s.catch_up is CatchUp.SKIP:
                skip_to, skipped = latest[-1], total
            else:
                fire.extend((o, True) for o in latest)
                skipped = total - len(latest)
            last = latest[-1]
    for o in between(s, max(last, missed_until), now_ms, BACKLOG_CAP):
        if o + jitter_ms(s, o) > now_ms:
            break
        fire.append((o, False))
    end = fire[-1][0] if fire else (skip_to if skip_to is not None else last)
    nxt = next_after(s, max(end, last))
    return Plan(tuple(fire), skip_to, skipped, nxt + jitter_ms(s, nxt))
