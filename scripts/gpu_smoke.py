"""GPU smoke run of the worker's training path, without the database: LoRA, QLoRA and prompt tuning on a
model directory, then batched evaluation. Shows the path picks the GPU, trains in bf16 there, and learns.

    python scripts/gpu_smoke.py --model ../shared/models/stories260k --data ../shared/datasets/wikisql

Not part of CI (CI has no GPU). Prints one line per method.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from app.datasets import iter_records  # noqa: E402
from worker.evaluation.evaluate import evaluate  # noqa: E402
from worker.training.data import Formatter  # noqa: E402
from worker.training.loop import Hooks, TrainConfig, train  # noqa: E402
from worker.training.modeling import (  # noqa: E402
    count_params,
    load_base_model,
    load_tokenizer,
    pick_device,
    wrap_for_training,
)

ADAPTERS = {
    "lora": {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear", "lr": 5e-3},
    "qlora": {"type": "qlora", "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear", "lr": 5e-3},
    "prompt_tuning": {"type": "prompt_tuning", "num_virtual_tokens": 16, "lr": 3e-2},
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="folder with train.jsonl and test.jsonl ({'text'} rows)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--eval-rows", type=int, default=100)
    args = ap.parse_args()

    device = pick_device()
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}", flush=True)
    tok = load_tokenizer(args.model)
    fmt = Formatter(tok, 512)
    sep = "\nA: "
    train_rows = list(iter_records(Path(args.data) / "train.jsonl", "jsonl", completion_separator=sep))
    test_rows = list(iter_records(Path(args.data) / "test.jsonl", "jsonl", completion_separator=sep))[: args.eval_rows]
    examples = [fmt.example(r) for r in train_rows]
    loss_ex = [fmt.example(r) for r in test_rows]
    gen_rows = [fmt.generation_row(r) for r in test_rows]
    ev_spec = {"metrics": ["rouge", "perplexity", "token_accuracy"], "batch_size": 100, "max_new_tokens": 128}

    for kind, ad in ADAPTERS.items():
        ad = {"prompt_tuning_init_text": None, "compute_dtype": "bfloat16", **ad}
        torch.manual_seed(0)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        model = load_base_model(args.model, ad, device)
        quantized = any(type(m).__name__ == "Linear4bit" for m in model.modules())
        base_dtype = "nf4 (4-bit)" if quantized else str(next(p.dtype for p in model.parameters()))
        base = evaluate(model, tok, loss_examples=loss_ex, gen_rows=gen_rows, spec=ev_spec, device=device)
        model = wrap_for_training(model, ad, args.model, False, tok.eos_token_id)
        trainable, total = count_params(model)
        cfg = TrainConfig(
            n_epochs=args.epochs,
            micro_batch_size=16,
            grad_accum=1,
            learning_rate=ad["lr"],
            lr_scheduler="linear",
            warmup_ratio=0.03,
            weight_decay=0.0,
            max_grad_norm=1.0,
            logging_steps=10**9,
            seed=0,
            checkpoint_every_s=10**9,
        )
        hooks = Hooks(lambda d: None, lambda d: None, lambda *a: None, lambda e, s: {}, lambda: False)
        t = time.monotonic()
        with tempfile.TemporaryDirectory() as ckpt:
            summary = train(model, examples, cfg, tok.pad_token_id, device, Path(ckpt), hooks)
        train_s = time.monotonic() - t
        tuned = evaluate(model, tok, loss_examples=loss_ex, gen_rows=gen_rows, spec=ev_spec, device=device)
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
        print(
            f"{kind:13s} base weights {base_dtype:15s} trainable {trainable:>7,}/{total:,} "
            f"train {summary.steps} steps {train_s:.1f}s ({summary.trained_tokens / train_s:,.0f} tok/s) "
            f"eval_loss {base.metrics['eval_loss']:.3f}->{tuned.metrics['eval_loss']:.3f} "
            f"rougeL {base.metrics['rougeL']:.3f}->{tuned.metrics['rougeL']:.3f} "
            f"generation {tuned.timings['generation_s']:.1f}s/{len(gen_rows)} rows peak {peak:.0f} MiB",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
