"""The CPU that processes outside the test run took while it ran, for the run's figures.

Why: the suite's timings mean something only on a machine that runs nothing else. The slow tests train on every
core, and torch's OpenMP threads spin-wait for each other: on 2 cores, one other busy process made a training step
of the e2e LoRA job 8-10x slower (0.22 s -> 1.8-2.2 s), not 2x. A run that shared the machine (another test run,
an experiment, a second checkout's CI) took twice as long with no change to the code, and nothing said so.

Sampled from /proc every few seconds: a process is the run's own when pytest is among its ancestors (the
services, workers and training children the tests start), and Postgres and Redis count as the run's too (the
tests are most of their work). A process that starts and ends between two samples is not seen.
"""

from __future__ import annotations

import os
import threading
import time

SAMPLE_S = 5.0
SERVERS = ("postgres", "redis-server")  # serve the tests: their CPU is the run's own


def _stat(pid: str) -> tuple[str, int, int, float] | None:
    """(name, parent pid, start time in ticks, CPU seconds used) of a process, None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            raw = fh.read()
    except OSError:
        return None
    name, rest = raw[raw.index("(") + 1 : raw.rindex(")")], raw[raw.rindex(")") + 2 :].split()
    return name, int(rest[1]), int(rest[19]), (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def _command(pid: int, name: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()[:80] or name
    except OSError:
        return name


class OutsideLoad:
    """A daemon thread summing the CPU seconds of every process outside the run, by command line."""

    def __init__(self) -> None:
        self.root, self.started = os.getpid(), time.monotonic()
        self.seen: dict[tuple[int, int], float] = {}  # (pid, start ticks) -> CPU seconds at the last sample
        self.by_command: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outside-load", daemon=True)

    def start(self) -> OutsideLoad:
        self._sample(first=True)  # what ran before the run began is not counted
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._sample()

    def _sample(self, first: bool = False) -> None:
        stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(p)) is not None}

        def ours(pid: int) -> bool:
            while pid > 1 and pid in stats:
                if pid == self.root:
                    return True
                pid = stats[pid][1]
            return False

        for pid, (name, parent, started, cpu) in stats.items():
            if parent == 2 or pid == 2 or name.startswith(SERVERS) or ours(pid):  # kernel threads; the run's own
                continue
            key = (pid, started)
            if not first:  # a process first seen now started during the run: all its CPU is new
                used = cpu - self.seen.get(key, 0.0)
                if used > 0:
                    command = _command(pid, name)
                    self.by_command[command] = self.by_command.get(command, 0.0) + used
            self.seen[key] = cpu

    def stop(self) -> str:
        """The figure line: the outside CPU, its share of the machine over the run, the largest users."""
        self._stop.set()
        self._thread.join(SAMPLE_S + 1)
        self._sample()
        elapsed, cpus = time.monotonic() - self.started, os.cpu_count() or 1
        total = sum(self.by_command.values())
        top = sorted(self.by_command.items(), key=lambda kv: -kv[1])[:3]
        most = "; ".join(f"{seconds:,.0f} s {command!r}" for command, seconds in top if seconds >= 1)
        return (
            f"[machine] {cpus} CPUs for {elapsed:,.0f} s: processes outside this run used {total:,.0f} CPU-s "
            f"({100 * total / max(1.0, elapsed * cpus):.0f}% of the machine)"
            + (f", most {most}" if most else "")
            + "; timings compare only between runs on an otherwise idle machine"
        )
