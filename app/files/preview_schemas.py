"""Shapes of previews: a file's first rows as a model's worker will train them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.job_spec import MaxSeqLength, Strict

MAX_PREVIEW_ROWS = 20


class PreviewCreate(Strict):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"model": "stories260k", "max_seq_length": 512, "rows": 2}]}
    )

    model: str = Field(..., min_length=1, max_length=300, description="the model a job would train")
    max_seq_length: MaxSeqLength = Field(512, description="as the job's training.max_seq_length")
    rows: int = Field(
        3,
        ge=1,
        le=MAX_PREVIEW_ROWS,
        description="rows shown token by token, from the file's start (a preference row shows its two answers)",
    )


class PreviewToken(BaseModel):
    id: int
    token: str = Field(description="the tokenizer's own piece (a leading space shows as ▁ or Ġ)")
    trained: bool = Field(description="the loss is taken on this token")


class PreviewRow(BaseModel):
    line: int
    answer: Literal["chosen", "rejected"] | None = Field(
        None, description="a preference row is shown twice: its prompt with the chosen, then the rejected answer"
    )
    dropped: str | None = Field(description="why the row is not trained on, if it is not")
    cut: bool = Field(description="the row lost the beginning of its prompt to max_seq_length")
    num_tokens: int
    num_trained_tokens: int
    text: str | None = Field(description="the token ids decoded: the text exactly as trained (chat template included)")
    trained_text: str | None = Field(description="the trained tokens decoded")
    tokens: list[PreviewToken] = Field(description="the first 4,096 tokens")


class PreviewError(BaseModel):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class PreviewPublic(BaseModel):
    object: Literal["file.preview"] = "file.preview"
    id: str
    created_at: int
    finished_at: int | None
    file_id: str
    model: str
    max_seq_length: int
    status: Literal["queued", "running", "succeeded", "failed"]
    rows: list[PreviewRow] | None = None
    rows_counted: int | None = Field(None, description="rows of the file formatted for the counts below")
    rows_cut: int | None = Field(None, description="rows that lose the beginning of their prompt to max_seq_length")
    rows_dropped: int | None = Field(None, description="rows whose answer alone is longer than max_seq_length")
    whole_file: bool | None = Field(None, description="false when the counts are of the first 100,000 rows only")
    error: PreviewError | None = None
