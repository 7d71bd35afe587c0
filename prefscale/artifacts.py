"""The Parquet formats stages hand to each other: score parts and out-of-fold tables.

Score parts (``SCORE_SCHEMA``) are what the Ray Data engine writes, one row per (id, model);
OOF tables (``OOF_COLUMNS``) hold one row per training battle for a member or train run, and
neural models and cheap members write the same columns, so stacking reads every member alike.
Readers live here so that training, pseudolabels and stacking need not import the engine.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from prefscale.data import schema
from prefscale.io import exists, resolve
from prefscale.metrics import class_prior, log_loss, out_of_fold_prior

SWAP_FLIP = "swap_flip"  # the single-order verdicts on (A, B) and (B, A) disagree; null where only one order was scored
SCORE_SCHEMA = pa.schema(
    [pa.field(schema.ID, pa.int64()), pa.field("model", pa.string())]
    + [pa.field(c, pa.float32()) for c in (*schema.LOGITS, *schema.PROBS)]
    + [pa.field(SWAP_FLIP, pa.bool_()), pa.field("tokens", pa.int32()), pa.field("computed_tokens", pa.int32())]
)
OOF_COLUMNS = [schema.ID, schema.FOLD, "model", *schema.LOGITS, *schema.PROBS, SWAP_FLIP]


def read_parts(output: str, columns: list[str] | None = None) -> pa.Table:
    """Everything scored so far in a score output directory (empty table when none)."""
    if not exists(output):
        return SCORE_SCHEMA.empty_table() if columns is None else SCORE_SCHEMA.empty_table().select(columns)
    fs, path = resolve(output)
    return pads.dataset(path, filesystem=fs, format="parquet", schema=SCORE_SCHEMA).to_table(columns=columns)


def oof_table(ids: np.ndarray, folds: np.ndarray, name: str, probs: np.ndarray, flips: np.ndarray | None = None) -> pa.Table:
    """OOF rows from probabilities; logits are their logs (any per-row shift gives the same softmax)."""
    probs = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1.0)
    probs /= probs.sum(axis=1, keepdims=True)
    columns = {schema.ID: pa.array(ids, pa.int64()), schema.FOLD: pa.array(folds, pa.int8()), "model": pa.array([name] * len(ids), pa.string())}
    columns.update({c: pa.array(np.log(probs[:, i]), pa.float32()) for i, c in enumerate(schema.LOGITS)})
    columns.update({c: pa.array(probs[:, i], pa.float32()) for i, c in enumerate(schema.PROBS)})
    columns[SWAP_FLIP] = pa.nulls(len(ids), pa.bool_()) if flips is None else pa.array(flips, pa.bool_())
    return pa.table(columns)


ALLOWED = "ties_allowed"


def label_frame(battles: pa.Table) -> pd.DataFrame:
    """Labels and each battle's protocol (bool column ALLOWED) indexed by id, for joining to predictions."""
    truth = battles.select([schema.ID, *schema.LABEL_COLUMNS]).append_column(ALLOWED, pa.array(schema.ties_allowed(battles)))
    return truth.to_pandas().set_index(schema.ID)


def swap_flip_share(oof: pa.Table) -> float | None:
    """The share of battles whose single-order verdict changes when A and B are exchanged (None
    where only one order was scored, or for an OOF file written before the column existed)."""
    if SWAP_FLIP not in oof.column_names or oof.column(SWAP_FLIP).null_count == oof.num_rows:
        return None
    return round(float(pc.mean(oof.column(SWAP_FLIP).cast(pa.float64())).as_py()), 4)


def oof_metrics(oof: pa.Table, battles: pa.Table) -> dict[str, Any]:
    """OOF log loss beside two baselines: the class prior of all rows, and the out-of-fold
    prior (each fold predicted by the other folds' balance, the fair one for OOF logits)."""
    frame = oof.to_pandas().set_index(schema.ID).join(label_frame(battles), how="inner")
    labels, ties = frame[list(schema.LABEL_COLUMNS)].to_numpy(), frame[ALLOWED].to_numpy(dtype=bool)
    probs = frame[list(schema.PROBS)].to_numpy()
    prior = np.broadcast_to(class_prior(labels, ties), labels.shape)
    return {
        "oof_log_loss": round(log_loss(labels, probs, ties), 4),
        "prior_log_loss": round(log_loss(labels, prior, ties), 4),
        "oof_prior_log_loss": round(log_loss(labels, out_of_fold_prior(labels, frame[schema.FOLD].to_numpy(), ties), ties), 4),
        "oof_accuracy": round(float((labels.argmax(axis=1) == probs.argmax(axis=1)).mean()), 4),
        "training_rows_with_oof": int(len(frame)),
        "swap_flip_share": swap_flip_share(oof),
    }
