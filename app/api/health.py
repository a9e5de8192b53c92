"""Liveness and readiness."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from app.core.db import get_engine
from app.core.queue import broker_reachable

router = APIRouter(tags=["health"])


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, bool]


@router.get("/healthz", response_model=Liveness, summary="The process answers")
async def healthz() -> Liveness:  # async: answered on the event loop, never waiting for a thread or the database
    return Liveness()


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "the database or the broker is unreachable"}},
    summary="The database and the broker are reachable (503 otherwise)",
)
def readyz() -> JSONResponse:
    checks = {"database": False, "broker": False}
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = True
    except Exception:
        pass
    checks["broker"] = broker_reachable()
    ok = all(checks.values())
    body = Readiness(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
