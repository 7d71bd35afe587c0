import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefscale.data import schema
from prefscale.data.readers import open_battles, stable_id
from prefscale.data.validate import Validator
from prefscale.errors import PrefscaleError

ROWS = [
    {"id": 1, "prompt": '["multi\\nline, with \\"quotes\\""]', "response_a": '["a"]', "response_b": '["b"]', "winner_model_a": 1, "winner_model_b": 0, "winner_tie": 0},
    {"id": "not-an-id", "prompt": '["q"]', "response_a": '["a"]', "response_b": '["b"]', "winner_model_a": 0, "winner_model_b": 1, "winner_tie": 0},
    {"id": 3, "prompt": '["q3"]', "response_a": '["a"]', "response_b": '["b"]', "winner_model_a": 0, "winner_model_b": 0, "winner_tie": 1},
]


def validate_all(uri):
    validator = Validator()
    clean, rejects = zip(*validator.validate(open_battles(uri).batches(batch_rows=2)))
    return pa.concat_tables(clean), pa.concat_tables(rejects)


def test_csv_streams_multiline_cells_and_rejects_bad_rows_deep_in_the_file(tmp_path):
    path = tmp_path / "train.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(ROWS[0]))
        writer.writeheader()
        writer.writerows(ROWS)
    clean, rejects = validate_all(str(path))
    assert clean.column("id").to_pylist() == [1, 3]
    assert json.loads(clean.column("prompt")[0].as_py()) == ['multi\nline, with "quotes"']
    assert rejects.column(schema.REJECT_REASON).to_pylist() == ["wrong_type"]


def test_parquet_through_a_file_uri(tmp_path):
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist([r for r in ROWS if isinstance(r["id"], int)]), path)
    clean, rejects = validate_all(f"file://{path}")
    assert clean.num_rows == 2 and rejects.num_rows == 0


ARENA = [
    {
        "question_id": "abc123",
        "model_a": "gpt-4",
        "model_b": "claude-1",
        "winner": "tie (bothbad)",
        "conversation_a": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "and?"}, {"role": "assistant", "content": "more"}],
        "conversation_b": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"}, {"role": "user", "content": "and?"}, {"role": "assistant", "content": "less"}],
        "language": "English",
    },
    {
        "question_id": "def456",
        "model_a": "a",
        "model_b": "b",
        "winner": "somebody",
        "conversation_a": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}],
        "conversation_b": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "y"}],
        "language": "English",
    },
]


@pytest.mark.parametrize("layout", ["jsonl", "json", "parquet"])
def test_arena_conversation_format(tmp_path, layout):
    path = tmp_path / f"arena.{layout}"
    if layout == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in ARENA))
    elif layout == "json":
        path.write_text(json.dumps(ARENA))
    else:
        pq.write_table(pa.Table.from_pylist(ARENA), path)
    source = open_battles(str(path))
    assert source.is_arena
    clean, rejects = validate_all(str(path))
    row = clean.to_pylist()[0]
    assert row["id"] == stable_id("abc123")
    assert json.loads(row["prompt"]) == ["hi", "and?"]
    assert json.loads(row["response_a"]) == ["hello", "more"] and json.loads(row["response_b"]) == ["hey", "less"]
    assert (row["winner_model_a"], row["winner_model_b"], row["winner_tie"]) == (0, 0, 1)
    assert row["language"] == "English"
    # An unknown winner string is rejected, not silently turned into an unlabeled battle.
    assert rejects.column(schema.REJECT_REASON).to_pylist() == ["bad_label"]
    assert rejects.column("winner").to_pylist() == ["somebody"]


def test_clear_errors_for_missing_file_columns_and_garbage(tmp_path):
    with pytest.raises(PrefscaleError, match="input not found"):
        open_battles(str(tmp_path / "nope.parquet"))
    pq.write_table(pa.table({"id": [1], "prompt": ["[]"]}), tmp_path / "narrow.parquet")
    with pytest.raises(PrefscaleError, match="lacks column.*response_a"):
        open_battles(str(tmp_path / "narrow.parquet"))
    (tmp_path / "garbage.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(PrefscaleError, match="cannot read"):
        open_battles(str(tmp_path / "garbage.parquet"))
    (tmp_path / "data.xlsx").write_bytes(b"")
    with pytest.raises(PrefscaleError, match="unknown input format"):
        open_battles(str(tmp_path / "data.xlsx"))
