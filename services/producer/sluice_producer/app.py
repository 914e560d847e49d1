"""The producer HTTP API: a FastAPI app built by :func:`create_app` (no app object exists at import).

Status codes: 202 confirmed by the broker; 200 not published, a duplicate (its ``unique_key`` is held by
the task named in ``duplicate_of``); 400 malformed JSON; 413 body or payload over the cap;
401 without a configured bearer token (when auth is on); 422 invalid request or payload, or a queue
this producer may not create and that does not exist; 503 with ``Retry-After`` when the broker is
down, blocked by an alarm, or did not confirm within ``publish_timeout``, or (for a ``unique_key``, and
``GET``/``DELETE /v1/tasks/{id}``, see :mod:`.tasks_api`) when Redis cannot be reached. docs/producer.md
is the reference.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from sluice.errors import BrokerError, MessageTooLarge, PublishTimeout, SluiceError, UnknownQueue
from sluice.handles import TaskHandles
from sluice.protocol import TaskMessage
from sluice.publisher import Publisher, creatable_queues
from sluice.schedules import ScheduleStore
from sluice.settings import Settings
from sluice.tasks import Registry
from sluice.telemetry import SnapshotPublisher, telemetry_for
from sluice_producer import _openapi
from sluice_producer._answers import Invalid, Unavailable, errors_of, install_handlers, unknown_queue
from sluice_producer._auth import BearerAuth, Tokens
from sluice_producer._limits import BodyLimit
from sluice_producer.bulk import count_published, publish_claimed
from sluice_producer.handled import HandleOps
from sluice_producer.inputs import Rules, build_message
from sluice_producer.known import check_payload, known_registry
from sluice_producer.link import BrokerLink, PublisherFactory, fair_factory
from sluice_producer.models import (
    BatchAccepted,
    BatchDuplicate,
    BatchFailure,
    BatchIn,
    BatchNotConfirmed,
    ErrorOut,
    HealthOut,
    TaskAccepted,
    TaskDuplicate,
    TaskIn,
)
from sluice_producer.schedules_api import schedule_router
from sluice_producer.tasks_api import DEFAULT_MAX_WAIT, task_router

__all__ = ["create_app"]

_ENVELOPE_SLACK = 64 * 1024  # room for the envelope around a payload of the maximum size


def create_app(
    settings: Settings,
    registry: Registry | None = None,
    publisher_factory: PublisherFactory | None = None,
    *,
    strict: bool = False,
    max_batch: int = 10_000,
    max_batch_bytes: int = 64 * 1024 * 1024,
    auth: Tokens | None = None,
    max_wait: float = DEFAULT_MAX_WAIT,
) -> FastAPI:
    """The producer app. Its lifespan connects to RabbitMQ in the background (``app.state.link``).

    ``registry``: the tasks it knows (default: the built-in demo tasks, see :mod:`.known`); their
    payloads are validated and their queues may be created, with the default queue and
    ``SLUICE_QUEUES``. ``auth``: the bearer tokens to require (see :func:`._auth.resolve`), or None.
    ``max_wait``: the longest long poll of ``GET /v1/tasks/{id}?wait=S``, seconds.

    Redis (``settings.redis_url``) is used only by task handles: a ``unique_key`` or ``track`` publish and
    the ``/v1/tasks/{id}`` endpoints; its client connects on first use.
    """
    if registry is None:
        registry = known_registry()
    creatable = creatable_queues(settings, registry.queues())
    link = BrokerLink(settings, creatable, publisher_factory or fair_factory(registry.fair_routes()))
    rules = Rules(settings.max_message_bytes, settings.default_queue, registry, strict)
    telemetry = telemetry_for(settings, "producer")  # published counts, one snapshot a second
    from sluice.redis_client import redis_client

    redis = redis_client(settings, socket_timeout=5.0, socket_connect_timeout=2.0)
    handles = TaskHandles(redis, settings.prefix, ttl=settings.track_ttl)
    schedules = ScheduleStore(redis, settings.prefix)  # /v1/schedules (docs/schedules.md)
    telemetry.gauge("task_waiters", lambda: float(handles.waiters))  # long polls waiting now
    ops = HandleOps(settings, handles)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with SnapshotPublisher(settings, telemetry), asyncio.TaskGroup() as tg:
            runner = tg.create_task(link.run(), name="sluice-producer-link")
            try:
                yield
            finally:
                runner.cancel()
                await ops.aclose()
                await handles.aclose()
                await schedules.aclose()
                await redis.aclose()

    app = FastAPI(
        title="sluice producer",
        version="1",
        summary="Publish sluice tasks to RabbitMQ, each confirmed by the broker before the answer.",
        lifespan=lifespan,
    )
    app.state.link = link
    app.state.handles = handles
    app.state.draining = draining = asyncio.Event()  # set by the server's drain (server.py)
    app.add_middleware(
        BodyLimit,
        limits={
            "/v1/tasks": settings.max_message_bytes + _ENVELOPE_SLACK,
            "/v1/tasks/batch": max_batch_bytes,
        },
        default=_ENVELOPE_SLACK,
    )
    if auth is not None:  # added last, so it runs first: no body is read for a caller without a token
        app.add_middleware(BearerAuth, tokens=auth)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _openapi.refine(
                FastAPI.openapi(app),
                queues=creatable,
                registry=registry,
                strict=strict,
                max_batch=max_batch,
                auth=auth is not None,
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    install_handlers(app)

    def check(specs: Sequence[TaskIn], loc: list[str | int]) -> list[TaskMessage]:
        """Every task checked; all errors at once (413 if all are size errors, else 422)."""
        messages: list[TaskMessage] = []
        errors: list[dict[str, Any]] = []
        too_large = True
        for i, spec in enumerate(specs):
            where = f"tasks[{i}]" if len(loc) > 1 else "task"
            item_loc: list[str | int] = [*loc, i] if len(loc) > 1 else loc
            try:
                check_payload(registry, spec.task, spec.payload, where)
                messages.append(build_message(spec, rules, where))
            except SluiceError as e:
                too_large = too_large and isinstance(e, MessageTooLarge)
                errors.extend(errors_of(e, item_loc))
        if errors:
            raise Invalid(413 if too_large else 422, errors)
        return messages

    async def ready_publisher() -> Publisher:
        state = await link.state()
        if not state.ready:
            raise Unavailable(state.detail, state.retry_after)
        return link.publisher()

    async def known_queues(
        publisher: Publisher, messages: Sequence[TaskMessage], loc: list[str | int]
    ) -> None:
        """Every message's queue may be created or exists already; else 422 naming each such task
        (nothing is published, and no queue is created)."""
        errors: list[dict[str, Any]] = []
        refused: dict[str, UnknownQueue] = {}
        for i, msg in enumerate(messages):
            if msg.queue not in refused:
                try:
                    async with asyncio.timeout(settings.publish_timeout):
                        await publisher.ensure_queue(msg.queue)  # at once once declared or found
                except UnknownQueue as e:
                    refused[msg.queue] = e
                except TimeoutError:
                    raise Unavailable(f"cannot declare queue {msg.queue!r}: no answer in time", 5) from None
                except BrokerError as e:
                    raise Unavailable(str(e), 5) from None
            if msg.queue in refused:
                errors.append(unknown_queue(refused[msg.queue], [*loc, i] if len(loc) > 1 else loc))
        if errors:
            raise Invalid(422, errors)

    error_responses: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorOut, "description": "malformed JSON"},
        413: {"model": ErrorOut, "description": "request body or a payload over the size cap"},
        422: {
            "model": ErrorOut,
            "description": "invalid request, payload not fitting the task's model, or a queue this "
            "producer may not create that does not exist (type unknown_queue, ctx.allowed)",
        },
        503: {
            "model": ErrorOut,
            "description": "broker down, blocked by an alarm, or no confirm in time; see Retry-After",
        },
    }

    duplicate_response: dict[int | str, dict[str, Any]] = {
        200: {
            "model": TaskDuplicate,
            "description": "not published: a task with the same unique_key is queued, deferred or "
            "running (its id in id and duplicate_of)",
        },
    }

    @app.post(
        "/v1/tasks",
        status_code=202,
        response_model=TaskAccepted,
        responses={**duplicate_response, **error_responses},
    )
    async def publish_task(body: TaskIn) -> Any:
        """Publish one task; answers once RabbitMQ confirmed it (persistent, in its queue)."""
        (msg,) = check([body], ["body"])
        publisher = await ready_publisher()
        await known_queues(publisher, [msg], ["body"])
        existing = await ops.claim(msg)  # a unique_key decided in Redis before the publish
        if existing is not None:
            dup = TaskDuplicate(id=existing, duplicate_of=existing, task=msg.task, queue=msg.queue)
            return JSONResponse(dup.model_dump(), status_code=200)
        try:
            async with asyncio.timeout(settings.publish_timeout):
                await publisher.publish(msg)
        except TimeoutError:
            await ops.release(msg)
            err = PublishTimeout(f"no confirm within {settings.publish_timeout:g}s")
            raise Unavailable(f"task {msg.id} not confirmed: {err}", 5) from None
        except BrokerError as e:
            await ops.release(msg)
            raise Unavailable(f"task {msg.id} not confirmed: {e}", 5) from None
        except BaseException:  # the caller went away mid-publish: the key must not stay taken
            await ops.release(msg)
            raise
        await ops.marked([msg])
        telemetry.published(msg.queue)
        return TaskAccepted(id=msg.id, task=msg.task, queue=msg.queue)

    @app.post(
        "/v1/tasks/batch",
        status_code=202,
        response_model=BatchAccepted,
        responses={
            **error_responses,
            503: {
                "model": BatchNotConfirmed,
                "description": "some tasks were not confirmed (listed in failed; the others were); "
                "or the broker is down or blocked (then nothing was published); or Redis cannot be "
                "reached for a unique_key (nothing published)",
            },
        },
    )
    async def publish_batch(body: BatchIn) -> Any:
        """Publish many tasks: all validated first (nothing is published if one is invalid), then
        published with many confirms in flight. A task whose unique_key is held is not published: it is
        listed in duplicates, and its entry of ids is the holder's id."""
        if len(body.tasks) > max_batch:
            raise Invalid(
                422,
                [
                    {
                        "loc": ["body", "tasks"],
                        "msg": f"at most {max_batch} tasks per batch",
                        "type": "too_long",
                    }
                ],
            )
        messages = check(body.tasks, ["body", "tasks"])
        publisher = await ready_publisher()
        await known_queues(publisher, messages, ["body", "tasks"])
        outcomes, held = await publish_claimed(publisher, messages, ops)
        count_published(telemetry, messages, outcomes)
        ids = [held.get(i, m.id) for i, m in enumerate(messages)]
        duplicates = [BatchDuplicate(index=i, duplicate_of=held[i]) for i in sorted(held)]
        failed = [o for o in outcomes if o.error is not None]
        if not failed:
            return BatchAccepted(ids=ids, duplicates=duplicates)
        report = BatchNotConfirmed(
            detail=f"{len(failed)} of {len(messages)} tasks not confirmed: {failed[0].error}",
            ids=ids,
            confirmed=[o.index for o in outcomes if o.error is None],
            failed=[BatchFailure(index=o.index, id=o.task_id, error=str(o.error)) for o in failed],
            duplicates=duplicates,
        )
        return JSONResponse(report.model_dump(), status_code=503, headers={"Retry-After": "5"})

    app.include_router(task_router(handles, max_wait=max_wait, draining=draining))
    app.include_router(schedule_router(schedules, link.publisher, default_queue=settings.default_queue))

    @app.get("/healthz", response_model=HealthOut)
    async def healthz() -> HealthOut:
        """Liveness: the process answers."""
        return HealthOut(status="ok")

    @app.get("/readyz", response_model=HealthOut, responses={503: {"model": HealthOut}})
    async def readyz() -> Any:
        """Readiness: connected to RabbitMQ and not blocked by an alarm."""
        state = await link.state()
        out = HealthOut(status="ok" if state.ready else state.detail, broker=state.state)
        if state.ready:
            return out
        return JSONResponse(
            out.model_dump(), status_code=503, headers={"Retry-After": str(state.retry_after)}
        )

    return app
