"""Pictures: PNG charts of a job and a sweep, who may see them, and the sweep's HTML page loaded in headless
Chromium from a live server, judged by its screenshot."""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
from PIL import Image
from sqlalchemy import select

from app.core.tables import Checkpoint, JobEvent, Sweep, Tenant
from tests.api.conftest import chromium_argv
from tests.helpers.factories import N_ROWS, make_file_row, scored_job


def png(r) -> Image.Image:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    assert img.format == "PNG" and img.width > 300 and img.height > 100
    return img.convert("RGB")


def colored(img: Image.Image, rgb: tuple[int, int, int], tol: int = 12) -> int:
    """How many pixels are within `tol` of a colour."""
    px = np.asarray(img, dtype=int)
    return int((np.abs(px - np.array(rgb)).max(axis=-1) <= tol).sum())


BLUE, GREEN = (0x1F, 0x77, 0xB4), (0x2C, 0xA0, 0x2C)


def make_sweep(session, tenant, file) -> tuple[Sweep, list]:
    sweep = Sweep(tenant_id=tenant.id, training_file_id=file.id, selection_metric="rougeL", seed=7, spec={})
    session.add(sweep)
    session.commit()
    scores = [0.3 + 0.3 * ((i * 37) % 11) / 10 for i in range(N_ROWS)]
    jobs = [
        scored_job(session, tenant, file, scores, trainable=4_000, seconds=30, sweep_id=sweep.id),
        scored_job(session, tenant, file, list(scores), adapter={"type": "full"}, trainable=260_000, sweep_id=sweep.id),
        scored_job(
            session,
            tenant,
            file,
            [s - 0.2 for s in scores],
            adapter={"type": "prompt_tuning"},
            trainable=64,
            seconds=20,
            sweep_id=sweep.id,
        ),
    ]
    for k, job in enumerate(jobs):
        for step in range(10, 101, 10):
            session.add(
                JobEvent(
                    job_id=job.id,
                    type="metrics",
                    message="step",
                    data={"step": step, "train_loss": 3.0 / (1 + step / 30) + k * 0.2},
                )
            )
        for step in (50, 100):
            session.add(
                Checkpoint(
                    job_id=job.id,
                    step=step,
                    epoch=step / 50,
                    dir_name="x",
                    evaluated=True,
                    metrics={"eval_loss": 2.5 / (1 + step / 40) + k * 0.2},
                )
            )
    session.commit()
    return sweep, jobs


def test_job_loss_chart(client, auth, other_auth, db_session, acme, train_file):
    _, jobs = make_sweep(db_session, acme, train_file)
    img = png(client.get(f"/v1/fine_tuning/jobs/{jobs[0].id}/charts/loss.png", headers=auth))
    assert colored(img, BLUE) > 300  # the first series' lines were drawn
    assert client.get(f"/v1/fine_tuning/jobs/{jobs[0].id}/charts/loss.png", headers=other_auth).status_code == 404
    assert client.get(f"/v1/fine_tuning/jobs/{jobs[0].id}/charts/loss.png").status_code == 401


def test_sweep_charts_with_key_or_signed_link(client, auth, other_auth, db_session, acme, train_file):
    sweep, jobs = make_sweep(db_session, acme, train_file)
    bars = png(client.get(f"/v1/sweeps/{sweep.id}/charts/metric.png", headers=auth))
    assert colored(bars, GREEN) > 500  # the winner's bar
    scatter = png(
        client.get(f"/v1/sweeps/{sweep.id}/charts/cost.png", headers=auth, params={"cost": "trainable_params"})
    )
    assert colored(scatter, GREEN) > 50
    png(client.get(f"/v1/sweeps/{sweep.id}/charts/loss.png", headers=auth))
    assert (
        client.get(f"/v1/sweeps/{sweep.id}/charts/cost.png", headers=auth, params={"cost": "rm -rf"}).status_code == 400
    )

    page_url = client.get(f"/v1/sweeps/{sweep.id}", headers=auth).json()["page_url"]
    token = page_url.split("token=", 1)[1]
    png(client.get(f"/v1/sweeps/{sweep.id}/charts/metric.png", params={"token": token}))  # no key needed
    assert client.get(f"/v1/sweeps/{sweep.id}/charts/metric.png").status_code == 401
    tampered = token[:-1] + ("1" if token.endswith("0") else "0")  # (a fixed "0" was no change 1 time in 16)
    assert client.get(f"/v1/sweeps/{sweep.id}/charts/metric.png", params={"token": tampered}).status_code == 401
    assert client.get(f"/v1/sweeps/{sweep.id}/page", headers=other_auth).status_code == 404
    # a link of one sweep opens nothing else
    other, _ = make_sweep(db_session, acme, train_file)
    assert client.get(f"/v1/sweeps/{other.id}/page", params={"token": token}).status_code == 401
    page = client.get(f"/v1/sweeps/{sweep.id}/page", params={"token": token})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert jobs[0].id in page.text and "winner" in page.text


def test_sweep_page_in_headless_chromium(live_server, tmp_path):
    from app.core.db import get_sessionmaker
    from app.tenants.service import create_key

    with get_sessionmaker()() as s:
        create_key(s, "page-tenant")
        tenant = s.scalar(select(Tenant).where(Tenant.name == "page-tenant"))
        f = make_file_row(s, tenant)
        sweep, jobs = make_sweep(s, tenant, f)
        from app.sweeps.service import finalize_if_done

        assert finalize_if_done(s, sweep.id)
        from app.sweeps.share_links import make_token

        url = f"{live_server}/v1/sweeps/{sweep.id}/page?token={make_token('sweep', sweep.id)}"
        s.refresh(sweep)
        winner = sweep.winner_job_id
    shot = tmp_path / "page.png"
    common = chromium_argv()  # the sweep page also renders with no route off the machine
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert winner in dom and "tied" in dom and "<img" in dom
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1400,2600", url], capture_output=True, timeout=120)
    img = Image.open(shot).convert("RGB")
    small = img.resize((img.width // 2, img.height // 2))
    non_white = int((np.asarray(small).min(axis=-1) < 235).sum())
    # The charts drew: blue bars/curves and the winner's green bar appear only in the PNGs, in quantity.
    assert colored(small, BLUE) > 1500, "the chart images did not load into the page"
    assert colored(small, GREEN) > 500
    assert non_white > 20000
    shutil.copy(shot, "/tmp/ftaas-sweep-page.png")  # kept for a person to look at
