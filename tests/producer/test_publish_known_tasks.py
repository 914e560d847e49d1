"""`sluice publish` knows the built-in demo tasks, as the HTTP API does: a payload the worker would
dead-letter is refused at the door (one line naming the input, exit 1, nothing published)."""

from __future__ import annotations

from producer_helpers import Broker, run_cli


def env(broker: Broker) -> dict[str, str]:
    return {"SLUICE_AMQP_URL": broker.url, "SLUICE_PREFIX": broker.prefix}


async def test_a_bad_demo_payload_is_refused_before_publishing(broker: Broker) -> None:
    await broker.declare("default")
    r = await run_cli("publish", "demo.sleep", "--payload", '{"seconds": "abc"}', env=env(broker))
    assert r.code == 1, (r.code, r.err)
    lines = r.err.strip().splitlines()
    assert lines[0].startswith("sluice: error: "), r.err
    assert "seconds" in lines[0], r.err
    assert "Traceback" not in r.err
    assert r.out.strip() == ""
    assert await broker.count() == 0


async def test_a_good_demo_payload_is_published(broker: Broker) -> None:
    r = await run_cli("publish", "demo.sleep", "--payload", '{"seconds": 0.01}', env=env(broker))
    assert r.code == 0, r.err
    assert len(r.out.split()) == 1
    assert await broker.count() == 1
