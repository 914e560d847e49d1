"""The schedule endpoints of the producer (docs/schedules.md): the same operations as ``sluice schedule``.

``GET /v1/schedules`` (rows as ``sluice schedule ls --json``), ``POST /v1/schedules`` (add or replace: 201
added, 200 updated), ``GET|DELETE /v1/schedules/{name}``, ``POST /v1/schedules/{name}/pause|resume``,
``POST /v1/schedules/{name}/run`` (fire once now: 202 with the task id once the broker confirmed it).

A bad cron expression, time zone, interval or payload answers 422 with the one-line reason; an unknown name
404; Redis unreachable 503 with ``Retry-After``; the broker unreachable (``run``) 503.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from sluice.errors import BrokerError, ConfigError
from sluice.protocol import now_ms
from sluice.publisher import Publisher
from sluice.schedules import ScheduleStore, StoreUnavailable, UnknownSchedule, build, row, run_now
from sluice_producer.models import ErrorOut

__all__ = ["ScheduleIn", "schedule_router"]

NAME_PATTERN = r"^[A-Za-z0-9_\-.]{1,150}$"
Name = Annotated[str, Path(pattern=NAME_PATTERN, description="the schedule's name")]

# what every route may answer besides its success (documented, so the OpenAPI document tells the truth)
_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {
        "model": ErrorOut,
        "description": "Redis (or, for run, the broker) cannot be reached; see Retry-After",
    },
}
_KNOWN: dict[int | str, dict[str, Any]] = {
    **_UNAVAILABLE,
    404: {"model": ErrorOut, "description": "no schedule of that name"},
}
_BODY: dict[int | str, dict[str, Any]] = {
    **_UNAVAILABLE,
    400: {"model": ErrorOut, "description": "malformed JSON"},
}


class ScheduleIn(BaseModel):
    """A schedule to add or replace: exactly one of ``cron`` and ``every``."""

    # the schema says "exactly one of cron and every" too, so a client (or a fuzzer) can know it
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [
                {"required": ["cron"], "properties": {"cron": {"type": "string"}, "every": {"type": "null"}}},
                {
                    "required": ["every"],
                    "properties": {"every": {"type": ["string", "number"]}, "cron": {"type": "null"}},
                },
            ]
        },
    )

    name: str = Field(pattern=NAME_PATTERN, description="1-150 of A-Z a-z 0-9 _ - .")
    task: str = Field(pattern=r"^[A-Za-z0-9_\-.:]{1,200}$", description="the task to fire")
    cron: str | None = Field(
        None, description='a cron expression, e.g. "0 6 * * *" (6 fields: seconds first)'
    )
    every: str | float | None = Field(None, description='a fixed interval: "30s", "5m" or seconds')
    tz: str = Field("UTC", description="the IANA time zone of cron")
    payload: dict[str, Any] = Field(default_factory=dict, description="the task's payload")
    queue: str | None = Field(None, description="the queue (default: the default queue)")
    catch_up: str = Field(
        "latest", description="skip, latest or all: the occurrences missed while no scheduler ran"
    )
    max_catch_up: int = Field(100, ge=1, le=10_000, description="the bound of catch_up all")
    jitter: str | float = Field(0.0, description="each fire up to this much after its due time")


class _Unavailable(HTTPException):
    """503 with Retry-After: the schedules' Redis cannot be reached."""

    def __init__(self, e: Exception) -> None:
        super().__init__(503, detail=f"schedules unavailable: {e}", headers={"Retry-After": "5"})


def schedule_router(
    store: ScheduleStore, publisher: Callable[[], Publisher], *, default_queue: str = "default"
) -> APIRouter:
    """The routes, on ``store`` (the app owns and closes it) and ``publisher`` (the open publisher of the
    app, or :class:`~sluice.errors.BrokerUnavailable`)."""
    router = APIRouter(prefix="/v1/schedules", tags=["schedules"])

    async def one(name: str) -> dict[str, Any]:
        try:
            return row(await store.get(name))
        except UnknownSchedule as e:
            raise HTTPException(404, detail=str(e)) from None
        except StoreUnavailable as e:
            raise _Unavailable(e) from None

    @router.get("", responses=_UNAVAILABLE)
    async def list_schedules() -> list[dict[str, Any]]:
        """Every schedule with its next and last fire."""
        try:
            return [row(e) for e in await store.entries()]
        except StoreUnavailable as e:
            raise _Unavailable(e) from None

    @router.post("", status_code=201, responses=_BODY)
    async def add_schedule(body: ScheduleIn, response: Response) -> dict[str, Any]:
        """Add a schedule (201), or replace the one of that name (200)."""
        try:
            schedule = build(**dict(body))
        except ConfigError as e:  # FastAPI's shape of a 422: a list of errors
            raise HTTPException(
                422, detail=[{"loc": ["body"], "msg": str(e), "type": "value_error"}]
            ) from None
        try:
            created = await store.save(schedule, "runtime")
        except StoreUnavailable as e:
            raise _Unavailable(e) from None
        if not created:
            response.status_code = 200
        return await one(schedule.name)

    @router.get("/{name}", responses=_KNOWN)
    async def get_schedule(name: Name) -> dict[str, Any]:
        return await one(name)

    @router.delete("/{name}", status_code=204, responses=_KNOWN)
    async def remove_schedule(name: Name) -> Response:
        try:
            removed = await store.remove(name)
        except StoreUnavailable as e:
            raise _Unavailable(e) from None
        if not removed:
            raise HTTPException(404, detail=f"no schedule named {name!r}")
        return Response(status_code=204)

    async def paused(name: str, value: bool) -> dict[str, Any]:
        try:
            await store.set_paused(name, value)
        except UnknownSchedule as e:
            raise HTTPException(404, detail=str(e)) from None
        except StoreUnavailable as e:
            raise _Unavailable(e) from None
        return await one(name)

    @router.post("/{name}/pause", responses=_KNOWN)
    async def pause_schedule(name: Name) -> dict[str, Any]:
        """No fire until resumed."""
        return await paused(name, True)

    @router.post("/{name}/resume", responses=_KNOWN)
    async def resume_schedule(name: Name) -> dict[str, Any]:
        """Fires again, counting from now (what fell due while paused is not caught up)."""
        return await paused(name, False)

    @router.post("/{name}/run", status_code=202, responses=_KNOWN)
    async def run_schedule(name: Name) -> dict[str, str]:
        """Fire once now; answers the task id once the broker confirmed it."""
        try:
            task_id = await run_now(publisher(), store, name, default_queue=default_queue, now_ms=now_ms())
        except UnknownSchedule as e:
            raise HTTPException(404, detail=str(e)) from None
        except StoreUnavailable as e:
            raise _Unavailable(e) from None
        except BrokerError as e:
            raise HTTPException(503, detail=f"cannot publish: {e}", headers={"Retry-After": "5"}) from None
        return {"task_id": task_id}

    return router
