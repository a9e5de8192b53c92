"""The metrics a job's evaluation stores, in display order, and which of them are better when lower.

One list for the API (leaderboard, evaluation) and the worker (selection, model card).
"""

METRIC_NAMES = (
    "rouge1",
    "rouge2",
    "rougeL",
    "rougeLsum",
    "bertscore_precision",
    "bertscore_recall",
    "bertscore_f1",
    "perplexity",
    "token_accuracy",
    "eval_loss",
)
LOWER_IS_BETTER = frozenset({"eval_loss", "perplexity"})
