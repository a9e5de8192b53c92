"""The step meter of the training benchmarks (bench_train.py, bench_dpo.py, peers.py): each optimizer step's end
timestamped after a device sync, its useful and processed tokens, the losses, the peak memory of the timed
window and a profile of the steps after it; and how a Trainer-based configuration or the service's loop reports
to it."""

from __future__ import annotations

import re
import statistics
import tempfile
import time

import torch

GIB = 2**30
LOSS_WINDOW = 5  # the loss reported is the mean of the last LOSS_WINDOW timed steps


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_time_us(evt) -> float:
    for name in ("self_device_time_total", "self_cuda_time_total"):
        value = getattr(evt, name, None)
        if value is not None:
            return float(value)
    return 0.0


KERNEL_GROUPS = [  # (group, regex over kernel names), first match wins
    ("4-bit dequant/matmul (bitsandbytes)", r"kDequantize|kgemm_4bit|dequantize|kQuantize|bnb"),
    ("attention", r"flash|fmha|attention|sdpa|efficient_attention|cutlassF|cutlassB"),
    ("matmul (cuBLAS/cutlass)", r"gemm|nvjet|cutlass|sm90_xmma|ampere_|cublas|splitK"),
    ("softmax / cross-entropy", r"softmax|log_softmax|nll_loss|cross_entropy"),
    ("optimizer (AdamW, clip)", r"multi_tensor|foreach|adam|_amp_foreach|lerp"),
    ("copies / casts", r"copy|cast|convert|to_copy|CatArrayBatched|index|scatter|gather"),
    ("elementwise / reductions", r"elementwise|vectorized|reduce|Reduce|unrolled|mul|add|silu|pow|rsqrt|mean"),
]


class StallSampler:
    """Where the host is during a step slower than `after_s`: faulthandler dumps every thread's Python stack
    (from a C thread, so even while the main thread holds the GIL; py-spy cannot attach on the GPU machine),
    again every `after_s` while the step lasts. Counts the main thread's innermost frames over all dumps."""

    def __init__(self, after_s: float) -> None:
        self.after_s = after_s
        self._file = tempfile.TemporaryFile(mode="w+")

    def step_begins(self) -> None:
        import faulthandler

        faulthandler.cancel_dump_traceback_later()
        faulthandler.dump_traceback_later(self.after_s, repeat=True, file=self._file)

    def stop(self, top: int = 12) -> list[tuple[int, str]]:
        import collections
        import faulthandler

        faulthandler.cancel_dump_traceback_later()
        self._file.seek(0)
        counts: collections.Counter = collections.Counter()
        # A dump is "Thread 0x... (most recent call first):" blocks; the main thread's block says so.
        for block in self._file.read().split("Thread 0x"):
            lines = [ln.strip() for ln in block.splitlines()[1:] if ln.strip().startswith("File ")]
            if "(most recent call first)" in block and lines and "threading.py" not in lines[0]:
                counts[" <- ".join(ln.replace("File ", "").replace('"', "") for ln in lines[:4])] += 1
        self._file.close()
        return [(n, where) for where, n in counts.most_common(top)]


class StepMeter:
    """Timestamps each optimizer step (after a device sync), counts useful and processed tokens per step,
    records losses; takes peak memory at the end of the timed window and profiles the steps after it."""

    def __init__(self, device, warmup: int, steps: int, profile_steps: int = 0, stall_s: float = 0.0) -> None:
        self.device, self.warmup, self.steps, self.profile_steps = device, warmup, steps, profile_steps
        self.stalls = StallSampler(stall_s) if stall_s > 0 else None
        self.t_start = None
        self.times: list[float] = []
        self.useful: list[int] = []
        self.processed: list[int] = []
        self.losses: list[float] = []
        self._proc = 0
        self._mask_tokens = 0
        self.peak = None
        self.prof = None
        self.prof_wall = None
        self._prof_t0 = None
        self.table = None

    @property
    def target(self) -> int:
        return self.warmup + self.steps + self.profile_steps

    def done(self) -> bool:
        return len(self.times) >= self.target

    def pre_forward(self, module, args, kwargs):  # forward pre-hook on the decoder (with_kwargs=True)
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None and kwargs.get("inputs_embeds") is not None:  # prompt tuning: virtual tokens included
            ids = kwargs["inputs_embeds"][..., 0]
        if ids is not None:
            self._proc += ids.numel()
        mask = kwargs.get("attention_mask")
        if mask is not None:
            self._mask_tokens += int(mask.sum())
        elif ids is not None and kwargs.get("position_ids") is not None:  # padding-free (a peer): no padding at all
            self._mask_tokens += ids.numel()

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        sync(self.device)
        self.t_start = time.perf_counter()
        if self.stalls:
            self.stalls.step_begins()

    def step_end(self, useful: int | None = None, loss: float | None = None) -> None:
        sync(self.device)
        self.times.append(time.perf_counter())
        if self.stalls:
            self.stalls.step_begins()
        self.useful.append(self._mask_tokens if useful is None else useful)
        self.processed.append(self._proc)
        self._proc = self._mask_tokens = 0
        if loss is not None:
            self.losses.append(float(loss))
        n = len(self.times)
        if n == self.warmup + self.steps:
            self.peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
            if self.profile_steps:
                acts = [torch.profiler.ProfilerActivity.CPU]
                if self.device.type == "cuda":
                    acts.append(torch.profiler.ProfilerActivity.CUDA)
                self.prof = torch.profiler.profile(activities=acts)
                self.prof.start()
                self._prof_t0 = time.perf_counter()
        elif self.prof is not None and n == self.target and self.prof_wall is None:
            sync(self.device)
            self.prof.stop()
            self.prof_wall = time.perf_counter() - self._prof_t0

    def summary(self) -> dict:
        w, s = self.warmup, min(self.steps, len(self.times) - self.warmup)
        if s <= 0:
            return {"timed_steps": 0}
        t0 = self.times[w - 1] if w >= 1 else self.t_start
        dt = self.times[w + s - 1] - t0
        useful = sum(self.useful[w : w + s])
        processed = sum(self.processed[w : w + s])
        losses = self.losses[: w + s]
        step_s = [b - a for a, b in zip([t0, *self.times[w:]], self.times[w : w + s])]
        return {
            "timed_steps": s,
            "seconds": dt,
            "step_s_median": statistics.median(step_s),
            "step_s_max": max(step_s),
            "step_seconds": [round(x, 4) for x in step_s],  # each timed step: outliers show here
            "warmup_step_seconds": [round(b - a, 4) for a, b in zip([self.t_start, *self.times], self.times[:w])],
            "step_useful_tokens": self.useful[w : w + s],
            "useful_tokens": useful,
            "useful_tokens_per_step": useful / s,
            "processed_tokens": processed,
            "row_fill": useful / processed if processed else None,
            "tokens_per_s": useful / dt,
            "peak_bytes": self.peak,
            "loss_first": losses[0] if losses else None,
            "loss_last": statistics.fmean(losses[-LOSS_WINDOW:]) if losses else None,
            "loss_step": len(losses),
        }

    def profile_summary(self, top: int = 18) -> dict | None:
        if self.prof is None or self.prof_wall is None:
            return None
        kernels, groups = [], {}
        device_total = 0.0
        events = list(self.prof.key_averages())
        on_device = [e for e in events if str(getattr(e, "device_type", "")).endswith("CUDA")]
        # Kernels are their own entries (device_type CUDA); where a build lists none, take the operators'
        # self device time instead.
        for evt in on_device or events:
            if device_time_us(evt) > 0:
                us = device_time_us(evt)
                device_total += us
                kernels.append((us, evt.count, evt.key))
                group = next((g for g, rx in KERNEL_GROUPS if re.search(rx, evt.key, re.I)), "other")
                groups[group] = groups.get(group, 0.0) + us
        kernels.sort(reverse=True)
        wall_us = self.prof_wall * 1e6
        try:
            self.table = self.prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=40)
        except Exception:  # noqa: BLE001 - names of the sort key differ between torch versions
            self.table = self.prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
        return {
            "steps": self.profile_steps,
            "wall_s": self.prof_wall,
            "gpu_busy_share": device_total / wall_us if wall_us else None,  # kernel time / wall time
            "groups": {g: us / device_total for g, us in sorted(groups.items(), key=lambda kv: -kv[1])}
            if device_total
            else {},
            "top_kernels": [
                {"share": us / device_total, "ms_per_step": us / 1e3 / self.profile_steps, "calls": c, "name": k[:110]}
                for us, c, k in kernels[:top]
            ]
            if device_total
            else [],
        }


def trainer_args(meter: StepMeter, batch: int, seed: int, cuda: bool, output_dir: str) -> dict:
    """The TrainingArguments every Trainer-based configuration shares (the recipe's, TRL's, Unsloth's): as many
    steps as the meter times, the service's learning rate and schedule, no saving, no reporting."""
    return {
        "output_dir": output_dir,
        "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": 1,
        "max_steps": meter.target,
        "learning_rate": 2e-4,
        "lr_scheduler_type": "linear",
        "warmup_steps": 0,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "bf16": cuda,
        "use_cpu": not cuda,  # a CPU smoke run on the tiny model; the figures are the GPU's
        "disable_tqdm": True,
        "seed": seed,
        "dataloader_num_workers": 0,
    }


def train_metered(trainer, model, meter: StepMeter) -> None:
    """trainer.train() timed by the meter: a callback timestamps each step's end (after a device sync) and stops
    after the last timed step, its logged losses go to the meter, and a hook on the decoder counts the tokens."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    class Meter(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            meter.start()

        def on_step_end(self, a, state, control, **kw):
            meter.step_end()
            if meter.done():
                control.should_training_stop = True

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                meter.losses.append(float(logs["loss"]))

    trainer.add_callback(Meter())
    trainer.remove_callback(PrinterCallback)  # no log line per step
    decoder = (model.get_base_model() if hasattr(model, "get_base_model") else model).get_decoder()
    handle = decoder.register_forward_pre_hook(meter.pre_forward, with_kwargs=True)
    try:
        trainer.train()
    finally:
        handle.remove()


def metered_hooks(meter: StepMeter):
    """The training loop's hooks for a timed run: each step's end and its trained tokens to the meter, which stops
    the loop after its last timed step; no evaluation, no checkpoint records."""
    from worker.training.loop import Hooks

    last = {"tokens": 0}

    def on_progress(d: dict) -> None:
        if "train_loss" not in d:  # the loop's first report, before any step
            return
        meter.step_end(useful=d["trained_tokens"] - last["tokens"], loss=d["train_loss"])
        last["tokens"] = d["trained_tokens"]

    return Hooks(
        on_progress=on_progress,
        on_log=lambda d: None,
        on_checkpoint=lambda *a: None,
        on_evaluate=lambda step, epoch: {},
        should_stop=meter.done,
    )
