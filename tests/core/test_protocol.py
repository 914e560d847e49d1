from __future__ import annotations

import json

import pytest

from sluice import protocol as p
from sluice.errors import MessageTooLarge, MissingHeader, NotJSON


def headers(**over: object) -> dict[str, object]:
    h: dict[str, object] = {
        p.H_VERSION: 1,
        p.H_TASK: "demo.noop",
        p.H_ATTEMPT: 1,
        p.H_CREATED_AT: 1_700_000_000_000,
    }
    h.update(over)
    return {k: v for k, v in h.items() if v is not None}


def test_round_trip_keeps_every_field() -> None:
    msg = p.TaskMessage(
        "billing.charge", {"amount": 3, "who": "ü"}, queue="billing", idempotency_key="k-1", trace_id="tr"
    )
    body = p.encode_body(msg.payload, 1024)
    back = p.decode(body, msg.headers(), msg.id, 1024)
    assert back == msg


def test_encode_is_compact_utf8_json() -> None:
    assert p.encode_body({"a": [1, 2], "b": "é"}, 100) == '{"a":[1,2],"b":"é"}'.encode()


def test_size_cap_checked_on_both_ends() -> None:
    with pytest.raises(MessageTooLarge):
        p.encode_body({"x": "y" * 200}, 100)
    with pytest.raises(MessageTooLarge) as e:
        p.decode(b"{}" + b" " * 200, headers(), "id", 100)
    assert e.value.reason == "too_large"


@pytest.mark.parametrize("body", [b"not json", b"\xff\xfe", b"[1,2]", b'"s"', b"{"])
def test_not_json_object(body: bytes) -> None:
    with pytest.raises(NotJSON) as e:
        p.decode(body, headers(), "id", 1024)
    assert e.value.reason == "not_json"


def test_encode_refuses_non_objects_and_nan() -> None:
    with pytest.raises(NotJSON):
        p.encode_body([1], 100)  # type: ignore[arg-type]
    with pytest.raises(NotJSON):
        p.encode_body({"x": float("nan")}, 100)
    with pytest.raises(NotJSON):
        p.encode_body({"x": object()}, 100)


@pytest.mark.parametrize(
    "h",
    [
        headers(**{p.H_TASK: None}),
        headers(**{p.H_TASK: 5}),
        headers(**{p.H_VERSION: 2}),
        headers(**{p.H_ATTEMPT: 0}),
        headers(**{p.H_ATTEMPT: "x"}),
        headers(**{p.H_IDEMPOTENCY_KEY: ""}),
        headers(**{p.H_IDEMPOTENCY_KEY: "k" * 513}),
        None,
    ],
)
def test_bad_headers(h: dict[str, object] | None) -> None:
    with pytest.raises(MissingHeader) as e:
        p.decode(b"{}", h, "id", 1024)
    assert e.value.reason == "bad_headers"


def test_header_values_as_bytes_are_accepted() -> None:
    """Other AMQP clients send long strings as bytes; the contract reads them as UTF-8."""
    h = headers(**{p.H_TASK: b"demo.noop", p.H_ATTEMPT: b"3", p.H_IDEMPOTENCY_KEY: b"k"})
    m = p.decode(b'{"a":1}', h, None, 1024)
    assert (m.task, m.attempt, m.idempotency_key, m.payload) == ("demo.noop", 3, "k", {"a": 1})
    assert m.id  # a missing message_id gets a fresh id rather than failing


def test_headers_omit_absent_optionals() -> None:
    h = p.TaskMessage("t", {}).headers()
    assert p.H_IDEMPOTENCY_KEY not in h and p.H_TRACE_ID not in h
    assert h[p.H_VERSION] == p.PROTOCOL_VERSION == 1
    json.dumps(h)  # every header is plain JSON-able data, as the contract says


def test_task_ids_are_canonical_random_uuids() -> None:
    """``new_task_id`` writes the UUID text itself (for speed): it must be what ``str(uuid.uuid4())`` is."""
    import uuid

    from sluice.protocol import new_task_id

    ids = [new_task_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        u = uuid.UUID(text)
        assert str(u) == text and u.version == 4 and u.variant == uuid.RFC_4122
    # every hex digit shows up in every free position (the bits are random, not a fixed pattern)
    free = [i for i in range(36) if i not in (8, 13, 14, 18, 19, 23)]
    for i in free:
        assert len({t[i] for t in ids}) == 16, i
    assert {t[19] for t in ids} == set("89ab")
