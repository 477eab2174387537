"""Reading prompt pairs from JSONL and CSV files; every bad input names its line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from circuitgraph.errors import DataError
from circuitgraph.tasks import TextPair, load_pairs, load_pairs_file

GOOD = [
    {"clean": "When Mary and John went to the store, John gave a drink to",
     "corrupt": "When Mary and John went to the store, Alice gave a drink to",
     "answer": " Mary", "wrong": " John"},
    {"clean": "The war lasted from the year 17 32 to the year 17",
     "corrupt": "The war lasted from the year 17 01 to the year 17",
     "answer": " 45", "wrong": " 12", "note": "extra fields are ignored"},
]  # fmt: skip


def _jsonl(tmp_path: Path, lines: list[str], name: str = "pairs.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def _csv(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "pairs.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_good_jsonl(tmp_path, word_tok):
    path = _jsonl(tmp_path, [json.dumps(GOOD[0]), "", json.dumps(GOOD[1])])
    pairs = load_pairs_file(path)
    assert pairs[0] == TextPair(**GOOD[0]) and pairs[1].answer == " 45"
    batch = load_pairs(path, word_tok, max_len=48)
    assert len(batch) == 2
    assert word_tok.decode([int(batch.answer[0])]) == "Mary"


def test_good_csv(tmp_path, word_tok):
    rows = ["clean,corrupt,answer,wrong"] + [
        ",".join(json.dumps(r[f]) for f in ("clean", "corrupt", "answer", "wrong")) for r in GOOD
    ]
    path = _csv(tmp_path, rows)
    assert load_pairs_file(path) == [
        TextPair(**{k: r[k] for k in TextPair.__annotations__}) for r in GOOD
    ]
    assert len(load_pairs(path, word_tok)) == 2


def test_malformed_json_names_the_line(tmp_path):
    path = _jsonl(tmp_path, [json.dumps(GOOD[0]), '{"clean": "a b", "corrupt": '])
    with pytest.raises(DataError, match=r"pairs\.jsonl line 2: .*malformed"):
        load_pairs_file(path)


def test_missing_field_names_line_and_field(tmp_path):
    bad = {k: v for k, v in GOOD[0].items() if k != "wrong"}
    path = _jsonl(tmp_path, [json.dumps(GOOD[0]), json.dumps(GOOD[1]), json.dumps(bad)])
    with pytest.raises(DataError, match=r"line 3: expected the field 'wrong' but it is missing"):
        load_pairs_file(path)


def test_non_string_field_names_line_and_field(tmp_path):
    path = _jsonl(tmp_path, [json.dumps({**GOOD[0], "answer": 7})])
    with pytest.raises(DataError, match=r"line 1: expected the field 'answer' to be a string"):
        load_pairs_file(path)


def test_non_object_line(tmp_path):
    path = _jsonl(tmp_path, ['["a", "b"]'])
    with pytest.raises(DataError, match=r"line 1: expected an object"):
        load_pairs_file(path)


def test_different_token_lengths_name_the_line(tmp_path, word_tok):
    longer = {**GOOD[0], "corrupt": GOOD[0]["corrupt"].replace("a drink", "a big drink")}
    path = _jsonl(tmp_path, [json.dumps(GOOD[1]), "", json.dumps(longer)])
    with pytest.raises(
        DataError, match=r"pairs\.jsonl line 3: expected clean and corrupt of the same"
    ):
        load_pairs(path, word_tok)


def test_multi_token_answer_names_the_line(tmp_path, word_tok):
    path = _jsonl(tmp_path, [json.dumps(GOOD[0]), json.dumps({**GOOD[1], "answer": " 45 46"})])
    with pytest.raises(
        DataError, match=r"pairs\.jsonl line 2: expected the answer ' 45 46' to be a single"
    ):
        load_pairs(path, word_tok)


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=r"empty\.jsonl: expected at least one prompt pair"):
        load_pairs_file(path)


def test_empty_csv(tmp_path):
    path = _csv(tmp_path, ["clean,corrupt,answer,wrong"])
    with pytest.raises(DataError, match=r"pairs\.csv: expected at least one prompt pair"):
        load_pairs_file(path)


def test_csv_missing_column_names_the_header(tmp_path):
    path = _csv(tmp_path, ["clean,corrupt,answer", "a,b,c"])
    with pytest.raises(DataError, match=r"pairs\.csv line 1: .*\['wrong'\] are missing"):
        load_pairs_file(path)


def test_csv_short_row_names_line_and_field(tmp_path):
    path = _csv(tmp_path, ["clean,corrupt,answer,wrong", "a b,a c, d, e", "a b,a c, d"])
    with pytest.raises(DataError, match=r"pairs\.csv line 3: expected the field 'wrong'"):
        load_pairs_file(path)


def test_empty_value_names_line_and_field(tmp_path):
    path = _csv(tmp_path, ["clean,corrupt,answer,wrong", "a b,a c,, e"])
    with pytest.raises(DataError, match=r"line 2: the field 'answer' is empty"):
        load_pairs_file(path)


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"\.csv.*\.jsonl"):
        load_pairs_file(tmp_path / "pairs.txt")
    with pytest.raises(DataError, match="does not exist"):
        load_pairs_file(tmp_path / "nope.jsonl")
