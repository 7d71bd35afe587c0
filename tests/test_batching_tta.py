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


def test_encoding_given_rows_and_fold_models_gives_each_row_its_own_ids_and_others_none(battles_path, tiny_bert_path):
    """One encoder for every routing: a cascade stage's rows, a fold model's own fold among them."""
    import dataclasses

    import pyarrow as pa
    import pyarrow.parquet as pq

    from prefscale.config import TextConfig
    from prefscale.score.encode import IDS, IDS_SWAPPED, encode_battles
    from prefscale.score.scoring_model import ScoringModel

    battles = pq.read_table(battles_path).slice(0, 40)
    battles = battles.drop_columns([c for c in ("fold",) if c in battles.column_names]).append_column("fold", pa.array(np.arange(40) % 2, pa.int8()))
    model = ScoringModel("bert", tiny_bert_path, TextConfig(max_length=64))
    every = encode_battles(battles, [model], tta=True)
    rows = np.array([1, 2, 5, 6, 30])
    routed = encode_battles(battles, [model], tta=True, rows=rows)
    for column in (IDS, IDS_SWAPPED):
        full, part = every.column(model.column(column)).to_pylist(), routed.column(model.column(column)).to_pylist()
        assert [part[r] for r in range(40)] == [full[r] if r in rows else [] for r in range(40)]
    folds = [dataclasses.replace(model, name=f"bert-{k}", fold=k) for k in (0, 1)]
    fold = battles.column("fold").to_numpy()
    by_fold = encode_battles(battles, folds, tta=False, rows=rows)
    full = every.column(model.column(IDS)).to_pylist()
    for k, fold_model in enumerate(folds):
        assert by_fold.column(fold_model.column(IDS)).to_pylist() == [full[r] if r in rows and fold[r] == k else [] for r in range(40)]
