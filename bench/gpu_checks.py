"""Correctness of the GPU-only training paths, on the GPU (CI has none; tests/ checks the rest on CPU).

    python bench/gpu_checks.py --model /tmp/models/llama-3.2-1b-random --model /tmp/models/gemma2-2b-random

For LoRA and QLoRA (r=8, all-linear, trained EOS row), on the same seeded examples of 64-512 tokens:
1. packed rows through variable-length flash attention (worker/training/kernels/varlen_attention.py) against the same
   examples padded, through SDPA with a padding mask: the loss and every trained weight's gradient;
2. the fused LoRA linear (worker/training/kernels/fast_lora.py) against peft's own forward, on the padded batch;
3. no example attends to another in a packed row: changing one example leaves the next one's loss as is;
4. the head and loss on the completion positions only (Liger's fused linear cross-entropy, with the model's final
   logit soft-capping where it has one: Gemma 2) against the model's own forward and loss, on the padded batch;
5. the model's RoPE as training calls it (Liger's, folded into one row) against its formula, for 1, 3 and 7 rows.
Each check trains through the loss the worker picks for the model (worker.training.loss.loss_fn_for): a model on its
own forward's loss is checked the same way, less check 4. Packed rows use varlen attention only where it is exact
(not Gemma 2's soft-capped attention: it takes the model's own, masked, attention).
Prints each difference and exits non-zero when one is beyond bf16 rounding.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.bench_train import synth_pairs, to_example  # noqa: E402
from worker.training.data import Example  # noqa: E402
from worker.training.loss import completion_loss, loss_fn_for, model_loss  # noqa: E402
from worker.training.modeling import (  # noqa: E402
    attention_without_per_shape_plans,
    load_base_model,
    load_tokenizer,
    mixed_precision,
    wrap_for_training,
)
from worker.training.packing import collate, collate_packed  # noqa: E402

LOSS_TOL = 2e-3  # relative, bf16 activations summed in different orders
GRAD_TOL = 0.05  # of each gradient's largest entry


def loss_and_grads(model, batch) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with mixed_precision(batch["input_ids"].device):
        loss = loss_fn_for(model)(model, batch)
    loss.backward()
    return loss.item(), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}


def worst(a: dict, b: dict) -> tuple[float, str]:
    return max(((a[n] - b[n]).abs().max().item() / max(b[n].abs().max().item(), 1e-12), n) for n in b)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, action="append", help="a model folder; repeat for several")
    ap.add_argument("--examples", type=int, default=24)
    args = ap.parse_args()
    attention_without_per_shape_plans()
    failures = sum(check_model(model_dir, args.examples) for model_dir in args.model)
    print("all checks passed" if not failures else f"{failures} checks FAILED", flush=True)
    return 1 if failures else 0


def rope_reference(q, k, cos, sin):
    """RoPE by its formula, per row (transformers' eager apply_rotary_pos_emb)."""

    def rotate_half(x):
        return torch.cat((-x[..., x.shape[-1] // 2 :], x[..., : x.shape[-1] // 2]), dim=-1)

    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def check_rope(model, report) -> None:
    """5. the model's RoPE as training calls it (Liger's kernel with the batch folded into one row,
    worker/training/kernels/one_row_rope.py) against the formula, per row, for several numbers of rows."""
    module = sys.modules[type(model.get_base_model()).__module__]
    rope = module.apply_rotary_pos_emb
    folded = getattr(rope, "_ftaas_one_row", False)
    print(f"rope: {getattr(rope, '__module__', '?')}.{getattr(rope, '__name__', '?')}, folded into one row: {folded}")
    cfg = model.get_base_model().config
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    hq, hk = cfg.num_attention_heads, cfg.num_key_value_heads
    dev = next(model.parameters()).device
    worst_out = worst_grad = 0.0
    for b in (1, 3, 7):
        g = torch.Generator(device=dev).manual_seed(b)
        s = 96
        pos = torch.stack([torch.arange(s, device=dev) % (17 + 5 * i) for i in range(b)])  # packed: positions restart
        inv = 1.0 / (10000 ** (torch.arange(0, d, 2, device=dev).float() / d))
        emb = torch.cat([pos[..., None].float() * inv] * 2, dim=-1)
        cos, sin = emb.cos().bfloat16(), emb.sin().bfloat16()
        outs = []
        for fn in (rope, rope_reference):
            q = torch.randn(b, s, hq, d, device=dev, generator=g, dtype=torch.bfloat16).transpose(1, 2)
            k = torch.randn(b, s, hk, d, device=dev, generator=g, dtype=torch.bfloat16).transpose(1, 2)
            g.manual_seed(b)
            q, k = q.detach().requires_grad_(), k.detach().requires_grad_()
            qo, ko = fn(q.clone(), k.clone(), cos, sin)  # Liger rotates in place: clones keep the inputs
            (qo.float().square().sum() + ko.float().sum()).backward()
            outs.append((qo.float(), ko.float(), q.grad.float(), k.grad.float()))
        (qa, ka, gqa, gka), (qb, kb, gqb, gkb) = outs
        worst_out = max(
            worst_out, *((x - y).abs().max().item() / y.abs().max().item() for x, y in ((qa, qb), (ka, kb)))
        )
        worst_grad = max(
            worst_grad, *((x - y).abs().max().item() / y.abs().max().item() for x, y in ((gqa, gqb), (gka, gkb)))
        )
    report("rope as trained (1, 3, 7 rows) vs its formula: outputs", worst_out, 2e-2)
    report("rope as trained (1, 3, 7 rows) vs its formula: gradients", worst_grad, 2e-2)


def check_model(model_dir: str, n_examples: int) -> int:
    """The checks on one model; returns how many failed."""
    device = torch.device("cuda")
    print(f"== {model_dir}", flush=True)
    tok = load_tokenizer(model_dir)
    examples = [to_example(tok, p, c) for p, c in synth_pairs(n_examples, tok, 0, 64, 512)]
    packed = collate_packed(examples, 512, tok.pad_token_id, device)
    packed.pop("num_tokens")
    padded = collate(examples, tok.pad_token_id, device)
    failures = 0

    def report(what: str, diff: float, tol: float) -> None:
        nonlocal failures
        ok = diff <= tol
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {what}: {diff:.2e} (tolerance {tol:g})", flush=True)

    for kind in ("lora", "qlora"):
        ad = {"type": kind, "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}
        ad.update(compute_dtype="bfloat16", train_eos_token=True)
        torch.manual_seed(0)
        model = wrap_for_training(load_base_model(model_dir, ad, device), ad, model_dir, False, tok.eos_token_id)
        split = loss_fn_for(model) is completion_loss
        if kind == "lora":
            check_rope(model, report)
        print(f"{kind}: loss {'on the completion positions (split)' if split else 'the model own'}", flush=True)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.01)
        model.train()
        rows = packed["input_ids"].shape[0]
        l_packed, g_packed = loss_and_grads(model, packed)
        l_padded, g_padded = loss_and_grads(model, padded)
        print(f"{kind}: {len(examples)} examples, {rows} packed rows; loss packed {l_packed:.5f} padded {l_padded:.5f}")
        report(f"{kind} packed (varlen) vs padded (SDPA) loss", abs(l_packed - l_padded) / abs(l_padded), LOSS_TOL)
        diff, name = worst(g_packed, g_padded)
        report(f"{kind} packed vs padded gradients (worst: {name})", diff, GRAD_TOL)

        if split:
            model.zero_grad(set_to_none=True)
            with mixed_precision(device):
                own = model_loss(model, padded)
            own.backward()
            g_own = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}
            rel = abs(l_padded - own.item()) / abs(own.item())
            report(f"{kind} fused head+CE vs the model's own loss", rel, LOSS_TOL)
            diff, name = worst(g_padded, g_own)
            report(f"{kind} fused head+CE vs the model's own gradients (worst: {name})", diff, GRAD_TOL)

        fused = [m for m in model.modules() if hasattr(m, "_ftaas_peft_forward")]
        for m in fused:  # peft's own forward, for the comparison
            m.forward = m._ftaas_peft_forward
        l_peft, g_peft = loss_and_grads(model, padded)
        print(f"{kind}: {len(fused)} fused LoRA layers; loss fused {l_padded:.5f}, peft {l_peft:.5f}")
        report(f"{kind} fused LoRA vs peft loss", abs(l_padded - l_peft) / abs(l_peft), LOSS_TOL)
        diff, name = worst(g_padded, g_peft)
        report(f"{kind} fused LoRA vs peft gradients (worst: {name})", diff, GRAD_TOL)
        del model
        torch.cuda.empty_cache()

    # 3. isolation: in one packed row, scramble example a; example b's loss must not move.
    ad = {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}
    ad.update(compute_dtype="bfloat16", train_eos_token=True)
    model = wrap_for_training(load_base_model(model_dir, ad, device), ad, model_dir, False, tok.eos_token_id)
    loss_fn = loss_fn_for(model)
    a, b = sorted(examples, key=lambda e: len(e.input_ids))[:2]
    other = Example([a.input_ids[0]] + [(t * 7 + 3) % 30000 + 3 for t in a.input_ids[1:]], a.labels)
    only_b = Example(b.input_ids, b.labels)

    def loss_of_b(first: Example) -> float:
        masked_first = Example(first.input_ids, [-100] * len(first.labels))  # only b's tokens in the loss
        batch = collate_packed([masked_first, only_b], 2 * 512, tok.pad_token_id, device)
        assert batch["input_ids"].shape[0] == 1, "both examples in one row"
        batch.pop("num_tokens")
        with torch.no_grad(), mixed_precision(device):
            return loss_fn(model, batch).item()

    alone = collate_packed([only_b], 1024, tok.pad_token_id, device)
    alone.pop("num_tokens")
    with torch.no_grad(), mixed_precision(device):
        l_alone = loss_fn(model, alone).item()
    l_a, l_other = loss_of_b(a), loss_of_b(other)
    print(f"isolation: b alone {l_alone:.6f}, after a {l_a:.6f}, after scrambled a {l_other:.6f}")
    report("b's loss after a vs after scrambled a", abs(l_a - l_other), 1e-6)
    report("b's loss after a vs alone", abs(l_a - l_alone) / abs(l_alone), LOSS_TOL)
    model = None  # freed before the next model loads
    torch.cuda.empty_cache()
    return failures


if __name__ == "__main__":
    sys.exit(main())
