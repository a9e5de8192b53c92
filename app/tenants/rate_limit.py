"""Per-tenant request rate limit: a fixed one-minute window counted per tenant.

With a Redis broker the count lives in Redis (INCR + EXPIRE), so every API process shares it; on the
embedded defaults (no Redis) it is this process's own. Past the limit a request is a 429 with Retry-After:
the seconds until the window turns. Redis being unreachable never blocks the API: the request is let through.
"""

from __future__ import annotations

import threading
import time
from functools import lru_cache

from app.core.settings import get_settings

WINDOW_S = 60


@lru_cache
def _redis():
    url = get_settings().broker_url
    if not url.startswith(("redis://", "rediss://")):
        return None
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)


_local: dict[tuple[str, int], int] = {}
_local_lock = threading.Lock()


def _count(tenant_id: str, window: int) -> int:
    """Count one request of `tenant_id` (or of any other counter's name) in this window; the count so far."""
    client = _redis()
    if client is None:
        with _local_lock:
            for key in [k for k in _local if k[1] < window]:
                del _local[key]
            _local[(tenant_id, window)] = _local.get((tenant_id, window), 0) + 1
            return _local[(tenant_id, window)]
    key = f"ftaas:ratelimit:{tenant_id}:{window}"
    try:
        pipe = client.pipeline()
        pipe.incr(key)
        pipe.expire(key, WINDOW_S + 5)
        return int(pipe.execute()[0])
    except Exception:  # noqa: BLE001 - an unreachable Redis must not take the API down with it
        return 0


def _over_limit(name: str, limit: int) -> int | None:
    """Count one event of counter `name` in this window; None within `limit` (0: no limit), else the seconds
    until the window turns."""
    if not limit:
        return None
    now = time.time()
    window = int(now // WINDOW_S)
    if _count(name, window) <= limit:
        return None
    return max(1, int((window + 1) * WINDOW_S - now) + 1)


def retry_after(tenant_id: str) -> int | None:
    """Count one request of this tenant; None if within the limit, else the seconds to wait."""
    return _over_limit(tenant_id, get_settings().rate_limit_per_minute)


def retry_after_failed_auth(client: str) -> int | None:
    """Count one failed authentication (an invalid or revoked key) from this client address; None while within
    FTAAS_AUTH_FAILURES_PER_MINUTE, else the seconds to wait. Without it, guessing keys was never slowed down."""
    return _over_limit(f"authfail:{client}", get_settings().auth_failures_per_minute)
