"""The stacks a user would pick instead of ftaas, as bench/bench_train.py configurations on the same data and steps.

  trl            TRL's SFTTrainer as its documentation recommends for speed: padding-free batches (every example
                 of a batch end to end in one row, position ids restarting per example), Liger kernels
                 (`use_liger_kernel`: RMSNorm, SwiGLU, RoPE; TRL itself fuses the LM head and loss), bf16, LoRA r=8
                 alpha 16 dropout 0 on all linear layers, loss on completion tokens only, no gradient checkpointing.
  trl-qlora      the same on the base quantized to 4-bit NF4 (bitsandbytes, bf16 compute, double quantization).
  unsloth        Unsloth's FastLanguageModel (its own Triton kernels and patched attention) with LoRA r=8 alpha 16
                 dropout 0 on the 7 projections, trained through Unsloth's patched SFTTrainer, padding-free, bf16,
                 no gradient checkpointing.
  unsloth-qlora  the same with `load_in_4bit=True`.
Modifiers: `+ckpt` (gradient checkpointing: Unsloth's own offloaded "unsloth" kind, or TRL's), `+pad` (batches
padded to their longest example instead of padding-free).

Unsloth patches transformers, peft and TRL when imported, and says it must be imported before them; its
configurations therefore run in a child process (`python bench/peers.py --child ...`) that imports it first and
makes the same synthetic examples from the same seed. TRL runs in bench_train's own process.

Every peer gets the examples ftaas gets (BOS + prompt + completion + EOS, loss on the completion and EOS), as a
pre-tokenized dataset with a completion mask, so no tokenization or template differs. The step meter is the one of
bench_train (a device sync at each step's end through a Trainer callback; useful tokens are the tokens the
decoder is given, padding excluded).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

PEERS = ("trl", "trl-qlora", "unsloth", "unsloth-qlora")
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse_peer(name: str, batch: int) -> dict:
    base, *mods = name.split("+")
    c = {"name": name, "base": base, "batch": batch, "ckpt": False, "padding_free": True}
    for m in mods:
        if m == "ckpt":
            c["ckpt"] = True
        elif m == "pad":
            c["padding_free"] = False
        else:
            raise ValueError(f"unknown modifier {m!r} in {name!r}")
    return c


def describe(c: dict) -> str:
    who = "TRL SFTTrainer + Liger" if c["base"].startswith("trl") else "Unsloth FastLanguageModel + SFTTrainer"
    kind = "QLoRA NF4" if c["base"].endswith("qlora") else "bf16 LoRA"
    bits = [who, kind, "r=8 all-linear", "padding-free" if c["padding_free"] else "padded to longest"]
    if c["ckpt"]:
        bits.append("grad ckpt" + (" (unsloth)" if c["base"].startswith("unsloth") else ""))
    return ", ".join(bits)


def dataset_of(examples):
    from datasets import Dataset

    from worker.training.data import IGNORE

    return Dataset.from_dict(
        {
            "input_ids": [list(e.input_ids) for e in examples],
            "completion_mask": [[int(label != IGNORE) for label in e.labels] for e in examples],
        }
    )


def train_with_sft_trainer(c: dict, args, model, tok, examples, meter, unsloth: bool) -> None:
    import torch
    from trl import SFTConfig, SFTTrainer

    from bench.meter import train_metered, trainer_args

    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            **trainer_args(meter, c["batch"], args.seed, cuda, out),
            gradient_checkpointing=c["ckpt"] and not unsloth,  # Unsloth's own kind is set on its model
            use_liger_kernel=cuda and not unsloth,
            padding_free=c["padding_free"],
            completion_only_loss=True,
            # the examples are no longer than max_len already; padding-free without packing refuses a max_length
            max_length=None if c["padding_free"] else args.max_len,
            dataset_num_proc=None,
        )
        trainer = SFTTrainer(model=model, args=config, train_dataset=dataset_of(examples), processing_class=tok)
        train_metered(trainer, model, meter)


def run_trl(c: dict, args, tok, examples, device, meter) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from worker.training.modeling import count_params

    four_bit = c["base"] == "trl-qlora"
    quant = None
    if four_bit:
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_storage=torch.bfloat16,
        )
    cuda = device.type == "cuda"
    model = AutoModelForCausalLM.from_pretrained(
        args.model,
        dtype=torch.bfloat16 if cuda else torch.float32,
        device_map={"": 0 if cuda else "cpu"},
        attn_implementation="sdpa",
        quantization_config=quant,
    )
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    trainable, total = count_params(model)
    train_with_sft_trainer(c, args, model, tok, examples, meter, unsloth=False)
    del model
    return {"trainable_params": trainable, "total_params": total, "description": describe(c)}


def run_unsloth_child(c: dict, args, meter) -> dict:
    """An Unsloth configuration in its own process (see the module's text); its meter's figures come back as JSON."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        json.dumps(
            {
                "config": c,
                "model": args.model,
                "batch": c["batch"],
                "warmup": args.warmup,
                "steps": args.steps,
                "seed": args.seed,
                "min_len": args.min_len,
                "max_len": args.max_len,
            }
        ),
    ]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("PEER-RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"unsloth child exited {done.returncode}: {done.stdout[-1500:]}")
    return json.loads(lines[-1][len("PEER-RESULT ") :])


def child(spec: dict) -> None:
    import os

    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import unsloth  # noqa: F401 - first, before transformers, peft and TRL: it patches them
    from unsloth import FastLanguageModel

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch

    from bench.bench_train import synth_pairs, to_example
    from bench.meter import StepMeter
    from worker.training.modeling import count_params, load_tokenizer

    c = spec["config"]
    tok = load_tokenizer(spec["model"])
    n = c["batch"] * (spec["warmup"] + spec["steps"])
    pairs = synth_pairs(n, tok, spec["seed"], spec["min_len"], spec["max_len"])
    examples = [to_example(tok, p, q) for p, q in pairs]
    model, _ = FastLanguageModel.from_pretrained(
        model_name=spec["model"],
        max_seq_length=spec["max_len"],
        dtype=torch.bfloat16,
        load_in_4bit=c["base"] == "unsloth-qlora",
        local_files_only=True,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        bias="none",
        target_modules=PROJECTIONS,
        use_gradient_checkpointing="unsloth" if c["ckpt"] else False,
        random_state=spec["seed"],
    )
    trainable, total = count_params(model)
    meter = StepMeter(torch.device("cuda"), spec["warmup"], spec["steps"])

    class Args:
        max_len, seed = spec["max_len"], spec["seed"]

    train_with_sft_trainer(c, Args, model, tok, examples, meter, unsloth=True)
    out = {"trainable_params": trainable, "total_params": total, "description": describe(c), **meter.summary()}
    out["unsloth"] = unsloth.__version__
    print("PEER-RESULT " + json.dumps(out, default=str), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]))
    else:
        raise SystemExit("run through bench/bench_train.py --configs trl,unsloth,...")
