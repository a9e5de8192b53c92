"""The training path's pieces as the worker tests build them on the tiny real Llama: an adapter dict, a
TrainConfig, Hooks, WikiSQL examples, a model with every trained weight moved, and a loss with its gradients.
The module-scoped `tok` fixture these take is in tests/worker/conftest.py."""

from __future__ import annotations

import torch

from tests.conftest import DATASETS, MODEL_DIR
from worker.training.data import Formatter
from worker.training.loop import Hooks, TrainConfig
from worker.training.modeling import load_base_model, wrap_for_training

SRC = str(MODEL_DIR)
CPU = torch.device("cpu")


def adapter(kind: str, **over) -> dict:
    base = {
        "type": kind,
        "r": 8,
        "alpha": 16,
        "dropout": 0.0,
        "target_modules": "all-linear",
        "num_virtual_tokens": 8,
        "prompt_tuning_init_text": None,
        "compute_dtype": "bfloat16",
    }
    return {**base, **over}


def config(**over) -> TrainConfig:
    base = dict(
        n_epochs=1,
        micro_batch_size=4,
        grad_accum=1,
        learning_rate=5e-3,
        lr_scheduler="linear",
        warmup_ratio=0.0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
        seed=3,
        checkpoint_every_s=3600,
    )
    return TrainConfig(**{**base, **over})


def hooks(log: list | None = None, stop_at: int | None = None) -> Hooks:
    state = {"step": 0}

    def progress(d):
        state["step"] = d.get("step", state["step"])

    def should_stop():
        return stop_at is not None and state["step"] >= stop_at

    return Hooks(
        on_progress=progress,
        on_log=(log.append if log is not None else lambda d: None),
        on_checkpoint=lambda *a: None,
        on_evaluate=lambda step, epoch: {},
        should_stop=should_stop,
    )


def sql_examples(tok, n: int = 24):
    from app.datasets import iter_records

    rows = list(iter_records(DATASETS / "wikisql" / "train.jsonl", "jsonl", completion_separator="\nA: "))[:n]
    fmt = Formatter(tok, 256)
    return [fmt.example(r) for r in rows]


def trained(kind: str, tok, **over):
    torch.manual_seed(0)
    ad = adapter(kind, **over)
    model = wrap_for_training(load_base_model(SRC, ad, CPU), ad, SRC, False, tok.eos_token_id)
    with torch.no_grad():  # lora_B and the EOS delta start at no change: move every trained weight
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.02)
    return model.train()


def loss_and_grads(model, loss_fn, batch) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model, batch)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
