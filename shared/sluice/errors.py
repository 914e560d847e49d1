"""Every exception sluice raises on purpose derives from :class:`SluiceError`.

The tree::

    SluiceError
    ├── ConfigError                 settings or arguments that cannot work (also a ValueError)
    ├── ProtocolError               a message that breaks the contract (docs/protocol.md)
    │   ├── MessageTooLarge         body over the size cap
    │   ├── NotJSON                 body is not a JSON object
    │   └── MissingHeader           a required header is absent or malformed
    ├── TaskError                   defining or finding tasks
    │   ├── UnknownTask             no handler registered under that name
    │   └── TaskDefinitionError     a handler whose signature sluice cannot call
    ├── BrokerError                 RabbitMQ could not do what was asked
    │   ├── BrokerUnavailable       not reachable, or blocked by a resource alarm
    │   ├── UnknownQueue            a queue that is neither configured nor on the broker
    │   └── PublishError            a publish was not confirmed
    │       ├── PublishNacked       the broker refused it (nack, or reject-publish overflow)
    │       ├── PublishReturned     unroutable: no queue is bound for its routing key
    │       └── PublishTimeout      no confirm within the publish timeout
    ├── ResilienceError             see sluice.resilience.errors for its subtree
    ├── Throttled                   the upstream said "not now" (HTTP 429, or 503 with Retry-After): carries
    │                               retry_after, until and scope (defined in sluice.throttle)
    └── HandleError                 task handles (status, wait, cancel, unique enqueue)
        ├── TrackingUnavailable     Redis unreachable: the state is unavailable, not "unknown"
        ├── WaitTimeout             the task did not end within the wait
        ├── TaskFailed              it ended failed (carries the TaskStatus)
        ├── TaskDead                it ended dead, in the DLQ (carries the TaskStatus)
        ├── TaskCancelled           it ended cancelled (carries the TaskStatus)
        └── ResultTooLarge          a result over its max_bytes
                                    (the subtree is defined in sluice.handles.errors)

:class:`ConfigError` also derives from the built-in ``ValueError``: the resilience primitives and their
policies (``Rate``, ``GCRALimiter``, ``BreakerPolicy``, ``RetryPolicy``, the backoffs, ``KeySpace``, ...)
raised a bare ``ValueError`` for bad arguments before they raised ``ConfigError``, so a caller that
catches ``ValueError`` still catches them. ``except SluiceError`` catches every one of them too.

``tests/core/test_error_tree.py`` walks every ``raise`` in ``shared/`` and ``services/`` and calls the
public constructors with bad arguments to keep it so.
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "BrokerUnavailable",
    "ConfigError",
    "HandleError",
    "MessageTooLarge",
    "MissingHeader",
    "NotJSON",
    "ProtocolError",
    "PublishError",
    "PublishNacked",
    "PublishReturned",
    "PublishTimeout",
    "ResilienceError",
    "SluiceError",
    "TaskDefinitionError",
    "TaskError",
    "UnknownQueue",
    "UnknownTask",
]


class SluiceError(Exception):
    """Root of every error sluice raises on purpose."""


class ConfigError(SluiceError, ValueError):
    """Settings or arguments that cannot work (a ``ValueError`` too: see the module docstring)."""


class ProtocolError(SluiceError):
    """A message that breaks the message contract.

    ``reason`` is the short machine-readable word written to the dead-letter headers.
    """

    reason = "protocol"


class MessageTooLarge(ProtocolError):
    reason = "too_large"


class NotJSON(ProtocolError):
    reason = "not_json"


class MissingHeader(ProtocolError):
    reason = "bad_headers"


class TaskError(SluiceError):
    """Defining or finding tasks."""


class UnknownTask(TaskError):
    reason = "unknown_task"


class TaskDefinitionError(TaskError):
    """A handler whose signature sluice cannot call."""


class BrokerError(SluiceError):
    """RabbitMQ could not do what was asked."""


class BrokerUnavailable(BrokerError):
    """The broker is not reachable, or is blocking publishers (memory or disk alarm)."""


class UnknownQueue(BrokerError):
    """A queue this producer may not create: not in its configuration and not on the broker.

    ``allowed`` names the queues it may create (a caller shows them to the user).
    """

    def __init__(self, queue: str, allowed: list[str]) -> None:
        self.queue = queue
        self.allowed = allowed
        super().__init__(
            f"unknown queue {queue!r}: it does not exist and this producer may only create "
            f"{', '.join(repr(q) for q in allowed) or 'no queue'}"
        )


class PublishError(BrokerError):
    """A publish was not confirmed by the broker."""


class PublishNacked(PublishError):
    """The broker nacked the publish."""


class PublishReturned(PublishError):
    """The publish was returned as unroutable."""


class PublishTimeout(PublishError):
    """No confirm arrived within the publish timeout."""


class ResilienceError(SluiceError):
    """Root of the resilience primitives' errors (sluice.resilience.errors)."""


class HandleError(SluiceError):
    """Root of the task handles' errors (sluice.handles.errors)."""
