"""Liveness and readiness."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import text

from app.core.db import get_engine
from app.core.object_store import StoreError, get_store
from app.core.queue import broker_reachable

router = APIRouter(tags=["health"])


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, bool]
    reasons: dict[str, str] | None = Field(None, description="why each failed check failed")


@router.get("/healthz", response_model=Liveness, summary="The process answers")
async def healthz() -> Liveness:  # async: answered on the event loop, never waiting for a thread or the database
    return Liveness()


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "the database, the broker or the object store is unreachable"}},
    summary="The database, the broker and the object store are reachable (503 otherwise, with the reason)",
)
def readyz() -> JSONResponse:
    checks = {"database": False, "broker": False, "store": False}
    reasons: dict[str, str] = {}
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = True
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        reasons["database"] = type(exc).__name__
    checks["broker"] = broker_reachable()
    try:
        get_store().check()
        checks["store"] = True
    except StoreError as exc:
        reasons["store"] = str(exc)
    ok = all(checks.values())
    body = Readiness(status="ok" if ok else "unavailable", checks=checks, reasons=reasons or None)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
