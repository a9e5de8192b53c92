"""Webhook signatures: the Standard Webhooks scheme, which the openai client's `webhooks.unwrap` and
`webhooks.verify_signature` check.

Headers: webhook-id (the event id, the same at every attempt, for the receiver to drop duplicates),
webhook-timestamp (Unix seconds of this attempt; receivers refuse ones older than 5 minutes) and
webhook-signature: "v1,<base64 HMAC-SHA256 of '<id>.<timestamp>.<body>'>", with the secret "whsec_<base64>";
during a rotation that keeps the old secret, two signatures separated by a space (any one may match).

Signing uses `standardwebhooks`, the reference library of the Standard Webhooks authors: it has no
dependencies, and sign() is that scheme exactly, so ftaas does not keep its own copy of it. The tests check
every signature with the openai client's own verification, a separate implementation.
"""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime

from standardwebhooks import Webhook

from app.core.tables import WebhookEndpoint, as_utc, utcnow

SECRET_PREFIX = "whsec_"


def new_signing_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_hint(secret: str) -> str:
    """Enough to tell two secrets apart, too little to sign with."""
    return f"{SECRET_PREFIX}...{secret[-4:]}"


def active_secrets(endpoint: WebhookEndpoint) -> list[str]:
    """The secret, and the previous one while a rotation keeps it valid."""
    keys = [endpoint.signing_secret]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_signing_secret and expires is not None:
        if as_utc(expires) > utcnow():
            keys.append(endpoint.previous_signing_secret)
    return keys


def signed_headers(secrets_: list[str], event_id: str, body: str, timestamp: int | None = None) -> dict[str, str]:
    """The request headers of one attempt: signed now (or at `timestamp`) with every active secret."""
    at = datetime.fromtimestamp(timestamp if timestamp is not None else int(utcnow().timestamp()), UTC)
    signatures = " ".join(Webhook(key).sign(event_id, at, body) for key in secrets_)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signatures,
        "content-type": "application/json",
        "user-agent": "ftaas-webhooks/1",
    }
