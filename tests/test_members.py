"""Cheap members: swap symmetry, soft labels, safe persistence, per-fold OOF on real battles."""

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefscale.data import schema
from prefscale.data.pairs import generate_pairs, load_long_table
from prefscale.data.schema import SWAP_ORDER
from prefscale.errors import PrefscaleError
from prefscale.members.estimators import fit_predict, make_member
from prefscale.members.features import (
    _null_turns,
    _words,
    battle_features,
    cell_turns,
    feature_names,
    side_features,
)
from prefscale.members.store import load_estimator, save_estimator
from prefscale.metrics import log_loss


@pytest.fixture(scope="module")
def real_battles(human_pairs) -> pa.Table:
    table = pq.read_table(human_pairs)
    rng = np.random.default_rng(0)
    return table.take(np.sort(rng.choice(table.num_rows, 1500, replace=False)))


def swapped(table: pa.Table) -> pa.Table:
    a, b = table.column(schema.RESPONSE_A), table.column(schema.RESPONSE_B)
    return table.set_column(table.schema.get_field_index(schema.RESPONSE_A), schema.RESPONSE_A, b).set_column(
        table.schema.get_field_index(schema.RESPONSE_B), schema.RESPONSE_B, a)


def test_features_of_the_swapped_battle_are_the_swapped_features(real_battles):
    direct, direct_swapped = battle_features(real_battles.slice(0, 200))
    of_swapped, _ = battle_features(swapped(real_battles.slice(0, 200)))
    np.testing.assert_allclose(of_swapped, direct_swapped, rtol=1e-6)
    assert direct.shape[1] == len(feature_names())


def per_battle_features(table: pa.Table) -> np.ndarray:
    """The features computed battle by battle, as the member did before it worked per answer."""
    rows = []
    for prompt_cell, cell_a, cell_b in zip(*(table.column(c).to_pylist() for c in schema.TEXT_COLUMNS), strict=True):
        prompt = cell_turns(prompt_cell)
        prompt_text = "\n".join(prompt)
        turns_a, turns_b = cell_turns(cell_a), cell_turns(cell_b)
        fa = side_features(turns_a, _words(prompt_text), _null_turns(cell_a))
        fb = side_features(turns_b, _words(prompt_text), _null_turns(cell_b))
        words_a, words_b = _words(" ".join(turns_a)), _words(" ".join(turns_b))
        sym = [math.log1p(len(prompt_text)), len(prompt), float(turns_a == turns_b), max(fa[15], fb[15]),
               len(words_a & words_b) / max(len(words_a | words_b), 1), abs(fa[0] - fb[0])]
        a, b = np.float32(fa), np.float32(fb)
        rows.append(np.concatenate([a, b, a - b, np.float32(sym)]))
    return np.stack(rows)


def test_features_computed_per_answer_equal_the_per_battle_features(real_battles, alpacaeval):
    dump = next(generate_pairs(load_long_table(str(alpacaeval)), batch_rows=3000)).slice(0, 3000)
    odd = pa.table({schema.PROMPT: ['["Say hi"]', '["Say hi"]', '["Say hi"]', None, '["Say hi"]'],
                    schema.RESPONSE_A: ['["hi"]', '["hi \\/ there"]', None, '["x"]', '[not json'],
                    schema.RESPONSE_B: ['["hi"]', '["hi / there"]', '[null,"b"]', None, '["hi"]']})
    for table in (real_battles, dump, odd):
        features, swapped_features = battle_features(table)
        np.testing.assert_array_equal(features, per_battle_features(table))
        np.testing.assert_array_equal(swapped_features, per_battle_features(swapped(table)))
    assert features[0, -4] == 1 and features[1, -4] == 1 and features[2, -4] == 0  # identical texts, however encoded


@pytest.mark.parametrize("kind", ["features", "tfidf"])
def test_member_is_swap_symmetric_and_learns_from_held_out_battles(kind, real_battles):
    train, test = real_battles.slice(0, 1100), real_battles.slice(1100)
    labels = schema.label_matrix(real_battles)
    member = make_member(kind).fit(train, labels[:1100])
    probs = member.predict_proba(test)
    np.testing.assert_allclose(member.predict_proba(swapped(test)), probs[:, SWAP_ORDER], atol=1e-6)
    direct, back = member.predict_orders(test)  # the single orders the symmetric prediction averages
    np.testing.assert_allclose((direct + back) / 2, probs)
    fold_probs, flips = fit_predict(kind, {}, real_battles, np.arange(1100), np.arange(1100, real_battles.num_rows))
    np.testing.assert_allclose(fold_probs, probs)
    np.testing.assert_array_equal(flips, direct.argmax(1) != back.argmax(1))
    prior = np.broadcast_to(labels[:1100].mean(axis=0), (test.num_rows, 3))
    baseline = prior if kind == "features" else np.full((test.num_rows, 3), 1 / 3)  # TF-IDF alone is weak on 1,100 battles
    assert log_loss(labels[1100:], probs) < log_loss(labels[1100:], baseline)


def test_fitted_member_round_trips_through_skops(tmp_path, real_battles):
    member = make_member("tfidf").fit(real_battles.slice(0, 300), schema.label_matrix(real_battles.slice(0, 300)))
    save_estimator(member, str(tmp_path / "m.skops"))
    loaded = load_estimator(str(tmp_path / "m.skops"))
    np.testing.assert_array_equal(loaded.predict_proba(real_battles.slice(300, 50)), member.predict_proba(real_battles.slice(300, 50)))


class NotAllowed:
    pass


@pytest.mark.parametrize("payload", [NotAllowed(), eval, __import__("prefscale.stack.data", fromlist=["StackData"]).StackData],
                         ids=["foreign class", "builtin function", "prefscale class never saved"])
def test_loading_refuses_types_outside_the_allow_list(tmp_path, payload):
    member = make_member("tfidf")
    member.planted = payload
    save_estimator(member, str(tmp_path / "evil.skops"))
    with pytest.raises(PrefscaleError, match="allow-list"):
        load_estimator(str(tmp_path / "evil.skops"))
