"""FSDP2 on one GPU (issue 20): the service's own training loop on a model sharded by worker/training/sharding.py,
against the same model unsharded, on what CPUs cannot run: a bf16 base with fp32 adapters under autocast, the fused
LoRA layer, bitsandbytes' 4-bit weights on CUDA, and a model read into host memory then sharded onto the GPU.

    torchrun --nproc_per_node 1 bench/gpu_fsdp_check.py --model /tmp/models/m1b --kinds lora,qlora,full

One rank: every collective is real (NCCL) but moves nothing, so this checks correctness and what sharding costs a step
on one GPU, not scaling (that needs two GPUs: RESULTS says which runs are missing). For each kind it prints the step
losses of both runs, their largest relative difference, the trained weights' largest difference after the last
step (each run's checkpoint, as one process writes it), greedy generations of both, useful tokens/s and peak memory.
Exits non-zero when the losses or weights differ beyond bf16 rounding.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from bench.bench_train import synth_pairs, to_example  # noqa: E402
from worker.evaluation.generation import generate  # noqa: E402
from worker.training.checkpoints import ADAPTER_WEIGHTS, FULL_WEIGHTS  # noqa: E402
from worker.training.data import GenerationRow  # noqa: E402
from worker.training.distributed import Ranks  # noqa: E402
from worker.training.loop import Hooks, TrainConfig, train  # noqa: E402
from worker.training.modeling import (  # noqa: E402
    attention_without_per_shape_plans,
    load_base_model,
    load_tokenizer,
    peak_memory_bytes,
    wrap_for_training,
)
from worker.training.sharding import shard  # noqa: E402

LOSS_TOL = 1e-2  # relative, per step: bf16 activations, and the fused head against the model's own loss
# the trained weights' difference, relative, by their norm over all of them: AdamW's first steps on LoRA's zero B
# flip the sign of near-zero updates on bf16 rounding, so entrywise differences are no measure (0.49 on an H100)
WEIGHT_TOL = 0.05
# a GPU; the CPU (gloo) only to try the script itself
DEVICE = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def run(model_dir: str, kind: str, sharded: bool, examples, prompts, tok, steps: int, micro: int, out: Path) -> dict:
    device = DEVICE
    ad = {"type": kind, "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
    ad.update(compute_dtype="bfloat16", train_eos_token=kind != "full")
    place = torch.device("cpu") if sharded and kind != "qlora" else None  # as the recipe reads a model to shard
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = load_base_model(model_dir, ad, device, place=place, sharded=sharded)
    torch.manual_seed(0)
    model = wrap_for_training(model, ad, model_dir, False, tok.eos_token_id, on_gpu=device.type == "cuda")
    if sharded:
        shard(model, Ranks(0, 1), device)
    cfg = TrainConfig(
        n_epochs=1,
        micro_batch_size=micro,
        grad_accum=2,
        learning_rate=2e-5 if kind == "full" else 2e-4,
        lr_scheduler="constant",
        warmup_ratio=0.0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
        seed=3,
        checkpoint_every_s=3600,
        pack_length=2048,
    )
    log, gens, step_times = [], [], []

    def on_progress(d: dict) -> None:
        if "step_seconds" in d:
            step_times.append((d["step_seconds"], d["step_tokens"]))

    def on_evaluate(step: int, epoch: float) -> dict:
        gens.extend(generate(model, tok, prompts, max_new_tokens=16, batch_size=4, device=device))
        return {}

    hooks = Hooks(on_progress, log.append, lambda *a: None, on_evaluate, lambda: False)
    ckpt = out / f"{kind}-{'fsdp' if sharded else 'plain'}"
    summary = train(model, examples[: steps * 2 * micro], cfg, tok.pad_token_id, device, ckpt, hooks)
    timed = step_times[2:]  # the first steps compile kernels
    tokens_s = sum(t for _, t in timed) / sum(s for s, _ in timed)
    weights = ckpt / f"step-{summary.steps}" / (FULL_WEIGHTS if kind == "full" else ADAPTER_WEIGHTS)
    return {  # (the model goes with this frame)
        "losses": [d["train_loss"] for d in log],
        "tokens_s": tokens_s,
        "peak_gib": peak_memory_bytes(device) / 2**30,
        "generations": gens,
        "weights": str(weights),
    }


def weight_diff(a: str, b: str) -> tuple[float, str]:
    """||a - b|| / ||b|| over every trained tensor, and the tensor differing most by the same measure."""
    from safetensors.torch import load_file

    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys(), (sorted(wa)[:3], sorted(wb)[:3])
    diff = sum(((wa[k].float() - wb[k].float()) ** 2).sum().item() for k in wb) ** 0.5
    norm = sum((wb[k].float() ** 2).sum().item() for k in wb) ** 0.5
    worst = max(
        wb, key=lambda k: (wa[k].float() - wb[k].float()).norm().item() / max(wb[k].float().norm().item(), 1e-12)
    )
    return diff / max(norm, 1e-12), worst


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--kinds", default="lora,qlora,full")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    # one rank (torchrun --nproc_per_node 1): FSDP needs a process group
    dist.init_process_group("nccl" if DEVICE.type == "cuda" else "gloo")
    if DEVICE.type == "cuda":
        torch.cuda.set_device(0)
    attention_without_per_shape_plans()
    tok = load_tokenizer(a.model)
    examples = [to_example(tok, p, c) for p, c in synth_pairs(a.steps * 2 * a.micro, tok, 0, 128, 1024)]
    prompts = [GenerationRow("", e.input_ids[:48], "") for e in examples[:4]]
    failures, results = 0, {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in a.kinds.split(","):
            plain = run(a.model, kind, False, examples, prompts, tok, a.steps, a.micro, Path(tmp))
            fsdp = run(a.model, kind, True, examples, prompts, tok, a.steps, a.micro, Path(tmp))
            loss_diff = max(abs(x - y) / abs(y) for x, y in zip(fsdp["losses"], plain["losses"]))
            w_diff, w_name = weight_diff(fsdp["weights"], plain["weights"])
            same_gen = sum(x == y for x, y in zip(fsdp["generations"], plain["generations"]))
            ok = loss_diff <= LOSS_TOL and w_diff <= WEIGHT_TOL and len(fsdp["losses"]) == len(plain["losses"])
            failures += not ok
            print(f"== {kind}: {'ok' if ok else 'FAIL'}", flush=True)
            print(f"  losses plain {[round(x, 4) for x in plain['losses']]}")
            print(f"  losses fsdp  {[round(x, 4) for x in fsdp['losses']]}")
            print(f"  largest loss difference {loss_diff:.2e} (tolerance {LOSS_TOL:g})")
            print(f"  trained weights' relative difference {w_diff:.2e} (tolerance {WEIGHT_TOL:g}; most: {w_name})")
            print(f"  generations equal {same_gen} of {len(plain['generations'])}")
            print(
                f"  useful tokens/s plain {plain['tokens_s']:,.0f} fsdp {fsdp['tokens_s']:,.0f} "
                f"({fsdp['tokens_s'] / plain['tokens_s']:.0%}); peak GiB plain {plain['peak_gib']:.1f} "
                f"fsdp {fsdp['peak_gib']:.1f}",
                flush=True,
            )
            results[kind] = {"plain": plain, "fsdp": fsdp, "loss_diff": loss_diff, "weight_diff": w_diff, "ok": ok}
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    dist.destroy_process_group()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
