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
    teachers: list[np.ndarray]  # each (n, 3) logits

    def __len__(self) -> int:
        return len(self.ids)


def select_rows(train_path: str, fold: int | None, extra: list[str], max_rows: int | None, seed: int) -> pa.Table:
    columns = [schema.ID, *schema.TEXT_COLUMNS, *schema.LABEL_COLUMNS]
    table = read_table(train_path)
    if fold is not None:
        if schema.FOLD not in table.column_names:
            raise PrefscaleError(f"{train_path} has no fold column; run `prefscale data split` first")
        table = table.filter(pc.not_equal(table[schema.FOLD], fold))
    parts = [table.select(columns)] + [read_table(path).select(columns) for path in extra]
    return _labeled_sample(pa.concat_tables([p.cast(parts[0].schema) for p in parts]), max_rows, seed)


def select_heldout(train_path: str, fold: int, rows: int, seed: int) -> pa.Table:
    """Up to ``rows`` labeled battles of the held-out fold, in a seeded random order."""
    table = read_table(train_path, [schema.ID, *schema.TEXT_COLUMNS, *schema.LABEL_COLUMNS, schema.FOLD])
    return _labeled_sample(table.filter(pc.equal(table[schema.FOLD], fold)), rows, seed)


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
    return TrainRows(ids, plain.input_ids, swapped.input_ids, labels, teacher_logits(teachers, ids, labels))
