"""Unlabeled battles from a long table of (instruction, generator, output).

Any two generators answering the same instruction form a battle. The AlpacaEval dump gives
805 instructions x C(64, 2) = 1,622,880 distinct pairs. Pairs are built per instruction with
Arrow ``take`` (no per-pair Python objects) and streamed to Parquet, so memory stays bounded
by one instruction group plus one output batch, whatever the number of pairs.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from prefscale.config import PairsConfig
from prefscale.data import schema
from prefscale.data.kaggle_json import encode_turns
from prefscale.data.readers import stable_id
from prefscale.errors import PrefscaleError
from prefscale.io import read_table, require_file, resolve

LONG_COLUMNS = ("instruction", "generator", "output")


def load_long_table(uri: str) -> pa.Table:
    """Read only the three needed columns (the outputs are a few tens of MB, not the pairs)."""
    require_file(uri)
    fs, path = resolve(uri)
    missing = [c for c in LONG_COLUMNS if c not in pads.dataset(path, filesystem=fs, format="parquet").schema.names]
    if missing:
        raise PrefscaleError(f"{uri} lacks column(s) {', '.join(missing)}; pairs need a long table of instruction, generator, output")
    table = read_table(uri, columns=list(LONG_COLUMNS))
    bad = table.filter(pc.or_(pc.is_null(table["instruction"]), pc.is_null(table["generator"])))
    if bad.num_rows:
        raise PrefscaleError(f"{uri}: {bad.num_rows} rows have a null instruction or generator; fix or drop them first")
    return table


def _pair_indices(n: int, options: PairsConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    first, second = np.triu_indices(n, k=1)
    if options.sample_fraction < 1.0:
        keep = rng.random(len(first)) < options.sample_fraction
        first, second = first[keep], second[keep]
    if options.max_pairs_per_instruction is not None and len(first) > options.max_pairs_per_instruction:
        chosen = np.sort(rng.choice(len(first), options.max_pairs_per_instruction, replace=False))
        first, second = first[chosen], second[chosen]
    if options.swap:
        first, second = np.concatenate([first, second]), np.concatenate([second, first])
    return first, second


def count_distinct_pairs(table: pa.Table) -> int:
    sizes = table.group_by("instruction").aggregate([("generator", "count_distinct")]).column("generator_count_distinct")
    return int(sum(n * (n - 1) // 2 for n in sizes.to_pylist()))


def generate_pairs(table: pa.Table, options: PairsConfig = PairsConfig(), batch_rows: int = 65_536) -> Iterator[pa.Table]:
    """Yield battle tables of about ``batch_rows`` rows in a stable order (sorted instructions)."""
    table = table.sort_by([("instruction", "ascending"), ("generator", "ascending")])
    instructions = table.column("instruction").to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, instructions[1:] != instructions[:-1]])
    ends = np.r_[starts[1:], len(instructions)]
    if options.max_instructions is not None:
        starts, ends = starts[: options.max_instructions], ends[: options.max_instructions]
    pending: list[pa.Table] = []
    pending_rows = 0
    for start, end in zip(starts, ends, strict=True):
        group = table.slice(start, end - start)
        battles = _group_battles(group, options)
        pending.append(battles)
        pending_rows += battles.num_rows
        if pending_rows >= batch_rows:
            yield pa.concat_tables(pending)
            pending, pending_rows = [], 0
    if pending:
        yield pa.concat_tables(pending)


def _group_battles(group: pa.Table, options: PairsConfig) -> pa.Table:
    instruction = group.column("instruction")[0].as_py()
    generators = group.column("generator").to_pylist()
    if len(set(generators)) != len(generators):
        raise PrefscaleError(f"generator listed twice for instruction {instruction[:60]!r}; deduplicate the long table first")
    rng = np.random.default_rng(stable_id(str(options.seed), instruction))
    first, second = _pair_indices(len(generators), options, rng)
    outputs = pa.array([encode_turns([o]) for o in group.column("output").to_pylist()], pa.string())
    names = pa.array(generators, pa.string())
    take_a, take_b = pa.array(first), pa.array(second)
    ids = [stable_id(instruction, generators[i], generators[j]) for i, j in zip(first, second, strict=True)]
    n = len(first)
    return pa.table(
        {
            schema.ID: pa.array(ids, pa.int64()),
            schema.PROMPT: pa.array([encode_turns([instruction])] * n, pa.string()),
            schema.RESPONSE_A: outputs.take(take_a),
            schema.RESPONSE_B: outputs.take(take_b),
            schema.MODEL_A: names.take(take_a),
            schema.MODEL_B: names.take(take_b),
            **{c: pa.nulls(n, pa.float32()) for c in schema.LABEL_COLUMNS},
            schema.FLAGS: pa.nulls(n, pa.string()),
            schema.TIES: pa.nulls(n, pa.string()),  # unlabeled: predicted as battles that allow ties
        },
        schema=schema.BATTLE_SCHEMA,
    )
