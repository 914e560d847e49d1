"""A message that kills its worker every time ends in the DLQ after a bounded number of deliveries."""

from __future__ import annotations

import json
import subprocess
import time

from .conftest import SLUICE, Workers, publish, queue_state


def test_a_poison_message_is_dead_lettered_by_the_delivery_limit(
    workers: Workers, env: dict[str, str], amqp_url: str, unique: str
) -> None:
    limit = 2
    env = {**env, "SLUICE_DELIVERY_LIMIT": str(limit)}
    workers.env = env
    (task_id,) = publish(env, "pol.poison", [json.dumps({"key": "x"})])

    def dead_lettered() -> bool:
        return (queue_state(amqp_url, f"{unique}.dlq") or (0, 0))[0] > 0

    runs = 0
    while not dead_lettered():
        assert runs <= limit + 2, f"still not dead-lettered after {runs} worker deaths"
        proc = workers.start()
        # the task calls os._exit(1); or the broker dead-letters the message (it does so a moment after
        # the last death, so this worker may never receive it): whichever comes first
        deadline = time.monotonic() + 30
        while proc.poll() is None and not dead_lettered():
            assert time.monotonic() < deadline, "the worker neither died nor saw the task dead-lettered"
            time.sleep(0.1)
        if proc.poll() != 1:
            break
        runs += 1
    assert runs >= 1
    out = subprocess.run(
        [*SLUICE, "dlq", "ls", "--json"], env=env, capture_output=True, text=True, timeout=30
    )
    (dead,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert dead["id"] == task_id
    assert dead["reason"] == "delivery_limit"
    assert runs <= limit + 1, runs
