"""Database tables. Postgres (or the embedded SQLite file) is the source of truth for every job."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names, so migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A stored timestamp made timezone-aware: SQLite hands back naive datetimes, written in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class JobStatus(enum.StrEnum):
    validating_files = "validating_files"
    queued = "queued"
    running = "running"
    paused = "paused"  # checkpointed and off the GPU until POST .../resume; not terminal
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_STATUSES = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class SweepStatus(enum.StrEnum):
    running = "running"  # some candidate is queued or running
    succeeded = "succeeded"  # every candidate ended and at least one succeeded: a winner is named
    failed = "failed"  # every candidate ended and none succeeded
    cancelled = "cancelled"


class ComparisonStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


PreviewStatus = ComparisonStatus  # a preview goes through the same four states


class MergeStatus(enum.StrEnum):
    queued = "queued"  # asked for; a message is on the training queue (once sent_at is set)
    building = "building"  # a worker's merge child is on it
    ready = "ready"  # its archive is stored: GET .../adapter?format=merged downloads it
    failed = "failed"  # `error` says why; a request after MERGE_RETRY_AFTER_S tries again


JSONType = JSON(none_as_null=True)
TZDateTime = DateTime(timezone=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("tenant"))
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("key"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    # SHA-256 of the whole key: keys are 256-bit random, so a fast hash is safe and lookups are O(1).
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(TZDateTime)


class File(Base):
    __tablename__ = "files"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("file"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))  # the client's name, for display only
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(16))
    shape: Mapped[str] = mapped_column(String(32))
    num_rows: Mapped[int] = mapped_column(Integer)
    token_estimate: Mapped[int] = mapped_column(BigInteger)
    column_mapping: Mapped[dict | None] = mapped_column(JSONType)
    completion_separator: Mapped[str | None] = mapped_column(Text)
    # Rows carrying CREATE TABLE statements (prompt or `schema` column), for the SQL graders; None: not known
    # (uploaded before it was counted)
    sql_schema_rows: Mapped[int | None] = mapped_column(Integer)
    first_line_without_sql_schema: Mapped[int | None] = mapped_column(Integer)
    storage_name: Mapped[str] = mapped_column(String(64))  # server-made; its object is files/<storage_name>
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(TZDateTime)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ftjob"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    model: Mapped[str] = mapped_column(String(300))  # as the client named it
    model_source: Mapped[str] = mapped_column(Text)  # hub id or absolute directory for from_pretrained
    training_file_id: Mapped[str] = mapped_column(ForeignKey("files.id"), index=True)
    validation_file_id: Mapped[str | None] = mapped_column(ForeignKey("files.id"))
    test_file_id: Mapped[str | None] = mapped_column(ForeignKey("files.id"))  # rows only ever reported
    suffix: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(Integer)
    metadata_: Mapped[dict | None] = mapped_column("metadata", JSONType)
    spec: Mapped[dict] = mapped_column(JSONType)  # the full, defaulted training specification
    sweep_id: Mapped[str | None] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.queued, index=True)
    error: Mapped[dict | None] = mapped_column(JSONType)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(400))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # POST .../pause on a running job: the training child checkpoints at its next step end and exits
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    # attempts that ended because their worker shut down (checkpointed, queued again): not failures, so
    # they do not count against max_attempts
    interruptions: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_expires_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    worker: Mapped[str | None] = mapped_column(String(200))
    # progress, written by the training child at a throttled rate
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer)
    epoch: Mapped[float] = mapped_column(Float, default=0.0)
    train_loss: Mapped[float | None] = mapped_column(Float)
    eta_s: Mapped[float | None] = mapped_column(Float)
    phase: Mapped[str | None] = mapped_column(String(32))
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger)
    trainable_params: Mapped[int | None] = mapped_column(BigInteger)
    total_params: Mapped[int | None] = mapped_column(BigInteger)
    # the rows trained and evaluated on, and how many max_seq_length cut or dropped (worker/training/data.py)
    data_summary: Mapped[dict | None] = mapped_column(JSONType)
    # cost of the training itself (evaluation excluded), for the leaderboard
    train_seconds: Mapped[float | None] = mapped_column(Float)
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)  # CUDA peak allocated, or the child's RSS
    # the downloadable adapter archive
    adapter_name: Mapped[str | None] = mapped_column(String(300))  # relative to the store's jobs/ (app/core/storage.py)
    adapter_sha256: Mapped[str | None] = mapped_column(String(64))
    adapter_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # OpenAI's result_files: a CSV of the step metrics, a File of the tenant's, written when the job succeeds
    result_file_id: Mapped[str | None] = mapped_column(ForeignKey("files.id"))
    # X-Request-ID of the request that created it (app/api/request_id.py): the worker's and child's log lines name it
    request_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    updated_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, onupdate=utcnow)


class JobEvent(Base):
    __tablename__ = "job_events"
    # read by job in id order: the list, the live streams and their watcher (migration 0006)
    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    level: Mapped[str] = mapped_column(String(10), default="info")
    type: Mapped[str] = mapped_column(String(10), default="message")  # message | metrics
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict | None] = mapped_column(JSONType)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ftckpt"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[float] = mapped_column(Float)
    metrics: Mapped[dict | None] = mapped_column(JSONType)
    dir_name: Mapped[str] = mapped_column(String(300))  # relative to the store's jobs/ (app/core/storage.py)
    evaluated: Mapped[bool] = mapped_column(Boolean, default=False)  # metrics on the held-out rows
    # an evaluated checkpoint's own downloadable archive (GET .../adapter?step=N), written when the job ends
    adapter_name: Mapped[str | None] = mapped_column(String(300))
    adapter_sha256: Mapped[str | None] = mapped_column(String(64))
    adapter_bytes: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)


class MergedModel(Base):
    """A LoRA or QLoRA job's base model with one of its adapters merged in, bf16 (GET .../adapter?format=merged):
    built by a worker on the first request, kept beside the adapter and downloaded as is afterwards."""

    __tablename__ = "merged_models"
    __table_args__ = (UniqueConstraint("job_id", "source"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ftmerge"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    # which adapter is merged, as the download names it: "adapter" (the shipped one) or "step-<n>"
    source: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(20), default=MergeStatus.queued)
    # each claim by a worker counts one; the child's writes are fenced on it, and its archive carries it
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    archive_name: Mapped[str | None] = mapped_column(String(300))  # relative to the store's jobs/ (app/core/storage.py)
    sha256: Mapped[str | None] = mapped_column(String(64))
    bytes: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[dict | None] = mapped_column(JSONType)
    # X-Request-ID of the request that asked for its latest build: the worker's and child's log lines name it
    request_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(TZDateTime)  # last put on the queue; None: not yet
    started_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(TZDateTime)


class Sweep(Base):
    """Several candidate jobs on one training file, evaluated on the same rows; the best is selected."""

    __tablename__ = "sweeps"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("sweep"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    training_file_id: Mapped[str] = mapped_column(ForeignKey("files.id"), index=True)
    validation_file_id: Mapped[str | None] = mapped_column(ForeignKey("files.id"))
    test_file_id: Mapped[str | None] = mapped_column(ForeignKey("files.id"))
    selection_metric: Mapped[str] = mapped_column(String(32))
    seed: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict] = mapped_column(JSONType)  # the request as resolved (candidates expanded)
    metadata_: Mapped[dict | None] = mapped_column("metadata", JSONType)
    status: Mapped[str] = mapped_column(String(20), default=SweepStatus.running, index=True)
    winner_job_id: Mapped[str | None] = mapped_column(String(40))  # no FK: jobs already point here
    result: Mapped[dict | None] = mapped_column(JSONType)  # why the winner won, written once at the end
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(TZDateTime)


class Comparison(Base):
    """Side-by-side generations of the base model and chosen jobs on the user's prompts (a worker task)."""

    __tablename__ = "comparisons"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("cmp"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    job_ids: Mapped[list] = mapped_column(JSONType)
    prompts: Mapped[list] = mapped_column(JSONType)
    max_new_tokens: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default=ComparisonStatus.queued, index=True)
    # {"source", "held_out_job_id", "references"} at creation; the worker adds "base" and "jobs" output lists
    results: Mapped[dict | None] = mapped_column(JSONType)
    error: Mapped[dict | None] = mapped_column(JSONType)
    # X-Request-ID of the request that created it (app/api/request_id.py): the worker's and child's log lines name it
    request_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(TZDateTime)


class Preview(Base):
    """The first rows of a file as a model's worker will train them: text, token ids, which are trained. Made by
    the preview worker (the API never loads a tokenizer: that needs transformers, which imports torch), kept
    as a cache: the same file, model and max_seq_length are answered from here."""

    __tablename__ = "previews"
    __table_args__ = (Index("ix_previews_lookup", "file_id", "model", "max_seq_length", "num_rows"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("preview"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    file_id: Mapped[str] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(300))  # as the client named it
    model_source: Mapped[str] = mapped_column(Text)
    max_seq_length: Mapped[int] = mapped_column(Integer)
    num_rows: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default=PreviewStatus.queued)
    result: Mapped[dict | None] = mapped_column(JSONType)
    error: Mapped[dict | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(TZDateTime)


class Evaluation(Base):
    """Aggregate metrics of one model (the base, or the tuned adapter) on a job's evaluation set."""

    __tablename__ = "evaluations"
    __table_args__ = (UniqueConstraint("job_id", "subject", "split"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    subject: Mapped[str] = mapped_column(String(10))  # base | tuned
    # validation: the rows that pick checkpoints, stop early and choose a sweep's winner; test: only reported
    split: Mapped[str] = mapped_column(String(10), default="validation", server_default="validation")
    metrics: Mapped[dict] = mapped_column(JSONType)
    num_rows: Mapped[int] = mapped_column(Integer)
    details: Mapped[dict | None] = mapped_column(JSONType)  # skipped metrics with reasons, timings
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)


class EvaluationRow(Base):
    """One evaluated example: prompt, reference, both generations and their per-row scores."""

    __tablename__ = "evaluation_rows"
    __table_args__ = (UniqueConstraint("job_id", "split", "row_index"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    split: Mapped[str] = mapped_column(String(10), default="validation", server_default="validation")
    row_index: Mapped[int] = mapped_column(Integer)  # the row's position within its split
    prompt: Mapped[str] = mapped_column(Text)
    reference: Mapped[str] = mapped_column(Text)
    base_output: Mapped[str | None] = mapped_column(Text)
    tuned_output: Mapped[str | None] = mapped_column(Text)
    base_scores: Mapped[dict | None] = mapped_column(JSONType)
    tuned_scores: Mapped[dict | None] = mapped_column(JSONType)


class Selection(Base):
    """The model a tenant chose for a training file (POST /v1/fine_tuning/jobs/{id}/select)."""

    __tablename__ = "selections"
    file_id: Mapped[str] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)


class DeliveryStatus(enum.StrEnum):
    pending = "pending"  # waiting for its next attempt (or in flight: see lease_expires_at)
    delivered = "delivered"  # the endpoint answered 2xx
    failed = "failed"  # webhook_max_attempts attempts, none answered 2xx


class WebhookEndpoint(Base):
    """A URL of a tenant's that receives signed events (POST /v1/webhook_endpoints, as OpenAI's)."""

    __tablename__ = "webhook_endpoints"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("webhook"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(Text)
    event_types: Mapped[list] = mapped_column(JSONType)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")
    # Kept in clear, unlike API keys: an HMAC signature needs the secret itself, a hash of it cannot sign.
    # Shown to the tenant only when made (create, rotate_secret); never logged.
    signing_secret: Mapped[str] = mapped_column(String(100))
    # rotate_secret with keep_old_secret_active_for_24_hours: deliveries carry a second signature until then
    previous_signing_secret: Mapped[str | None] = mapped_column(String(100))
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)


class WebhookDelivery(Base):
    """The outbox: one event for one endpoint, written in the transaction that changed the job or sweep, so a
    crash cannot lose it; a dispatcher (app/webhook_dispatch.py) sends it until the endpoint answers 2xx."""

    __tablename__ = "webhook_deliveries"
    # a job or a sweep ends once: the same event for the same endpoint is never written twice
    __table_args__ = (UniqueConstraint("endpoint_id", "subject_id", "event_type"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("delivery"))
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True)
    event_id: Mapped[str] = mapped_column(String(40))  # the payload's id and the webhook-id header, every attempt
    event_type: Mapped[str] = mapped_column(String(64))
    subject_id: Mapped[str] = mapped_column(String(40))  # the job or sweep the event is about
    body: Mapped[str] = mapped_column(Text)  # the JSON payload as sent and signed, the same bytes every attempt
    status: Mapped[str] = mapped_column(String(20), default=DeliveryStatus.pending, index=True)  # the due ones
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    # a dispatcher's claim: while it runs no other dispatcher takes the row; one that died lets it lapse
    lease_expires_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    claim_token: Mapped[str | None] = mapped_column(String(32))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, index=True)
    delivered_at: Mapped[datetime | None] = mapped_column(TZDateTime)


class Worker(Base):
    """A training worker of the deployment, as it advertises itself on start and every reconcile pass: the GPUs it
    owns and the queues it takes jobs from. The API checks a job's resources.gpus against the largest one."""

    __tablename__ = "workers"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)  # host:pid, as job events name it
    gpus: Mapped[int] = mapped_column(Integer)  # 0: a CPU worker
    queues: Mapped[list] = mapped_column(JSONType)
    started_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, index=True)
