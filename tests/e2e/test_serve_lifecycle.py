"""The quick-start server's processes end with it: `ftaas serve --embedded` stopped by SIGTERM (as systemd or a
terminal's kill sends it) or by SIGINT (Ctrl-C) stops its training worker and its preview worker, and killed
outright (kill -9) it takes them along too (the kernel signals them), so a second `serve` never finds a worker of
the first still consuming its queue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import httpx
import psutil
import pytest

from tests.conftest import ARTIFACTS, PG_ADMIN_URL, ROOT, TEST_ENV, create_database, drop_database, pg_url
from tests.helpers.e2e_service import free_port

GONE_WITHIN_S = 45


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["term", "int", "kill9"])
def test_stopping_the_embedded_server_leaves_no_process_behind(how):
    run = uuid.uuid4().hex[:8]
    db = f"ftaas_e2e_{run}"
    create_database(db, PG_ADMIN_URL)
    port = free_port()
    env = {
        **os.environ,
        **TEST_ENV,
        "FTAAS_DATABASE_URL": pg_url(db, PG_ADMIN_URL),
        "FTAAS_QUEUE_NAME": f"gpu-serve-{run}",
        "FTAAS_PREVIEW_QUEUE_NAME": f"preview-serve-{run}",
        "FTAAS_ARTIFACTS_DIR": str(ARTIFACTS / f"serve-{run}"),
        "FTAAS_DATA_DIR": str(ARTIFACTS / f"serve-{run}-data"),
        "FTAAS_WEB_WORKERS": "1",
    }
    log = ARTIFACTS / f"serve-{run}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    serve = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--embedded", "--port", str(port), "--loglevel", "warning"],
        cwd=ROOT,
        env=env,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while True:  # ready, and both workers have started their pool (the training worker's prefork child)
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                ready = False
            family = descendants(serve.pid)
            celery = [p for p in family if "celery" in " ".join(p.cmdline())]
            if ready and len(celery) >= 3:
                break
            assert serve.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"not ready: {[p.cmdline()[-6:] for p in family]}\n{log.read_text()}"
            time.sleep(0.5)
        assert "embedded worker pid" in log.read_text()
        serve.send_signal(how)
        serve.wait(timeout=GONE_WITHIN_S)
        deadline = time.monotonic() + GONE_WITHIN_S
        while alive(family) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [(p.pid, " ".join(p.cmdline())[:120]) for p in alive(family)]
        print(f"\n[serve] {signal.Signals(how).name}: {len(family)} processes under serve, {len(left)} left after it")
        assert not left, f"still running after {signal.Signals(how).name} of serve: {left}\n{log.read_text()}"
    finally:
        if serve.poll() is None:
            serve.kill()
        for p in alive(descendants(serve.pid) if serve.poll() is None else []):
            p.kill()
        drop_database(db, PG_ADMIN_URL)
