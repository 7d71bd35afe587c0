"""Training rows for one worker: a fold's train split (plus extra soft-labeled data), tokenized
once with their A/B-swapped twins, teacher logits joined by id.

Token ids are kept in one flat int32 array per order (``TokenLists``): 4 bytes a token, where
Python lists of ints cost about 36 (a 70B teacher's fold at 2,048 tokens: 11 GB of lists per
worker). The rows are tokenized a chunk at a time, so only a chunk is ever held as lists.
"""

from __future__ import annotations

import itertools
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


ENCODE_CHUNK_ROWS = 1024  # battles tokenized at once (as Python lists) before they join the flat arrays


@dataclass
class TokenLists:
    """Token id sequences in one flat int32 array with offsets; indexing gives one sequence (a numpy view)."""

    flat: np.ndarray
    offsets: np.ndarray  # len(self) + 1 positions into flat

    @classmethod
    def concat(cls, chunks: list[list[list[int]]]) -> TokenLists:
        lengths = np.fromiter((len(s) for chunk in chunks for s in chunk), dtype=np.int64)
        flat = np.fromiter(itertools.chain.from_iterable(itertools.chain.from_iterable(chunks)), dtype=np.int32, count=int(lengths.sum()))
        return cls(flat, np.concatenate([[0], np.cumsum(lengths)]))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self.flat[self.offsets[index] : self.offsets[index + 1]]


@dataclass
class TrainRows:
    ids: np.ndarray
    input_ids: TokenLists
    swapped_ids: TokenLists
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
    plain, swapped = [], []
    for start in range(0, table.num_rows, ENCODE_CHUNK_ROWS):
        chunk = table.slice(start, ENCODE_CHUNK_ROWS)
        encoded, twins = formatter.encode_with_swap(*(chunk.column(c).to_pylist() for c in schema.TEXT_COLUMNS))
        plain.append(TokenLists.concat([encoded.input_ids]))
        swapped.append(TokenLists.concat([twins.input_ids]))
    ids = table.column(schema.ID).to_numpy()
    labels = schema.label_matrix(table).astype(np.float32)
    return TrainRows(ids, _joined(plain), _joined(swapped), labels, schema.ties_allowed(table), teacher_logits(teachers, ids, labels))


def _joined(parts: list[TokenLists]) -> TokenLists:
    if not parts:
        return TokenLists(np.zeros(0, np.int32), np.zeros(1, np.int64))
    lengths = np.concatenate([np.diff(p.offsets) for p in parts])
    return TokenLists(np.concatenate([p.flat for p in parts]), np.concatenate([[0], np.cumsum(lengths)]))
