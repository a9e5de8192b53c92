"""Fixtures of the API tests."""

from __future__ import annotations

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
