import json
import random

import numpy as np
import pyarrow as pa
import pytest

from prefscale.data import schema
from prefscale.data.dedup import deduplicate
from prefscale.data.folds import assign_folds, fold_of, prompt_group


def table(rows):
    full = []
    for i, (prompt, a, b, label) in enumerate(rows):
        full.append({"id": i, "prompt": json.dumps([prompt]), "response_a": json.dumps([a]), "response_b": json.dumps([b]),
                     "model_a": None, "model_b": None, **dict(zip(schema.LABEL_COLUMNS, label)), "flags": None})
    return pa.Table.from_pylist(full, schema=schema.BATTLE_SCHEMA)


BATTLES = [
    ("p", "x", "y", (1, 0, 0)),
    ("p", "y", "x", (1, 0, 0)),  # same battle swapped: A here is y, so this vote is for y
    ("p", "x", "y", (1, 0, 0)),  # exact repeat
    ("q", "x", "y", (0, 0, 1)),
]


def test_exact_dedup_keeps_first_and_rejects_repeats():
    kept, dups, summary = deduplicate(table(BATTLES), "exact", merge_labels=False)
    assert kept.column("id").to_pylist() == [0, 1, 3]
    assert dups.column("id").to_pylist() == [2]
    assert dups.column(schema.REJECT_REASON).to_pylist() == ["duplicate_battle"]
    assert "same battle as id 0" in dups.column(schema.REJECT_DETAIL)[0].as_py()


def test_swap_aware_dedup_merges_mirrored_votes():
    kept, dups, _ = deduplicate(table(BATTLES), "swap", merge_labels=True)
    assert kept.column("id").to_pylist() == [0, 3]
    assert kept.num_rows + dups.num_rows == len(BATTLES)
    # Votes for battle 0 in its own orientation: x, y (mirrored), x -> (2/3, 1/3, 0).
    assert np.allclose(schema.label_matrix(kept)[0], [2 / 3, 1 / 3, 0], atol=1e-6)
    assert "merged_votes:3" in kept.column(schema.FLAGS)[0].as_py()
    assert "swapped" in dups.column(schema.REJECT_DETAIL).to_pylist()[0]


def test_unlabeled_duplicates_do_not_vote():
    kept, _, _ = deduplicate(table([("p", "x", "y", (None, None, None)), ("p", "x", "y", (0, 1, 0))]), "swap")
    assert np.allclose(schema.label_matrix(kept)[0], [0, 1, 0])


def test_folds_group_by_first_turn_and_ignore_case_and_spacing():
    assert prompt_group('["  Hello   World ", "later"]') == "hello world"
    assert fold_of('["Hello world"]', 5) == fold_of('["hello  world", "second turn"]', 5)


def test_folds_are_stable_values_independent_of_row_order():
    # Pinned values: a change here would reshuffle every user's folds.
    assert [fold_of(json.dumps([p]), 5) for p in ("a", "b", "c", "what is 2+2?")] == [PINNED[p] for p in ("a", "b", "c", "what is 2+2?")]
    rows = [(f"prompt {i % 37}", "x", f"y{i}", (1, 0, 0)) for i in range(200)]
    forward = assign_folds(table(rows), 5)
    shuffled_rows = rows[:]
    random.Random(1).shuffle(shuffled_rows)
    backward = assign_folds(table(shuffled_rows), 5)
    by_prompt = lambda t: dict(zip(t.column("prompt").to_pylist(), t.column(schema.FOLD).to_pylist()))
    assert by_prompt(forward) == by_prompt(backward)


PINNED = {"a": 4, "b": 3, "c": 3, "what is 2+2?": 4}


def test_real_data_folds_leak_no_prompt(human_pairs, kaggle_sample):
    from prefscale.data.readers import open_battles
    from prefscale.data.validate import Validator

    validator = Validator()
    clean = pa.concat_tables(
        [c for path in (human_pairs, kaggle_sample) for c, _ in validator.validate(open_battles(path).batches())],
        promote_options="permissive",
    )
    kept, _, _ = deduplicate(clean, "swap")
    folded = assign_folds(kept, 5)
    groups: dict[str, set[int]] = {}
    for prompt, fold in zip(folded.column("prompt").to_pylist(), folded.column(schema.FOLD).to_pylist()):
        groups.setdefault(prompt_group(prompt), set()).add(fold)
    assert all(len(folds) == 1 for folds in groups.values())
    sizes = np.bincount(folded.column(schema.FOLD).to_numpy(), minlength=5)
    assert sizes.min() > 0.7 * sizes.mean()
    with pytest.raises(ValueError):
        assign_folds(kept, 1)
