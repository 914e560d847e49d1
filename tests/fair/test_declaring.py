"""Declaring fair share: ``@task(fair=...)`` in each form, what is refused at import, and the routing
function every publisher shares (no broker: these are the declarations and the hash)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from sluice import task
from sluice.errors import ConfigError, TaskDefinitionError
from sluice.fair import FairRoutes, shard_of, sub_queues
from sluice.policy import Fair, RateLimit
from sluice.tasks import Registry


class P(BaseModel):
    tenant: str = ""


def _noop(p: P) -> None:
    return None


def test_each_form_of_fair_names_the_tenant_field() -> None:
    assert task("a", fair="tenant")(_noop).policy.fair == Fair("tenant", 8)
    assert task("b", fair=Fair("org.id", shards=16))(_noop).policy.fair == Fair("org.id", 16)
    keyed = task("c", rate_limit=RateLimit(10, key="customer"), fair=True)(_noop)
    assert keyed.policy.fair == Fair("customer", 8)
    assert task("d", fair=False)(_noop).policy.fair is None
    assert task("e")(_noop).policy.fair is None


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"fair": True}, "rate limit's key"),
        ({"fair": True, "rate_limit": "10/s"}, "rate limit's key"),
        ({"fair": "not a field"}, "bad payload field"),
        ({"fair": 3}, "bad fair"),
    ],
)
def test_a_bad_fair_declaration_fails_at_import(options: dict[str, object], says: str) -> None:
    with pytest.raises(TaskDefinitionError, match=says):
        task("bad", **options)(_noop)  # type: ignore[arg-type]


@pytest.mark.parametrize("shards", [1, 65, True, 8.0])
def test_a_bad_shard_count_is_refused(shards: object) -> None:
    with pytest.raises(ConfigError, match="bad fair shards"):
        Fair("tenant", shards=shards)  # type: ignore[arg-type]


def test_fair_tasks_of_one_queue_must_agree_on_their_shards() -> None:
    reg = Registry(
        [task("x", queue="q", fair="tenant")(_noop), task("y", queue="q", fair=Fair("tenant", 16))(_noop)]
    )
    with pytest.raises(TaskDefinitionError, match="same shards"):
        reg.fair_routes()


def test_a_queue_named_like_a_sub_queue_is_refused() -> None:
    reg = Registry([task("x", queue="q", fair="tenant")(_noop), task("y", queue="q.f3")(_noop)])
    with pytest.raises(TaskDefinitionError, match="sub-queue name"):
        reg.fair_routes()


def test_the_shard_is_crc32_of_the_tenant_modulo_the_shards() -> None:
    # the values docs/protocol.md gives, for publishers in other languages
    assert [shard_of(t, 8) for t in ("acme", "globex", "A", "B", "42")] == [6, 2, 3, 1, 0]
    assert shard_of("acme", 16) == 14


def test_routes_and_the_queues_a_worker_consumes() -> None:
    reg = Registry([task("x", queue="q", fair="tenant")(_noop), task("y", queue="other")(_noop)])
    routes = reg.fair_routes()
    assert routes.route("x", "q", {"tenant": "acme"}) == "q.f6"
    assert routes.route("x", "q", {"tenant": 42}) == "q.f0"  # a number is its text
    assert routes.route("x", "q", {}) == "q"  # no tenant: the queue itself
    assert routes.route("x", "elsewhere", {"tenant": "acme"}) == "elsewhere"  # not its own queue
    assert routes.route("y", "other", {"tenant": "acme"}) == "other"  # not fair
    assert routes.expand(["other", "q"]) == ["other", "q", *sub_queues("q", 8)]
    assert routes.shards("q") == 8 and routes.shards("other") is None
    assert not FairRoutes() and routes
