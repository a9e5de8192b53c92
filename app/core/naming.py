"""Names a client sees for what a job produces."""

from __future__ import annotations

from app.core.tables import Job


def fine_tuned_name(job: Job) -> str:
    """ft:<base>:<tenant>:<suffix>:<job id>, as OpenAI names fine-tuned models."""
    return f"ft:{job.model}:{job.tenant_id}:{job.suffix or ''}:{job.id}"
