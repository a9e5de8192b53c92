"""A file's preview: its first rows as the model's worker will train them (worker/training/preview.py), token by
token, and the rows of the whole file that max_seq_length cuts or drops. The endpoint: tests/api/test_previews.py."""

from __future__ import annotations

from tests.helpers.chat_rows import CHAT_ROW
from tests.helpers.chat_templates import family_tokenizer
from worker.training.data import IGNORE, Formatter
from worker.training.preview import preview


def normalized(rows: list[dict]) -> list[tuple[int, dict]]:
    from app.datasets.records import _Normalizer

    normalize = _Normalizer(None, None)
    return [(line, normalize(line, row)) for line, row in enumerate(rows, start=1)]


def test_the_preview_is_what_the_formatter_trains_token_by_token():
    tok = family_tokenizer("llama3")
    rows = normalized([CHAT_ROW, CHAT_ROW])
    result = preview(tok, rows, 2048, num_rows=1)
    (row,) = result["rows"]
    example = Formatter(tok, 2048).example(rows[0][1])
    assert [t["id"] for t in row["tokens"]] == example.input_ids
    assert [t["trained"] for t in row["tokens"]] == [label != IGNORE for label in example.labels]
    assert row["num_trained_tokens"] == example.num_loss_tokens and row["line"] == 1
    assert "get_weather" in row["trained_text"] and "21 degrees, sunny." in row["trained_text"]
    assert "Too hot." not in row["trained_text"] and "Too hot." in row["text"]  # weight 0: context only
    assert row["text"].count("<|begin_of_text|>") == 1
    assert (result["rows_counted"], result["rows_cut"], result["rows_dropped"]) == (2, 0, 0)


def test_the_preview_counts_rows_cut_and_dropped_over_the_file(tok):
    rows = normalized(
        [
            {"prompt": "Q: one?\nA: ", "completion": "1"},
            {"prompt": "word " * 100 + "\nA: ", "completion": "cut"},
            {"prompt": "Q: ", "completion": "word " * 100},
        ]
    )
    result = preview(tok, rows, 48, num_rows=3)
    assert (result["rows_counted"], result["rows_cut"], result["rows_dropped"], result["whole_file"]) == (3, 1, 1, True)
    first, cut, dropped = result["rows"]
    assert not first["cut"] and cut["cut"] and cut["num_tokens"] == 48 and cut["trained_text"].strip() == "cut</s>"
    assert dropped["dropped"] and dropped["tokens"] == [] and dropped["line"] == 3


def test_a_preference_row_is_its_prompt_with_each_answer_only_the_answers_trained(tok):
    openai_row = {
        "input": {
            "messages": [{"role": "system", "content": "SQL only."}, {"role": "user", "content": "Count heads."}]
        },
        "preferred_output": [{"role": "assistant", "content": "SELECT COUNT(*) FROM head"}],
        "non_preferred_output": [{"role": "assistant", "content": "SELECT * FROM heads"}],
    }
    text_row = {"prompt": "Q: count heads\nA: ", "chosen": "SELECT COUNT(*) FROM head", "rejected": "DROP TABLE head"}
    rows = normalized([openai_row, text_row])
    fmt = Formatter(tok, 512)
    for _, record in rows:
        chosen, rejected = fmt.pair(record)
        prompt_len = next(i for i, label in enumerate(chosen.labels) if label != IGNORE)
        assert chosen.input_ids[:prompt_len] == rejected.input_ids[:prompt_len]  # one prompt, two answers
        assert all(label == IGNORE for label in rejected.labels[:prompt_len])
    result = preview(tok, rows, 512, num_rows=2)
    assert [(r["line"], r["answer"]) for r in result["rows"]] == [
        (1, "chosen"),
        (1, "rejected"),
        (2, "chosen"),
        (2, "rejected"),
    ]
    assert "COUNT(*)" in result["rows"][0]["trained_text"] and "Count heads" not in result["rows"][0]["trained_text"]
    assert "DROP TABLE" in result["rows"][3]["trained_text"] and result["rows_counted"] == 2
