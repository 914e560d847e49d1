from __future__ import annotations

import pytest
from pydantic import ValidationError

from sluice.settings import Settings, mask_url


def test_defaults_match_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(__import__("os").environ):
        if k.startswith("SLUICE_"):
            monkeypatch.delenv(k)
    s = Settings()
    assert s.amqp_url == "amqp://guest:guest@localhost:5672/"
    assert s.redis_url == "redis://localhost:6379/0"
    assert (s.producer_port, s.metrics_port, s.max_message_bytes) == (8000, 9108, 1024 * 1024)
    assert (s.prefix, s.queue_type) == ("sluice", "quorum")


def test_environment_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_PREFIX", "acme")
    monkeypatch.setenv("SLUICE_QUEUE_TYPE", "classic")
    monkeypatch.setenv("SLUICE_CONCURRENCY", "7")
    s = Settings()
    assert (s.prefix, s.queue_type, s.concurrency) == ("acme", "classic", 7)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amqp_url", "http://x"),
        ("redis_url", "amqp://x"),
        ("prefix", "a b"),
        ("queue_type", "stream"),
        ("prefetch", 0),
        ("track_ttl", 0),
        ("track_running_after", -0.1),
        ("track_running_after", 61),
        ("track_all", "sometimes"),
        ("gc_threshold", -1),
        ("gc_threshold", 10_000_001),
    ],
)
def test_bad_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        Settings(**{field: value})


def test_secrets_are_masked() -> None:
    s = Settings(amqp_url="amqp://u:s3cret@h:5672/v", redis_url="redis://:pw@r:6379/1")
    shown = s.masked()
    assert shown["amqp_url"] == "amqp://u:***@h:5672/v"
    assert shown["redis_url"] == "redis://:***@r:6379/1"
    assert "s3cret" not in str(shown) and "pw@" not in str(shown)
    assert mask_url("redis://r:6379/0") == "redis://r:6379/0"


def test_tracking_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(__import__("os").environ):
        if k.startswith("SLUICE_"):
            monkeypatch.delenv(k)
    assert (Settings().track_all, Settings().track_ttl, Settings().track_running_after) == (
        False,
        86400.0,
        0.1,
    )
    monkeypatch.setenv("SLUICE_TRACK_ALL", "true")
    monkeypatch.setenv("SLUICE_TRACK_TTL", "3600")
    monkeypatch.setenv("SLUICE_TRACK_RUNNING_AFTER", "0")
    assert (Settings().track_all, Settings().track_ttl, Settings().track_running_after) == (True, 3600.0, 0.0)


def test_several_broker_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_AMQP_URL", "amqp://u:pw@n1:5672/, amqp://u:pw@n2:5672/,amqps://n3/")
    s = Settings()
    assert s.amqp_urls == ("amqp://u:pw@n1:5672/", "amqp://u:pw@n2:5672/", "amqps://n3/")
    assert s.masked()["amqp_url"] == "amqp://u:***@n1:5672/,amqp://u:***@n2:5672/,amqps://n3/"
    assert Settings(amqp_url="amqp://one/").amqp_urls == ("amqp://one/",)
    for bad in ("amqp://a/,,amqp://b/", "amqp://a/,http://b/", "amqp://a/,"):
        with pytest.raises(ValidationError):
            Settings(amqp_url=bad)


def test_redis_cluster_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLUICE_REDIS_CLUSTER", raising=False)
    assert Settings().redis_cluster is False
    monkeypatch.setenv("SLUICE_REDIS_CLUSTER", "true")
    monkeypatch.setenv("SLUICE_REDIS_URL", "redis://10.0.0.7:7001")
    s = Settings()
    assert s.redis_cluster and s.redis_url == "redis://10.0.0.7:7001"
    for bad in ("redis://n:7001/2", "unix:///tmp/redis.sock"):
        with pytest.raises(ValidationError):
            Settings(redis_url=bad, redis_cluster=True)
