"""The first-step event's clock (worker/child/startup.py): parts in order, a repeated part summed, and the claim time
as SQLite hands it back (naive, in UTC) as well as Postgres does (aware)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.core.tables import utcnow
from worker.child.startup import StartupClock


@pytest.mark.parametrize("naive", [False, True])
def test_first_step_event_names_each_part_since_the_claim(naive):
    claimed = utcnow() - timedelta(seconds=3)
    clock = StartupClock(claimed.replace(tzinfo=None) if naive else claimed)
    clock.lap("data")
    clock.lap("model")
    clock.lap("data")
    message, data = clock.first_step()
    assert list(data) == ["claimed_to_first_step_s", "process_s", "data_s", "model_s", "first_step_s"]
    assert 3.0 <= data["process_s"] < 4.0
    assert 3.0 <= data["claimed_to_first_step_s"] < 4.0
    assert sum(v for k, v in data.items() if k != "claimed_to_first_step_s") <= data["claimed_to_first_step_s"] + 1e-3
    assert message.startswith("First step 3.") and ": process 3." in message and "first step 0.0s" in message


def test_without_a_claim_time_the_parts_are_the_total():
    clock = StartupClock(None)
    clock.lap("data")
    _, data = clock.first_step()
    assert "process_s" not in data
    assert data["claimed_to_first_step_s"] == pytest.approx(data["data_s"] + data["first_step_s"], abs=2e-3)
