import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefscale.config import PairsConfig
from prefscale.data import schema
from prefscale.data.pairs import count_distinct_pairs, generate_pairs, load_long_table
from prefscale.data.readers import open_battles
from prefscale.data.validate import Validator
from prefscale.errors import PrefscaleError

LONG = pa.table(
    {
        "instruction": ["i1"] * 4 + ["i2"] * 3,
        "generator": ["g1", "g2", "g3", "g4", "g1", "g2", "g3"],
        "output": [f"out {k}" for k in range(7)],
    }
)


def pairs(options=PairsConfig()):
    return pa.concat_tables(list(generate_pairs(LONG, options)))


def test_all_pairs_per_instruction_once():
    table = pairs()
    assert table.num_rows == 6 + 3 == count_distinct_pairs(LONG)
    assert len(set(table.column("id").to_pylist())) == table.num_rows
    combos = {(p, a, b) for p, a, b in zip(*(table.column(c).to_pylist() for c in ("prompt", "model_a", "model_b")))}
    assert ('["i1"]', "g1", "g4") in combos and ('["i2"]', "g4", "g1") not in combos


def test_swap_doubles_and_ids_stay_stable():
    plain, swapped = pairs(), pairs(PairsConfig(swap=True))
    assert swapped.num_rows == 2 * plain.num_rows
    assert set(plain.column("id").to_pylist()) <= set(swapped.column("id").to_pylist())
    assert len(set(swapped.column("id").to_pylist())) == swapped.num_rows
    assert plain.column("id").to_pylist() == pairs().column("id").to_pylist()


def test_sampling_options_are_seeded():
    capped = pairs(PairsConfig(max_pairs_per_instruction=2))
    assert capped.num_rows == 4
    sampled = pairs(PairsConfig(sample_fraction=0.5, seed=3))
    assert sampled.column("id").to_pylist() == pairs(PairsConfig(sample_fraction=0.5, seed=3)).column("id").to_pylist()
    assert pairs(PairsConfig(max_instructions=1)).num_rows == 6


def test_pairs_are_valid_unlabeled_battles(tmp_path):
    path = tmp_path / "pairs.parquet"
    pq.write_table(pairs(), path)
    clean, rejects = next(Validator().validate(open_battles(str(path)).batches()))
    assert clean.num_rows == 9 and rejects.num_rows == 0
    assert not schema.is_labeled(clean)


def test_repeated_generator_is_an_error(tmp_path):
    bad = pa.table({"instruction": ["i", "i"], "generator": ["g", "g"], "output": ["x", "y"]})
    with pytest.raises(PrefscaleError, match="generator listed twice"):
        list(generate_pairs(bad))


def test_real_dump_has_the_documented_pair_count(alpacaeval, real_data):
    long = load_long_table(str(alpacaeval))
    generators = pq.read_table(alpacaeval, columns=["generator"]).column("generator").unique()
    if real_data:
        assert count_distinct_pairs(long) == 1_622_880 and len(generators) == 64
    written = sum(batch.num_rows for batch in generate_pairs(long, PairsConfig(max_instructions=2)))
    assert written == 2 * len(generators) * (len(generators) - 1) // 2
