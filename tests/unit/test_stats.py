"""app.evaluation.stats, pure: metric values recomputed from per-row scores, paired bootstrap intervals and
ties (the leaderboard that uses them, over HTTP: tests/api/test_leaderboard.py)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from app.evaluation import stats
from tests.helpers.factories import N_ROWS

# ------------------------------------------------------------------ app.stats, pure


def test_value_of_mean_and_token_weighted_metrics():
    rows = [
        {"rougeL": 0.5, "nll": 2.0, "loss_tokens": 2, "correct_tokens": 1},
        {"rougeL": 1.0, "nll": 6.0, "loss_tokens": 6, "correct_tokens": 6},
        {"nll": 0.0, "loss_tokens": 0, "correct_tokens": 0},  # a row without a generation
    ]
    assert stats.value("rougeL", stats.columns("rougeL", rows)) == pytest.approx(0.75)
    # token-weighted: (2 + 6) / (2 + 6), not the mean of per-row losses
    assert stats.value("eval_loss", stats.columns("eval_loss", rows)) == pytest.approx(1.0)
    assert stats.value("perplexity", stats.columns("perplexity", rows)) == pytest.approx(math.e)
    assert stats.value("token_accuracy", stats.columns("token_accuracy", rows)) == pytest.approx(7 / 8)
    assert stats.value("bertscore_f1", stats.columns("bertscore_f1", rows)) is None


def test_identical_models_are_tied_with_a_zero_interval():
    rng = random.Random(0)
    rows = [{"rougeL": rng.random()} for _ in range(N_ROWS)]
    a = stats.columns("rougeL", rows)
    d = stats.paired_difference("rougeL", a, stats.columns("rougeL", [dict(r) for r in rows]))
    assert (d.diff, d.low, d.high, d.tied) == (0.0, 0.0, 0.0, True)


def test_a_clearly_better_model_is_not_tied_and_noise_is():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.2, 0.6, N_ROWS)
    better = stats.columns("rougeL", [{"rougeL": float(v + 0.15)} for v in base])
    noisy = stats.columns("rougeL", [{"rougeL": float(v + rng.normal(0, 0.05))} for v in base])
    ref = stats.columns("rougeL", [{"rougeL": float(v)} for v in base])
    d = stats.paired_difference("rougeL", better, ref)
    assert d.low > 0.1 and not d.tied and d.diff == pytest.approx(0.15)
    assert stats.paired_difference("rougeL", noisy, ref).tied  # mean shift ~0 with row noise: no evidence


def test_paired_interval_is_narrower_than_separate_intervals():
    """Row difficulty is shared by both models; pairing removes it."""
    rng = np.random.default_rng(2)
    difficulty = rng.uniform(0, 1, N_ROWS)
    a = stats.columns("rougeL", [{"rougeL": float(v)} for v in difficulty])
    b = stats.columns("rougeL", [{"rougeL": float(v + 0.03)} for v in difficulty])
    paired = stats.paired_difference("rougeL", b, a)
    low_a, high_a = stats.interval("rougeL", a)
    assert not paired.tied  # a small but consistent gain is detected...
    assert (paired.high - paired.low) < (high_a - low_a) / 5  # ...because pairing cancels row difficulty


def test_lower_is_better_metrics_tie_and_differ_the_same_way():
    rows = [{"nll": 1.0 + 0.01 * i, "loss_tokens": 10, "correct_tokens": 5} for i in range(N_ROWS)]
    worse = [{**r, "nll": r["nll"] * 3} for r in rows]
    d = stats.paired_difference("perplexity", stats.columns("perplexity", worse), stats.columns("perplexity", rows))
    assert d.diff > 0 and not d.tied
    assert stats.better("perplexity", 2.0, 3.0) and not stats.better("rougeL", 2.0, 3.0)
