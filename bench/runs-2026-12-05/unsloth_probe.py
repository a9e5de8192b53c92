"""Recon for issue 18: can Unsloth run offline on the GPU machine? Load a random 1B Llama with FastLanguageModel
(bf16 LoRA, then 4-bit QLoRA), add LoRA r=8 on all linear layers, train a few padded steps, print tokens/s."""

import os, sys, time, traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
model_dir = sys.argv[1]
try:
    import unsloth  # noqa: F401  (must come before transformers)
    from unsloth import FastLanguageModel

    print("unsloth", unsloth.__version__, flush=True)
except Exception:
    traceback.print_exc()
    sys.exit(2)
import torch

for four_bit in (False, True):
    try:
        t = time.time()
        model, tok = FastLanguageModel.from_pretrained(
            model_dir, max_seq_length=512, dtype=torch.bfloat16, load_in_4bit=four_bit, local_files_only=True
        )
        model = FastLanguageModel.get_peft_model(
            model,
            r=8,
            lora_alpha=16,
            lora_dropout=0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            use_gradient_checkpointing="unsloth",
            random_state=0,
        )
        print(f"load {'4bit' if four_bit else 'bf16'} {time.time() - t:.1f}s", flush=True)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        B, L = 32, 512
        ids = torch.randint(0, 128000, (B, L), device="cuda")
        torch.cuda.synchronize()
        times = []
        for step in range(12):
            s = time.time()
            out = model(input_ids=ids, labels=ids)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            times.append(time.time() - s)
        med = sorted(times[2:])[len(times[2:]) // 2]
        print(
            f"{'qlora' if four_bit else 'lora'} B{B}xL{L}: median step {med:.3f}s, {B * L / med:,.0f} tok/s, "
            f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB, loss {out.loss.item():.3f}",
            flush=True,
        )
        del model, opt
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    except Exception:
        traceback.print_exc()
