"""Request and response shapes of /v1/comparisons: the base model and chosen jobs on the same prompts.

The per-prompt limits are documented in the schema and checked by the route, so that an error names the
exact prompt (`prompts[3]`), as OpenAI's errors do.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas import ListPage
from app.jobs.schemas import JobError

MAX_JOBS = 8
MAX_PROMPTS = 20
MAX_PROMPT_CHARS = 8000
MAX_NEW_TOKENS = 1024

# The item limits appear in the OpenAPI schema; the route enforces them with a per-item `param`.
PromptText = Annotated[
    str, Field(json_schema_extra={"minLength": 1, "maxLength": MAX_PROMPT_CHARS}, description="one prompt")
]


class ComparisonCreate(BaseModel):
    # Exactly one prompt source, as the route checks (a null one counts as absent): said in the schema too,
    # so that clients and schema-driven tests know a body with neither or both is invalid.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"job_ids": ["ftjob-abc123"], "prompts": ["Q: how many heads of departments are older than 56?"]}
            ],
            "oneOf": [
                {"required": ["prompts"], "properties": {"prompts": {"type": "array"}}},
                {"required": ["held_out_rows"], "properties": {"held_out_rows": {"type": "integer"}}},
            ],
        },
    )

    job_ids: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        ...,
        min_length=1,
        max_length=MAX_JOBS,
        description=f"1 to {MAX_JOBS} of your succeeded fine-tuning jobs; each is compared with its base model",
    )
    prompts: list[PromptText] | None = Field(
        None,
        min_length=1,
        max_length=MAX_PROMPTS,
        description=f"1 to {MAX_PROMPTS} prompts of your own, each 1 to {MAX_PROMPT_CHARS} characters, "
        "formatted as each job's training data was (chat-shaped jobs get it as a user message). "
        "Exactly one of prompts and held_out_rows",
    )
    held_out_rows: int | None = Field(
        None,
        ge=1,
        le=MAX_PROMPTS,
        description="instead of prompts: the first N held-out evaluation rows of the first job (prompts as the "
        "job's evaluation formatted them, shown with their reference answers)",
    )
    max_new_tokens: int = Field(64, ge=1, le=MAX_NEW_TOKENS, description="generation length cap per prompt")


class BaseOutput(BaseModel):
    subject: Literal["base"] = "base"
    model: str = Field(..., description="the base model, as the jobs name it")
    quantized: bool = Field(False, description="the 4-bit NF4 base that QLoRA jobs were trained on")
    text: str


class JobOutput(BaseModel):
    subject: Literal["job"] = "job"
    job_id: str
    model: str = Field(..., description="the job's base model")
    fine_tuned_model: str | None
    adapter_type: str
    text: str


class ComparisonEntry(BaseModel):
    index: int
    prompt: str
    reference: str | None = Field(None, description="the expected answer, for held-out rows")
    outputs: list[BaseOutput | JobOutput] = Field(
        ..., description="base model(s) first, then each job in the order of job_ids; greedy decoding"
    )


class ComparisonPublic(BaseModel):
    object: Literal["comparison"] = "comparison"
    id: str
    created_at: int
    finished_at: int | None
    status: Literal["queued", "running", "succeeded", "failed"]
    job_ids: list[str]
    prompt_source: Literal["prompts", "held_out_rows"]
    held_out_job_id: str | None = Field(None, description="the job whose held-out rows were taken")
    num_prompts: int
    max_new_tokens: int
    error: JobError | None
    results: list[ComparisonEntry] | None = Field(
        None, description="one entry per prompt, every model's output side by side; null until succeeded"
    )


class ComparisonList(ListPage):
    data: list[ComparisonPublic]
