"""Schemathesis against the app's own OpenAPI document, every check, in-process (issue 5, item 12).

The app runs as in the other API tests (ASGI, the test Postgres through the `client` fixture's session
override) with a tenant's objects in the states the routes branch on, so that authenticated paths answer
2xx as well as their errors. Schemathesis' engine runs what `st run` runs: coverage (boundary and invalid
values of every parameter and field, missing auth, unsupported methods), fuzzing (random valid and invalid
requests, with ids learnt from earlier responses) and stateful sequences (from links it infers), and checks
every response with every check it has: no 5xx, status codes, content types, bodies and headers as
documented, valid data accepted, invalid data refused, auth enforced (ignored_auth replays a request without
the key and with a bad one), a deleted object gone, a created one there, and, with two tenants,
one tenant never reading the other's objects (object_level_authorization).

Bounded for CI: a fixed seed, derandomized generation, no cache carried between runs, MAX_EXAMPLES per
operation and phase (about a minute on two cores).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pytest
import schemathesis
from schemathesis.engine import Status, events, from_schema

from app.core.object_store import get_store
from app.core.settings import get_settings
from app.core.storage import upload_key
from app.core.tables import Checkpoint, Comparison, JobEvent, JobStatus, Sweep, WebhookDelivery
from tests.conftest import REPORT
from tests.helpers.factories import finished_job, make_endpoint, make_file_row, store_adapter

MAX_EXAMPLES = 50
SEED = 20261123
# Every check schemathesis 4 has: the test fails if one of them silently stops running.
ALL_CHECKS = {
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "positive_data_acceptance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "ignored_auth",
    "object_level_authorization",
    "use_after_free",
    "ensure_resource_availability",
}
# Schemathesis' default statuses for positive_data_acceptance (schemathesis/config/_checks.py).
POSITIVE_EXPECTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
PC_JSONL = b"".join(json.dumps({"prompt": f"Q{i}: ", "completion": f"A{i}"}).encode() + b"\n" for i in range(20))


@dataclass
class Run:
    answered: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # operation -> statuses
    cases: int = 0
    checks: set[str] = field(default_factory=set)
    failures: dict[tuple[str, str], list[str]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)


@pytest.fixture
def tenant_objects(db_session, acme, train_file):
    """acme's objects: a file with its bytes and one without, a succeeded job with evaluation, checkpoint,
    adapter archive and loss curve, queued jobs (one in a running sweep), a queued comparison."""
    get_store().put_stream(upload_key(train_file.storage_name), [PC_JSONL])
    train_file.bytes, train_file.sha256 = len(PC_JSONL), hashlib.sha256(PC_JSONL).hexdigest()
    make_file_row(db_session, acme, filename="lost.jsonl")  # its bytes are missing from storage
    done = finished_job(db_session, acme, train_file, base={"rougeL": 0.2}, tuned={"rougeL": 0.4}, rows=3)
    store_adapter(db_session, done, b"\x1f\x8b" + bytes(4000))
    db_session.add(
        Checkpoint(
            job_id=done.id, step=10, epoch=1.0, metrics={"eval_loss": 1.5}, dir_name=f"{done.id}/ckpt-10",
            evaluated=True, adapter_name=done.adapter_name, adapter_sha256=done.adapter_sha256,
        )
    )  # fmt: skip
    for step, loss in ((5, 2.0), (10, 1.6)):
        data = {"step": step, "train_loss": loss}
        db_session.add(JobEvent(job_id=done.id, type="metrics", message=f"step {step}", data=data))
    sweep = Sweep(tenant_id=acme.id, training_file_id=train_file.id, selection_metric="rougeL", seed=1, spec={})
    db_session.add(sweep)
    db_session.flush()
    finished_job(db_session, acme, train_file, status=JobStatus.queued).sweep_id = sweep.id
    finished_job(db_session, acme, train_file, status=JobStatus.queued)
    db_session.add(Comparison(tenant_id=acme.id, job_ids=[done.id], prompts=["Q: "], max_new_tokens=8, results={}))
    # a webhook endpoint with a delivery
    hook = make_endpoint(db_session, acme)
    db_session.add(
        WebhookDelivery(endpoint_id=hook.id, event_id="evt_1", event_type="fine_tuning.job.succeeded",
                        subject_id=done.id, body="{}")
    )  # fmt: skip
    db_session.commit()


def schemathesis_config(tenants_file: str) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "cache": {"enabled": False},  # what one run learnt must not steer the next: CI runs are comparable
            "workers": 1,  # one database session serves every request (conftest's rolled-back transaction)
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
                # Every string of this API refuses NUL with a 400 (app/input_guard.py: PostgreSQL text cannot
                # hold one), which no field's schema says; tests/api/test_api_input_safety.py covers it.
                "allow-x00": False,
            },
            # Requests go as acme; object_level_authorization replays acme's reads as globex.
            "auth": {"wfc": {"path": tenants_file, "peers": ["acme", "globex"]}},
            # positive_data_acceptance (a schema-valid request must not be refused as invalid) is widened for
            # three operations only, whose bodies are checked against more than a schema can state:
            "operations": [
                {
                    # a dataset's validity (its rows, its columns, a column_mapping onto them): a documented 422,
                    # or 400 for a column_mapping that is not a JSON object of column -> field
                    "include-name": "POST /v1/files",
                    "checks": {"positive_data_acceptance": {"expected-statuses": [*POSITIVE_EXPECTED, "400", "422"]}},
                },
                {
                    # the server's own list of models (GET /v1/models), and rules across fields: prompt tuning's
                    # virtual tokens fewer than max_seq_length; a sweep's candidates each naming a model, its
                    # grid keys naming job fields, generation metrics only for data with completions
                    "include-name": ["POST /v1/fine_tuning/jobs", "POST /v1/sweeps"],
                    "checks": {"positive_data_acceptance": {"expected-statuses": [*POSITIVE_EXPECTED, "400"]}},
                },
                {
                    # the server's own list of models too; and a row of the file that the model's chat template
                    # cannot render is a documented 422
                    "include-name": "POST /v1/files/{file_id}/preview",
                    "checks": {"positive_data_acceptance": {"expected-statuses": [*POSITIVE_EXPECTED, "400", "422"]}},
                },
                {
                    # a webhook URL needs a host, a valid port and no user:password@, which its pattern does
                    # not say (and by default its host must resolve to public addresses)
                    "include-name": ["POST /v1/webhook_endpoints", "POST /v1/webhook_endpoints/{webhook_endpoint_id}"],
                    "checks": {"positive_data_acceptance": {"expected-statuses": [*POSITIVE_EXPECTED, "400"]}},
                },
            ],
        }
    )


def run_schemathesis(app, config: schemathesis.Config) -> Run:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    run = Run()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            run.cases += len(recorder.cases)
            for case_id, node in recorder.cases.items():
                interaction = recorder.interactions.get(case_id)
                if interaction is not None and interaction.response is not None:
                    run.answered[node.value.operation.label][interaction.response.status_code] += 1
            for case_id, checks in recorder.checks.items():
                for check in checks:
                    run.checks.add(check.name)
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        failure, answer = check.failure_info.failure, ""
                        interaction = recorder.interactions.get(case_id)
                        if interaction is not None and interaction.response is not None:
                            answer = f"\n-> {interaction.response.status_code} {interaction.response.content[:300]!r}"
                        run.failures[(failure.operation or "", f"{check.name}: {failure.title}")].append(
                            f"{failure.message}\n{check.failure_info.code_sample[:1000]}{answer}"
                        )
        elif isinstance(event, events.NonFatalError):  # an exception out of the app: a 500 behind a server
            run.errors.append(f"{event.label}: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            raise event.exception
    return run


def test_the_api_conforms_to_its_openapi_document(client, auth, other_auth, tenant_objects, tmp_path, monkeypatch):
    from app.main import app  # `client` has pointed its database session at the test transaction

    # Thousands of requests a minute from one tenant: the rate limit (tests/api/test_keys_and_limits.py) would
    # answer most of them 429.
    monkeypatch.setattr(get_settings(), "rate_limit_per_minute", 0)
    # Webhook URLs: any well-formed one is registered (no DNS lookup, so endpoints get made and their ids reach
    # the other operations), and POST .../test sends nothing: the address checks and the sending have their own
    # tests (tests/api/test_webhooks.py), and a fuzzer must not make the server POST to what its URLs happen to name.
    monkeypatch.setattr(get_settings(), "webhook_allow_private_urls", True)
    monkeypatch.setattr("app.webhooks.routes.post_event", lambda *_args, **_kwargs: 204)
    # stream=true on a job that never runs stays open until the stream's lifetime: a short one keeps those cases short
    monkeypatch.setattr(get_settings(), "event_stream_max_s", 0.2)
    # no preview worker runs here: a preview is answered queued (202) at once rather than waited for
    monkeypatch.setattr(get_settings(), "preview_wait_s", 0.0)
    tenants = tmp_path / "tenants.json"  # the two tenants' keys as Web Fuzzing Commons users
    tenants.write_text(
        json.dumps(
            {
                "auth": [
                    {"name": name, "fixedHeaders": [{"name": "Authorization", "value": headers["Authorization"]}]}
                    for name, headers in (("acme", auth), ("globex", other_auth))
                ]
            }
        )
    )
    started = time.monotonic()
    run = run_schemathesis(app, schemathesis_config(str(tenants)))
    elapsed = time.monotonic() - started

    documented = {f"{method.upper()} {path}" for path, ops in app.openapi()["paths"].items() for method in ops}
    succeeded = {op for op, statuses in run.answered.items() if any(200 <= s < 300 for s in statuses)}
    failures = sum(len(items) for items in run.failures.values()) + len(run.errors)
    figure = (
        f"schemathesis {schemathesis.__version__}: {len(run.answered)}/{len(documented)} operations, "
        f"{run.cases} cases, {len(run.checks)} checks, {len(succeeded)} operations answered 2xx, "
        f"{failures} failures, {elapsed:.0f} s"
    )
    REPORT.append(figure)
    print(figure)
    report = "\n\n".join(
        f"{op} {what} (x{len(items)}):\n{items[0]}" for (op, what), items in sorted(run.failures.items())
    )
    assert not run.failures, report
    assert not run.errors, "\n\n".join(run.errors[:5])
    assert set(run.answered) == documented, f"never called: {sorted(documented - set(run.answered))}"
    assert run.checks == ALL_CHECKS, f"checks not run: {sorted(ALL_CHECKS - run.checks)}"
    # The key really works: most operations answered 2xx (only bodies beyond a fuzzer's reach may not).
    assert len(succeeded) >= 0.75 * len(documented), sorted(documented - succeeded)


def test_the_document_declares_the_errors_in_the_apps_shape():
    from app.main import app

    document = app.openapi()
    assert "HTTPValidationError" not in document["components"]["schemas"]  # validation errors are 400s
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            responses = op["responses"]
            expected = {"400"} | ({"401", "429", "503"} if op.get("security") else set())
            if "{" in path:
                expected.add("404")
            assert expected <= set(responses), (method, path)
            for status in expected:  # JSON even where the success is a PNG, an HTML page or a download
                assert responses[status]["content"] == {"application/json": {"schema": error}}, (method, path)
