import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefscale.config import ValidationConfig
from prefscale.data import schema
from prefscale.data.validate import REASONS, Validator


def battle(i=1, prompt='["hi"]', a='["hello"]', b='["hey"]', labels=(1, 0, 0), **extra):
    row = {"id": i, "prompt": prompt, "response_a": a, "response_b": b, "model_a": "m1", "model_b": "m2"}
    row.update(dict(zip(schema.LABEL_COLUMNS, labels)))
    row.update(extra)
    return row


# One constructed bad row per reason code (rows hold Python values, as a CSV or JSON source would).
BAD_ROWS = {
    "unparseable_line": {"_read_error": "unparseable_line|line 15000: Expecting value at column 1; fix or remove that line"},
    "missing_value": battle(i=None),
    "wrong_type": battle(i="abc"),
    "unparseable_json": battle(a='["cut off'),
    "bad_turns": battle(b='{"turn": 1}'),
    "bad_text": battle(a='["half an emoji \\ud83d"]'),
    "turn_mismatch": battle(prompt='["q1","q2"]'),
    "empty_text": battle(prompt='[""]', a="[null]", b='["  "]'),
    "too_long": battle(a=json.dumps(["x" * 500])),
    "bad_label": battle(labels=(1, 1, 0)),
    "bad_ties": battle(ties="sometimes"),
    "tie_in_forced_choice": battle(labels=(0, 0, 1), dataset="hh_rlhf_harmless_test"),
    "duplicate_id": battle(i=7),
}


def text_batch(rows):
    """Rows as a CSV source delivers them: every value a string or null."""
    names = list(dict.fromkeys(k for row in rows for k in row))
    return pa.RecordBatch.from_pylist(
        [{k: None if row.get(k) is None else str(row[k]) for k in names} for row in rows],
        schema=pa.schema([(k, pa.string()) for k in names]),
    )


def run(rows, **options):
    validator = Validator(ValidationConfig(**{"max_chars": 300, **options}))
    batch = text_batch(rows)
    clean, rejects = validator.validate_batch(batch)
    return clean, rejects, validator


def test_every_reason_is_exercised_and_named():
    rows = [battle(i=7)] + list(BAD_ROWS.values())
    clean, rejects, validator = run(rows)
    assert clean.num_rows == 1
    assert rejects.column(schema.REJECT_REASON).to_pylist() == list(BAD_ROWS)
    assert set(BAD_ROWS) == set(REASONS)
    assert validator.stats.rows == clean.num_rows + rejects.num_rows == len(rows)
    assert all(rejects.column(schema.REJECT_DETAIL).to_pylist())


def test_rejects_keep_the_original_row():
    _, rejects, _ = run([battle(i=3, a='["cut off', source="somewhere")])
    row = rejects.to_pylist()[0]
    assert row["response_a"] == '["cut off' and row["source"] == "somewhere" and row["id"] == "3"


@pytest.mark.parametrize(
    ("labels", "ok"),
    [((1, 0, 0), True), ((0, 0, 1), True), ((0.2, 0.3, 0.5), True), ((None, None, None), True),
     ((1, None, 0), False), ((0.5, 0.6, 0), False), ((-1, 1, 1), False), ((0, 0, 0), False), (("1", "0", "0"), True), (("x", 0, 0), False)],
)
def test_label_rules(labels, ok):
    clean, rejects, _ = run([battle(labels=labels)])
    assert clean.num_rows == int(ok)
    if not ok:
        assert rejects.column(schema.REJECT_REASON)[0].as_py() in ("bad_label", "wrong_type")


def test_soft_labels_take_precedence_and_are_checked():
    clean, _, _ = run([battle(labels=(1, 0, 0), soft_a=2 / 3, soft_b=0.0, soft_tie=1 / 3)])
    assert clean.column("winner_model_a")[0].as_py() == pytest.approx(2 / 3)
    assert "soft_label" in clean.column(schema.FLAGS)[0].as_py()
    _, rejects, _ = run([battle(soft_a=0.9, soft_b=0.9, soft_tie=0.0)])
    assert rejects.column(schema.REJECT_REASON).to_pylist() == ["bad_label"]


def test_lenient_mode_salvages_broken_json_and_flags_it():
    clean, rejects, _ = run([battle(prompt='["q1","q2"]', a='["a1","a2"]', b='["cut off')], lenient_json=True)
    assert rejects.num_rows == 0
    row = clean.to_pylist()[0]
    assert json.loads(row["response_b"]) == ['["cut off']
    assert json.loads(row["prompt"]) == ["q1\n\nq2"]
    assert "json_salvaged:response_b" in row["flags"]


def test_ids_stay_unique_across_batches():
    validator = Validator()
    first, _ = validator.validate_batch(pa.RecordBatch.from_pylist([battle(i=1)]))
    second, rejects = validator.validate_batch(pa.RecordBatch.from_pylist([battle(i=1), battle(i=2)]))
    assert second.column("id").to_pylist() == [2]
    assert rejects.column(schema.REJECT_REASON).to_pylist() == ["duplicate_id"]


def test_degenerate_battles_are_flagged_not_rejected():
    clean, _, _ = run([battle(a="[null]", b='["x"]'), battle(i=2, a='["same"]', b='["same"]')])
    assert [f.split(",") for f in clean.column(schema.FLAGS).to_pylist()] == [["empty_a"], ["identical"]]


def test_real_kaggle_sample_accounts_for_every_row(kaggle_sample):
    from prefscale.data.readers import open_battles

    validator = Validator()
    outputs = list(validator.validate(open_battles(kaggle_sample).batches(batch_rows=100)))
    clean = pa.concat_tables([c for c, _ in outputs])
    rejects = pa.concat_tables([r for _, r in outputs])
    assert clean.num_rows + rejects.num_rows == pq.read_metadata(kaggle_sample).num_rows
    assert sorted(clean.column("id").to_pylist() + rejects.column("id").to_pylist()) == sorted(pq.read_table(kaggle_sample).column("id").to_pylist())
    # Every reject is a publisher-truncated row whose JSON no longer parses.
    assert set(rejects.column(schema.REJECT_REASON).to_pylist()) == {"unparseable_json"}
    assert all(rejects.column("text_truncated_512").to_pylist())


def test_typed_columns_of_the_wrong_type_are_rejected_per_row():
    batch = pa.RecordBatch.from_pylist([{"id": 1, "prompt": '["q"]', "response_a": '["a"]', "response_b": '["b"]', "model_a": 5}])
    _, rejects = Validator().validate_batch(batch)
    assert rejects.column(schema.REJECT_REASON).to_pylist() == ["wrong_type"]
