"""Request and response shapes of /v1/webhook_endpoints, as the openai client's `webhooks` resource has them
(openai/types/webhooks/), plus the ftaas extensions: `enabled`, the sweep event types, and the deliveries."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas import ListPage
from app.core.outbox import EVENT_TYPES

EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type] - the tuple, spelled once in app/webhook_outbox.py

URL_DESCRIPTION = (
    "the http(s) URL that receives the events; its host must resolve to public addresses (unless the server "
    "allows private ones)"
)
URL_PATTERN = r"^[hH][tT][tT][pP][sS]?://\S+$"
EVENT_TYPES_DESCRIPTION = (
    "the event types sent to this endpoint: fine_tuning.job.succeeded / failed / cancelled, and (ftaas) "
    "sweep.succeeded / failed / cancelled"
)


class WebhookEndpointCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "ci notifications",
                    "url": "https://hooks.example.com/ftaas",
                    "event_types": ["fine_tuning.job.succeeded", "fine_tuning.job.failed"],
                }
            ]
        },
    )
    event_types: list[EventType] = Field(min_length=1, max_length=len(EVENT_TYPES), description=EVENT_TYPES_DESCRIPTION)
    name: str = Field(min_length=1, max_length=200, description="a name for people")
    url: str = Field(max_length=2048, pattern=URL_PATTERN, description=URL_DESCRIPTION)
    # strict: a JSON true or false, not 0 or "yes"
    enabled: bool = Field(
        True, strict=True, description="ftaas: false stops new events for it (what is pending is still sent)"
    )


class WebhookEndpointUpdate(BaseModel):
    """Fields left out (or null) stay as they are."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"enabled": False}]})
    event_types: list[EventType] | None = Field(
        None, min_length=1, max_length=len(EVENT_TYPES), description="the complete new set; " + EVENT_TYPES_DESCRIPTION
    )
    name: str | None = Field(None, min_length=1, max_length=200)
    url: str | None = Field(None, max_length=2048, pattern=URL_PATTERN, description=URL_DESCRIPTION)
    enabled: bool | None = Field(None, strict=True)


class RotateSecret(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"keep_old_secret_active_for_24_hours": True}]}
    )
    keep_old_secret_active_for_24_hours: bool = Field(
        False,
        strict=True,
        description="sign with the old secret too (a second signature) for 24 hours, while receivers switch",
    )


class WebhookTest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"event_type": "fine_tuning.job.succeeded"}]}
    )
    event_type: EventType = Field(description="the type of the sample event sent")


class WebhookEndpointPublic(BaseModel):
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    id: str
    name: str
    url: str
    event_types: list[str]
    created_at: int
    updated_at: int | None = None
    signing_secret_hint: str | None = None
    enabled: bool = True


class WebhookEndpointWithSecret(WebhookEndpointPublic):
    signing_secret: str = Field(description="shown only here, on create and rotate_secret: keep it")


class WebhookEndpointList(ListPage):
    data: list[WebhookEndpointPublic]


class WebhookEndpointDeleted(BaseModel):
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    id: str
    deleted: bool = True


class WebhookTestResult(BaseModel):
    object: Literal["webhook_endpoint.test"] = "webhook_endpoint.test"
    webhook_endpoint_id: str
    event_type: str
    status_code: int = Field(description="what the endpoint answered")
    success: Literal[True] = Field(True, description="the request completed; status_code says how it was answered")


class WebhookEventTypeList(BaseModel):
    object: Literal["list"] = "list"
    data: list[str]


class WebhookDeliveryPublic(BaseModel):
    object: Literal["webhook_endpoint.delivery"] = "webhook_endpoint.delivery"
    id: str
    event_id: str
    event_type: str
    subject_id: str = Field(description="the job or sweep the event is about")
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: int | None = Field(None, description="while pending: when the next attempt is due")
    last_status_code: int | None = None
    last_error: str | None = None
    created_at: int
    delivered_at: int | None = None


class WebhookDeliveryList(ListPage):
    data: list[WebhookDeliveryPublic]
