"""The OpenAPI document: FastAPI's, plus the error responses this app really gives, declared in one place.

FastAPI cannot know them: validation errors are answered 400 in OpenAI's error shape (app/errors.py), not
422 in its own, and the API key, the rate limit, the NUL guard and the database handler answer for every
route. So every operation documents 400; every authenticated one 401, 429 and 503; every one with a path
parameter 404; and every response its X-Request-ID. Routes declare their own extra errors (409, 413, ...) with
`error_responses`. Schemathesis (tests/contract/test_schemathesis.py) holds the document to what the app answers.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from app.api.schemas import ErrorResponse

REF_PREFIX = "#/components/schemas/"
ERROR_SCHEMA = {"$ref": REF_PREFIX + "ErrorResponse"}

_RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before retrying", "required": True, "schema": {"type": "integer"}}
}
ERRORS: dict[int, tuple[str, dict[str, Any] | None]] = {
    400: ("Invalid request: `error.param` names the parameter or body field", None),
    401: ("Missing, invalid or revoked API key (or an expired sweep link)", None),
    404: ("No such object among the caller's", None),
    409: ("The object is not in a state that allows this", None),
    413: ("The upload is larger than the server's cap", None),
    416: (
        "The Range lies outside the file; Content-Range gives its size",
        {"Content-Range": {"description": "bytes */<size>", "required": True, "schema": {"type": "string"}}},
    ),
    422: ("The uploaded file is not a valid dataset: `error.errors` lists the bad rows", None),
    429: ("The tenant's rate limit or active-job limit is reached", _RETRY_AFTER),
    500: (
        "A worker could not build what was asked for (a merged model): `error.message` says why; a request after "
        "Retry-After tries again",
        _RETRY_AFTER,
    ),
    503: (
        "The service's database (or, for a request that starts a worker task, its task queue) is unavailable",
        _RETRY_AFTER,
    ),
}


# Every answer names its request (app/api/request_id.py): one header component, referred to from every response.
REQUEST_ID_HEADER = {
    "description": "the request's id: the client's X-Request-ID when it is a token of at most 128 characters of "
    "A-Z a-z 0-9 . _ : + = / -, else a new one; the log lines of the request, and of the job it creates, name it",
    "required": True,
    "schema": {"type": "string"},
}


def error_response(status: int) -> dict[str, Any]:
    """One error response in the app's JSON error shape, whatever media type the route's success has."""
    description, headers = ERRORS[status]
    response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
    if headers:
        response["headers"] = headers
    return response


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """A route's `responses=` for the errors only it gives (the common ones are added by `build_openapi`)."""
    return {status: error_response(status) for status in statuses}


def _is_fastapi_validation_error(response: dict[str, Any] | None) -> bool:
    schema = (response or {}).get("content", {}).get("application/json", {}).get("schema", {})
    return schema.get("$ref") == REF_PREFIX + "HTTPValidationError"


def build_openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    document = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes, tags=app.openapi_tags
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    model = ErrorResponse.model_json_schema(ref_template=REF_PREFIX + "{model}")
    schemas.update(model.pop("$defs", {}))
    schemas["ErrorResponse"] = model
    for operation in (op for ops in document.get("paths", {}).values() for op in ops.values()):
        responses = operation.setdefault("responses", {})
        if _is_fastapi_validation_error(responses.get("422")):
            del responses["422"]  # never sent: RequestValidationError is answered 400 (app/errors.py)
        common = [400]
        if operation.get("security"):
            common += [401, 429, 503]
        if any(p.get("in") == "path" for p in operation.get("parameters", [])):
            common.append(404)
        for status in common:
            responses.setdefault(str(status), error_response(status))
        for response in responses.values():
            response.setdefault("headers", {})["X-Request-ID"] = {"$ref": "#/components/headers/X-Request-ID"}
    document["components"]["headers"] = {"X-Request-ID": REQUEST_ID_HEADER}
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    _restore_nulls_in_examples(schemas)
    app.openapi_schema = document
    return document


def _app_models(cls: type[BaseModel] = BaseModel) -> list[type[BaseModel]]:
    """Every pydantic model this app defines, to look up a component schema's own model by name."""
    found = []
    for sub in cls.__subclasses__():
        if sub.__module__.startswith("app."):
            found.append(sub)
        found += _app_models(sub)
    return found


def _restore_nulls_in_examples(schemas: dict[str, Any]) -> None:
    """FastAPI writes the document with exclude_none, which drops every null inside an example too: a job's
    example would lack `"error": null`, a field every answer has. Each model's examples are put back as written."""
    for model in _app_models():
        extra = model.model_config.get("json_schema_extra")
        if model.__name__ in schemas and isinstance(extra, dict) and "examples" in extra:
            schemas[model.__name__]["examples"] = extra["examples"]
