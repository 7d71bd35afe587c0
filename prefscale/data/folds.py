"""Leakage-safe K-fold assignment, grouped by prompt and derived from content hashes.

A battle's fold depends only on its normalized first user turn and the seed, never on row
order or on which other rows are present, so folds are identical across runs, machines and
growing datasets, and conversations that open with the same question share a fold.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pyarrow as pa

from prefscale.data import schema
from prefscale.data.kaggle_json import decode_turns, turns_text

_SPACE = re.compile(r"\s+")


def prompt_group(prompt_cell: str) -> str:
    """The grouping key: first user turn, lowercased, whitespace collapsed."""
    first = turns_text(decode_turns(prompt_cell))[0]
    return _SPACE.sub(" ", first).strip().lower()


def fold_of(prompt_cell: str, k: int, seed: int = 0) -> int:
    digest = hashlib.blake2b(f"{seed}\x1f{prompt_group(prompt_cell)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % k


def assign_folds(table: pa.Table, k: int, seed: int = 0) -> pa.Table:
    """Append (or replace) an int8 ``fold`` column."""
    if k < 2:
        raise ValueError(f"folds must be at least 2, got {k}")
    folds = np.array([fold_of(p, k, seed) for p in table.column(schema.PROMPT).to_pylist()], dtype=np.int8)
    if schema.FOLD in table.column_names:
        table = table.drop_columns([schema.FOLD])
    return table.append_column(schema.FOLD, pa.array(folds))
