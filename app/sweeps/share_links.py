"""Signed, expiring read-only links (a sweep's HTML page and its charts) that work without an API key.

A browser cannot send `Authorization: Bearer` for an <img> tag or a link a colleague clicks, so the page
carries its own capability: HMAC-SHA256 over (kind, object id, expiry) with the server's secret. The
link grants read access to that one object only, until it expires.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from functools import lru_cache
from pathlib import Path

from app.core.settings import Settings, get_settings


def _secret(settings: Settings) -> bytes:
    if settings.share_secret:
        return settings.share_secret.encode()
    return _stored_secret(str(settings.data_dir.resolve()))


@lru_cache
def _stored_secret(data_dir: str) -> bytes:
    # A random secret kept beside the embedded database: stable across restarts, never in the code.
    path = Path(data_dir) / "share-secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    except FileExistsError:
        pass
    return path.read_text().strip().encode()


EXPIRY = re.compile(r"[1-9][0-9]{0,11}", re.ASCII)
MAC = re.compile(r"[0-9a-f]{40}", re.ASCII)


def _mac(settings: Settings, kind: str, object_id: str, expires: int) -> str:
    msg = f"{kind}\x00{object_id}\x00{expires}".encode()
    return hmac.new(_secret(settings), msg, hashlib.sha256).hexdigest()[:40]


def make_token(kind: str, object_id: str, settings: Settings | None = None, now: float | None = None) -> str:
    settings = settings or get_settings()
    expires = int((now or time.time()) + settings.share_link_ttl_s)
    return f"{expires}.{_mac(settings, kind, object_id, expires)}"


def check_token(kind: str, object_id: str, token: str | None, settings: Settings | None = None) -> bool:
    settings = settings or get_settings()
    if not token or "." not in token:
        return False
    expires_s, mac = token.split(".", 1)
    # exactly as make_token writes it: ASCII digits, no leading zero, a sane length (str.isdigit() takes other
    # scripts' digits, and int() then a different spelling of the same expiry); a MAC of ASCII hex only
    if not EXPIRY.fullmatch(expires_s) or not MAC.fullmatch(mac) or int(expires_s) < time.time():
        return False
    return hmac.compare_digest(mac, _mac(settings, kind, object_id, int(expires_s)))
