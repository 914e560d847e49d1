"""The shapes the producer accepts and answers: HTTP bodies, and NDJSON envelopes of ``sluice publish``.

Pure pydantic (no FastAPI import), so the CLI can validate envelopes with the same rules as the API.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from sluice_producer._durations import DURATION_PATTERN, delay_seconds

MAX_DELAY_S = 30 * 86400.0

# a delay in seconds: a JSON number (strict: true/false are not numbers), 0 to 30 days
DelaySeconds = Annotated[float, Strict(), Field(ge=0, le=MAX_DELAY_S)]
# a delay as text: the server checks exactly the pattern the schema publishes (delay_seconds)
DelayText = Annotated[str, WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN})]
MAX_UNIQUE_FOR_S = 30 * 86400.0
# how long a unique key is held at most: a JSON number of seconds, over 0, at most 30 days
UniqueSeconds = Annotated[float, Strict(), Field(gt=0, le=MAX_UNIQUE_FOR_S)]

__all__ = [
    "BatchAccepted",
    "BatchDuplicate",
    "BatchFailure",
    "BatchIn",
    "BatchNotConfirmed",
    "CancelOut",
    "ErrorOut",
    "HealthOut",
    "TaskAccepted",
    "TaskDuplicate",
    "TaskIn",
    "TaskStatusOut",
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

    track: StrictBool = Field(
        False,
        description="follow this task by its id: GET /v1/tasks/{id} answers its state, and its result "
        "if the task stores one (header x-sluice-track)",
    )
    unique_key: str | None = Field(
        None,
        min_length=1,
        max_length=512,
        description="while a task published with this key is queued, deferred or running, publishing "
        "another does not add a task: the answer is 200 with the existing task's id in duplicate_of. "
        "Implies track",
    )
    unique_for: UniqueSeconds | None = Field(
        None,
        description="with unique_key: hold the key at most this many seconds (default 86400)",
    )
    unique_release: Literal["success", "end", "ttl"] | None = Field(
        None,
        description="with unique_key: free the key when the task ends (end, the default), only when it "
        "succeeds (success), or only after unique_for (ttl)",
    )

    @field_validator("delay")
    @classmethod
    def _delay(cls, v: float | str | None) -> float | None:
        if isinstance(v, str):
            return delay_seconds(v)
        return v

    @model_validator(mode="after")
    def _unique(self) -> TaskIn:
        if self.unique_key is None and (self.unique_for is not None or self.unique_release is not None):
            raise ValueError("unique_for and unique_release need a unique_key")
        return self


class BatchIn(BaseModel):
    """Several tasks, validated all together before any is published."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[TaskIn] = Field(min_length=1, description="the tasks, published in this order")


class TaskAccepted(BaseModel):
    """The broker confirmed the task: it is on disk in its queue."""

    id: str = Field(description="the task id (AMQP message_id)")
    task: str = Field(description="the task name")
    queue: str = Field(description="the sluice queue it went to")


class BatchDuplicate(BaseModel):
    """One task of a batch that was not published: its unique_key is held by another task."""

    index: int = Field(description="position in the request's tasks list (0-based)")
    duplicate_of: str = Field(description="the id of the task holding the key (also in ids)")


class BatchAccepted(BaseModel):
    """Every task of the batch was confirmed by the broker."""

    ids: list[str] = Field(description="task ids, in the order of the request")
    duplicates: list[BatchDuplicate] = Field(
        default_factory=list,
        description="tasks not published because their unique_key is held (their ids are the holders')",
    )


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
    duplicates: list[BatchDuplicate] = Field(
        default_factory=list, description="tasks not published because their unique_key is held"
    )


class ErrorOut(BaseModel):
    """An error answer."""

    detail: Any = Field(description="a message, or the list of validation errors")


class HealthOut(BaseModel):
    """Liveness or readiness."""

    status: str = Field(description="ok, or why not")
    broker: str | None = Field(None, description="state of the RabbitMQ connection (readyz only)")


class TaskDuplicate(BaseModel):
    """Not published: a task with the same unique_key is queued, deferred or running."""

    id: str = Field(description="the existing task's id (the one to follow)")
    duplicate_of: str = Field(description="the existing task's id, again: this request added no task")
    task: str = Field(description="the task name of the request")
    queue: str = Field(description="the sluice queue of the request")


class TaskErrorOut(BaseModel):
    """The last failure of a task."""

    type: str | None = Field(None, description="the exception's qualified name")
    message: str | None = Field(None, description="str(exception)")


class TransitionOut(BaseModel):
    """One entry of a task's history."""

    state: str = Field(description="the state entered")
    at_ms: int | None = Field(None, description="when, ms since the Unix epoch")
    attempt: int | None = Field(None, description="the attempt it was entered at")
    detail: str | None = Field(None, description="why (a deferral's reason, an error type, ...)")


class TaskStatusOut(BaseModel):
    """What is known of a task (docs/tasks.md): its state, attempt, times, worker, error and result."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(description="the task id")
    state: Literal[
        "queued", "deferred", "running", "retrying", "succeeded", "failed", "dead", "cancelled", "unknown"
    ] = Field(description="unknown: never tracked, or its record expired")
    task: str | None = Field(None, description="the task name")
    queue: str | None = Field(None, description="the sluice queue")
    attempt: int = Field(0, description="the attempt the state belongs to (0: not started)")
    published_ms: int | None = Field(None, description="publish time, ms since the Unix epoch")
    started_ms: int | None = Field(None, description="when the last attempt started")
    finished_ms: int | None = Field(None, description="when it ended")
    worker: str | None = Field(None, description="host:pid of the worker that last wrote")
    reason: str | None = Field(None, description="why deferred, or why dead")
    next_run_ms: int | None = Field(None, description="deferred or retrying: when it runs next")
    error: TaskErrorOut | None = Field(None, description="the last failure")
    result: Any = Field(None, description="the handler's return value, if the task stores results")
    result_error: str | None = Field(None, description="why no result was stored (e.g. too large)")
    cancel_requested: bool = Field(False, description="a cancel was asked while it ran")
    generation: int = Field(0, description="how many times it was replayed from the DLQ")
    history: list[TransitionOut] = Field(default_factory=list, description="transitions, oldest first")


class CancelOut(BaseModel):
    """What a cancel did (the cancel is recorded in every case: a later delivery of the id is acked as
    cancelled without running)."""

    id: str = Field(description="the task id")
    previous: str = Field(description="the state the cancel found")
    state: str = Field(
        description="the state after: cancelled (it was queued, deferred, retrying or unknown), running "
        "(requested: the worker running it is told), or the terminal state it already had"
    )
    requested: bool = Field(description="it was running: its worker was asked to stop it")
    already_ended: bool = Field(description="it had ended already: left as it was")
