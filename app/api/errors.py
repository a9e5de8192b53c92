"""Errors in OpenAI's shape, {"error": {"message", "type", "param", "code"}}, so its client raises typed errors:
the app's exception handlers map app.core.errors.ApiError, validation errors, HTTP errors and an unreachable
database to that body, in one place."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Route

from app.core.errors import ApiError, loc_to_param
from app.core.object_store import StoreError

DB_RETRY_AFTER_S = 5

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


def error_response(status: int, message: str, *, param=None, code=None, errors=None, headers=None) -> JSONResponse:
    body: dict[str, Any] = {
        "message": message,
        "type": ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
        "param": param,
        "code": code,
    }
    if errors is not None:
        body["errors"] = errors
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def allowed_methods(routes: Iterable[BaseRoute], path: str) -> list[str]:
    """Every method some route serves at `path`, for a 405's Allow header."""
    methods: set[str] = set()
    for route in routes:
        if isinstance(route, Route) and route.methods and route.path_regex.match(path):
            methods |= route.methods
    return sorted(methods)


def install_error_handlers(app: FastAPI, routes: Iterable[BaseRoute] = ()) -> None:
    """The app's exception handlers; `routes` (with their full paths) are the ones a 405's Allow lists."""
    routes = list(routes)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(
            exc.status, exc.message, param=exc.param, code=exc.code, errors=exc.errors, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        param = loc_to_param(tuple(first.get("loc", ())))
        details = [
            {"param": loc_to_param(tuple(e.get("loc", ()))), "message": e.get("msg", "")} for e in exc.errors()[:20]
        ]
        return error_response(
            400, f"Invalid value for '{param}': {first.get('msg')}", param=param, code="invalid_value", errors=details
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405 and (methods := allowed_methods(routes, request.url.path)):
            # Starlette names only the methods of the first route whose path matched (GET of /v1/files/{id},
            # not its DELETE); RFC 9110 wants every method the resource supports.
            headers = {**(headers or {}), "Allow": ", ".join(methods)}
        return error_response(
            exc.status_code,
            str(exc.detail),
            param=getattr(exc, "param", None),
            code=getattr(exc, "code", None),
            headers=headers,
        )

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_away(_request: Request, _exc: Exception) -> JSONResponse:
        # The database is unreachable or went away mid-request (the pool's pre-ping reconnects once it is
        # back): a 503 the client can retry, not a 500. Nothing was committed by this request.
        return error_response(
            503,
            "The service's database is unavailable; retry shortly",
            code="database_unavailable",
            headers={"Retry-After": str(DB_RETRY_AFTER_S)},
        )

    @app.exception_handler(StoreError)
    async def _store_away(_request: Request, exc: Exception) -> JSONResponse:
        # The object store refused or did not answer after its retries (down, a wrong bucket or key): a 503 that
        # says which store and why, never a 500. An upload it refused kept nothing (app/files/routes.py).
        return error_response(
            503, f"The object store is unavailable: {exc}", code="store_unavailable", headers={"Retry-After": "5"}
        )

    @app.exception_handler(PoolTimeout)
    async def _pool_timeout(_request: Request, _exc: Exception) -> JSONResponse:
        # No database connection came free within FTAAS_DB_POOL_TIMEOUT_S: the process is overloaded. Admission
        # (app/api/admission.py) makes this rare; when it happens the client retries, nothing waited 30 s.
        return error_response(
            503, "The server is at capacity; retry shortly", code="server_busy", headers={"Retry-After": "1"}
        )
