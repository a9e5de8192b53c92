"""Reading a text/event-stream response (the live event stream of a job) message by message."""

from __future__ import annotations

import json
import time

import httpx


class SseReader:
    """Reads a text/event-stream response message by message, noting when each arrived."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.iter_lines()
        self.comments: list[str] = []

    def next(self) -> dict | None:
        """The next message (event, id, data parsed as JSON, at), or None once the stream has closed."""
        fields: dict = {}
        for line in self.lines:
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
            elif line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
            elif "data" in fields:
                return {**fields, "data": json.loads(fields["data"]), "at": time.monotonic()}
        return None

    def until(self, event: str) -> list[dict]:
        """Every message up to and including the first `event` one."""
        got = []
        while (message := self.next()) is not None:
            got.append(message)
            if message["event"] == event:
                return got
        raise AssertionError(f"the stream closed before an {event!r} message: {got}")

    def rest(self) -> list[dict]:
        got = []
        while (message := self.next()) is not None:
            got.append(message)
        return got


def event_ids(messages: list[dict]) -> list[str]:
    return [m["id"] for m in messages if m["event"] in ("message", "metrics")]
