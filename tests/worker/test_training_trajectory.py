"""A pinned training trajectory: a short LoRA run on the tiny real Llama, through the service's own training
path (Formatter, load_base_model, wrap_for_training, train), must reproduce the per-step training loss and
gradient norm of a stored reference. A silent change of the training path (label masking, loss reduction,
packing, optimizer, scheduler, LoRA set-up) moves the trajectory and fails here, with a table of the steps.

The reference is tests/worker/snapshots/trajectory_lora_stories260k.json. After an intended change of the training
path, regenerate it by running this file with FTAAS_UPDATE_TRAJECTORY=1 from the repository root, e.g. where
this file is tests/worker/test_training_trajectory.py:

    FTAAS_UPDATE_TRAJECTORY=1 .venv/bin/python -m pytest tests/worker/test_training_trajectory.py

(the test then writes the reference instead of comparing, and passes), and commit the new reference with the
change that explains it. The torch/transformers/peft versions stored with it are for information only.

Tolerances: every step's loss and grad norm must satisfy |actual - expected| <= atol + rtol * |expected|, with
rtol 1e-3 for the loss and 3e-3 for the grad norm (the more sensitive figure). They absorb the float reordering
of other CPUs and BLAS builds: two threads instead of one move both by under 1e-6 relative. Yet a 10% change of
the learning rate (even 1%), another LoRA rank, other label masking, another loss reduction or packed examples
attending to one another move them by 5e-3 to 0.7. The mean of the signed relative differences over all steps
has a tighter bound, so a small consistent bias fails even where every single step is within tolerance. The
step count and each step's trained tokens must match exactly.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from tests.conftest import DATASETS, MODEL_DIR
from worker.training.data import Formatter
from worker.training.loop import Hooks, TrainConfig, train
from worker.training.modeling import load_base_model, load_tokenizer, wrap_for_training

SRC = str(MODEL_DIR)
REFERENCE = Path(__file__).resolve().parent / "snapshots" / "trajectory_lora_stories260k.json"
UPDATE_ENV = "FTAAS_UPDATE_TRAJECTORY"

N_ROWS = 24  # first rows of the wikisql training file
MAX_SEQ_LENGTH = 512  # the service default: rows of 512 tokens hold two of these ~160-250-token examples
INIT_SEED = 0  # torch.manual_seed before wrapping: the LoRA A matrices' initialisation
ADAPTER = {
    "type": "lora",
    "r": 8,
    "alpha": 16,  # the service's default, 2 * r
    "dropout": 0.0,
    "target_modules": "all-linear",
    "train_eos_token": True,
    "num_virtual_tokens": 8,
    "prompt_tuning_init_text": None,
    "compute_dtype": "bfloat16",
}
TRAIN = {
    "n_epochs": 2,  # two epochs of 6 steps: the per-epoch reshuffle and the epoch-end checkpoint are on the path
    "micro_batch_size": 4,
    "grad_accum": 1,
    "learning_rate": 5e-3,
    "lr_scheduler": "linear",
    "warmup_ratio": 0.0,
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "logging_steps": 1,
    "seed": 3,
    "checkpoint_every_s": 3600,
    # LoRA packs by default (TrainingSpec.packing, TrainConfig.from_spec): rows of max_seq_length tokens, each
    # holding several examples that must not attend to one another
    "pack_length": MAX_SEQ_LENGTH,
}

# (rtol, atol) per step; the mean signed relative difference over the steps must stay under MEAN_DRIFT.
LOSS_TOL = (1e-3, 1e-5)
GRAD_NORM_TOL = (3e-3, 1e-5)
LOSS_MEAN_DRIFT = 2.5e-4
GRAD_NORM_MEAN_DRIFT = 1e-3
LR_RTOL = 1e-9  # the schedule is plain arithmetic


def run_trajectory(ckpt_root: Path) -> list[dict]:
    """Train as the training child does and return the logged steps."""
    from app.datasets import iter_records

    tok = load_tokenizer(SRC)
    rows = list(iter_records(DATASETS / "wikisql" / "train.jsonl", "jsonl", completion_separator="\nA: "))[:N_ROWS]
    fmt = Formatter(tok, MAX_SEQ_LENGTH)
    examples = [fmt.example(r) for r in rows]

    device = torch.device("cpu")
    model = load_base_model(SRC, ADAPTER, device)
    torch.manual_seed(INIT_SEED)
    model = wrap_for_training(model, ADAPTER, SRC, False, tok.eos_token_id)
    log: list[dict] = []
    hooks = Hooks(
        on_progress=lambda d: None,
        on_log=log.append,
        on_checkpoint=lambda *a: None,
        on_evaluate=lambda step, epoch: {},
        should_stop=lambda: False,
    )
    train(model, examples, TrainConfig(**TRAIN), tok.pad_token_id, device, ckpt_root, hooks, None)
    return [
        {
            "step": d["step"],
            "loss": d["train_loss"],
            "grad_norm": d["grad_norm"],
            "learning_rate": d["learning_rate"],
            "trained_tokens": d["trained_tokens"],
        }
        for d in log
    ]


def write_reference(steps: list[dict]) -> None:
    import peft
    import transformers

    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    reference = {
        "about": "Per-step training loss and grad norm of a short LoRA run; see "
        "tests/worker/test_training_trajectory.py (regenerate with FTAAS_UPDATE_TRAJECTORY=1)",
        "settings": {
            "model": "stories260k",
            "dataset": "wikisql/train.jsonl",
            "rows": N_ROWS,
            "completion_separator": "\nA: ",
            "max_seq_length": MAX_SEQ_LENGTH,
            "init_seed": INIT_SEED,
            "num_threads": 1,
            "adapter": ADAPTER,
            "train": TRAIN,
        },
        "made_with": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "steps": steps,
    }
    REFERENCE.write_text(json.dumps(reference, indent=2) + "\n")


def close(actual: float, expected: float, tol: tuple[float, float]) -> bool:
    rtol, atol = tol
    return abs(actual - expected) <= atol + rtol * abs(expected)


def rel(actual: float, expected: float) -> float:
    return (actual - expected) / abs(expected) if expected else actual - expected


def _columns(e: dict | None, a: dict | None, key: str, tol: tuple[float, float]) -> str:
    """expected, actual and signed relative difference of one step's figure; "!" marks one out of tolerance."""
    ev = f"{e[key]:12.6f}" if e else f"{'-':>12}"
    av = f"{a[key]:12.6f}" if a else f"{'-':>12}"
    if e and a:
        return f"{ev} {av} {rel(a[key], e[key]):+10.2e}{' ' if close(a[key], e[key], tol) else '!'}"
    return f"{ev} {av} {'-':>10}!"


def table(expected: list[dict], actual: list[dict]) -> str:
    lines = [
        f"{'step':>4}  {'loss exp':>12} {'loss act':>12} {'rel diff':>10}  "
        f"{'gnorm exp':>12} {'gnorm act':>12} {'rel diff':>10}  {'tokens exp':>10} {'tokens act':>10}"
    ]
    for i in range(max(len(expected), len(actual))):
        e = expected[i] if i < len(expected) else None
        a = actual[i] if i < len(actual) else None
        tokens_ok = e is not None and a is not None and e["trained_tokens"] == a["trained_tokens"]
        tokens = f"{e['trained_tokens'] if e else '-':>10} {a['trained_tokens'] if a else '-':>10}"
        lines.append(
            f"{(e or a)['step']:>4}  {_columns(e, a, 'loss', LOSS_TOL)} {_columns(e, a, 'grad_norm', GRAD_NORM_TOL)} "
            f"{tokens}{'' if tokens_ok else ' !'}"
        )
    return "\n".join(lines)


def compare(expected: list[dict], actual: list[dict]) -> list[str]:
    """Every way `actual` departs from the reference, as readable lines (empty when it matches)."""
    problems = []
    if [s["step"] for s in actual] != [s["step"] for s in expected]:
        problems.append(f"steps logged {[s['step'] for s in actual]} != reference {[s['step'] for s in expected]}")
    pairs = list(zip(expected, actual))
    for key, tol, drift in (("loss", LOSS_TOL, LOSS_MEAN_DRIFT), ("grad_norm", GRAD_NORM_TOL, GRAD_NORM_MEAN_DRIFT)):
        bad = [e["step"] for e, a in pairs if not close(a[key], e[key], tol)]
        if bad:
            problems.append(f"{key} outside rtol={tol[0]:g} atol={tol[1]:g} at steps {bad}")
        if pairs:
            mean = sum(rel(a[key], e[key]) for e, a in pairs) / len(pairs)
            if abs(mean) > drift:
                problems.append(f"{key} mean signed relative difference {mean:+.2e} beyond {drift:g}")
    bad = [e["step"] for e, a in pairs if e["trained_tokens"] != a["trained_tokens"]]
    if bad:
        problems.append(f"trained_tokens differ at steps {bad}")
    bad = [e["step"] for e, a in pairs if not close(a["learning_rate"], e["learning_rate"], (LR_RTOL, 0.0))]
    if bad:
        problems.append(f"learning_rate differs at steps {bad}")
    return problems


def test_lora_trajectory_matches_reference(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the numbers must not depend on the machine's core count
    try:
        actual = run_trajectory(tmp_path / "checkpoints")
    finally:
        torch.set_num_threads(threads)

    if os.environ.get(UPDATE_ENV) == "1":
        write_reference(actual)
        return
    assert REFERENCE.is_file(), f"no reference at {REFERENCE}: run this file once with {UPDATE_ENV}=1"
    expected = json.loads(REFERENCE.read_text())["steps"]
    problems = compare(expected, actual)
    assert not problems, (
        "the training trajectory moved from the reference:\n  "
        + "\n  ".join(problems)
        + "\n\n"
        + table(expected, actual)
        + f"\n\nIf the change is intended, regenerate the reference: {UPDATE_ENV}=1 .venv/bin/python -m pytest "
        + this_file()
    )


def this_file() -> str:
    here = Path(__file__).resolve()
    return str(here.relative_to(Path.cwd()) if here.is_relative_to(Path.cwd()) else here)
