import json

import numpy as np
import pyarrow as pa
import pytest
from battle_tables import swap_battles
from hypothesis import given, settings
from hypothesis import strategies as st

from prefscale.config import TextConfig
from prefscale.data import schema
from prefscale.score.tta import unswap_probs
from prefscale.text.budget import allocate
from prefscale.text.formatter import BattleFormatter
from prefscale.text.template import parse_template


@given(st.lists(st.integers(0, 5000), min_size=3, max_size=3), st.integers(0, 3000),
       st.lists(st.floats(0.1, 10), min_size=3, max_size=3))
def test_allocation_holds_the_budget_and_shares_the_slack(lengths, budget, weights):
    grant = allocate(lengths, budget, weights)
    assert sum(grant) <= budget
    assert all(0 <= g <= n for g, n in zip(grant, lengths))
    if sum(lengths) <= budget:
        assert grant == lengths
    else:
        assert sum(grant) == budget  # nothing wasted while some component is cut
    if budget >= 3:
        assert all(g > 0 for g, n in zip(grant, lengths) if n > 0)


def test_short_component_budget_flows_to_the_others():
    assert allocate([10, 1000, 1000], 300) == [10, 145, 145]
    assert allocate([10, 1000, 1000], 300, [1, 1, 3]) == [10, 73, 217]




@settings(max_examples=60, deadline=None)
@given(st.data(), st.integers(24, 200))
def test_formatted_battles_fit_and_keep_every_nonempty_component(minilm_tokenizer, data, max_length):
    n = data.draw(st.integers(1, 4))
    cells = [data.draw(st.lists(st.text(max_size=300), min_size=n, max_size=n)) for _ in range(3)]
    formatter = BattleFormatter(minilm_tokenizer, TextConfig(max_length=max_length))
    encoded = formatter.encode(*[[json.dumps(c)] for c in cells])
    ids = encoded.input_ids[0]
    assert len(ids) <= max_length
    assert ids[0] == minilm_tokenizer.cls_token_id and ids[-1] == minilm_tokenizer.sep_token_id
    for component, kept in zip(cells, encoded.component_tokens[0]):
        has_tokens = bool(minilm_tokenizer("".join(component), add_special_tokens=False)["input_ids"])
        assert (kept > 0) == has_tokens


def test_long_conversation_keeps_recent_turns_and_marks_elision(minilm_tokenizer):
    formatter = BattleFormatter(minilm_tokenizer, TextConfig(max_length=64))
    prompt = json.dumps([f"old question {i} " + "filler " * 20 for i in range(5)] + ["newest question"])
    response = json.dumps(["answer"] * 6)
    text = minilm_tokenizer.decode(formatter.encode([prompt], [response], [response]).input_ids[0])
    assert "newest question" in text and "old question 0" not in text
    assert "[... ]" in text or "[...]" in text


def test_single_long_answer_keeps_its_head(minilm_tokenizer):
    formatter = BattleFormatter(minilm_tokenizer, TextConfig(max_length=48))
    answer = json.dumps(["beginning " + "middle " * 300 + "ending"])
    text = minilm_tokenizer.decode(formatter.encode(['["q"]'], [answer], ['["b"]']).input_ids[0])
    assert "beginning" in text and "ending" not in text


def test_template_is_configurable_and_checked(minilm_tokenizer):
    formatter = BattleFormatter(minilm_tokenizer, TextConfig(template="Q {prompt} A {response_a} B {response_b}"))
    assert minilm_tokenizer.decode(formatter.encode(['["x"]'], ['["y"]'], ['["z"]']).input_ids[0]) == "[CLS] q x a y b z [SEP]"
    with pytest.raises(ValueError, match="once"):
        parse_template("{prompt} {response_a}")


def test_swap_mirrors_responses_models_and_labels():
    table = pa.Table.from_pylist([{"id": 1, "prompt": '["p"]', "response_a": '["A"]', "response_b": '["B"]', "model_a": "ma", "model_b": "mb",
                                   "winner_model_a": 1.0, "winner_model_b": 0.0, "winner_tie": 0.0, "flags": None}], schema=schema.BATTLE_SCHEMA)
    swapped = swap_battles(table).to_pylist()[0]
    assert (swapped["response_a"], swapped["model_a"], swapped["winner_model_a"], swapped["winner_model_b"]) == ('["B"]', "mb", 0.0, 1.0)
    assert swap_battles(swap_battles(table)).equals(table)
    probs = np.array([[0.7, 0.2, 0.1]])
    assert unswap_probs(probs).tolist() == [[0.2, 0.7, 0.1]]


def test_answers_shared_opening_moves_to_the_prompt_so_their_difference_shows(minilm_tokenizer):
    """One transcript continued two ways: at 64 tokens both answers would show only the shared
    part; moved to the prompt's front, each answer's grant starts where they differ."""
    shared = "user: where is the white house? assistant: " + "it is a famous building " * 10
    a, b = json.dumps([shared + "in washington"]), json.dumps([shared + "i do not know"])
    decode = lambda options: minilm_tokenizer.decode(BattleFormatter(minilm_tokenizer, options).encode(['["latest question"]'], [a], [b]).input_ids[0])
    moved = decode(TextConfig(max_length=64))
    assert "washington" in moved and "i do not know" in moved and "latest question" in moved
    kept = decode(TextConfig(max_length=64, shared_prefix_to_prompt=False))
    assert "washington" not in kept and "i do not know" not in kept
    same = json.dumps([shared])  # identical answers are left as they are
    text = minilm_tokenizer.decode(BattleFormatter(minilm_tokenizer, TextConfig(max_length=64)).encode(['["q"]'], [same], [same]).input_ids[0])
    assert text.count("white house") == 2
