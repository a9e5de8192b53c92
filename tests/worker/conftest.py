"""Fixtures of the worker tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tok():
    """The tiny real Llama's tokenizer, loaded once per test module."""
    from tests.helpers.training import SRC
    from worker.training.modeling import load_tokenizer

    return load_tokenizer(SRC)


@pytest.fixture
def task_env(database, monkeypatch):
    """The training task as a worker runs it: its children inherit the test settings; resends are recorded."""
    from tests.conftest import TEST_ENV
    from worker.tasks import training

    for key, value in {**TEST_ENV, "FTAAS_DATABASE_URL": database, "FTAAS_TORCH_THREADS": "1"}.items():
        monkeypatch.setenv(key, value)
    sent = []
    monkeypatch.setattr(training.celery, "send_task", lambda name, args, queue: sent.append(args[0]))
    return sent
