"""Shapes every endpoint shares: the error body and a list page ({"object": "list", "data", "has_more"})."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# ---------------------------------------------------------------- responses


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    errors: list[dict[str, Any]] | None = Field(None, description="row errors of an invalid upload")


class ErrorResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "message": "Model 'nope' is not available on this server (allowed: stories260k)",
                        "type": "invalid_request_error",
                        "param": "model",
                        "code": "model_not_available",
                    }
                }
            ]
        }
    )

    error: ErrorBody


class ListPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[Any]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None
