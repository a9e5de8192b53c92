"""Where the service keeps its files: the one description of the storage layout, for the API and the worker.

    <artifacts_dir>/files/<storage_name>                      an uploaded file (File.storage_name)
    <artifacts_dir>/jobs/<job_id>/attempt-<n>.log             a training attempt's child output
    <artifacts_dir>/jobs/<job_id>/checkpoints/step-<n>/       resumable checkpoints
    <artifacts_dir>/jobs/<job_id>/adapter/                    the shipped adapter folder (comparisons load it)
    <artifacts_dir>/jobs/<job_id>/adapter.tar.gz              the shipped archive (GET .../adapter)
    <artifacts_dir>/jobs/<job_id>/checkpoint-archives/step-<n>.tar.gz   an evaluated checkpoint's archive
    <artifacts_dir>/jobs/<job_id>/merged/<source>-<attempt>.tar.gz      the base with an adapter merged in
                                                                        (GET .../adapter?format=merged)
    <artifacts_dir>/jobs/<job_id>/merged/<source>.log                   the merge child's output
    <artifacts_dir>/comparisons/<comparison_id>.log           a comparison child's output

The same names relative to artifacts_dir are the keys in the object store every host shares
(app/core/object_store.py; the local folder is its default backend).

Rows name job files relative to the jobs folder (Job.adapter_name, Checkpoint.dir_name, .adapter_name), so
the folder can move with the settings; JobFiles.relative makes those names and JobFiles.resolve reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.core.settings import Settings, get_settings


def upload_path(storage_name: str, settings: Settings | None = None) -> Path:
    return (settings or get_settings()).uploads_dir / storage_name


def comparison_log(comparison_id: str, settings: Settings | None = None) -> Path:
    return (settings or get_settings()).artifacts_dir / "comparisons" / f"{comparison_id}.log"


@dataclass(frozen=True)
class JobFiles:
    """The files of one job."""

    job_id: str
    jobs_dir: Path

    def __init__(self, job_id: str, settings: Settings | None = None) -> None:
        object.__setattr__(self, "job_id", job_id)
        object.__setattr__(self, "jobs_dir", (settings or get_settings()).jobs_dir)

    @property
    def root(self) -> Path:
        return self.jobs_dir / self.job_id

    def attempt_log(self, attempt: int) -> Path:
        return self.root / f"attempt-{attempt}.log"

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

    def merged_archives(self, source: str) -> list[Path]:
        """Every attempt's merged archive of `source` (an older one is removed once a newer one is ready)."""
        return sorted((self.root / "merged").glob(f"{source}-*.tar.gz"))

    def merge_log(self, source: str) -> Path:
        return self.root / "merged" / f"{source}.log"

    def relative(self, path: Path) -> str:
        """The name a row stores for a file of this job (relative to the jobs folder)."""
        return str(path.relative_to(self.jobs_dir))

    def resolve(self, stored_name: str) -> Path:
        """The path of a name a row stored (see relative)."""
        return self.jobs_dir / stored_name
