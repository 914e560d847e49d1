"""A message that kills its worker every time ends in the DLQ after a bounded number of deliveries."""

from __future__ import annotations

import json
import subprocess

from .conftest import SLUICE, Workers, publish, queue_state


def test_a_poison_message_is_dead_lettered_by_the_delivery_limit(
    workers: Workers, env: dict[str, str], amqp_url: str, unique: str
) -> None:
    limit = 2
    env = {**env, "SLUICE_DELIVERY_LIMIT": str(limit)}
    workers.env = env
    (task_id,) = publish(env, "pol.poison", [json.dumps({"key": "x"})])
    runs = 0
    while (queue_state(amqp_url, f"{unique}.dlq") or (0, 0))[0] == 0:
        assert runs <= limit + 2, f"still not dead-lettered after {runs} worker deaths"
        proc = workers.start()
        code = proc.wait(30)  # the task calls os._exit(1)
        if code != 1:
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
