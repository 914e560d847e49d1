"""The producer's error answers: the exceptions its endpoints raise and the handlers that turn them into
HTTP answers (400 malformed JSON, 413/422 with FastAPI's error list, 503 with ``Retry-After``)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from sluice.errors import SluiceError, UnknownQueue
from sluice.handles import TrackingUnavailable
from sluice_producer.inputs import PayloadInvalid

__all__ = ["Invalid", "Unavailable", "errors_of", "install_handlers", "unknown_queue"]

_MAX_LISTED_ERRORS = 100


class Unavailable(Exception):
    """Answer 503 with Retry-After."""

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


class Invalid(Exception):
    """Answer 413 or 422 with a list of errors in FastAPI's shape."""

    def __init__(self, status: int, errors: list[dict[str, Any]]) -> None:
        super().__init__(status)
        self.status = status
        self.errors = errors


def errors_of(e: SluiceError, loc: list[str | int]) -> list[dict[str, Any]]:
    if isinstance(e, PayloadInvalid):
        return [{**err, "loc": [*loc, "payload", *err.get("loc", ())]} for err in e.errors]
    kind = getattr(e, "reason", None) or type(e).__name__
    return [{"loc": loc, "msg": str(e), "type": kind}]


def unknown_queue(e: UnknownQueue, loc: list[str | int]) -> dict[str, Any]:
    return {
        "loc": [*loc, "queue"],
        "msg": str(e),
        "type": "unknown_queue",
        "input": e.queue,
        "ctx": {"allowed": e.allowed},
    }


def install_handlers(app: FastAPI) -> None:
    """The exception handlers of the producer's answers."""

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        bad_json = [e for e in errors if e.get("type") == "json_invalid"]
        if bad_json:
            ctx = bad_json[0].get("ctx") or {}
            return JSONResponse(
                {"detail": f"malformed JSON body: {ctx.get('error', 'cannot parse it')}"}, status_code=400
            )
        return JSONResponse({"detail": jsonable_encoder(errors[:_MAX_LISTED_ERRORS])}, status_code=422)

    @app.exception_handler(Invalid)
    async def _invalid(_: Request, exc: Invalid) -> JSONResponse:
        return JSONResponse(
            {"detail": jsonable_encoder(exc.errors[:_MAX_LISTED_ERRORS])}, status_code=exc.status
        )

    @app.exception_handler(TrackingUnavailable)
    async def _no_tracking(_: Request, exc: TrackingUnavailable) -> JSONResponse:
        return JSONResponse(
            {"detail": f"task tracking unavailable: {exc}"}, status_code=503, headers={"Retry-After": "5"}
        )

    @app.exception_handler(Unavailable)
    async def _unavailable(_: Request, exc: Unavailable) -> JSONResponse:
        return JSONResponse(
            {"detail": exc.detail}, status_code=503, headers={"Retry-After": str(exc.retry_after)}
        )
