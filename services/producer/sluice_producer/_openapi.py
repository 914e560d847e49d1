"""The producer's OpenAPI document, made to say exactly what this server accepts.

FastAPI derives the document from the pydantic models, which cannot know one server's configuration.
:func:`refine` adds it: the queues a task may name (an enum of the configured ones), the task names
in strict mode, the batch size limit, the payload model of every task the producer knows, that the
``unique_*`` options need a ``unique_key``, and the bearer security scheme with the 401 answer when auth is on.
"""

from __future__ import annotations

import copy
from collections.abc import Collection
from typing import Any

from sluice.tasks import Registry
from sluice_producer._auth import OPEN_PATHS, SCHEME

__all__ = ["refine"]

_REF = "#/components/schemas/"


def refine(
    doc: dict[str, Any],
    *,
    queues: Collection[str],
    registry: Registry,
    strict: bool,
    max_batch: int,
    auth: bool,
) -> dict[str, Any]:
    """``doc`` (FastAPI's document) with this server's rules; changed in place and returned."""
    schemas: dict[str, Any] = doc.setdefault("components", {}).setdefault("schemas", {})
    task_in = schemas["TaskIn"]
    props = task_in["properties"]
    props["queue"] = {
        "anyOf": [{"type": "string", "enum": sorted(queues)}, {"type": "null"}],
        "default": None,
        "description": props["queue"].get("description", "")
        + ". One of the queues this producer is configured with (its default queue, SLUICE_QUEUES, "
        "the queues of the tasks it knows); a queue that already exists on the broker is also accepted, "
        "any other is a 422",
    }
    if strict:
        props["task"] = {**props["task"], "enum": sorted(registry)}
    rules = _payload_rules(registry, schemas)
    # unique_for and unique_release only with a unique_key (the server refuses them without one)
    rules.append(
        {
            "if": {"properties": {"unique_key": {"type": "null"}}},
            "then": {"properties": {"unique_for": {"type": "null"}, "unique_release": {"type": "null"}}},
        }
    )
    task_in["allOf"] = rules
    batch = schemas["BatchIn"]["properties"]["tasks"]
    batch["maxItems"] = max_batch
    if auth:
        _declare_bearer(doc)
    return doc


def _payload_rules(registry: Registry, schemas: dict[str, Any]) -> list[dict[str, Any]]:
    """One ``if task == name then payload fits the model`` per known task with a payload model."""
    rules: list[dict[str, Any]] = []
    for name in sorted(registry):
        model = registry[name].model
        if model is None:
            continue
        schema = copy.deepcopy(model.model_json_schema(ref_template=_REF + "{model}"))
        for def_name, definition in schema.pop("$defs", {}).items():
            schemas.setdefault(def_name, definition)
        key = f"Payload_{name.replace(':', '_')}"
        schemas[key] = schema
        then: dict[str, Any] = {"properties": {"payload": {"$ref": _REF + key}}}
        if schema.get("required"):  # an absent payload is {}, which then does not fit
            then["required"] = ["payload"]
        rules.append({"if": {"properties": {"task": {"const": name}}, "required": ["task"]}, "then": then})
    return rules


def _declare_bearer(doc: dict[str, Any]) -> None:
    doc["components"]["securitySchemes"] = {
        SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": "a token of SLUICE_API_TOKENS or SLUICE_API_TOKEN_FILE",
        }
    }
    for path, item in doc.get("paths", {}).items():
        if path in OPEN_PATHS:
            continue
        for operation in item.values():
            operation["security"] = [{SCHEME: []}]
            operation.setdefault("responses", {})["401"] = {
                "description": "missing or wrong bearer token (WWW-Authenticate: Bearer)",
                "content": {"application/json": {"schema": {"$ref": _REF + "ErrorOut"}}},
            }
