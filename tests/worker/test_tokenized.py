"""A file's rows tokenized in batches into int32 arrays (worker/training/tokenized.py) train exactly as the rows
tokenized one at a time did, and are tokenized once per (file, tokenizer, max_seq_length, format): kept in the
object store for every later attempt and job, made again when damaged, deleted with their file."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from app.core.local_cache import LocalCache
from app.core.object_store import ObjectStore, StoreError
from app.core.storage import tokenized_prefix
from app.core.tables import File
from app.datasets import iter_records
from tests.helpers.chat_templates import family_tokenizer
from worker.child.job_context import UserError
from worker.child.job_data import load_tokens, records_at
from worker.training.data import Formatter, split_indices, split_rows
from worker.training.tokenized import (
    CUT,
    DROPPED,
    NO_LOSS,
    OK,
    DamagedTokens,
    TokenizedRows,
    TrainingExamples,
    pairs_of,
    tokenize_rows,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets"
CHAT = [
    {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]},
    {
        "messages": [
            {"role": "system", "content": "Answer in SQL."},
            {"role": "user", "content": "All rows of t?"},
            {"role": "assistant", "content": "SELECT * FROM t", "weight": 0},
            {"role": "user", "content": "Only ten?"},
            {"role": "assistant", "content": "SELECT * FROM t LIMIT 10"},
        ]
    },
]


def shared_rows(name: str, **options) -> list[tuple[int, dict]]:
    files = {"wikisql": ("wikisql/train.jsonl", "jsonl"), "alpaca": ("alpaca/alpaca_en_demo.json", "json")}
    path, fmt = files[name]
    return list(iter_records(SHARED / path, fmt, with_lines=True, **options))


def one_at_a_time(fmt, rows, preference: bool = False) -> tuple[list, int, int]:
    """The rows as the worker made them before (one Formatter call a row, lists): (trained items, cut, dropped),
    the reference the arrays must equal."""
    from worker.training.preference import Pair

    items, cut, dropped = [], 0, 0
    for _, record in rows:
        made = fmt.pair(record) if preference else fmt.example(record)
        if made is None:
            dropped += 1
            continue
        item = Pair(*made) if preference else made
        if all(a.num_loss_tokens > 0 for a in ((item.chosen, item.rejected) if preference else (item,))):
            items.append(item)
            cut += item.cut
    return items, cut, dropped


def as_lists(e):
    return None if e is None else (list(e.input_ids), list(e.labels), e.cut)


@pytest.mark.parametrize("max_len", (64, 512))
@pytest.mark.parametrize(
    "rows",
    (
        pytest.param(lambda: shared_rows("wikisql", completion_separator="\nA:"), id="prompt-completion"),
        pytest.param(lambda: shared_rows("alpaca"), id="instruction"),
        pytest.param(lambda: shared_rows("wikisql"), id="text"),
        pytest.param(lambda: list(enumerate(CHAT * 3, 1)), id="chat"),
    ),
)
def test_batched_rows_are_the_rows_tokenized_one_at_a_time(tok, rows, max_len):
    rows = rows()
    fmt = Formatter(tok, max_len)
    one_by_one = [fmt.example(r) for _, r in rows]
    assert [as_lists(e) for e in fmt.examples([r for _, r in rows])] == [as_lists(e) for e in one_by_one]

    tokens = tokenize_rows(fmt, rows)
    every = np.arange(len(rows))
    examples = TrainingExamples(tokens, tokens.trainable(every))
    expected, cut, dropped = one_at_a_time(fmt, rows)
    assert [as_lists(e) for e in examples] == [as_lists(e) for e in expected]
    assert tokens.counts(every) == (cut, dropped)
    assert tokens.ids.dtype == np.int32 and isinstance(examples[0].input_ids, np.ndarray)
    assert list(examples.lengths()) == [len(e.input_ids) for e in expected]


def test_each_row_gets_its_status(tok):
    fmt = Formatter(tok, 24)
    rows = [
        {"prompt": "Q: one", "completion": " A"},  # fits
        {"prompt": "Q: " + "long " * 40, "completion": " A"},  # loses the beginning of its prompt
        {"prompt": "Q:", "completion": " " + "answer " * 40},  # answer alone too long
        {"text": ""},  # only BOS/EOS: trains on them, so kept
    ]
    tokens = tokenize_rows(fmt, enumerate(rows, 1))
    assert tokens.status.tolist()[:3] == [OK, CUT, DROPPED]
    assert tokens.offsets[3] == tokens.offsets[2]  # a dropped row holds no tokens


def test_a_row_with_nothing_to_train_is_skipped_not_dropped(tok):
    fmt = Formatter(tok, 64)
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]}]
    rows.append(CHAT[0])
    tokens = tokenize_rows(fmt, enumerate(rows, 1))
    assert tokens.status.tolist() == [NO_LOSS, OK]
    assert tokens.trainable(np.arange(2)).tolist() == [1] and tokens.counts(np.arange(2)) == (0, 0)


def test_preference_pairs_are_the_pairs_made_one_at_a_time(tok):
    fmt = Formatter(tok, 128)
    rows = [
        {"prompt": "Q: 2+2?\nA:", "chosen": " 4", "rejected": " 5"},
        {"prompt": "Q: capital of France?\nA:", "chosen": " Paris", "rejected": " Lyon"},
    ]
    expected, _, _ = one_at_a_time(fmt, list(enumerate(rows, 1)), preference=True)
    tokens = tokenize_rows(fmt, enumerate(rows, 1), preference=True)
    pairs = pairs_of(tokens, tokens.trainable(np.arange(2)))
    assert [(as_lists(p.chosen), as_lists(p.rejected)) for p in pairs] == [
        (as_lists(p.chosen), as_lists(p.rejected)) for p in expected
    ]


def test_a_chat_row_the_template_cannot_render_is_named_by_its_line():
    fmt = Formatter(family_tokenizer("gemma2"), 512)
    bad = {"messages": [{"role": "system", "content": "s"}, *CHAT[0]["messages"]]}
    rows = [(2, {"prompt": "p", "completion": " c"}), (3, CHAT[0]), (5, bad)]
    with pytest.raises(Exception) as info:
        tokenize_rows(fmt, rows)
    assert info.value.line == 5 and "System role not supported" in info.value.message


def test_split_indices_is_split_rows_by_number():
    rows = [{"i": i} for i in range(97)]
    train, held = split_indices(len(rows), 0.1, seed=3)
    assert split_rows(rows, 0.1, seed=3) == ([rows[i] for i in train], [rows[i] for i in held])


def test_evaluation_records_are_read_without_reading_the_whole_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "completion": f" c{i}"}) + "\n" for i in range(50)))
    path.write_text(path.read_text() + "not json\n")  # past the last row wanted: never read
    file_row = File(id="file-x", format="jsonl", column_mapping=None, completion_separator=None)
    got = records_at(path, file_row, [0, 7, 31])
    assert [(line, r["prompt"]) for line, r in got] == [(1, "p0"), (8, "p7"), (32, "p31")]


# ------------------------------------------------------------------------------------------- saved, and stored


def test_saved_rows_load_back_equal(tok, tmp_path):
    tokens = tokenize_rows(Formatter(tok, 128), shared_rows("wikisql", completion_separator="\nA:"), spill_dir=tmp_path)
    tokens.save(tmp_path / "t.npz")
    back = TokenizedRows.load(tmp_path / "t.npz")
    for name, array in tokens.arrays().items():
        assert np.array_equal(array, getattr(back, name)) and array.dtype == getattr(back, name).dtype
    assert back.per_row == 1
    assert [p.name for p in tmp_path.iterdir()] == ["t.npz"]  # no spill or temporary file left


@pytest.mark.parametrize(
    "damage",
    (
        pytest.param(lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), id="truncated"),
        pytest.param(lambda p: p.write_bytes(p.read_bytes()[:-200] + bytes(200)), id="zeroed-tail"),
        pytest.param(
            lambda p: np.savez(p.open("wb"), meta=np.array([1, 1]), ids=np.array([{"x": 1}], dtype=object)),
            id="pickled-object",
        ),
    ),
)
def test_a_damaged_file_is_refused(tok, tmp_path, damage):
    tokens = tokenize_rows(Formatter(tok, 128), shared_rows("wikisql", completion_separator="\nA:")[:50])
    path = tmp_path / "t.npz"
    tokens.save(path)
    damage(path)
    with pytest.raises(DamagedTokens):
        TokenizedRows.load(path)


def test_arrays_that_disagree_are_refused(tmp_path):
    path = tmp_path / "t.npz"
    with zipfile.ZipFile(path, "w"):
        pass
    np.savez(
        path,
        meta=np.array([1, 1]),
        ids=np.arange(5, dtype=np.int32),
        trained=np.ones(5, bool),
        offsets=np.array([0, 3, 9]),
        status=np.zeros(2, np.uint8),
    )
    with pytest.raises(DamagedTokens, match="inconsistent"):
        TokenizedRows.load(path)


@pytest.fixture
def stored_file(tmp_path):
    store = ObjectStore((tmp_path / "store").as_uri())
    source = SHARED / "wikisql" / "train.jsonl"
    store.put_file("files/file-abc.jsonl", source)
    cache = LocalCache(store, tmp_path / "cache", 10**9)
    from app.core.local_cache import sha256_file

    row = File(
        id="file-abc",
        storage_name="file-abc.jsonl",
        format="jsonl",
        column_mapping=None,
        completion_separator="\nA:",
        sha256=sha256_file(source),
    )
    return store, cache, row, cache.fetch("files/file-abc.jsonl", sha256=row.sha256)


def test_a_file_is_tokenized_once_then_read_back_from_the_store_by_any_host(tok, stored_file, tmp_path):
    store, cache, row, path = stored_file
    fmt = Formatter(tok, 256)
    first, how = load_tokens(cache, path, row, fmt, False, "m")
    assert how.startswith("Tokenized 1,000 rows")
    (key,) = store.list(tokenized_prefix(row.storage_name))
    other_host = LocalCache(store, tmp_path / "other-cache", 10**9)
    again, how = load_tokens(other_host, path, row, fmt, False, "m")
    assert how.startswith("Tokenized rows read back from the store")
    assert np.array_equal(first.ids, again.ids) and np.array_equal(first.trained, again.trained)
    # another max_seq_length (or tokenizer, or row kind) is another entry
    load_tokens(cache, path, row, Formatter(tok, 64), False, "m")
    assert len(store.list(tokenized_prefix(row.storage_name))) == 2


def test_a_damaged_stored_entry_is_made_again(tok, stored_file, tmp_path):
    store, cache, row, path = stored_file
    fmt = Formatter(tok, 256)
    first, _ = load_tokens(cache, path, row, fmt, False, "m")
    (key,) = store.list(tokenized_prefix(row.storage_name))
    store.put_stream(key, [b"not a zip at all"])
    fresh_host = LocalCache(store, tmp_path / "fresh", 10**9)
    again, how = load_tokens(fresh_host, path, row, fmt, False, "m")
    assert how.startswith("Tokenized 1,000 rows") and np.array_equal(first.ids, again.ids)
    assert TokenizedRows.load(LocalCache(store, tmp_path / "third", 10**9).fetch(key))  # the store holds it whole


def test_a_store_that_refuses_the_entry_costs_only_the_reuse(tok, stored_file, monkeypatch, caplog):
    store, cache, row, path = stored_file

    def refuse(*args, **kwargs):
        raise StoreError("object store: put refused")

    monkeypatch.setattr(store, "put_file", refuse)
    tokens, how = load_tokens(cache, path, row, Formatter(tok, 256), False, "m")
    assert tokens.num_rows == 1000 and "not stored for reuse" in caplog.text


def test_a_chat_error_fails_the_job_naming_file_line_and_field(stored_file, tmp_path):
    store, cache, row, _ = stored_file
    bad = tmp_path / "chat.jsonl"
    lines = [CHAT[0], {"messages": [{"role": "system", "content": "s"}, *CHAT[0]["messages"]]}]
    bad.write_text("".join(json.dumps(r) + "\n" for r in lines))
    row = File(
        id="file-chat",
        storage_name="file-chat.jsonl",
        format="jsonl",
        column_mapping=None,
        completion_separator=None,
        sha256="0" * 64,
    )
    with pytest.raises(UserError) as info:
        load_tokens(cache, bad, row, Formatter(family_tokenizer("gemma2"), 512), False, "gemma")
    assert "file file-chat, line 2" in str(info.value) and "System role not supported" in str(info.value)
    assert store.list(tokenized_prefix("file-chat.jsonl")) == []  # nothing half-stored


def test_truncation_and_padding_saved_in_the_tokenizer_do_not_cut_or_pad_rows(tok, tmp_path):
    """A tokenizer.json may carry truncation and padding, which transformers switches on at load: the batched
    path must switch them off as the tokenizer's own calls do, or rows would be cut and padded (and cached so)."""
    from tests.helpers.training import SRC
    from worker.training.modeling import load_tokenizer

    folder = tmp_path / "tok"
    folder.mkdir()
    for name in Path(SRC).iterdir():
        if name.name.startswith("tokenizer"):
            (folder / name.name).write_bytes(name.read_bytes())
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["truncation"] = {"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0}
    spec["padding"] = {
        "strategy": "BatchLongest",
        "direction": "Right",
        "pad_to_multiple_of": None,
        "pad_id": 0,
        "pad_type_id": 0,
        "pad_token": "<unk>",
    }
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    saved = load_tokenizer(str(folder))
    rows = [r for _, r in shared_rows("wikisql", completion_separator="\nA:")[:20]]
    assert [as_lists(e) for e in Formatter(saved, 512).examples(rows)] == [
        as_lists(Formatter(tok, 512).example(r)) for r in rows
    ]
