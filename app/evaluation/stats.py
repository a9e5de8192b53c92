"""Metric values recomputed from stored per-row scores, and paired bootstrap intervals on their differences.

Every number on a leaderboard comes from here, from the evaluation rows the worker stored, so any figure
can be traced to rows. Two kinds of metric:

* per-row means (ROUGE, BERTScore): the mean of the rows that have the score;
* token-weighted (eval_loss, perplexity, token_accuracy): sums over rows of each row's nll, loss_tokens
  and correct_tokens, then the ratio, so a long row weighs as many tokens as it has.

The bootstrap resamples rows (not tokens) with replacement, the same resampled rows for both models
(paired): the row-to-row variation that both models share cancels, so real differences show up with far
fewer rows than two separate intervals would need. NumPy, not SciPy: percentile intervals are three lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from app.core.metrics import LOWER_IS_BETTER, PERPLEXITY_LOSS_CAP

TOKEN_WEIGHTED = frozenset({"eval_loss", "perplexity", "token_accuracy"})
BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class RowColumns:
    """One model's per-row scores for one metric, aligned by row position (NaN where a row has none)."""

    a: np.ndarray  # the score itself, or nll for token-weighted metrics
    b: np.ndarray | None = None  # loss_tokens (token-weighted metrics only)
    c: np.ndarray | None = None  # correct_tokens (token_accuracy only)


def columns(metric: str, rows: list[dict | None]) -> RowColumns:
    def col(key: str) -> np.ndarray:
        return np.array([float(r[key]) if r and r.get(key) is not None else np.nan for r in rows], dtype=float)

    if metric in TOKEN_WEIGHTED:
        return RowColumns(col("nll"), col("loss_tokens"), col("correct_tokens"))
    return RowColumns(col(metric))


def _value(metric: str, cols: RowColumns, idx: np.ndarray) -> np.ndarray:
    """The metric on each resample; idx is (samples, rows) of row positions, or (1, rows) for the plain value."""
    if metric in TOKEN_WEIGHTED:
        tokens = np.nansum(cols.b[idx], axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            if metric == "token_accuracy":
                return np.nansum(cols.c[idx], axis=-1) / tokens
            loss = np.nansum(cols.a[idx], axis=-1) / tokens
        return np.exp(np.minimum(loss, PERPLEXITY_LOSS_CAP)) if metric == "perplexity" else loss
    with np.errstate(invalid="ignore"):
        return np.nanmean(cols.a[idx], axis=-1)


def has_rows(metric: str, cols: RowColumns) -> bool:
    data = cols.b if metric in TOKEN_WEIGHTED else cols.a
    return bool(np.any(~np.isnan(data)) and (metric not in TOKEN_WEIGHTED or np.nansum(cols.b) > 0))


def value(metric: str, cols: RowColumns) -> float | None:
    if not has_rows(metric, cols):
        return None
    v = float(_value(metric, cols, np.arange(len(cols.a))[None, :])[0])
    return None if math.isnan(v) else v


def _resamples(n: int, samples: int, seed: int) -> np.ndarray:
    # A fixed seed: the same rows give the same interval on every request.
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def _interval(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    draws = draws[~np.isnan(draws)]
    if draws.size == 0:
        return math.nan, math.nan
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def interval(
    metric: str, cols: RowColumns, samples: int = BOOTSTRAP_SAMPLES, confidence: float = CONFIDENCE, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of one model's metric."""
    if not has_rows(metric, cols):
        return None
    return _interval(_value(metric, cols, _resamples(len(cols.a), samples, seed)), confidence)


@dataclass(frozen=True)
class PairedDiff:
    diff: float  # candidate - reference, in the metric's units
    low: float
    high: float

    @property
    def tied(self) -> bool:
        """The interval holds 0: these rows cannot tell the two apart."""
        return self.low <= 0.0 <= self.high


def paired_difference(
    metric: str,
    candidate: RowColumns,
    reference: RowColumns,
    samples: int = BOOTSTRAP_SAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> PairedDiff | None:
    """Bootstrap interval of (candidate - reference) on the same resampled rows. Both must be aligned."""
    if len(candidate.a) != len(reference.a) or not (has_rows(metric, candidate) and has_rows(metric, reference)):
        return None
    idx = _resamples(len(candidate.a), samples, seed)
    draws = _value(metric, candidate, idx) - _value(metric, reference, idx)
    full = np.arange(len(candidate.a))[None, :]
    diff = float(_value(metric, candidate, full)[0] - _value(metric, reference, full)[0])
    low, high = _interval(draws, confidence)
    if math.isnan(low):
        return None
    return PairedDiff(diff=diff, low=low, high=high)


def better(metric: str, x: float, y: float) -> bool:
    return x < y if metric in LOWER_IS_BETTER else x > y
