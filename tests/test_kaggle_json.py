import pyarrow.parquet as pq
import pytest

from prefscale.data.kaggle_json import TurnsDecodeError, decode_turns, encode_turns


def _cells(path):
    table = pq.read_table(path, columns=["prompt", "response_a", "response_b"])
    return [cell for column in table.columns for cell in column.to_pylist()]


@pytest.mark.parametrize("fixture", ["kaggle_sample", "human_pairs"])
def test_reencodes_real_rows_byte_for_byte(fixture, request):
    cells = _cells(request.getfixturevalue(fixture))
    parsed = 0
    for cell in cells:
        try:
            turns = decode_turns(cell)
        except TurnsDecodeError:
            continue
        assert encode_turns(turns) == cell
        parsed += 1
    assert parsed > 0.8 * len(cells)


def test_every_untruncated_kaggle_cell_parses(kaggle_sample, real_data):
    table = pq.read_table(kaggle_sample).to_pylist()
    untruncated = [row[c] for row in table if not row["text_truncated_512"] for c in ("prompt", "response_a", "response_b")]
    assert len(untruncated) > 0.5 * 3 * len(table)
    if real_data:
        assert len(untruncated) == 3 * (806 - 209)
    for cell in untruncated:
        decode_turns(cell)


def test_escapes_slash_and_non_ascii_like_kaggle():
    assert encode_turns(["a/b", None, "é"]) == '["a\\/b",null,"\\u00e9"]'
    assert decode_turns('["a\\/b",null,"\\u00e9"]') == ["a/b", None, "é"]


@pytest.mark.parametrize(
    ("cell", "reason"),
    [('["cut off', "unparseable_json"), ("{}", "bad_turns"), ("[]", "bad_turns"), ("[1, 2]", "bad_turns"), ('"text"', "bad_turns")],
)
def test_decode_errors_carry_reason(cell, reason):
    with pytest.raises(TurnsDecodeError) as info:
        decode_turns(cell)
    assert info.value.reason == reason
