"""Which deliveries of one channel may be acknowledged, and with how few frames.

Acking each delivery costs one frame; ``basic.ack(multiple=True)`` acknowledges every outstanding delivery up
to a tag in one. With handlers running concurrently, a multiple-ack may only cover a contiguous prefix of
deliveries that are all *finished*: an earlier delivery still running must never be acked by it.

:class:`AckTracker` keeps the deliveries of one channel in arrival (= delivery-tag) order, each pending,
finished (to be acked) or settled (already answered by its own frame, e.g. a nack), and says which tag a
single multiple-ack can cover, and which finished ones no multiple-ack can (a pending one precedes them).
Every delivery must end finished or settled (or its channel be dropped): one left pending would hold back
every later multiple-ack. It is pure bookkeeping: no I/O, no event loop.
"""

from __future__ import annotations

from collections import deque

__all__ = ["AckTracker"]

_PENDING = 0
_FINISHED = 1
_SETTLED = 2


class AckTracker:
    """Delivery tags of one channel, in the order the broker delivered them."""

    __slots__ = ("_order", "_state", "finished")

    def __init__(self) -> None:
        self._order: deque[int] = deque()
        self._state: dict[int, int] = {}
        self.finished = 0  # finished deliveries not yet handed out by take() or finished_out_of_order()

    def received(self, tag: int) -> None:
        """A delivery arrived (tags of one channel increase)."""
        if self._order and tag <= self._order[-1]:
            raise ValueError(f"delivery tag {tag} after {self._order[-1]}: tags must increase")
        self._order.append(tag)
        self._state[tag] = _PENDING

    def finish(self, tag: int) -> bool:
        """The delivery's handler is done: it is to be acked. True if the ackable prefix may have grown."""
        grown = self._mark(tag, _FINISHED)
        self.finished += 1
        return grown

    def settle(self, tag: int) -> bool:
        """The delivery was answered on its own (nack/reject): never ack it. True as for :meth:`finish`."""
        return self._mark(tag, _SETTLED)

    def is_pending(self, tag: int) -> bool:
        """Received, and neither finished nor settled."""
        return self._state.get(tag) == _PENDING

    def _mark(self, tag: int, state: int) -> bool:
        if self._state.get(tag) != _PENDING:
            raise KeyError(f"delivery tag {tag} is not pending")
        self._state[tag] = state
        return self._order[0] == tag

    def take(self) -> int | None:
        """Drop the done prefix; the tag for one ``multiple=True`` ack covering it, or None if none is due.

        The tag returned is the last *finished* one of the prefix: settled deliveries past it are no longer
        outstanding on the broker, so leaving them out of the ack is harmless, and acking a settled tag
        itself would be an error.
        """
        order, state = self._order, self._state
        last: int | None = None
        while order:
            tag = order[0]
            s = state[tag]
            if s == _PENDING:
                break
            order.popleft()
            del state[tag]
            if s == _FINISHED:
                last = tag
                self.finished -= 1
        return last

    def finished_out_of_order(self) -> list[int]:
        """Finished deliveries that a multiple-ack cannot cover (a pending one precedes them); forgets them.

        Each is to be acked on its own frame: by a drain, which leaves the pending ones for the broker to
        redeliver, and by the flusher once :attr:`finished` shows a batch of them held behind a delivery
        that is still running (a slow or hung handler must not hold the prefetch window of the others).
        """
        out = [t for t in self._order if self._state[t] == _FINISHED]
        for t in out:
            self._state[t] = _SETTLED
        self.finished -= len(out)
        return out

    @property
    def outstanding(self) -> int:
        """Deliveries received and not yet covered by :meth:`take`."""
        return len(self._order)

    @property
    def pending(self) -> int:
        """Deliveries whose handler has not finished."""
        return sum(1 for s in self._state.values() if s == _PENDING)
