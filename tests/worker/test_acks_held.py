"""The ack tracker's count of finished deliveries held behind a running one (what the flusher acks alone)."""

from __future__ import annotations

from sluice_worker._acks import AckTracker


def test_finished_counts_only_what_no_multiple_ack_can_cover_once_taken() -> None:
    t = AckTracker()
    for tag in range(1, 7):
        t.received(tag)
    t.finish(1)
    t.finish(3)
    t.finish(4)
    assert t.finished == 3
    assert t.take() == 1  # the prefix: 1
    assert t.finished == 2  # 3 and 4 wait behind 2, which still runs
    assert t.finished_out_of_order() == [3, 4]  # acked alone
    assert t.finished == 0
    t.finish(5)
    t.settle(2)  # 2 answered on its own (nacked)
    assert t.is_pending(6) and not t.is_pending(2) and not t.is_pending(99)
    assert t.take() == 5  # 2 settled, 3 and 4 acked alone, 5 finished: covered by one ack
    assert t.finished == 0 and t.outstanding == 1 and t.pending == 1
