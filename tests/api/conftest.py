"""Fixtures of the API tests."""

from __future__ import annotations

import socket
import threading
import time

import pytest


@pytest.fixture
def fast_settings(monkeypatch):
    """Webhook settings for tests: private URLs allowed, a short backoff, 3 attempts, one delivery at a time."""
    from app.core.settings import get_settings

    settings = get_settings()
    for name, value in {
        "webhook_allow_private_urls": True,
        "webhook_backoff_base_s": 0.2,
        "webhook_max_attempts": 3,
        "webhook_concurrency": 1,  # the tests' one session is not shared between threads
        "webhook_timeout_s": 3.0,
    }.items():
        monkeypatch.setattr(settings, name, value)
    return settings


@pytest.fixture
def live_server(database):
    """The app on a real port, on the test database (committed data, no rolled-back session)."""
    import uvicorn

    from app.main import app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def chromium_argv() -> list[str]:
    """Debian's headless Chromium (scripts/test.sh installs it), with no route off this machine: every request
    to another host goes to a proxy that is not there."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed (scripts/test.sh installs it)"
    return [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--virtual-time-budget=10000",
        "--proxy-server=http://127.0.0.1:9",  # nothing listens on port 9 (discard): no internet
        "--proxy-bypass-list=127.0.0.1;localhost",
    ]
