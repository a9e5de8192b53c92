"""How fast the worker turns an uploaded file into training rows, and how much memory that takes (issue 18 item 5).

For each size (default 10k, 100k and 1M rows) it writes a WikiSQL-like JSONL file (prompt/completion rows built
from ../shared/datasets/wikisql, each made unique), then runs, each in a fresh process so that its peak RSS is its
own:

    tokenize   what a worker does on a file no job has trained on with this tokenizer: read the file, tokenize in
               batches into int32 arrays (worker/training/tokenized.py), save them (the worker then pushes that
               file to the object store), split off the held-out rows and read back the evaluation records
    reuse      what every later attempt, sweep candidate or host does: load the saved arrays, split, read the
               evaluation records
    per-row    (--old, 10k and 100k only) the path before: every record in a list, tokenized one at a time into
               Python lists (worker/training/data.py Formatter.example), for comparison

Tokenizers (--tokenizers): `stories260k`, the tiny real Llama tokenizer in ../shared/models (a 512-entry
vocabulary: about 200 tokens a row), and `bpe32k`, a byte-level BPE with Llama 3's pre-tokenizer pattern and a
32,000-entry vocabulary, trained here on the alpaca and wiki demo files of ../shared/datasets (not on WikiSQL):
about 93 tokens a row, nearer a real Llama 3 tokenizer's count, so tokens/s is the harder figure there.

    python bench/bench_data.py                                  # all sizes, both tokenizers
    python bench/bench_data.py --rows 10000,100000 --old        # with the per-row path for comparison

Prints one line per run and a Markdown table; peak RSS is the process's high-water mark (ru_maxrss), imports
included, with the RSS after imports beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FTAAS_SHARED", ROOT.parent / "shared"))
LLAMA3_SPLIT = (  # Llama 3's tokenizer.json pre-tokenizer pattern
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
MAX_SEQ_LENGTH = 512
EVAL_ROWS = 200  # the evaluation's default max_rows
SHARE = 0.1  # the default validation_split


def make_file(rows: int, folder: Path) -> Path:
    """`rows` WikiSQL prompt/completion rows, the shared file's 1,000 cycled, each question made unique."""
    path = folder / f"wikisql-{rows}.jsonl"
    if path.is_file():
        return path
    source = [json.loads(line)["text"] for line in open(SHARED / "datasets/wikisql/train.jsonl")]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as out:
        for i in range(rows):
            prompt, answer = source[i % len(source)].rsplit("\nA: ", 1)
            out.write(json.dumps({"prompt": f"{prompt} (#{i})\nA:", "completion": f" {answer}"}) + "\n")
    tmp.rename(path)
    return path


def make_bpe(folder: Path) -> Path:
    """The bpe32k tokenizer (see the module's text), saved so that AutoTokenizer loads it as the worker would."""
    out = folder / "bpe32k"
    if (out / "tokenizer.json").is_file():
        return out
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    def texts():
        for row in json.load(open(SHARED / "datasets/alpaca/alpaca_en_demo.json")):
            yield f"{row['instruction']} {row['input']} {row['output']}"
        yield from open(SHARED / "datasets/raw_text/wiki_demo.txt")

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=32_000, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=specials[0], eos_token=specials[1])
    fast.save_pretrained(out)
    return out


# ------------------------------------------------------------------------------------------ one measured run


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(mode: str, path: Path, tokenizer: str, saved: Path) -> dict:
    import numpy as np
    from transformers import AutoTokenizer

    from app.core.tables import File
    from worker.child.job_data import iter_file, records_at
    from worker.training.data import Formatter, split_indices, split_rows
    from worker.training.tokenized import TokenizedRows, TrainingExamples, tokenize_rows

    file_row = File(id="file-bench", format="jsonl", column_mapping=None, completion_separator=None)
    fmt = Formatter(AutoTokenizer.from_pretrained(tokenizer), MAX_SEQ_LENGTH)
    fmt.examples([{"prompt": "warm", "completion": " up"}])  # the tokenizer's first call is not the data's
    after_imports = rss_mib()
    t = time.monotonic()
    if mode == "per-row":
        rows = list(iter_file(path, file_row))
        train, held = split_rows(rows, SHARE, seed=1)
        examples = [e for e in (fmt.example(record) for _, record in train) if e is not None and e.num_loss_tokens]
        n_rows, n_tokens, n_train = len(rows), sum(len(e.input_ids) for e in examples), len(examples)
    else:
        if mode == "tokenize":
            tokens = tokenize_rows(fmt, iter_file(path, file_row))
            tokens.save(saved)
        else:
            tokens = TokenizedRows.load(saved)
        train, held = split_indices(tokens.num_rows, SHARE, seed=1)
        examples = TrainingExamples(tokens, tokens.trainable(np.asarray(train, dtype=np.int64)))
        records_at(path, file_row, held[:EVAL_ROWS])
        examples[len(examples) - 1]  # one made, as the first step makes its micro-batch
        n_rows, n_tokens, n_train = tokens.num_rows, len(tokens.ids), len(examples)
    seconds = time.monotonic() - t
    return {
        "mode": mode,
        "rows": n_rows,
        "tokens": n_tokens,
        "training_rows": n_train,
        "seconds": round(seconds, 3),
        "rows_per_s": round(n_rows / seconds),
        "tokens_per_s": round(n_tokens / seconds),
        "peak_rss_mib": round(rss_mib()),
        "rss_after_imports_mib": round(after_imports),
        "saved_mib": round(saved.stat().st_size / 2**20, 1) if saved.is_file() else None,
    }


def measure(mode: str, path: Path, tokenizer: str, saved: Path) -> dict:
    cmd = [sys.executable, __file__, "--one", mode, str(path), tokenizer, str(saved)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode:
        raise SystemExit(f"{mode} {path.name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="10000,100000,1000000", help="sizes, comma-separated")
    ap.add_argument("--tokenizers", default="stories260k,bpe32k")
    ap.add_argument("--old", action="store_true", help="also the per-row path, at 100k rows and fewer")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ftaas-bench-data"))
    ap.add_argument("--json", type=Path, help="write every result here too")
    ap.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        mode, path, tokenizer, saved = args.one
        print(json.dumps(run_one(mode, Path(path), tokenizer, Path(saved))))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    tokenizers = {"stories260k": SHARED / "models/stories260k", "bpe32k": None}
    results = []
    print(f"{os.cpu_count()} CPUs; max_seq_length {MAX_SEQ_LENGTH}", flush=True)
    for name in args.tokenizers.split(","):
        folder = tokenizers[name] or make_bpe(args.work)
        for rows in (int(r) for r in args.rows.split(",")):
            path = make_file(rows, args.work)
            saved = args.work / f"{name}-{rows}.npz"
            saved.unlink(missing_ok=True)
            modes = ["tokenize", "reuse"] + (["per-row"] if args.old and rows <= 100_000 else [])
            for mode in modes:
                r = {
                    "tokenizer": name,
                    "file_mib": round(path.stat().st_size / 2**20, 1),
                    **measure(mode, path, str(folder), saved),
                }
                results.append(r)
                print(json.dumps(r), flush=True)
    print("\n| tokenizer | rows | mode | seconds | rows/s | tokens/s | tokens/row | peak RSS MiB (after imports) |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['tokenizer']} | {r['rows']:,} | {r['mode']} | {r['seconds']:.2f} | {r['rows_per_s']:,} | "
            f"{r['tokens_per_s']:,} | {r['tokens'] / r['rows']:.0f} | {r['peak_rss_mib']:,} "
            f"({r['rss_after_imports_mib']:,}) |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
