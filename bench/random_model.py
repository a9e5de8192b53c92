"""Random-initialised Llama models of real shapes, saved as safetensors with an offline tokenizer.

No model hub is reachable on the GPU machine, and speed and memory do not depend on the weights' values,
so the benchmarks build Llama-3.2-1B's and Llama-3.1-8B's shapes from their configurations at run time
(in bf16, on the GPU when there is one) instead of carrying gigabytes of weights:

    python bench/random_model.py --shape 1b --out /tmp/models/llama-3.2-1b-random
    python bench/random_model.py --shape 8b --out /tmp/models/llama-3.1-8b-random
    python bench/random_model.py --minilm .gpu-data/minilm-config --out /tmp/models/minilm-random

The tokenizer is a word-level one over synthetic words `w0` ... `w127999` (one word = one token, so the
benchmark data has exactly the token lengths it asks for), plus Llama 3's special tokens at their ids
(128000 <|begin_of_text|>, 128001 <|end_of_text|>, 128002-128255 reserved): vocabulary 128,256, the
embedding and output head are full-size, and AutoTokenizer loads it offline.

`--minilm` builds a random BERT encoder of all-MiniLM-L6-v2's shape (the service's offline BERTScore
encoder) from that model's config and tokenizer files alone: its 90 MB of weights are too large to carry
to the GPU machine, and BERTScore's speed does not depend on their values either (its scores do).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
}
COMMON = {
    "vocab_size": 128_256,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "rope_theta": 500_000.0,
    "max_position_embeddings": 131_072,
    "bos_token_id": 128_000,
    "eos_token_id": 128_001,
    "initializer_range": 0.02,
}
SHAPES = {
    # meta-llama/Llama-3.2-1B's config.json
    "1b": {
        **COMMON,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "head_dim": 64,
        "tie_word_embeddings": True,
        "rope_scaling": LLAMA3_ROPE,
    },
    # meta-llama/Llama-3.1-8B's config.json
    "8b": {
        **COMMON,
        "hidden_size": 4096,
        "intermediate_size": 14_336,
        "num_hidden_layers": 32,
        "tie_word_embeddings": False,
        "rope_scaling": {**LLAMA3_ROPE, "factor": 8.0},
    },
    # meta-llama/Llama-3.1-70B's config.json: 141 GB in bf16, over the GPU machine's 64 GB disk, so it is measured
    # depth-reduced (--layers) and extrapolated per layer (issue 18 item 2)
    "70b": {
        **COMMON,
        "hidden_size": 8192,
        "intermediate_size": 28_672,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "tie_word_embeddings": False,
        "rope_scaling": {**LLAMA3_ROPE, "factor": 8.0},
    },
    # google/gemma-2-2b's config.json (final logit soft-capping 30 over a 256k vocabulary: issue 18 item 4);
    # its BOS/EOS are the word-level tokenizer's last two ids here
    "gemma2-2b": {
        "model_type": "gemma2",
        "vocab_size": 256_000,
        "hidden_size": 2304,
        "intermediate_size": 9216,
        "num_hidden_layers": 26,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 8192,
        "rope_theta": 10_000.0,
        "rms_norm_eps": 1e-6,
        "final_logit_softcapping": 30.0,
        "attn_logit_softcapping": 50.0,
        "sliding_window": 4096,
        "query_pre_attn_scalar": 256,
        "tie_word_embeddings": True,
        "bos_token_id": 255_998,
        "eos_token_id": 255_999,
        "pad_token_id": 255_999,
        "initializer_range": 0.02,
    },
    # the 1B's vocabulary and special tokens on a toy body: CPU smoke runs of the scripts
    "tiny": {
        **COMMON,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "tie_word_embeddings": True,
        "rope_scaling": LLAMA3_ROPE,
    },
}

BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
N_WORDS = 128_000  # ids 0..127999 are the words w0..w127999


def build_tokenizer(vocab_size: int = 128_256, n_words: int = N_WORDS):
    """Word-level fast tokenizer: `w<i>` is id i, Llama 3's special tokens at 128000+ (with n_words=vocab_size-2,
    BOS and EOS are the last two ids and there are no reserved ones)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    n_words = min(n_words, vocab_size - 2)
    vocab = {f"w{i}": i for i in range(n_words)}
    vocab[BOS], vocab[EOS] = n_words, n_words + 1
    reserved = [f"<|reserved_special_token_{i}|>" for i in range(vocab_size - n_words - 2)]
    for i, name in enumerate(reserved):
        vocab[name] = n_words + 2 + i
    unk = reserved[0] if reserved else EOS
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # Like Llama 3: the tokenizer prepends <|begin_of_text|> when asked for special tokens.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tok.add_special_tokens([BOS, EOS, *reserved])
    # No decoder: decode joins the words with spaces, which re-tokenizes to the same ids.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=unk, model_max_length=131_072
    )


def llama_config(shape: str, layers: int | None = None):
    """The shape's transformers config (a Llama's, or the model type it names), with `layers` decoder layers
    instead of its own where given (a depth-reduced model: every layer keeps its real size)."""
    from transformers import Gemma2Config, LlamaConfig

    fields = dict(SHAPES[shape])
    if layers:
        fields["num_hidden_layers"] = layers
    kind = {"gemma2": Gemma2Config}.get(fields.pop("model_type", "llama"), LlamaConfig)
    return kind(**fields)


def build_llama(shape: str, out: Path, device: str | None = None, seed: int = 0, layers: int | None = None) -> dict:
    """Build, save (safetensors) and describe a random Llama of the given shape; returns figures."""
    import torch
    from transformers import AutoModelForCausalLM

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # bf16 on the GPU, as the real checkpoints are stored; fp32 on a CPU (smoke runs of tiny shapes).
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    t0 = time.monotonic()
    torch.manual_seed(seed)
    config = llama_config(shape, layers)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    n_params = sum(p.numel() for p in model.parameters())  # tied embeddings once
    t_init = time.monotonic() - t0
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = SHAPES[shape]["eos_token_id"]
    model.save_pretrained(out)  # safetensors, sharded above the default size
    words = config.vocab_size - 2 if config.eos_token_id == config.vocab_size - 1 else N_WORDS
    build_tokenizer(config.vocab_size, words).save_pretrained(out)
    info = {
        "shape": shape,
        "layers": config.num_hidden_layers,
        "dir": str(out),
        "params": n_params,
        "dtype": str(dtype).replace("torch.", ""),
        "device": device,
        "init_s": round(t_init, 1),
        "total_s": round(time.monotonic() - t0, 1),
        "bytes": sum(f.stat().st_size for f in out.glob("*.safetensors")),
    }
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    (out / "bench_model.json").write_text(json.dumps(info, indent=1))
    return info


MINILM_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def copy_minilm_config(src: Path, dst: Path) -> None:
    """Copy all-MiniLM-L6-v2's config and tokenizer (not its weights) to dst, e.g. to carry them."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in MINILM_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def build_minilm(src: Path, out: Path, device: str | None = None, seed: int = 0) -> dict:
    """A random BERT encoder with MiniLM-L6's config and real tokenizer, saved as safetensors."""
    import torch
    from transformers import AutoConfig, AutoModel

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    copy_minilm_config(src, out)
    config = AutoConfig.from_pretrained(src)
    with torch.device(device):
        model = AutoModel.from_config(config)
    model.save_pretrained(out)
    return {"dir": str(out), "params": sum(p.numel() for p in model.parameters()), "layers": config.num_hidden_layers}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), help="model shape to build (Llama, or gemma2-2b)")
    ap.add_argument("--minilm", type=Path, help="build a random MiniLM encoder from this config/tokenizer folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default=None, help="default: cuda when there is one")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, help="decoder layers, fewer than the shape's (a depth-reduced model)")
    args = ap.parse_args()
    if bool(args.shape) == bool(args.minilm):
        ap.error("give exactly one of --shape and --minilm")
    info = build_minilm(args.minilm, args.out, args.device, args.seed) if args.minilm else None
    if args.shape:
        info = build_llama(args.shape, args.out, args.device, args.seed, args.layers)
    print(json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
