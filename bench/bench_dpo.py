"""Preference tuning (DPO) speed: the service's DPO path against TRL's DPOTrainer, on the same synthetic pairs.

    # on the GPU machine (the 1B shape made by bench/random_model.py)
    python bench/bench_dpo.py --model /tmp/models/llama-3.2-1b-random --out $OUT/dpo.json
    # a CPU smoke run on the tiny real Llama
    python bench/bench_dpo.py --model ../shared/models/stories260k --steps 2 --warmup 1 --batch 4 --max-len 128

Configurations (`--configs`, comma-separated):
  lora, qlora, full  the service's DPO path: worker.training.modeling.load_base_model + wrap_for_training with the spec
                     app.core.job_spec.resolve_spec makes for method dpo, the reference log-probabilities measured with
                     the adapter disabled (worker.training.preference.attach_reference, timed apart), then
                     worker.training.loop.train with PreferenceObjective; `batch` pairs per step, packed.
  sft-lora           supervised LoRA on the chosen answers alone (the same spec, method supervised): what one
                     sequence of each pair costs on the SFT path.
  trl-lora           TRL's DPOTrainer with a peft LoRA of the same rank and targets (all-linear, r 8, alpha 16,
                     dropout 0), bf16, reference log-probabilities precomputed (precompute_ref_log_probs, not timed),
                     its default padded batches; `batch` pairs per step.

A pair is a prompt with a chosen and a rejected answer (synthetic Zipf-distributed ids; the prompt 30-70% of each
sequence). Useful tokens are the non-padding tokens of both sequences, prompts included (for sft-lora: of the one
sequence); tokens/s is useful tokens over the wall time of the timed steps, each step's end taken after a device
synchronisation. Peak memory is torch.cuda.max_memory_allocated over the training steps.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402  (after bench_train, which sets the allocator's environment first)

from bench.bench_train import free_memory, synth_pairs, to_example, word_ids, zipf_sampler  # noqa: E402
from bench.meter import GIB, StepMeter, metered_hooks, sync  # noqa: E402
from worker.training.preference import Pair  # noqa: E402


def synth_preference(
    n: int, tok, seed: int, min_len: int, max_len: int
) -> list[tuple[list[int], list[int], list[int]]]:
    """n (prompt, chosen, rejected) id lists: bench_train's prompt/completion pairs, plus a rejected answer of a
    similar length drawn from the same distribution."""
    rng = random.Random(seed + 1)
    draw = zipf_sampler(word_ids(tok), seed=4321)
    out = []
    for prompt, chosen in synth_pairs(n, tok, seed, min_len, max_len):
        k = max(1, len(chosen) + rng.randint(-len(chosen) // 4, len(chosen) // 4))
        out.append((prompt, chosen, draw(rng, k)))
    return out


def spec_for(kind: str, batch: int, max_len: int, method: str) -> dict:
    from app.core.job_spec import JobCreate, resolve_spec

    body = JobCreate(
        model="bench",
        training_file="file-bench",
        method={"type": method, method: {"hyperparameters": {"n_epochs": 1, "batch_size": batch}}},
        adapter={"type": kind},
        training={"micro_batch_size": batch, "max_seq_length": max_len},
    )
    return resolve_spec(body).stored()


def run_service(name: str, args, tok, triples, device, meter: StepMeter) -> dict:
    from worker.training.loop import StopTraining, TrainConfig, train
    from worker.training.modeling import count_params, load_base_model, wrap_for_training
    from worker.training.preference import PreferenceObjective, attach_reference

    sft = name == "sft-lora"
    kind = "lora" if sft else name
    spec = spec_for(kind, args.batch, args.max_len, "supervised" if sft else "dpo")
    ad = spec["adapter"]
    model = load_base_model(args.model, ad, device)
    model = wrap_for_training(model, ad, args.model, False, tok.eos_token_id)
    trainable, total = count_params(model)
    cfg = TrainConfig.from_spec(spec, args.seed, checkpoint_every_s=1e9)
    items = [to_example(tok, p, c) for p, c, _ in triples]
    objective, reference_s, check = None, None, None
    ckpt = tempfile.TemporaryDirectory()
    if not sft:
        items = [Pair(to_example(tok, p, c), to_example(tok, p, r)) for p, c, r in triples]
        sync(device)
        t = time.perf_counter()
        attach_reference(model, items, tok.pad_token_id, device, args.batch, Path(ckpt.name))
        sync(device)
        reference_s = time.perf_counter() - t
        objective = PreferenceObjective(spec["hyperparameters"]["beta"], tok.pad_token_id, device, cfg.pack_length)
        check = packed_vs_padded(model, items[: args.batch], tok.pad_token_id, device, cfg.pack_length)
    hooks = metered_hooks(meter)
    meter.start()
    try:
        train(model, items, cfg, tok.pad_token_id, device, Path(ckpt.name), hooks, None, objective)
    except StopTraining:
        pass
    finally:
        ckpt.cleanup()
    del model
    what = f"service {'SFT' if sft else 'DPO'} {kind}, r=8 all-linear, packed"
    if reference_s is not None:
        what += f"; reference of {len(items)} pairs measured in {reference_s:.1f}s"
    return {
        "trainable_params": trainable,
        "total_params": total,
        "description": what,
        "reference_s": reference_s,
        "packed_vs_padded": check,
    }


@torch.no_grad()
def packed_vs_padded(model, pairs: list[Pair], pad_id: int, device, pack_length: int | None) -> float | None:
    """The largest relative difference between the pairs' sequence log-probabilities packed (the training path:
    variable-length attention on a GPU) and padded (the reference and evaluation path), as trained (bf16)."""
    from worker.training.modeling import mixed_precision
    from worker.training.preference import pair_logps

    if not pack_length:
        return None
    with mixed_precision(device):
        packed = torch.cat(pair_logps(model, pairs, pad_id, device, pack_length))
        padded = torch.cat(pair_logps(model, pairs, pad_id, device))
    return float(((packed - padded).abs() / padded.abs()).max())


def run_trl(args, tok, triples, device, meter: StepMeter) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    cuda = device.type == "cuda"
    model = AutoModelForCausalLM.from_pretrained(
        args.model, dtype=torch.bfloat16 if cuda else torch.float32, device_map={"": 0 if cuda else "cpu"}
    )
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")

    class Meter(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if state.global_step == 0 and meter.t_start is None:
                meter.start()  # after the reference log-probabilities are precomputed

        def on_step_end(self, a, state, control, **kw):
            meter.step_end()
            if meter.done():
                control.should_training_stop = True

    class PreTokenized(DPOTrainer):
        """Takes the very ids the service path trains on (random ids do not survive a decode and re-encode): the
        dataset holds TRL's own tokenized columns, so its preparation (extract prompt, add EOS, tokenize) is skipped."""

        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset

    eos = [tok.eos_token_id]
    data = Dataset.from_list(
        [{"prompt_ids": [tok.bos_token_id, *p], "chosen_ids": c + eos, "rejected_ids": r + eos} for p, c, r in triples]
    )
    with tempfile.TemporaryDirectory() as out:
        targs = DPOConfig(
            output_dir=out,
            per_device_train_batch_size=args.batch,
            max_steps=meter.target,
            learning_rate=2e-5,
            beta=0.1,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            bf16=cuda,
            use_cpu=not cuda,
            disable_tqdm=True,
            seed=args.seed,
            max_length=args.max_len,
            precompute_ref_log_probs=True,
        )
        trainer = PreTokenized(model=model, args=targs, train_dataset=data, processing_class=tok, peft_config=lora)
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(Meter())
        inner = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
        handle = inner.get_decoder().register_forward_pre_hook(meter.pre_forward, with_kwargs=True)
        try:
            trainer.train()
        finally:
            handle.remove()
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in trainer.model.parameters())
    del trainer, model
    return {
        "trainable_params": trainable,
        "total_params": total,
        "description": "TRL DPOTrainer + peft LoRA r=8 all-linear, bf16, padded, reference precomputed",
    }


def run_config(name: str, args, tok, triples, device) -> dict:
    meter = StepMeter(device, args.warmup, args.steps)
    t0 = time.monotonic()
    free_memory(device)
    try:
        info = (
            run_trl(args, tok, triples, device, meter)
            if name == "trl-lora"
            else run_service(name, args, tok, triples, device, meter)
        )
        info.update(meter.summary())
    except Exception as exc:  # noqa: BLE001 - one failing configuration must not lose the others
        traceback.print_exc()
        info = {"error": f"{type(exc).__name__}: {str(exc)[:300]}", **meter.summary()}
    info.update(name=name, wall_s=time.monotonic() - t0)
    free_memory(device)
    return info


def table(results: list[dict], args, device_name: str) -> str:
    trl = next((r.get("tokens_per_s") for r in results if r["name"] == "trl-lora"), None)
    lines = [
        f"DPO speed on {device_name}, model {Path(args.model).name}, {args.batch} pairs per step, sequences "
        f"{args.min_len}-{args.max_len} tokens, {args.warmup} warm-up + {args.steps} timed steps each.",
        "",
        "| config | what | useful tok/step | s/step median | useful tok/s | vs trl-lora | peak GiB "
        "| loss first -> last "
        "|",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        tps = r.get("tokens_per_s")
        what = f"FAILED {r['error'][:120]}" if r.get("error") else r.get("description", "")
        loss = "-"
        if r.get("loss_first") is not None and r.get("loss_last") is not None:
            loss = f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}"
        step = f"{r['step_s_median']:.3f}" if r.get("step_s_median") else "-"
        peak = f"{r['peak_bytes'] / GIB:.1f}" if r.get("peak_bytes") else "-"
        ratio = f"{tps / trl:.2f}x" if tps and trl else "-"
        per_step = f"{r['useful_tokens_per_step']:,.0f}" if r.get("useful_tokens_per_step") else "-"
        lines.append(f"| {r['name']} | {what} | {per_step} | {step} | {tps or 0:,.0f} | {ratio} | {peak} | {loss} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--configs", default="lora,qlora,full,sft-lora,trl-lora")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16, help="pairs per step (= micro-batch)")
    ap.add_argument("--min-len", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    args.warmup = max(1, args.warmup)

    from worker.training.modeling import attention_without_per_shape_plans, load_tokenizer, pick_device

    device = pick_device()
    attention_without_per_shape_plans()
    device_name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    tok = load_tokenizer(args.model)
    triples = synth_preference(args.batch * (args.warmup + args.steps), tok, args.seed, args.min_len, args.max_len)
    lens = [len(p) + len(c) + 2 for p, c, _ in triples]
    print(f"{len(triples)} pairs, chosen sequences {min(lens)}-{max(lens)} tokens (mean {statistics.fmean(lens):.0f})")
    results = []
    for name in [c for c in args.configs.split(",") if c]:
        r = run_config(name, args, tok, triples, device)
        results.append(r)
        keys = ("name", "tokens_per_s", "peak_bytes", "loss_last", "reference_s", "packed_vs_padded", "error")
        brief = {k: r.get(k) for k in keys}
        print("config done:", json.dumps(brief, default=str), flush=True)
    text = table(results, args, device_name)
    print("\n" + text, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"device": device_name, "args": vars(args), "results": results}, default=str))
        args.out.with_suffix(".md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
