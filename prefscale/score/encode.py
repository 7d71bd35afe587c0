"""The CPU stage: battles -> token ids for every model (and their A/B-swapped twins for TTA).

Runs as Ray Data tasks. Tokenizers are cached per worker process, so each is loaded once
per process, not once per block. A row whose text cannot be formatted is marked with an
``error`` instead of failing the whole job; the writer sends it to the rejects.
"""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from prefscale.config import TextConfig
from prefscale.data import schema
from prefscale.data.kaggle_json import TurnsDecodeError
from prefscale.score.scoring_model import ScoringModel
from prefscale.text.formatter import BattleFormatter

ERROR = "error"
IDS = "ids"
IDS_SWAPPED = "ids_swapped"


@functools.lru_cache(maxsize=8)
def _formatter(path: str, trust_remote_code: bool, text: TextConfig) -> BattleFormatter:
    from prefscale.models.loading import load_tokenizer

    return BattleFormatter(load_tokenizer(path, trust_remote_code), text)


def _encode(formatter: BattleFormatter, cells: tuple[list, list, list], tta: bool) -> tuple[list, list | None]:
    if tta:
        plain, swapped = formatter.encode_with_swap(*cells)
        return plain.input_ids, swapped.input_ids
    return formatter.encode(*cells).input_ids, None


def _encode_rows(formatter: BattleFormatter, cells: tuple[list, list, list], tta: bool, errors: list) -> tuple[list, list | None]:
    """Encode the batch; only if that fails, row by row, so one bad row costs one row."""
    try:
        return _encode(formatter, cells, tta)
    except (TurnsDecodeError, TypeError, ValueError):
        pass
    plain, swapped = [], []
    for k, row in enumerate(zip(*cells, strict=True)):
        try:
            ids, twin = _encode(formatter, tuple([cell] for cell in row), tta)
            plain.append(ids[0])
            swapped.append(twin[0] if twin else [])
        except (TurnsDecodeError, TypeError, ValueError) as exc:
            errors[k] = errors[k] or f"cannot format: {exc}"[:300]
            plain.append([])
            swapped.append([])
    return plain, swapped if tta else None


def _scatter(values: list, rows: np.ndarray, n: int, empty: object) -> list:
    """``values`` of ``rows`` (increasing) placed in a list of ``n``, ``empty`` elsewhere."""
    if len(rows) == n:  # every row: nothing to place
        return values
    full = [empty] * n
    for k, r in enumerate(rows.tolist()):
        full[r] = values[k]
    return full


def encode_battles(batch: pa.Table, models: list[ScoringModel], tta: bool, rows: np.ndarray | None = None) -> pa.Table:
    """Token ids per model for ``rows`` of the batch (every row when None; a cascade stage passes
    the rows routed to it), and only a fold model's own fold among them. Every other row gets
    empty ids, which no replica computes."""
    n = batch.num_rows
    encoded = batch if rows is None else batch.take(rows)  # only the rows encoded become Python
    rows = np.arange(n) if rows is None else np.asarray(rows)
    cells = tuple(encoded.column(c).to_pylist() for c in schema.TEXT_COLUMNS)
    errors: list[str | None] = [None] * n
    columns: dict[str, pa.Array] = {schema.ID: batch.column(schema.ID)}
    if any(m.fold is not None for m in models):  # routed: each fold model scores its own fold's rows
        columns[schema.FOLD] = batch.column(schema.FOLD)
        fold = batch.column(schema.FOLD).to_numpy(zero_copy_only=False)[rows]
    for model in models:
        formatter = _formatter(model.path, model.trust_remote_code, model.text)
        mine = np.arange(len(rows)) if model.fold is None else np.flatnonzero(fold == model.fold)
        mine_errors: list[str | None] = [None] * len(mine)
        subset = cells if len(mine) == len(rows) else tuple([cell[k] for k in mine.tolist()] for cell in cells)
        plain, swapped = _encode_rows(formatter, subset, tta, mine_errors)
        for k, error in zip(rows[mine].tolist(), mine_errors, strict=True):
            errors[k] = errors[k] or error
        columns[model.column(IDS)] = pa.array(_scatter(plain, rows[mine], n, []), pa.list_(pa.int32()))
        if swapped is not None:
            columns[model.column(IDS_SWAPPED)] = pa.array(_scatter(swapped, rows[mine], n, []), pa.list_(pa.int32()))
    columns[ERROR] = pa.array(errors, pa.string())
    if any(errors):
        # A row failed for some model: blank its ids everywhere so no replica spends compute on it.
        bad = pa.array([e is not None for e in errors])
        empty = pa.array([[]] * n, pa.list_(pa.int32()))
        for name in list(columns):
            if name.endswith(f".{IDS}") or name.endswith(f".{IDS_SWAPPED}"):
                columns[name] = pc.if_else(bad, empty, columns[name])
    return pa.table(columns)
