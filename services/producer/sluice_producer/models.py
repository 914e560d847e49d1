"""The shapes the producer accepts and answers: HTTP bodies, and NDJSON envelopes of ``sluice publish``.

Pure pydantic (no FastAPI import), so the CLI can validate envelopes with the same rules as the API.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, WithJsonSchema, field_validator

from sluice_producer._durations import DURATION_PATTERN, delay_seconds

MAX_DELAY_S = 30 * 86400.0

# a delay in seconds: a JSON number (strict: true/false are not numbers), 0 to 30 days
DelaySeconds = Annotated[float, Strict(), Field(ge=0, le=MAX_DELAY_S)]
# a delay as text: the server checks exactly the pattern the schema publishes (delay_seconds)
DelayText = Annotated[str, WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN})]

__all__ = [
    "BatchAccepted",
    "BatchFailure",
    "BatchIn",
    "BatchNotConfirmed",
    "ErrorOut",
    "HealthOut",
    "TaskAccepted",
    "TaskIn",
]

TASK_NAME_PATTERN = r"^[A-Za-z0-9_\-.:]{1,200}$"
QUEUE_NAME_PATTERN = r"^[A-Za-z0-9_\-.]{1,200}$"


class TaskIn(BaseModel):
    """One task to publish."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"task": "demo.greet", "payload": {"who": "ada"}, "idempotency_key": "greet-ada-1"}]
        },
    )

    task: str = Field(
        pattern=TASK_NAME_PATTERN,
        description="task name, as given to @task on the worker (1-200 of A-Z a-z 0-9 _ - . :)",
    )
    payload: dict[str, Any] = Field(
        default_factory=dict,
        description="the task's arguments: a JSON object, at most max_message_bytes once encoded",
    )
    queue: str | None = Field(
        None,
        pattern=QUEUE_NAME_PATTERN,
        description="sluice queue to publish to; default: the task's queue if the producer knows the "
        "task, else the configured default queue",
    )
    idempotency_key: str | None = Field(
        None,
        min_length=1,
        max_length=512,
        description="workers run at most one task per key (header x-sluice-idempotency-key)",
    )
    trace_id: str | None = Field(
        None, min_length=1, max_length=200, description="propagated as header x-sluice-trace-id"
    )
    delay: DelaySeconds | DelayText | None = Field(
        None,
        description="run no sooner than this from now: seconds (a number, 0 to 2592000), or a duration "
        "string: a number with ms, s, m, h or d such as 30s, 5m, 1500ms (at most 30 days); kept to "
        "about +-0.5 s by the delay tiers",
    )

    @field_validator("delay")
    @classmethod
    def _delay(cls, v: float | str | None) -> float | None:
        if isinstance(v, str):
            return delay_seconds(v)
        return v


class BatchIn(BaseModel):
    """Several tasks, validated all together before any is published."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[TaskIn] = Field(min_length=1, description="the tasks, published in this order")


class TaskAccepted(BaseModel):
    """The broker confirmed the task: it is on disk in its queue."""

    id: str = Field(description="the task id (AMQP message_id)")
    task: str = Field(description="the task name")
    queue: str = Field(description="the sluice queue it went to")


class BatchAccepted(BaseModel):
    """Every task of the batch was confirmed by the broker."""

    ids: list[str] = Field(description="task ids, in the order of the request")


class BatchFailure(BaseModel):
    """One task of a batch that was not confirmed."""

    index: int = Field(description="position in the request's tasks list (0-based)")
    id: str = Field(description="the id it was given; it may still arrive if the broker confirms late")
    error: str = Field(description="why it was not confirmed")


class BatchNotConfirmed(BaseModel):
    """Some tasks of a batch were not confirmed: retry those listed in ``failed``."""

    detail: str = Field(description="what went wrong")
    ids: list[str] = Field(description="every task id, in the order of the request")
    confirmed: list[int] = Field(description="indexes of the tasks the broker confirmed")
    failed: list[BatchFailure] = Field(description="the tasks that were not confirmed")


class ErrorOut(BaseModel):
    """An error answer."""

    detail: Any = Field(description="a message, or the list of validation errors")


class HealthOut(BaseModel):
    """Liveness or readiness."""

    status: str = Field(description="ok, or why not")
    broker: str | None = Field(None, description="state of the RabbitMQ connection (readyz only)")
