"""A model too large for the GPU machine's disk, measured depth-reduced and extrapolated per layer (issue 18 item 2).

A random Llama-3.1-70B is 141 GB in bf16 safetensors, over the GPU machine's 64 GB disk. Every decoder layer of a
Llama has the same size and does the same work, so a step's time and its peak memory are, to within the layers'
own noise, a fixed part (embedding, head, loss, optimizer bookkeeping) plus a part per layer. bench_train runs the
70B shape at two depths (bench/random_model.py --shape 70b --layers N), and this fits the line through them:

    python bench/random_model.py --shape 70b --layers 4 --out /tmp/models/m70-4
    python bench/random_model.py --shape 70b --layers 8 --out /tmp/models/m70-8
    python bench/bench_train.py --model /tmp/models/m70-4 --configs 2,trl-qlora --out /tmp/r4.json ...
    python bench/bench_train.py --model /tmp/models/m70-8 --configs 2,trl-qlora --out /tmp/r8.json ...
    python bench/extrapolate_depth.py /tmp/r4.json:4 /tmp/r8.json:8 --layers 80

For each configuration in both runs: seconds per step (median), peak GiB and useful tokens/s at the full depth.
The tokens per step are the same at every depth (the same examples), so tokens/s scales as 1 / step time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

GIB = 2**30


def line(x0: float, y0: float, x1: float, y1: float, x: float) -> float:
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs=2, help="bench_train --out JSON:layers, twice (two depths)")
    ap.add_argument("--layers", type=int, default=80, help="the full model's decoder layers")
    args = ap.parse_args()
    runs = []
    for spec in args.runs:
        path, layers = spec.rsplit(":", 1)
        runs.append((int(layers), {r["name"]: r for r in json.loads(Path(path).read_text())["train"]}))
    (d0, a), (d1, b) = sorted(runs, key=lambda r: r[0])
    print(
        f"| config | s/step at {d0} / {d1} layers | s/step at {args.layers} | peak GiB at {d0} / {d1} | "
        f"peak GiB at {args.layers} | useful tok/s at {args.layers} |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name in a:
        if name not in b or not a[name].get("step_s_median") or not b[name].get("step_s_median"):
            print(f"| {name} | missing or failed at one depth | | | | |")
            continue
        s0, s1 = a[name]["step_s_median"], b[name]["step_s_median"]
        p0, p1 = a[name]["peak_bytes"] / GIB, b[name]["peak_bytes"] / GIB
        step = line(d0, s0, d1, s1, args.layers)
        peak = line(d0, p0, d1, p1, args.layers)
        tokens = b[name]["useful_tokens_per_step"]
        print(
            f"| {name} | {s0:.3f} / {s1:.3f} | {step:.2f} | {p0:.1f} / {p1:.1f} | {peak:.1f} | {tokens / step:,.0f} |"
        )


if __name__ == "__main__":
    main()
