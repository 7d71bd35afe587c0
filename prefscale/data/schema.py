"""The battle schema every stage reads and writes, keyed by ``id``.

Labels are stored as probabilities in Kaggle's column names: a human vote is one-hot, a
soft label (annotator shares, pseudolabels) is any distribution. Unlabeled battles hold nulls.
The same three columns are Kaggle's submission format, so predictions and labels line up.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ID = "id"
PROMPT = "prompt"
RESPONSE_A = "response_a"
RESPONSE_B = "response_b"
MODEL_A = "model_a"
MODEL_B = "model_b"
TEXT_COLUMNS = (PROMPT, RESPONSE_A, RESPONSE_B)
LABEL_COLUMNS = ("winner_model_a", "winner_model_b", "winner_tie")
SOFT_LABEL_COLUMNS = ("soft_a", "soft_b", "soft_tie")
FLAGS = "flags"
FOLD = "fold"
SOURCE = "dataset"  # where a battle came from; inputs that do not say are DEFAULT_SOURCE
DEFAULT_SOURCE = "arena"
TIES = "ties"  # the label protocol: could the judges answer "tie"?
TIE_PROTOCOLS = ("allowed", "none")  # "none": forced choice, as in hh_rlhf
REQUIRED_COLUMNS = (ID, *TEXT_COLUMNS)
CLASSES = ("a", "b", "tie")
LOGITS = ("logit_a", "logit_b", "logit_tie")
PROBS = ("prob_a", "prob_b", "prob_tie")
SWAP_ORDER = [1, 0, 2]  # class order after exchanging A and B: (a, b, tie) -> (b, a, tie)

BATTLE_FIELDS = [
    pa.field(ID, pa.int64(), nullable=False),
    pa.field(PROMPT, pa.string()),
    pa.field(RESPONSE_A, pa.string()),
    pa.field(RESPONSE_B, pa.string()),
    pa.field(MODEL_A, pa.string()),
    pa.field(MODEL_B, pa.string()),
    *(pa.field(c, pa.float32()) for c in LABEL_COLUMNS),
    pa.field(FLAGS, pa.string()),
    pa.field(TIES, pa.string()),
]
BATTLE_SCHEMA = pa.schema(BATTLE_FIELDS)
CORE_COLUMNS = tuple(BATTLE_SCHEMA.names)

REJECT_REASON = "reject_reason"
# Set by a reader on a row it could not read whole ("<reason>|<detail>": a JSON Lines line that is
# not an object, bytes that are not UTF-8); validation rejects such a row with that reason.
READ_ERROR = "_read_error"
REJECT_DETAIL = "reject_detail"
ID_REJECT_SCHEMA = pa.schema([pa.field(ID, pa.int64()), pa.field(REJECT_REASON, pa.string()), pa.field(REJECT_DETAIL, pa.string())])  # rejects by id


def label_matrix(table: pa.Table) -> np.ndarray:
    """(n, 3) float array of label probabilities in (a, b, tie) order; NaN rows are unlabeled."""
    cols = [table.column(c).to_numpy(zero_copy_only=False) for c in LABEL_COLUMNS]
    return np.stack([np.asarray(c, dtype=np.float64) for c in cols], axis=1)


def battle_sources(table: pa.Table) -> np.ndarray:
    """Per-row source name (object array); DEFAULT_SOURCE where the table has none."""
    if SOURCE not in table.column_names:
        return np.full(table.num_rows, DEFAULT_SOURCE, dtype=object)
    return np.asarray(pc.fill_null(table.column(SOURCE).cast(pa.string()), DEFAULT_SOURCE).to_pylist(), dtype=object)


def ties_allowed(table: pa.Table) -> np.ndarray:
    """Per-row bool: True where the judges could answer tie (every row of a table without the column)."""
    if TIES not in table.column_names:
        return np.ones(table.num_rows, dtype=bool)
    return np.asarray(pc.fill_null(table.column(TIES).cast(pa.string()), "allowed").to_pylist(), dtype=object) != "none"


def is_labeled(table: pa.Table) -> bool:
    """True when every row carries a label (a table is labeled or not, never half)."""
    return all(c in table.column_names and table.column(c).null_count == 0 for c in LABEL_COLUMNS)
