"""Training rows for one worker: a fold's train split (plus extra soft-labeled data), tokenized
once with their A/B-swapped twins, teacher logits joined by id."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from prefscale.artifacts import read_parts
from prefscale.data import schema
from prefscale.data.schema import LOGITS
from prefscale.errors import PrefscaleError
from prefscale.io import read_table
from prefscale.text.formatter import BattleFormatter


@dataclass
class TrainRows:
    ids: np.ndarray
    input_ids: list[list[int]]
    swapped_ids: list[list[int]]
    labels: np.ndarray  # (n, 3) probabilities
    ties: np.ndarray  # (n,) bool: False for forced-choice battles, which train through P(winner | not a tie)
    teachers: list[np.ndarray]  # each (n, 3) logits

    def __len__(self) -> int:
        return len(self.ids)


TRAIN_COLUMNS = [schema.ID, *schema.TEXT_COLUMNS, *schema.LABEL_COLUMNS, schema.TIES]


def _train_columns(table: pa.Table) -> pa.Table:
    """The columns training reads, in one schema; a table without a protocol column allows ties."""
    if schema.TIES not in table.column_names:
        table = table.append_column(schema.TIES, pa.nulls(table.num_rows, pa.string()))
    return table.select(TRAIN_COLUMNS).cast(pa.schema([schema.BATTLE_SCHEMA.field(c) for c in TRAIN_COLUMNS]))


def select_rows(train_path: str, fold: int | None, extra: list[str], max_rows: int | None, seed: int) -> pa.Table:
    table = read_table(train_path)
    if fold is not None:
        if schema.FOLD not in table.column_names:
            raise PrefscaleError(f"{train_path} has no fold column; run `prefscale data split` first")
        table = table.filter(pc.not_equal(table[schema.FOLD], fold))
    parts = [_train_columns(table)] + [_train_columns(read_table(path)) for path in extra]
    return _labeled_sample(pa.concat_tables(parts), max_rows, seed)


def select_heldout(train_path: str, fold: int, rows: int, seed: int) -> pa.Table:
    """Up to ``rows`` labeled battles of the held-out fold, in a seeded random order."""
    table = read_table(train_path)
    return _labeled_sample(_train_columns(table.filter(pc.equal(table[schema.FOLD], fold))), rows, seed)


def _labeled_sample(table: pa.Table, rows: int | None, seed: int) -> pa.Table:
    """The labeled rows in a seeded random order, the first ``rows`` of them (all when None or 0)."""
    table = table.filter(pc.invert(pc.is_null(table["winner_model_a"])))
    order = np.random.default_rng(seed).permutation(table.num_rows)
    return table.take(order[:rows] if rows else order)


def teacher_logits(paths: list[str], ids: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    """Teacher OOF logits aligned to ``ids``.

    Rows a teacher never scored (pseudolabels, which already are teacher predictions) take
    the log of their soft label as the teacher's logits.
    """
    out = []
    fallback = np.log(np.clip(labels, 1e-6, 1.0)).astype(np.float32)
    for path in paths:
        table = read_parts(path, [schema.ID, *LOGITS]) if not path.endswith(".parquet") else read_table(path, [schema.ID, *LOGITS])
        frame = table.to_pandas().drop_duplicates(schema.ID).set_index(schema.ID).reindex(ids)
        logits = np.array(frame.to_numpy(dtype=np.float32))
        missing = np.isnan(logits).any(axis=1)
        logits[missing] = fallback[missing]
        out.append(logits)
    return out


def build_rows(table: pa.Table, formatter: BattleFormatter, teachers: list[str]) -> TrainRows:
    cells = [table.column(c).to_pylist() for c in schema.TEXT_COLUMNS]
    plain, swapped = formatter.encode_with_swap(*cells)
    ids = table.column(schema.ID).to_numpy()
    labels = schema.label_matrix(table).astype(np.float32)
    return TrainRows(ids, plain.input_ids, swapped.input_ids, labels, schema.ties_allowed(table), teacher_logits(teachers, ids, labels))
