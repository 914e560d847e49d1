"""sluice's fast marshalling of a task's AMQP properties is byte for byte pamqp's, for any input."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands, header

from sluice._amqp_properties import TaskProperties
from sluice.protocol import TaskMessage
from sluice.publisher import Publisher
from sluice.settings import Settings

_ints = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([-129, -128, 127, 128, -32769, -32768, 32767, 32768, 65535, 65536, 2**31, 2**32]),
    st.integers(2**63, 2**64),  # out of every range: pamqp refuses it, and so must we
)
_values = st.one_of(_ints, st.text(max_size=40), st.booleans(), st.floats(allow_nan=False), st.none())
_keys = st.one_of(st.text(min_size=0, max_size=20), st.text(min_size=120, max_size=140))
_short = st.one_of(st.none(), st.just(""), st.text(max_size=30), st.text(min_size=250, max_size=260))


@st.composite
def properties(draw: st.DrawFn) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "content_type": draw(_short),
        "headers": draw(st.one_of(st.none(), st.dictionaries(_keys, _values, max_size=8))),
        "delivery_mode": draw(st.one_of(st.none(), st.integers(0, 255))),
        "message_id": draw(_short),
        "app_id": draw(_short),
    }
    if draw(st.booleans()):  # now and then a property outside the fast set
        kw[draw(st.sampled_from(["correlation_id", "reply_to", "expiration", "user_id"]))] = draw(
            st.text(min_size=1, max_size=10)
        )
    return kw


def _outcome(cls: type[commands.Basic.Properties], kw: dict[str, Any]) -> bytes | str:
    try:
        return cls(**kw).marshal()
    except Exception as e:  # the same refusal is part of "the same"
        return type(e).__name__


@settings(max_examples=600, deadline=None)
@given(properties())
def test_the_bytes_are_pamqps(kw: dict[str, Any]) -> None:
    """Any properties at all: the same bytes (fast path or fallback), or the same refusal."""
    assert _outcome(TaskProperties, kw) == _outcome(commands.Basic.Properties, kw)


_in_range = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([-129, -128, 127, 128, -32769, -32768, 32767, 32768, 65535, 65536, 2**31, 2**32 - 1]),
)


@settings(max_examples=400, deadline=None)
@given(
    content_type=st.one_of(st.none(), st.text(max_size=30)),
    headers=st.one_of(
        st.none(),
        st.dictionaries(st.text(min_size=1, max_size=20), st.one_of(_in_range, st.text()), max_size=8),
    ),
    delivery_mode=st.sampled_from([None, 1, 2]),
    message_id=st.one_of(st.none(), st.text(max_size=40)),
    app_id=st.one_of(st.none(), st.text(max_size=20)),
)
def test_the_fast_path_itself_writes_pamqps_bytes(**kw: Any) -> None:
    """A task's kind of properties (strings and in-range integers): encoded by the fast path, never the
    fallback, and still pamqp's bytes."""
    from sluice import _amqp_properties

    props = TaskProperties(**kw)
    assert _amqp_properties._marshal(props) == commands.Basic.Properties.marshal(props)


def test_a_tasks_properties_take_the_fast_path_and_decode_back() -> None:
    """What the publisher sends: encoded here (not by the fallback), and pamqp reads it back whole."""
    settings = Settings()
    msg = TaskMessage(
        "billing.charge", {"x": 1}, queue="billing", idempotency_key="k-ü", trace_id="t", eta_ms=1
    )
    props = Publisher(settings).properties(msg)
    assert type(props) is TaskProperties
    from sluice import _amqp_properties

    raw = _amqp_properties._marshal(props)  # raises if the fast path refused it
    assert raw == commands.Basic.Properties.marshal(props)
    frame = header.ContentHeader(0, 10, props).marshal()
    back = header.ContentHeader()
    back.unmarshal(frame)
    assert back.properties.headers == msg.headers()
    assert back.properties.message_id == msg.id and back.properties.delivery_mode == 2
