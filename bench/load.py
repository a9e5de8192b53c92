"""Load on a live API: concurrent pollers of one job's status, a mixed load, and open event streams.

    python bench/load.py                       # starts its own `ftaas serve` on Postgres and Redis
    python bench/load.py --clients 200 --seconds 30
    python bench/load.py --url http://host:8000 --key sk-... --job ftjob-...   # an existing server

Each phase runs N clients for --seconds, each a keep-alive connection looping on its request (waiting the
Retry-After of a 429 or 503 first, as the openai client does), and prints
throughput, latency p50/p95/p99, answers by status (and client-side errors: timeouts, resets), the slowest
/healthz seen during the phase (a separate process probes it every 50 ms on its own connection), the time the
service took after the phase to answer a status read at normal latency again, and the database's connections
left idle in transaction. The phases:
  pollers-N   N clients GET /v1/fine_tuning/jobs/{id}                           (--clients, default 1,50,200,1000)
  mixed-N     N clients: 70% pollers, 10% downloads of a file, 10% event pages, 5% uploads, 5% job creations
  streams-N   N open live event streams (?stream=true) and N pollers beside them  (--streams, default 200)
  leavers-N   N pollers and N/10 clients that hang up mid-request (--leavers, default none; the load test's)

Its own service (no --url): a fresh Postgres database on FTAAS_BENCH_PG_ADMIN_URL (default the local one), Redis
on FTAAS_BENCH_REDIS_URL, the tiny model of ../shared, no training worker (the job stays queued: a status read
costs the same), the per-tenant rate limit off (FTAAS_RATE_LIMIT_PER_MINUTE=0) to measure the server itself, and
`ftaas serve` with its production defaults unless --env NAME=VALUE says otherwise.

The load generator is aiohttp in one process (--procs to spread the clients over more), on the same machine:
on a small machine it competes with the server for the cores, and the figures say so by the CPU each side used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere: bench.* and app.*
from bench.load_service import MODEL_DIR, TRAIN_ROWS, Target, cpu_seconds, idle_in_transaction, own_service

REQUEST_TIMEOUT_S = 30.0
NORMAL_FACTOR = 3.0  # "back to normal": a status read within 3x (and 20 ms of) the 1-client median again


# ---------------------------------------------------------------- the clients


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)

    def add(self, status: str, seconds: float) -> None:
        self.statuses[status] += 1
        self.latencies.append(seconds)


async def _one(session, method: str, url: str, tally: Tally, **kw) -> None:
    import aiohttp

    t0 = time.perf_counter()
    try:
        async with session.request(method, url, **kw) as r:
            await r.read()
            tally.add(str(r.status), time.perf_counter() - t0)
            if r.status in (429, 503) and r.headers.get("Retry-After", "").isdigit():
                await asyncio.sleep(int(r.headers["Retry-After"]))  # as a well-behaved client (the openai one) does
    except TimeoutError:
        tally.add("timeout", time.perf_counter() - t0)
    except aiohttp.ClientError as exc:
        tally.add(type(exc).__name__, time.perf_counter() - t0)


async def _stream(session, url: str, stop_at: float, tally: Tally) -> None:
    """An open live event stream, read until the phase ends; counts how it opened."""
    import aiohttp

    t0 = time.perf_counter()
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as r:
            tally.add(f"stream-{r.status}", time.perf_counter() - t0)
            while time.monotonic() < stop_at:
                try:
                    await asyncio.wait_for(r.content.readany(), timeout=max(0.01, stop_at - time.monotonic()))
                except TimeoutError:
                    break
    except aiohttp.ClientError as exc:
        tally.add(f"stream-{type(exc).__name__}", time.perf_counter() - t0)


def _client_kinds(phase: str, n: int) -> list[str]:
    if phase == "pollers":
        return ["poll"] * n
    if phase == "leavers":  # pollers, and a tenth as many clients that hang up before their answer comes
        return ["poll"] * n + ["leave"] * max(1, n // 10)
    if phase == "streams":
        return ["stream"] * n + ["poll"] * n
    # mixed
    shares = [("download", 0.10), ("events", 0.10), ("upload", 0.05), ("create", 0.05)]
    kinds = [k for k, share in shares for _ in range(max(1, round(n * share)))]
    return ["poll"] * max(1, n - len(kinds)) + kinds


async def _run_clients(target: Target, kinds: list[str], seconds: float) -> dict[str, Tally]:
    import aiohttp

    auth = {"Authorization": f"Bearer {target.key}"}
    upload_rows = TRAIN_ROWS.read_bytes()[:20_000].rsplit(b"\n", 1)[0] + b"\n"
    stop_at = time.monotonic() + seconds
    tallies: dict[str, Tally] = {}
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(target.url, headers=auth, connector=connector, timeout=timeout) as session:

        async def client(kind: str) -> None:
            tally = tallies.setdefault(kind, Tally())
            if kind == "stream":
                await _stream(session, f"/v1/fine_tuning/jobs/{target.job_id}/events?stream=true", stop_at, tally)
                return
            while time.monotonic() < stop_at:
                if kind == "poll":
                    await _one(session, "GET", f"/v1/fine_tuning/jobs/{target.job_id}", tally)
                elif kind == "leave":
                    leave = aiohttp.ClientTimeout(total=0.002 + 0.02 * random.random())
                    await _one(session, "GET", f"/v1/fine_tuning/jobs/{target.job_id}", tally, timeout=leave)
                elif kind == "download":
                    await _one(session, "GET", f"/v1/files/{target.file_id}/content", tally)
                elif kind == "events":
                    await _one(session, "GET", f"/v1/fine_tuning/jobs/{target.job_id}/events?limit=20", tally)
                elif kind == "upload":
                    form = aiohttp.FormData()
                    form.add_field("purpose", "fine-tune")
                    form.add_field("file", upload_rows, filename="train.jsonl")
                    await _one(session, "POST", "/v1/files", tally, data=form)
                elif kind == "create":
                    body = {"model": MODEL_DIR.name, "training_file": target.file_id}
                    await _one(session, "POST", "/v1/fine_tuning/jobs", tally, json=body)

        await asyncio.gather(*(client(k) for k in kinds))
    return tallies


def _client_process(target: Target, kinds: list[str], seconds: float, out) -> None:
    cpu0 = time.process_time()
    tallies = asyncio.run(_run_clients(target, kinds, seconds))
    # done_at: when this process's last request of the load ended (its clients finish the ones in flight)
    figures = {k: (t.latencies, dict(t.statuses)) for k, t in tallies.items()}
    out.put({"cpu_s": time.process_time() - cpu0, "done_at": time.time(), **figures})


# ---------------------------------------------------------------- the prober


def _probe_process(target: Target, until: float, out) -> None:
    """Every 50 ms, on connections of its own: /healthz, then a status read. (wall time, path, seconds, status)."""
    import http.client

    host, port = target.url.split("://", 1)[1].split(":")
    samples = []
    auth = {"Authorization": f"Bearer {target.key}"}
    conns: dict[str, http.client.HTTPConnection] = {}
    while time.time() < until:
        for name, path, headers in (
            ("healthz", "/healthz", {}),
            ("status", f"/v1/fine_tuning/jobs/{target.job_id}", auth),
        ):
            t0 = time.perf_counter()
            try:
                conn = conns.get(name) or http.client.HTTPConnection(host, int(port), timeout=REQUEST_TIMEOUT_S)
                conns[name] = conn
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                resp.read()
                status = str(resp.status)
            except Exception as exc:  # noqa: BLE001 - every failure is a sample
                conns.pop(name, None)
                status = type(exc).__name__
            samples.append((time.time(), name, time.perf_counter() - t0, status))
        time.sleep(0.05)
    out.put(samples)


# ---------------------------------------------------------------- a phase


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run_phase(
    target: Target, phase: str, n: int, seconds: float, procs: int, normal_s: float, settle_s: float = 10.0
) -> dict:
    """One phase: its clients for `seconds`, the prober until `settle_s` after (for the recovery time)."""
    kinds = _client_kinds(phase, n)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    cpu0, t_start = cpu_seconds(target.pids), time.time()
    prober = ctx.Process(target=_probe_process, args=(target, t_start + seconds + settle_s, out))
    prober.start()
    shards = [kinds[i::procs] for i in range(procs)]
    workers = [ctx.Process(target=_client_process, args=(target, shard, seconds, out)) for shard in shards if shard]
    for w in workers:
        w.start()
    results = [out.get() for _ in range(len(workers) + 1)]
    for w in [*workers, prober]:
        w.join()
    samples = next(r for r in results if isinstance(r, list))
    server_cpu = cpu_seconds(target.pids) - cpu0

    merged: dict[str, Tally] = {}
    client_cpu, load_end = 0.0, t_start + seconds
    for r in results:
        if isinstance(r, dict):
            client_cpu += r.pop("cpu_s")
            load_end = max(load_end, r.pop("done_at"))
            for kind, (lat, statuses) in r.items():
                t = merged.setdefault(kind, Tally())
                t.latencies += lat
                t.statuses.update(statuses)
    during = [s for s in samples if s[0] <= t_start + seconds]
    health = [s[2] for s in during if s[1] == "healthz"]
    # recovery: from the end of the load (its last request answered: the clients finish those in flight at the
    # scheduled end, up to a burst's tail latency later), the time until every later status read is back to normal
    threshold = max(NORMAL_FACTOR * normal_s, normal_s + 0.020)
    after = [s for s in samples if s[1] == "status" and s[0] > load_end]
    recovered_at = None
    for i, s in enumerate(after):
        if all(x[2] <= threshold and x[3] == "200" for x in after[i:]):
            recovered_at = s[0]
            break
    row = {
        "phase": f"{phase}-{n}",
        "seconds": seconds,
        "kinds": {
            kind: {
                "requests": len(t.latencies),
                "per_s": round(len(t.latencies) / seconds, 1),
                "p50_ms": round(1000 * pct(t.latencies, 0.50), 1),
                "p95_ms": round(1000 * pct(t.latencies, 0.95), 1),
                "p99_ms": round(1000 * pct(t.latencies, 0.99), 1),
                "statuses": dict(sorted(t.statuses.items())),
            }
            for kind, t in sorted(merged.items())
        },
        "healthz_max_ms": round(1000 * max(health), 1) if health else None,
        "healthz_p99_ms": round(1000 * pct(health, 0.99), 1) if health else None,
        "healthz_failed": sum(1 for s in during if s[1] == "healthz" and s[3] != "200"),
        # when the slow ones came, seconds into the phase: a start-up storm, or all along
        "healthz_slow": [
            (round(s[0] - t_start, 2), round(1000 * s[2])) for s in during if s[1] == "healthz" and s[2] > 0.05
        ],
        "recovery_s": None if recovered_at is None else round(max(0.0, recovered_at - load_end), 2),
        "load_ended_s": round(load_end - (t_start + seconds), 2),  # after the scheduled end
        "server_cpu_s": round(server_cpu, 1),
        "client_cpu_s": round(client_cpu, 1),
        "idle_in_transaction": idle_in_transaction(target),
    }
    return row


def print_row(row: dict) -> None:
    for kind, k in row["kinds"].items():
        statuses = ", ".join(f"{s}: {c}" for s, c in k["statuses"].items())
        print(
            f"| {row['phase']} | {kind} | {k['requests']} | {k['per_s']} | {k['p50_ms']} / {k['p95_ms']} / "
            f"{k['p99_ms']} | {statuses} |",
            flush=True,
        )
    print(
        f"|   | healthz max {row['healthz_max_ms']} ms (p99 {row['healthz_p99_ms']}, failed {row['healthz_failed']}); "
        f"back to normal {row['recovery_s']} s after its last answer ({row['load_ended_s']} s after the end); "
        f"CPU in {row['seconds']} s: server {row['server_cpu_s']} s, "
        f"load generator {row['client_cpu_s']} s; "
        f"idle in transaction after: {row['idle_in_transaction']} |",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url")
    p.add_argument("--key")
    p.add_argument("--job", help="the job whose status the pollers read (with --url)")
    p.add_argument("--file", help="a file to download (with --url)")
    p.add_argument("--clients", default="1,50,200,1000", help="poller counts, comma separated")
    p.add_argument("--mixed", default="200", help="client counts of the mixed phase ('' for none)")
    p.add_argument("--streams", default="200", help="open event streams beside as many pollers ('' for none)")
    p.add_argument("--leavers", default="", help="poller counts with a tenth more clients that hang up mid-request")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--procs", type=int, default=1, help="load generator processes")
    p.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server it starts")
    p.add_argument("--json", help="write the rows here too")
    args = p.parse_args(argv)

    def counts(s: str) -> list[int]:
        return [int(x) for x in s.split(",") if x.strip()]

    with tempfile.TemporaryDirectory(prefix="ftaas-load-") as tmp:
        if args.url:
            ctx = nullcontext(Target(args.url, args.key, args.job, args.file))
        else:
            ctx = own_service(dict(e.split("=", 1) for e in args.env), Path(tmp))
        with ctx as target:
            print(f"target {target.url}, job {target.job_id}; {os.cpu_count()} cores here", flush=True)
            print("| phase | clients do | requests | per s | p50 / p95 / p99 ms | answers |")
            print("| --- | --- | --- | --- | --- | --- |")
            rows = []
            baseline = run_phase(target, "pollers", 1, min(5.0, args.seconds), args.procs, normal_s=0.05)
            normal_s = baseline["kinds"]["poll"]["p50_ms"] / 1000
            print_row(baseline)
            rows.append(baseline)
            plan = [("pollers", n) for n in counts(args.clients) if n != 1]
            plan += [("mixed", n) for n in counts(args.mixed)] + [("streams", n) for n in counts(args.streams)]
            plan += [("leavers", n) for n in counts(args.leavers)]
            for phase, n in plan:
                row = run_phase(target, phase, n, args.seconds, args.procs, normal_s)
                print_row(row)
                rows.append(row)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
