"""A training attempt whose object store is misconfigured (a bucket nobody made) ends at once with the store's
reason in the job's events, for the worker's retry to report, never hangs; and a dataset whose stored bytes no
longer match their checksum is refused rather than trained on."""

from __future__ import annotations

from app.core.object_store import get_store
from app.core.settings import get_settings
from tests.helpers.s3_server import CREDENTIALS, s3_server

BODY = {
    "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
    "adapter": {"type": "lora", "r": 4},
    "evaluation": {"metrics": ["perplexity"], "max_rows": 4},
}


def test_a_misconfigured_store_fails_the_attempt_with_its_reason(database, monkeypatch):
    """(Wrong credentials cannot be tried here: moto's server accepts any key unless IAM is set up in it.)"""
    import time

    from tests.helpers.child import running_job_row, sql_rows, stored
    from worker.child.job_context import EXIT_CRASH
    from worker.child.recipe import main

    job_id = running_job_row(BODY, sql_rows("train.jsonl", 12), None, "\nA: ")  # its file in the local store
    settings = get_settings()
    with s3_server() as s3:
        for key, value in CREDENTIALS.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(settings, "store_url", "s3://no-such-bucket")
        monkeypatch.setattr(settings, "s3_endpoint", s3.endpoint)
        get_store.cache_clear()
        try:
            t = time.monotonic()
            code = main([job_id, "1"])
            seconds = time.monotonic() - t
        finally:
            get_store.cache_clear()
    job, *_, events = stored(job_id)
    crashed = [e for e in events if e.startswith("Attempt 1 crashed: StoreError")]
    shown = crashed[0][:160] if crashed else events
    print(f"\n[store] a bucket nobody made: attempt ended in {seconds:.1f}s with {shown}")
    assert code == EXIT_CRASH and job.status == "running"  # the worker's task retries, then fails with this reason
    assert crashed and "no-such-bucket" in crashed[0]
    assert seconds < 60


def test_a_dataset_damaged_in_the_store_is_refused(database):
    from app.core.storage import upload_key
    from tests.helpers.child import running_job_row, sql_rows, stored
    from worker.child.job_context import EXIT_CRASH
    from worker.child.recipe import main

    job_id = running_job_row(BODY, sql_rows("train.jsonl", 12), None, "\nA: ")
    job, *_ = stored(job_id)
    from app.core.db import get_sessionmaker
    from app.core.tables import File

    with get_sessionmaker()() as s:
        key = upload_key(s.get(File, job.training_file_id).storage_name)
    data = b"".join(get_store().read(key))
    get_store().put_stream(key, [data.replace(b"SELECT", b"select", 1)])
    assert main([job_id, "1"]) == EXIT_CRASH
    *_, events = stored(job_id)
    assert any("is damaged: sha256" in e for e in events), events
