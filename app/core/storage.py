"""Where the service keeps its files: the one description of the storage layout, for the API and the worker.

Every file a job needs or makes is an object in the store every host shares (app/core/object_store.py: the local
folder artifacts_dir by default, or an S3-compatible bucket). Its key:

    files/<storage_name>                              an uploaded file, or a job's result file (File.storage_name)
    tokenized/<storage_name>/<fingerprint>.npz        an upload's rows as a tokenizer trains them (deleted with it)
    jobs/<job_id>/checkpoints/step-<n>/               resumable checkpoints (COMPLETE is uploaded last)
    jobs/<job_id>/checkpoints/reference_logps.pt      preference tuning's reference log-probabilities
    jobs/<job_id>/adapter/                            the shipped adapter folder (comparisons load it)
    jobs/<job_id>/adapter.tar.gz                      the shipped archive (GET .../adapter)
    jobs/<job_id>/checkpoint-archives/step-<n>.tar.gz an evaluated checkpoint's archive
    jobs/<job_id>/merged/<source>-<attempt>.tar.gz    the base with an adapter merged in (?format=merged)
    compiled/triton/<environment>/<entry>/<file>      Triton kernels a host compiled, for the first jobs of hosts
                                                      like it (worker/child/compiled_kernels.py)

A host works on its own copies under cache_dir, at the same relative names (app/core/local_cache.py), and keeps its
logs there too, which no other host reads:

    <cache_dir>/jobs/<job_id>/attempt-<n>.log         a training attempt's child output
    <cache_dir>/jobs/<job_id>/merged/<source>.log     a merge child's output
    <cache_dir>/comparisons/<comparison_id>.log       a comparison child's output
    <cache_dir>/standby.log                           standby children's output until they get a task
    <cache_dir>/compiled/triton/                      Triton's compile cache (TRITON_CACHE_DIR, unless set)

Rows name job files relative to jobs/ (Job.adapter_name "<job_id>/adapter.tar.gz", Checkpoint.dir_name,
.adapter_name, MergedModel.archive_name): JobFiles.relative makes those names, JobFiles.key turns one into its key
and JobFiles.resolve into this host's copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.core.settings import Settings, get_settings

JOBS = "jobs"


def upload_key(storage_name: str) -> str:
    return f"files/{storage_name}"


def tokenized_key(storage_name: str, fingerprint: str) -> str:
    """An upload's tokenized rows (worker/training/tokenized.py) for one (tokenizer, max_seq_length, format)."""
    return f"{tokenized_prefix(storage_name)}/{fingerprint}.npz"


def tokenized_prefix(storage_name: str) -> str:
    return f"tokenized/{storage_name}"


def comparison_log(comparison_id: str, settings: Settings | None = None) -> Path:
    return (settings or get_settings()).cache_dir / "comparisons" / f"{comparison_id}.log"


@dataclass(frozen=True)
class JobFiles:
    """The files of one job: this host's copies (paths under cache_dir) and their keys in the store."""

    job_id: str
    jobs_dir: Path

    def __init__(self, job_id: str, settings: Settings | None = None) -> None:
        object.__setattr__(self, "job_id", job_id)
        object.__setattr__(self, "jobs_dir", (settings or get_settings()).cache_dir / JOBS)

    @property
    def root(self) -> Path:
        return self.jobs_dir / self.job_id

    def attempt_log(self, attempt: int) -> Path:
        return self.root / f"attempt-{attempt}.log"

    def rank_exit(self, attempt: int, rank: int) -> Path:
        """Where each rank of a job on several GPUs leaves its exit code: torchrun's own is 1 for any failure."""
        return self.root / f"attempt-{attempt}.rank-{rank}.exit"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def adapter_dir(self) -> Path:
        return self.root / "adapter"

    @property
    def adapter_archive(self) -> Path:
        return self.root / "adapter.tar.gz"

    @property
    def checkpoint_archives(self) -> Path:
        return self.root / "checkpoint-archives"

    def merged_archive(self, source: str, attempt: int) -> Path:
        """A merged model's archive; `source` is MergedModel.source ("adapter" or "step-<n>"). Each build attempt
        writes its own, so two builds of one model never overwrite the file a row points at."""
        return self.root / "merged" / f"{source}-{attempt}.tar.gz"

    def merged_prefix(self) -> str:
        return f"{JOBS}/{self.job_id}/merged"

    def merge_log(self, source: str) -> Path:
        return self.root / "merged" / f"{source}.log"

    def relative(self, path: Path) -> str:
        """The name a row stores for a file of this job (relative to jobs/)."""
        return str(Path(path).relative_to(self.jobs_dir))

    def key(self, stored_name: str) -> str:
        """The store's key of a name a row stored (see relative)."""
        return f"{JOBS}/{stored_name}"

    def key_of(self, path: Path) -> str:
        """The store's key of this host's copy `path`."""
        return self.key(self.relative(path))

    def resolve(self, stored_name: str) -> Path:
        """This host's copy of a name a row stored (see relative); fetched with LocalCache."""
        return self.jobs_dir / stored_name
