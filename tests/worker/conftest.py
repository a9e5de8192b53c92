"""Fixtures of the worker tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tok():
    """The tiny real Llama's tokenizer, loaded once per test module."""
    from tests.helpers.training import SRC
    from worker.training.modeling import load_tokenizer

    return load_tokenizer(SRC)
