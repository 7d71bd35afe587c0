"""Battle-table helpers the tests share (not part of the package: nothing in it needs them)."""

from __future__ import annotations

import pyarrow as pa

from prefscale.data import schema

_PAIRS = ((schema.RESPONSE_A, schema.RESPONSE_B), (schema.MODEL_A, schema.MODEL_B), ("winner_model_a", "winner_model_b"), ("soft_a", "soft_b"))


def swap_battles(table: pa.Table) -> pa.Table:
    """Exchange A and B in every row: responses, model names and labels."""
    columns = {name: table.column(name) for name in table.column_names}
    for left, right in _PAIRS:
        if left in columns and right in columns:
            columns[left], columns[right] = columns[right], columns[left]
    return pa.table(columns, schema=table.schema)
