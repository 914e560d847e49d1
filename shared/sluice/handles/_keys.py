"""Where the task handles keep their state (``prefix`` is ``settings.prefix``).

* ``<prefix>:task:{<id>}``: hash, the task's record (state, attempt, gen, rank, task, queue, published,
  started, finished, worker, reason, next, etype, emsg, result, result_error, cancel, unique,
  unique_release); ``<prefix>:task:{<id>}:h``: list, its history (JSON entries, capped). Both expire
  ``track_ttl`` after a terminal state, and a week after any other write (nothing grows without bound).
* ``<prefix>:cancels``: sorted set, member = task id, score = the cancel's expiry (ms);
  ``<prefix>:cancel-rules``: hash, task name -> JSON ``{"before_ms", "expires_ms"}``;
  channel ``<prefix>:cancel`` (message: the id, or ``rule:<task>``).
* channel ``<prefix>:ended`` (message: the id of a task that reached a terminal state).
* ``<prefix>:unique:{<key>}``: string, the id holding the unique key (PX ttl).
* ``<prefix>:handle-stats``: hash, fleet-wide counts (``cancels``, ``cancel_rules``,
  ``unique_duplicates``), HINCRBY'd by :class:`~sluice.handles.TaskHandles` after each decision; a fixed
  set of fields, no TTL.

The ``{...}`` parts are Redis Cluster hash tags: a script touches the keys of one task id (or of one
unique key) only, so each runs in one slot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sluice.errors import ConfigError
from sluice.resilience.keys import KeySpace

__all__ = ["HandleKeys"]


@dataclass(frozen=True, slots=True)
class HandleKeys:
    """The layout above under ``prefix`` (checked, and the per-id keys built, by
    :class:`~sluice.resilience.keys.KeySpace`: the same ``<prefix>:<kind>:{<name>}`` form)."""

    prefix: str = "sluice"
    _space: KeySpace = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_space", KeySpace(self.prefix))

    def task(self, task_id: str) -> str:
        return self._space.key("task", task_id)

    def history(self, task_id: str) -> str:
        return self._space.key("task", task_id, "h")

    def record(self, task_id: str) -> list[str]:
        """``[task(task_id), history(task_id)]``, the keys of every write, built at once (the hot path)."""
        if not task_id:
            raise ConfigError("a task id must not be empty")
        key = f"{self.prefix}:task:{{{task_id}}}"
        return [key, key + ":h"]

    def unique(self, key: str) -> str:
        if not key:
            raise ConfigError("a unique key must not be empty")
        return self._space.key("unique", key)

    @property
    def cancels(self) -> str:
        return f"{self.prefix}:cancels"

    @property
    def cancel_rules(self) -> str:
        return f"{self.prefix}:cancel-rules"

    @property
    def cancel_channel(self) -> str:
        return f"{self.prefix}:cancel"

    @property
    def stats(self) -> str:
        return f"{self.prefix}:handle-stats"

    @property
    def ended_channel(self) -> str:
        return f"{self.prefix}:ended"
