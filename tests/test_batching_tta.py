import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from prefscale.batching import padded_tokens, token_budget_batches
from prefscale.score.tta import combine_swapped, softmax


@given(st.lists(st.integers(1, 600), min_size=1, max_size=300), st.integers(64, 20000))
def test_token_budget_batches_cover_every_row_once_within_budget(lengths, budget):
    lengths = np.array(lengths)
    batches = token_budget_batches(lengths, budget)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * lengths[batch].max() <= budget


def test_budget_batching_pads_less_than_fixed_batches():
    lengths = np.random.default_rng(0).integers(10, 512, 2000)
    efficiency = lambda batches: lengths.sum() / padded_tokens(lengths, batches)
    fixed_batches_of_16 = [np.arange(s, min(s + 16, len(lengths))) for s in range(0, len(lengths), 16)]
    assert efficiency(token_budget_batches(lengths, 8192)) > 0.9 > efficiency(fixed_batches_of_16)


def test_swap_tta_maps_the_swapped_prediction_back():
    logits = np.array([[2.0, 0.0, 0.5]])
    mirrored = logits[:, [1, 0, 2]]  # a perfectly consistent model on the swapped battle
    for space in ("prob", "logit"):
        assert np.allclose(softmax(combine_swapped(logits, mirrored, space)), softmax(logits))
    # An inconsistent model (position bias: always prefers A) is averaged to a symmetric answer.
    biased = softmax(combine_swapped(np.array([[1.0, 0.0, 0.0]]), np.array([[1.0, 0.0, 0.0]])))
    assert np.isclose(biased[0, 0], biased[0, 1])
