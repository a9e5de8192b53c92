"""One short LoRA run on the tiny real Llama as one rank of a job, for tests/worker/test_distributed.py:
`python -m torch.distributed.run --nproc_per_node N tests/helpers/ddp_train.py OUT_DIR [ACCUM [STOP_AT]]`. Each rank
joins the process group torchrun describes (gloo on a CPU), trains through the service's own loop (resuming from
OUT_DIR/ckpt's last checkpoint, as an attempt does), and writes what it saw: the main rank its logged steps, every
rank a digest of its trained weights (the replicas must stay equal). STOP_AT: the main rank asks for an interrupt
at that step (a worker's shutdown): every rank stops after its checkpoint, and the run exits 3."""

from __future__ import annotations

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
from worker.training.data import Formatter  # noqa: E402
from worker.training.distributed import join_from_environment, leave  # noqa: E402
from worker.training.loop import Hooks, TrainingInterrupted, train  # noqa: E402
from worker.training.modeling import load_base_model, load_tokenizer, wrap_for_training  # noqa: E402

ADAPTER = adapter("lora", train_eos_token=True)


def main(out: Path, accum: int, stop_at: int | None, model_dir: Path, data: Path) -> int:
    torch.set_num_threads(1)
    ranks = join_from_environment()
    tok = load_tokenizer(str(model_dir))
    rows = list(iter_records(data, "jsonl", completion_separator="\nA: "))[:24]
    fmt = Formatter(tok, 512)
    examples = [fmt.example(r) for r in rows]
    device = torch.device("cpu")
    model = load_base_model(str(model_dir), ADAPTER, device)
    torch.manual_seed(0)  # the same adapter initialisation on every rank
    model = wrap_for_training(model, ADAPTER, str(model_dir), False, tok.eos_token_id)
    log: list[dict] = []
    hooks = Hooks(
        on_progress=lambda d: None,
        on_log=log.append,
        on_checkpoint=lambda *a: None,
        on_evaluate=lambda step, epoch: {"eval_loss": 1.0 / step},  # every epoch end, on the main rank only
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
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            digest.update(name.encode() + p.detach().float().numpy().tobytes())
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
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    accum = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    stop = int(sys.argv[3]) if len(sys.argv) > 3 else None
    sys.exit(main(out_dir, accum, stop, MODEL_DIR, DATASETS / "wikisql" / "train.jsonl"))
