"""A burst of 200 pollers against `ftaas serve` as production runs it (several processes, Postgres, Redis), with
a tenth as many clients that hang up mid-request: the API answers slower, or with a documented 503/429 and
Retry-After, never by hanging. /healthz stays fast throughout, the status read is back to normal latency
within 2 s of the burst's end (its last request answered: the pollers' in-flight ones end up to a tail latency
after the scheduled end, and were counted in the 2 s before, which failed about 2 runs in 5 on this 2-core
machine at the commits before and after the change), and no connection is left idle in a transaction. The
figures come from bench/load.py (its phases, with the same prober and counters); the full table is
`python bench/load.py`."""

from __future__ import annotations

from bench.load import run_phase
from bench.load_service import own_service
from tests.conftest import PG_ADMIN_URL, REDIS_URL

BURST_S = 20.0
CLIENTS = 200
HEALTHZ_MAX_MS = 100.0
RECOVERY_MAX_S = 2.0


def test_a_burst_of_200_pollers_slows_the_api_and_never_stops_it(tmp_path):
    with own_service({}, tmp_path, pg_admin_url=PG_ADMIN_URL, redis_url=REDIS_URL) as target:
        warm = run_phase(target, "pollers", 1, 3.0, procs=1, normal_s=0.05, settle_s=1.0)  # and first imports
        normal_s = warm["kinds"]["poll"]["p50_ms"] / 1000
        burst = run_phase(target, "leavers", CLIENTS, BURST_S, procs=1, normal_s=normal_s, settle_s=5.0)
    polls, leavers = burst["kinds"]["poll"], burst["kinds"]["leave"]
    print(
        f"\n[load] {CLIENTS} pollers + {CLIENTS // 10} leavers for {BURST_S:.0f} s: {polls['per_s']} status reads/s, "
        f"p50/p95/p99 {polls['p50_ms']}/{polls['p95_ms']}/{polls['p99_ms']} ms, answers {polls['statuses']}; "
        f"/healthz max {burst['healthz_max_ms']} ms; last answer {burst['load_ended_s']} s after the end, back to "
        f"normal {burst['recovery_s']} s after it; "
        f"idle in transaction {burst['idle_in_transaction']}; server CPU {burst['server_cpu_s']} s"
    )
    answers = {**leavers["statuses"], **polls["statuses"]}
    # 503 server_busy (with Retry-After) is the one documented 5xx; a 500, 502 or 504 is a failure
    assert not {s: n for s, n in answers.items() if s.startswith("5") and s != "503"}, answers
    assert not {s: n for s, n in polls["statuses"].items() if not s.isdigit()}, polls  # no poller timed out
    assert polls["statuses"].get("200", 0) >= 50 * BURST_S, polls  # it served all along, not a trickle
    assert burst["healthz_failed"] == 0 and burst["healthz_max_ms"] < HEALTHZ_MAX_MS, burst
    assert burst["recovery_s"] is not None and burst["recovery_s"] < RECOVERY_MAX_S, burst
    assert burst["idle_in_transaction"] == 0, burst
