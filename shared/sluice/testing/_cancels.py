"""The live cancels of a :class:`~sluice.testing.TestWorker`, in memory: what ``TaskHandles.cancel`` and
``cancel_batch`` record in Redis and each worker's :class:`~sluice.handles.CancelWatch` holds.

The worker's own cancel steps read it (:mod:`sluice_worker.policies.cancel`): a delivery of a cancelled
task is acked ``cancelled`` without running, wherever it waits; a running ``async`` handler is cancelled
(``CancelledError``), a plain function sees ``ctx.cancelled``. A cancel never expires here (a test is
short); the notification is immediate.
"""

from __future__ import annotations

from collections.abc import Callable

from sluice_worker.policies.cancel import Canceller

__all__ = ["MemoryCancels"]


class MemoryCancels:
    """Cancelled task ids and rules (task name -> published before, ms since the epoch)."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.rules: dict[str, int] = {}
        self._callbacks: list[Callable[[str], None]] = []
        self.canceller = Canceller(self)  # the worker's: it cancels the running deliveries a cancel covers
        self.on_cancel(self.canceller.cancel)

    def is_cancelled(self, task_id: str, task: str, published_ms: int | None) -> bool:
        if task_id in self.ids:
            return True
        before = self.rules.get(task)
        return before is not None and published_ms is not None and published_ms < before

    def on_cancel(self, callback: Callable[[str], None]) -> None:
        self._callbacks.append(callback)

    def cancel(self, task_id: str) -> None:
        """Cancel ``task_id`` (as ``sluice task cancel ID``), and its running handler at once."""
        self.ids.add(task_id)
        self._notify(task_id)

    def cancel_batch(self, task: str, before_ms: int) -> None:
        """Cancel every ``task`` published before ``before_ms`` (``sluice task cancel --task --before``)."""
        self.rules[task] = max(before_ms, self.rules.get(task, before_ms))
        self._notify("")  # no id: each running delivery is checked against the rule

    def _notify(self, task_id: str) -> None:
        for callback in self._callbacks:
            callback(task_id)
