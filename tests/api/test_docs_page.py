"""The Swagger UI works offline: served by ftaas itself, it renders every operation of the OpenAPI document in
headless Chromium with no route off the machine, under a Content-Security-Policy of this origin only; `/`
leads to it."""

from __future__ import annotations

import re
import subprocess

import numpy as np
from PIL import Image

from tests.api.conftest import chromium_argv


def test_the_docs_page_renders_every_operation_without_internet(live_server, tmp_path, client):
    operations = sum(
        1
        for item in client.get("/openapi.json").json()["paths"].values()
        for m in item
        if m in ("get", "post", "delete")
    )
    dom = subprocess.run(
        [*chromium_argv(), "--dump-dom", f"{live_server}/docs"], capture_output=True, text=True, timeout=120
    ).stdout
    rendered = len(re.findall(r'class="opblock opblock-(?:get|post|delete|put|patch)', dom))
    shot = tmp_path / "docs.png"
    subprocess.run(
        [*chromium_argv(), f"--screenshot={shot}", "--window-size=1400,2000", f"{live_server}/docs"],
        capture_output=True,
        timeout=120,
    )
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    ink = float((pixels.min(axis=-1) < 200).mean())  # the share of the page that is not near-white
    print(f"\n[docs] /docs offline: {rendered} of {operations} operations rendered; {ink:.1%} of the screenshot inked")
    assert "ftaas" in dom and "Authorize" in dom, dom[:2000]
    assert rendered == operations
    assert ink > 0.02  # a blank page (the CDN's scripts unreachable) is all white


def test_an_operation_opened_by_its_link_shows_its_examples(live_server):
    """The Swagger UI's deep link opens "create a job": the request's example (a job on stories260k), the
    answer's (a succeeded job) and an error's are on the page, as a newcomer sees them before "Try it out"."""
    link = f"{live_server}/docs#/fine-tuning%20jobs/create_job_v1_fine_tuning_jobs_post"
    dom = subprocess.run([*chromium_argv(), "--dump-dom", link], capture_output=True, text=True, timeout=120).stdout
    start = dom.find('id="operations-fine-tuning_jobs-create_job_v1_fine_tuning_jobs_post"')
    end = dom.find('id="operations-', start + 1)
    operation = dom[start:end]
    assert start >= 0 and "opblock-body" in operation, dom[:2000]  # a closed operation has no body on the page
    for shown in ("stories260k", "file-abc123", "ft:stories260k:tenant-abc123:sql:ftjob-abc123", "model_not_available"):
        assert shown in operation, f"{shown} is not on the opened operation"


def test_the_docs_page_loads_nothing_from_elsewhere_and_slash_leads_to_it(client):
    page = client.get("/docs")
    assert page.status_code == 200
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self';" in csp
    assert not re.search(r'(src|href)="(https?:)?//', page.text)  # every asset is this server's own
    assert "<script>" not in page.text  # no inline script: the CSP forbids them
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
    assert "persistAuthorization: true" in client.get("/docs/init.js").text
    root = client.get("/", follow_redirects=False)
    assert root.status_code in (302, 307) and root.headers["location"] == "/docs"
