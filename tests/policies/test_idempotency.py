"""Exactly-once effect: a worker killed after an idempotent task's effect and before its ack."""

from __future__ import annotations

import json
import signal

import redis

from .conftest import Workers, publish, queue_state, records, wait_until


def test_kill_9_after_the_effect_before_the_ack(
    workers: Workers, env: dict[str, str], r: redis.Redis, unique: str, amqp_url: str
) -> None:
    w = workers.start("--concurrency", "4", "--prefetch", "64")
    workers.wait_consumers(1)
    key = f"{unique}:once"
    # the first delivery blocks, so the batched acks of every later (finished) delivery stay unsent: for
    # 2 s (then each is acked on its own: a blocked delivery holds back no other ack for long), and as
    # long as fewer than a quarter of the prefetch window wait behind it
    publish(env, "pol.block", [json.dumps({"key": key})])
    publish(env, "pol.once", [json.dumps({"key": key, "n": i}) for i in range(5)])
    wait_until(lambda: r.llen(key) >= 5, 15, "five effects")
    claims = [f"{unique}:idem:{{pol.once:{key}|{i}}}" for i in range(5)]
    wait_until(lambda: all(r.hget(c, "state") == b"d" for c in claims), 5, "the claims to complete")

    w.send_signal(signal.SIGKILL)
    w.wait(10)
    # nothing was acked: all six deliveries are back in the queue
    wait_until(lambda: queue_state(amqp_url, f"{unique}.q.default") == (6, 0), 10, "6 ready messages")

    workers.start()
    wait_until(lambda: queue_state(amqp_url, f"{unique}.q.default") == (0, 1), 15, "the redeliveries")
    wait_until(lambda: workers.log(1).count("already done") >= 5, 10, "five skips in the log")
    runs = records(r, key)
    assert sorted(n for n, _, _ in runs) == list(range(5)), "each effect happened exactly once"
