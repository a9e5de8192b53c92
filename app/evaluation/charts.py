"""PNG charts drawn with Matplotlib's object API (Figure + Agg canvas, no pyplot): no global state, so
the API's request threads can draw at the same time. Inputs are plain numbers; callers gather them."""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from app.evaluation.schemas import Leaderboard, LeaderboardRow

WINNER = "#2ca02c"
TIED = "#98df8a"
OTHER = "#1f77b4"
BASE = "#bbbbbb"
COST_LABELS = {
    "train_seconds": ("training time (s)", False),
    "trainable_params": ("trainable parameters", True),
    "peak_memory_bytes": ("peak memory (MiB)", False),
    "trained_tokens": ("tokens trained", False),
    "tokens_per_second": ("training tokens / s", False),
}


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _color(row: LeaderboardRow) -> str:
    if row.kind == "base":
        return BASE
    if row.winner:
        return WINNER
    if row.vs_leader is not None and row.vs_leader.tied:
        return TIED
    return OTHER


def loss_curves_png(series: dict[str, dict[str, list[tuple[float, float]]]], title: str) -> bytes:
    """series: {label: {"train": [(step, loss)], "eval": [(step, loss)]}}; training solid, validation dashed."""
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    drawn = False
    for i, (label, curves) in enumerate(series.items()):
        color = palette[i % len(palette)]
        if curves.get("train"):
            xs, ys = zip(*curves["train"])
            ax.plot(xs, ys, color=color, lw=1.5, label=f"{label} train")
            drawn = True
        if curves.get("eval"):
            xs, ys = zip(*curves["eval"])
            ax.plot(xs, ys, color=color, lw=2, ls="--", marker="o", label=f"{label} validation")
            drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no losses recorded yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (completion tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7, ncols=2 if len(series) > 3 else 1)
    return _png(fig)


def metric_bars_png(board: Leaderboard) -> bytes:
    """One bar per candidate and base model, best at the top, with the bootstrap interval of each value."""
    rows = [r for r in board.data if r.value is not None]
    fig = Figure(figsize=(8, 1.2 + 0.45 * max(1, len(rows))))
    ax = fig.add_subplot()
    if not rows:
        ax.text(0.5, 0.5, f"no {board.metric} values yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _png(fig)
    rows = list(reversed(rows))  # barh draws bottom-up; the best goes on top
    ys = range(len(rows))
    values = [r.value for r in rows]
    err = [
        [max(0.0, r.value - r.value_ci.low) if r.value_ci else 0.0 for r in rows],
        [max(0.0, r.value_ci.high - r.value) if r.value_ci else 0.0 for r in rows],
    ]
    ax.barh(ys, values, xerr=err, color=[_color(r) for r in rows], capsize=3, ecolor="#333333")
    ax.set_yticks(list(ys), [r.name + (" (winner)" if r.winner else "") for r in rows], fontsize=8)
    for y, r in zip(ys, rows):
        ax.text(r.value, y, f" {r.value:.3f}", va="center", fontsize=7)
    better = "higher" if board.higher_is_better else "lower"
    ax.set_xlabel(f"{board.metric} ({better} is better; bars: {int(board.confidence * 100)}% bootstrap interval)")
    ax.set_title("Candidates by " + board.metric + " — light green: tied with the leader")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def cost_scatter_png(board: Leaderboard, cost: str) -> bytes:
    """Metric against one cost column, one point per fine-tuned job with its interval."""
    label, log = COST_LABELS[cost]
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    points = []
    for r in board.data:
        x = getattr(r.cost, cost) if r.cost else None
        if r.kind == "fine-tuned" and r.value is not None and x:
            points.append((x / 2**20 if cost == "peak_memory_bytes" else x, r))
    if not points:
        ax.text(0.5, 0.5, "no finished candidates yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _png(fig)
    for x, r in points:
        lo = r.value - r.value_ci.low if r.value_ci else 0.0
        hi = r.value_ci.high - r.value if r.value_ci else 0.0
        ax.errorbar([x], [r.value], yerr=[[max(0.0, lo)], [max(0.0, hi)]], fmt="o", ms=9, color=_color(r), capsize=3)
        ax.annotate(r.name, (x, r.value), textcoords="offset points", xytext=(6, 6), fontsize=8)
    if log and all(x > 0 for x, _ in points) and max(x for x, _ in points) / min(x for x, _ in points) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel(board.metric)
    ax.set_title(f"{board.metric} against cost — green: winner, light green: tied with the leader")
    ax.grid(alpha=0.3)
    ax.margins(x=0.15, y=0.15)
    return _png(fig)
