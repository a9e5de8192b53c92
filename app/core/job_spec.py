"""The job specification: the request's shape (OpenAI's fields and ftaas' adapter, training and evaluation
settings, each saying what it trades off, so the Swagger UI doubles as the manual) and resolve_spec, which makes
every `auto` concrete. The API validates with these models and stores the resolved spec on the job row."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.core.graders import GRADER_NAMES, Grader
from app.core.metrics import EVALUATION_FAMILIES, EvaluationFamily, SelectionMetric

Auto = Literal["auto"]


class Strict(BaseModel):
    # Unknown fields are errors: a typo in a hyperparameter name must not be silently ignored.
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- job specification (request side)


MaxSeqLength = Annotated[int, Field(ge=16, le=131072)]


class Hyperparameters(Strict):
    n_epochs: Annotated[int, Field(ge=1, le=100)] | Auto = Field(
        "auto", description="passes over the training rows; auto = 3"
    )
    batch_size: Annotated[int, Field(ge=1, le=1024)] | Auto = Field(
        "auto", description="examples per optimizer step (before accumulation); auto = 8"
    )
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=100)] | Auto = Field(
        "auto", description="scales the adapter type's base learning rate; auto = 1"
    )


class Supervised(Strict):
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class DpoHyperparameters(Hyperparameters):
    beta: Annotated[float, Field(gt=0, le=2)] | Auto = Field(
        "auto",
        description="how far the model may move from the frozen base: lower = a stronger push towards the "
        "preferred answers and further from the base; auto = 0.1",
    )
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=100)] | Auto = Field(
        "auto",
        description="scales the adapter type's base learning rate for preference tuning (a tenth of supervised "
        "fine-tuning's: lora/qlora 2e-5, full 2e-6); auto = 1",
    )


class Dpo(Strict):
    hyperparameters: DpoHyperparameters = Field(default_factory=DpoHyperparameters)


MethodType = Literal["supervised", "dpo"]


class Method(Strict):
    type: MethodType = Field(
        "supervised",
        description="supervised: learn the answers of the training rows; dpo: direct preference optimization "
        "on preference rows (a preferred and a non-preferred answer per prompt), lora, qlora or full",
    )
    supervised: Supervised | None = None
    dpo: Dpo | None = None

    def hyperparameters(self) -> Hyperparameters:
        """The hyperparameters of the method's type, its defaults where the request has none."""
        if self.type == "dpo":
            return (self.dpo or Dpo()).hyperparameters
        return (self.supervised or Supervised()).hyperparameters


class AdapterSpec(Strict):
    type: Literal["lora", "qlora", "prompt_tuning", "full", "auto"] = Field(
        "lora",
        description="lora: low-rank adapters on a bf16/fp32 base; qlora: the same on a 4-bit NF4 base "
        "(less memory, slower); prompt_tuning: learned virtual tokens only (fewest parameters); "
        "full: every weight trained, the reference the adapters are measured against (small models only: "
        "the optimizer holds two fp32 copies of every weight); auto: the worker picks bf16 LoRA where the model "
        "fits its GPU unquantized (fast), QLoRA where it does not",
    )
    r: int = Field(8, ge=1, le=512, description="LoRA rank: higher = more capacity and memory")
    alpha: float | None = Field(
        None, gt=0, le=4096, description="LoRA scaling numerator (update scaled by alpha/r); default 2*r"
    )
    dropout: float = Field(
        0.0,
        ge=0,
        le=0.9,
        description="dropout on the LoRA input: regularises small data (e.g. 0.05), at a cost in speed "
        "(0.05 made a bf16 LoRA step about 17% slower on an H200); 0 is peft's own default",
    )
    # Limits in the types, so that the schema states them: a non-empty list of non-empty names.
    target_modules: (
        Annotated[list[Annotated[str, Field(min_length=1, max_length=100)]], Field(min_length=1)]
        | Literal["all-linear"]
    ) = Field(
        "all-linear",
        description="module names that get adapters, e.g. [q_proj, k_proj, v_proj, o_proj]; "
        "all-linear = every linear layer but the output head (more capacity, more memory)",
    )
    train_eos_token: bool = Field(
        True,
        description="lora/qlora: also train the end-of-sequence token's embedding row (hidden_size parameters), "
        "so base models that never saw that token learn to stop after an answer",
    )
    num_virtual_tokens: int = Field(
        20, ge=1, le=1024, description="prompt tuning: learned tokens prepended (longer = more capacity)"
    )
    prompt_tuning_init_text: str | None = Field(
        None, max_length=2000, description="prompt tuning: initialise the virtual tokens from this text"
    )
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="qlora: dtype the 4-bit weights are dequantized to for matmuls"
    )


class TrainingSpec(Strict):
    learning_rate: float | None = Field(
        None, gt=0, le=1, description="absolute learning rate; overrides learning_rate_multiplier"
    )
    max_seq_length: MaxSeqLength = Field(
        512,
        description="a longer row loses the beginning of its prompt, never its answer; a row whose answer alone is "
        "longer is not trained on (the job's `data` counts both)",
    )
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=1024, description="micro-batches per optimizer step: larger effective batch, same memory"
    )
    micro_batch_size: Annotated[int, Field(ge=1, le=1024)] | Auto | None = Field(
        None,
        description="examples per forward pass; default = batch_size; auto = the largest that fits the worker's "
        "GPU, measured there (with batch_size auto too, one micro-batch per optimizer step)",
    )
    warmup_ratio: float = Field(0.03, ge=0, le=0.5, description="share of steps with a rising learning rate")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    weight_decay: float = Field(0.0, ge=0, le=1)
    max_grad_norm: float = Field(1.0, gt=0, le=1000, description="gradient clipping")
    logging_steps: int = Field(10, ge=1, le=100000, description="optimizer steps between metric events")
    validation_split: float = Field(
        0.1, gt=0, lt=0.5, description="held-out share of the training file when no validation_file is given"
    )
    test_split: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="share of the training file carved off first, by the job's seed, as test rows when no "
        "test_file is given: never trained on, never used to pick a checkpoint, stop early or choose a sweep's "
        "winner, only reported beside the validation numbers. 0: no test rows",
    )
    gradient_checkpointing: bool = Field(False, description="recompute activations: less memory, ~30% slower")
    packing: bool = Field(
        True,
        description="lora/qlora/full: pack several examples into each max_seq_length row (no padding, examples "
        "never attend to each other, same loss): faster when examples are shorter than max_seq_length",
    )


class EvaluationSpec(Strict):
    metrics: list[EvaluationFamily] = Field(default_factory=lambda: list(EVALUATION_FAMILIES))
    max_rows: int = Field(100, ge=1, le=100000, description="evaluation rows generated and scored")
    max_new_tokens: int = Field(128, ge=1, le=4096, description="generation length cap per row")
    batch_size: Annotated[int, Field(ge=1, le=1024)] | Auto = Field(
        "auto",
        description="rows generated per batch; auto: 128 on a GPU (on an H200 about 5x the generated tokens/s "
        "of 16), 16 on a CPU. Teacher-forced scoring takes at most 16 rows at a time (full-vocabulary logits)",
    )
    num_samples: int = Field(10, ge=0, le=1000, description="rows shown side by side in the evaluation")
    eval_every_steps: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description="evaluate a checkpoint on the held-out rows every N optimizer steps (and at the end); "
        "default: at each epoch end. More often = finer choice of checkpoint, more time spent evaluating",
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="stop training after this many evaluations in a row without a better selection metric; "
        "default: never stop early",
    )
    selection_metric: SelectionMetric = Field(
        "auto",
        description="picks the checkpoint you download among the evaluated ones (each epoch end by default), "
        "each evaluated on the validation rows: "
        "auto = rougeL when rows have completions, eval_loss for raw text; last = the final weights; a grader's "
        "name (exact_match, sql_execution, ...) when it is among `graders`",
    )
    graders: list[Grader] = Field(
        default_factory=list,
        max_length=len(GRADER_NAMES),
        description="task graders scoring each generated output 1 or 0, stored per row and bootstrapped like the "
        "other metrics: exact_match (normalized: whitespace, case, trailing punctuation), json_valid, json_schema "
        "(with `json_schema`), regex (with an RE2 `pattern`), sql_valid and sql_execution (text-to-SQL: the "
        "output run in a read-only, time-limited SQLite database built from the CREATE TABLE and INSERT "
        "statements of the row's prompt or `schema` column). Each at most once; its metric is its type",
    )

    @field_validator("graders")
    @classmethod
    def _once_each(cls, graders: list) -> list:
        types = [g.type for g in graders]
        twice = sorted({t for t in types if types.count(t) > 1})
        if twice:
            raise ValueError(f"each grader may appear once; {', '.join(twice)} appears more than once")
        return graders

    def grader_names(self) -> list[str]:
        return [g.type for g in self.graders]


# OpenAI's limits on metadata: 16 pairs, keys of up to 64 characters, values of up to 512. Without them, 16
# values of 200 KB each were stored and returned in every listing (issue 14).
MetadataKey = Annotated[str, Field(min_length=1, max_length=64)]
MetadataValue = Annotated[str, Field(max_length=512)]
Metadata = dict[MetadataKey, MetadataValue]


class Resources(Strict):
    gpus: int = Field(
        1,
        ge=1,
        le=8,
        description="GPUs of one host the job trains on: one process a GPU, started by torchrun, the gradients summed "
        "over them; at most the GPUs of the largest worker of the deployment",
    )
    strategy: Literal["auto", "ddp", "fsdp"] = Field(
        "auto",
        description="how a job on several GPUs shares the work. ddp: every GPU holds the whole model and trains on "
        "its share of each batch (the fastest, where the model fits one GPU); fsdp: the model, its gradients and "
        "optimizer state are sharded over the GPUs (PyTorch FSDP2), for models that do not fit one; auto: fsdp "
        "where the worker finds the job would not fit one of its GPUs, else ddp. Ignored on one GPU",
    )


class JobCreate(Strict):
    # an example that runs as is on the quick-start server, once "file-abc123" is one of your uploaded files
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "stories260k",
                    "training_file": "file-abc123",
                    "suffix": "sql",
                    "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
                    "adapter": {"type": "lora", "r": 8},
                    "evaluation": {"max_rows": 20, "max_new_tokens": 32},
                    "metadata": {"team": "analytics"},
                }
            ]
        },
    )

    model: str = Field(..., min_length=1, max_length=300)
    training_file: str = Field(..., min_length=1, max_length=64)
    validation_file: str | None = Field(None, max_length=64)
    test_file: str | None = Field(
        None,
        max_length=64,
        description="ftaas: rows only ever reported (never trained on or used for any decision), scored for the "
        "base and the shipped model beside the validation rows; or training.test_split",
    )
    suffix: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: Metadata | None = Field(None, max_length=16, description="up to 16 pairs: keys 64, values 512 characters")
    method: Method = Field(default_factory=Method)
    hyperparameters: Hyperparameters | None = Field(
        None, description="deprecated OpenAI location of method.supervised.hyperparameters"
    )
    integrations: list[dict[str, Any]] | None = None
    adapter: AdapterSpec = Field(default_factory=AdapterSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    resources: Resources = Field(default_factory=Resources, description="ftaas: what the job trains on")


# Base learning rates per adapter type, scaled by learning_rate_multiplier ("auto" = 1).
BASE_LEARNING_RATE = {"lora": 2e-4, "qlora": 2e-4, "prompt_tuning": 3e-2, "full": 2e-5, "auto": 2e-4}
# Preference tuning pushes on the difference between two answers against a fixed reference; at supervised rates
# it overshoots the reference within a few steps (the rewards' margin grows, the answers degrade), so a tenth.
DPO_LEARNING_RATE_SCALE = 0.1
DEFAULT_BETA = 0.1  # OpenAI's and TRL's default


class ResolvedHyperparameters(Strict):
    n_epochs: int = Field(..., ge=1)
    batch_size: int | Auto  # auto here: the worker sizes the micro-batch, one micro-batch per optimizer step
    learning_rate_multiplier: float
    beta: float | None = None  # preference tuning (method dpo) only


class JobSpec(Strict):
    """The resolved specification: what the API validated, with every `auto` it can decide made concrete.
    Stored on the job row (Job.spec, as JSON) and read back by the worker as this same model, so the API's
    validation is the worker's contract. The worker may still decide adapter.type and
    training.micro_batch_size `auto` on its GPU; it writes those choices back into the row."""

    method: MethodType = "supervised"
    hyperparameters: ResolvedHyperparameters
    adapter: AdapterSpec
    training: TrainingSpec
    evaluation: EvaluationSpec
    resources: Resources = Field(default_factory=Resources)  # rows stored before it: one GPU

    @property
    def preference(self) -> bool:
        """Preference tuning (DPO): trains on pairs of answers."""
        return self.method == "dpo"

    @classmethod
    def of(cls, stored: JobSpec | dict[str, Any]) -> JobSpec:
        """A job's spec as stored on its row (or already a JobSpec)."""
        return stored if isinstance(stored, cls) else cls.model_validate(stored)

    def stored(self) -> dict[str, Any]:
        """The JSON the job row keeps."""
        return self.model_dump(mode="json")


def gpus_of(stored: JobSpec | dict[str, Any]) -> int:
    """The GPUs a job's stored spec asks for (one for rows stored before resources existed)."""
    return JobSpec.of(stored).resources.gpus


def resolve_spec(body: JobCreate) -> JobSpec:
    """The complete training specification the worker runs, with every 'auto' the API can decide made concrete."""
    hp = body.hyperparameters or body.method.hyperparameters()
    n_epochs = 3 if hp.n_epochs == "auto" else hp.n_epochs
    micro_auto = body.training.micro_batch_size == "auto"
    # batch_size auto = 8, unless the micro-batch is left to the worker too: then one micro-batch per step.
    batch_size = ("auto" if micro_auto else 8) if hp.batch_size == "auto" else hp.batch_size
    multiplier = 1.0 if hp.learning_rate_multiplier == "auto" else hp.learning_rate_multiplier
    adapter = body.adapter
    if adapter.alpha is None:
        adapter = adapter.model_copy(update={"alpha": 2 * adapter.r})
    training = body.training
    if training.learning_rate is None:
        scale = DPO_LEARNING_RATE_SCALE if body.method.type == "dpo" else 1.0
        training = training.model_copy(update={"learning_rate": BASE_LEARNING_RATE[adapter.type] * scale * multiplier})
    if training.micro_batch_size is None:
        training = training.model_copy(update={"micro_batch_size": batch_size})
    beta = None
    if isinstance(hp, DpoHyperparameters):
        beta = DEFAULT_BETA if hp.beta == "auto" else hp.beta
    return JobSpec(
        method=body.method.type,
        hyperparameters=ResolvedHyperparameters(
            n_epochs=n_epochs, batch_size=batch_size, learning_rate_multiplier=multiplier, beta=beta
        ),
        adapter=adapter,
        training=training,
        evaluation=body.evaluation,
        resources=body.resources,
    )
