"""How long an attempt takes from its claim to its first optimizer step, and where that time goes.

A small job's start is much of its wall time (issue 18: on an H100, 21-24 s from the claim to the first step of a
3,000-row 1B QLoRA job that then trained for 18-35 s, with 10 s in a data phase whose tokenization took 0.0-0.8 s).
The first-step event names every part, so that a slow start says where it went.
"""

from __future__ import annotations

import time
from datetime import datetime

from app.core.tables import as_utc, utcnow


class StartupClock:
    """Seconds spent in each part of the start, in order; a part lapped twice adds up. `claimed_at` is the job's
    started_at, written by the task that spawned this process on this host (the same clock)."""

    def __init__(self, claimed_at: datetime | None) -> None:
        self.claimed_at = as_utc(claimed_at) if claimed_at is not None else None
        self.parts: dict[str, float] = {}
        self._t = time.monotonic()
        if claimed_at is not None:  # the spawn, the interpreter and torch's import, the job read
            self.parts["process"] = max(0.0, (utcnow() - self.claimed_at).total_seconds())

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.parts[name] = self.parts.get(name, 0.0) + now - self._t
        self._t = now

    def first_step(self) -> tuple[str, dict]:
        """The first-step event's message and data (each part in seconds)."""
        self.lap("first_step")
        total = (utcnow() - self.claimed_at).total_seconds() if self.claimed_at else sum(self.parts.values())
        total = round(total, 3)  # the message and the data say the same figure (0.2503 is 0.3 and 0.25 is 0.2)
        parts = ", ".join(f"{name.replace('_', ' ')} {s:.1f}s" for name, s in self.parts.items())
        data = {"claimed_to_first_step_s": total, **{f"{k}_s": round(v, 3) for k, v in self.parts.items()}}
        return f"First step {total:.1f}s after the claim: {parts}", data
