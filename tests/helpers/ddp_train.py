"""One short run on the tiny real Llama as one rank of a job, for tests/worker/test_distributed.py:
`python -m torch.distributed.run --nproc_per_node N tests/helpers/ddp_train.py OUT_DIR [--accum A] [--stop-at S]
[--strategy ddp|fsdp] [--adapter lora|qlora|full]`. Each rank joins the process group torchrun describes (gloo on a
CPU), trains through the service's own loop (resuming from OUT_DIR/ckpt's last checkpoint, as an attempt does), and
writes what it saw: the main rank its logged steps, every rank a digest of its trained weights (the replicas must stay
equal; a sharded model's are gathered whole first). --stop-at: the main rank asks for an interrupt at that step (a
worker's shutdown): every rank stops after its checkpoint, and the run exits 3. --strategy fsdp: the model is sharded
over the ranks (worker/training/sharding.py) and evaluated on every rank, by a real generation in lockstep."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from app.datasets import iter_records  # noqa: E402
from tests.conftest import DATASETS, MODEL_DIR  # noqa: E402
from tests.helpers.training import adapter, config  # noqa: E402
from worker.evaluation.generation import GenerationRow, generate  # noqa: E402
from worker.training.data import Formatter  # noqa: E402
from worker.training.distributed import join_from_environment, leave  # noqa: E402
from worker.training.loop import Hooks, TrainingInterrupted, train  # noqa: E402
from worker.training.modeling import load_base_model, load_tokenizer, wrap_for_training  # noqa: E402
from worker.training.sharding import gathered, shard  # noqa: E402


def main(out: Path, accum: int, stop_at: int | None, strategy: str, kind: str, model_dir: Path, data: Path) -> int:
    torch.set_num_threads(1)
    ranks = join_from_environment()
    ADAPTER = adapter(kind, train_eos_token=kind != "full")
    tok = load_tokenizer(str(model_dir))
    rows = list(iter_records(data, "jsonl", completion_separator="\nA: "))[:24]
    fmt = Formatter(tok, 512)
    examples = [fmt.example(r) for r in rows]
    device = torch.device("cpu")
    model = load_base_model(str(model_dir), ADAPTER, device, sharded=strategy == "fsdp" and ranks.parallel)
    torch.manual_seed(0)  # the same adapter initialisation on every rank
    model = wrap_for_training(model, ADAPTER, str(model_dir), False, tok.eos_token_id)
    sharded = strategy == "fsdp" and ranks.parallel
    if sharded:
        shard(model, ranks, device)
    log: list[dict] = []
    prompts = [GenerationRow("", fmt.example(r).input_ids[:12], "") for r in rows[:3]]

    def evaluate(step: int, epoch: float) -> dict:
        """Every rank of a sharded model: a greedy generation of a few tokens (collectives in every forward)."""
        if sharded:
            generate(model, tok, prompts, max_new_tokens=4 + ranks.rank, batch_size=2, device=device)
        return {"eval_loss": 1.0 / step}

    hooks = Hooks(
        on_progress=lambda d: None,
        on_log=log.append,
        on_checkpoint=lambda *a: None,
        on_evaluate=evaluate,  # every epoch end, on the main rank only (every rank of a sharded model)
        should_stop=lambda: False,
        interrupt_requested=lambda: stop_at is not None and ranks.main and len(log) >= stop_at,
    )
    cfg = config(n_epochs=2, micro_batch_size=2, grad_accum=accum, pack_length=512)
    try:
        summary = train(
            model, examples, cfg, tok.pad_token_id, device, out / "ckpt", hooks, ("eval_loss", False), None, ranks
        )
    except TrainingInterrupted:  # every rank stops after the main rank's checkpoint, as a worker's shutdown asks
        leave()
        return 3
    digest = hashlib.sha256()
    trained = gathered({n: p for n, p in model.named_parameters() if p.requires_grad}, main=True)
    for name, p in sorted(trained.items()):
        digest.update(name.encode() + p.float().numpy().tobytes())
    (out / f"rank-{ranks.rank}.json").write_text(
        json.dumps(
            {
                "world": ranks.world,
                "weights": digest.hexdigest(),
                "steps": log,
                "summary": {"steps": summary.steps, "best_step": summary.best_step, "tokens": summary.trained_tokens},
            }
        )
    )
    leave()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--accum", type=int, default=3)
    parser.add_argument("--stop-at", type=int)
    parser.add_argument("--strategy", choices=["ddp", "fsdp"], default="ddp")
    parser.add_argument("--adapter", choices=["lora", "qlora", "full"], default="lora")
    a = parser.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    sys.exit(main(a.out, a.accum, a.stop_at, a.strategy, a.adapter, MODEL_DIR, DATASETS / "wikisql" / "train.jsonl"))
