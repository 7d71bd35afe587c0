"""Exact and swap-aware deduplication of clean battles.

(p, a, b) and (p, b, a) are one battle with the label mirrored. The first occurrence is kept;
later ones go to the rejects with reason 'duplicate_battle' and the id they repeat. With
``merge_labels`` the votes of a group are averaged into the kept row (a soft label), so the
information in repeated judgements is kept rather than thrown away.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
import pyarrow as pa

from prefscale.data import schema

DedupMode = Literal["none", "exact", "swap"]


def battle_key(prompt: str, response_a: str, response_b: str, mode: DedupMode) -> tuple[bytes, bool]:
    """(key, swapped): swapped is True when the canonical order is (b, a)."""
    swapped = mode == "swap" and response_b < response_a
    first, second = (response_b, response_a) if swapped else (response_a, response_b)
    digest = hashlib.blake2b(digest_size=16)
    for part in (prompt, first, second):
        digest.update(part.encode())
        digest.update(b"\x1f")
    return digest.digest(), swapped


def deduplicate(table: pa.Table, mode: DedupMode = "swap", merge_labels: bool = True) -> tuple[pa.Table, pa.Table, dict]:
    """Return (kept, duplicates, summary); kept + duplicates = table."""
    if mode == "none" or table.num_rows == 0:
        return table, _reject(table.slice(0, 0), [], []), {"mode": mode, "duplicates": 0}
    columns = [table.column(c).to_pylist() for c in schema.TEXT_COLUMNS]
    ids = table.column(schema.ID).to_pylist()
    first_of: dict[bytes, int] = {}
    group_of = np.empty(table.num_rows, dtype=np.int64)
    swapped = np.zeros(table.num_rows, dtype=bool)
    for row, (prompt, a, b) in enumerate(zip(*columns, strict=True)):
        key, swapped[row] = battle_key(prompt, a, b, mode)
        group_of[row] = first_of.setdefault(key, row)
    is_first = group_of == np.arange(table.num_rows)
    kept = table.filter(pa.array(is_first))
    if merge_labels:
        kept = _merge(table, kept, group_of, swapped, is_first)
    dup_rows = np.flatnonzero(~is_first)
    details = [
        f"same battle as id {ids[group_of[r]]}" + (" with A and B swapped" if swapped[r] != swapped[group_of[r]] else "")
        for r in dup_rows
    ]
    duplicates = _reject(table.take(pa.array(dup_rows)), ["duplicate_battle"] * len(dup_rows), details)
    return kept, duplicates, {"mode": mode, "duplicates": int(len(dup_rows)), "merged_labels": merge_labels}


def _merge(table: pa.Table, kept: pa.Table, group_of: np.ndarray, swapped: np.ndarray, is_first: np.ndarray) -> pa.Table:
    """Average each group's labels in the kept row's orientation; unlabeled rows don't vote."""
    labels = schema.label_matrix(table)
    oriented = labels.copy()
    flip = swapped != swapped[group_of]
    oriented[flip] = oriented[flip][:, schema.SWAP_ORDER]
    voted = ~np.isnan(oriented).any(axis=1)
    sums = np.zeros((table.num_rows, 3))
    votes = np.zeros(table.num_rows)
    np.add.at(sums, group_of[voted], oriented[voted])
    np.add.at(votes, group_of[voted], 1)
    first_rows = np.flatnonzero(is_first)
    merged = np.where(votes[first_rows, None] > 0, sums[first_rows] / np.maximum(votes[first_rows, None], 1), np.nan)
    for i, column in enumerate(schema.LABEL_COLUMNS):
        index = kept.schema.get_field_index(column)
        kept = kept.set_column(index, column, pa.array(merged[:, i], pa.float32(), from_pandas=True))
    flags = kept.column(schema.FLAGS).to_pylist()
    counts = votes[first_rows]
    new_flags = [",".join(filter(None, [f, f"merged_votes:{int(n)}" if n > 1 else None])) or None for f, n in zip(flags, counts, strict=True)]
    return kept.set_column(kept.schema.get_field_index(schema.FLAGS), schema.FLAGS, pa.array(new_flags, pa.string()))


def reject_repeated_ids(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(rows whose id is new, later rows repeating an id): the same id in two inputs is two different
    battles claiming one name, so the later one is rejected ``duplicate_id`` rather than merged."""
    ids = table.column(schema.ID).to_numpy()
    _, first = np.unique(ids, return_index=True)
    is_first = np.zeros(len(ids), dtype=bool)
    is_first[first] = True
    repeated = np.flatnonzero(~is_first)
    details = [f"id {ids[r]} is already used by an earlier row (another input file or the same one)" for r in repeated]
    return table.filter(pa.array(is_first)), _reject(table.take(pa.array(repeated, pa.int64())), ["duplicate_id"] * len(repeated), details)


def _reject(rows: pa.Table, reasons: list[str], details: list[str]) -> pa.Table:
    return rows.append_column(schema.REJECT_REASON, pa.array(reasons, pa.string())).append_column(
        schema.REJECT_DETAIL, pa.array(details, pa.string())
    )
