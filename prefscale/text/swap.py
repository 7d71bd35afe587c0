"""The A/B swap: the same battle with the responses exchanged and the label mirrored.

Used for training augmentation and for test-time augmentation, where the swapped
prediction is mapped back with ``unswap_probs`` before averaging.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from prefscale.data import schema as S

SWAP_ORDER = [1, 0, 2]  # (a, b, tie) -> (b, a, tie)
_PAIRS = ((S.RESPONSE_A, S.RESPONSE_B), (S.MODEL_A, S.MODEL_B), ("winner_model_a", "winner_model_b"), ("soft_a", "soft_b"))


def swap_battles(table: pa.Table) -> pa.Table:
    """Exchange A and B in every row: responses, model names and labels."""
    columns = {name: table.column(name) for name in table.column_names}
    for left, right in _PAIRS:
        if left in columns and right in columns:
            columns[left], columns[right] = columns[right], columns[left]
    return pa.table(columns, schema=table.schema)


def unswap_probs(probs: np.ndarray) -> np.ndarray:
    """Map predictions made on swapped battles back to the original A/B order."""
    return np.asarray(probs)[..., SWAP_ORDER]
