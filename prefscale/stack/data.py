"""The stacking table: members' OOF log-probabilities joined to labels, folds and datasets by id."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from prefscale.data import schema
from prefscale.errors import PrefscaleError
from prefscale.io import exists, read_table
from prefscale.layout import RunLayout


@dataclass(frozen=True)
class StackData:
    ids: np.ndarray
    folds: np.ndarray
    labels: np.ndarray
    logp: np.ndarray  # (rows, members, 3)
    members: list[str]
    datasets: np.ndarray  # each battle's source (schema.battle_sources)
    ties: np.ndarray  # each battle's label protocol: True where judges could answer tie
    battles: pa.Table  # aligned with ids; degenerate rules read its texts

    def select(self, members: list[str]) -> StackData:
        """The same battles with only these members' columns."""
        return StackData(self.ids, self.folds, self.labels, self.logp[:, [self.members.index(m) for m in members]], list(members),
                         self.datasets, self.ties, self.battles)

    def take(self, rows: np.ndarray) -> StackData:
        return StackData(self.ids[rows], self.folds[rows], self.labels[rows], self.logp[rows], self.members, self.datasets[rows],
                         self.ties[rows], self.battles.take(rows))


def log_probs(table: pa.Table) -> np.ndarray:
    probs = np.stack([table.column(c).to_numpy().astype(np.float64) for c in schema.PROBS], axis=1)
    probs = np.clip(probs, 1e-7, 1.0)
    return np.log(probs / probs.sum(axis=1, keepdims=True))


def load_stack_data(layout: RunLayout, members: list[str]) -> StackData:
    """Join every member's OOF on id; a battle missing from any member is an error, not a silent drop."""
    battles = read_table(layout.battles)
    ids = battles.column(schema.ID).to_numpy()
    order = np.argsort(ids)
    battles, ids = battles.take(order), ids[order]
    logps = []
    for name in members:
        path = layout.oof(name)
        if not exists(path):
            raise PrefscaleError(f"stack member '{name}' has no OOF logits at {path}; train it first or drop it from stack.members")
        oof = read_table(path, columns=[schema.ID, *schema.PROBS])
        oof_ids = oof.column(schema.ID).to_numpy()
        by_id = np.argsort(oof_ids)
        position = np.minimum(np.searchsorted(oof_ids[by_id], ids), max(len(oof_ids) - 1, 0))
        found = oof_ids[by_id][position] == ids if len(oof_ids) else np.zeros(len(ids), dtype=bool)
        if not found.all():
            raise PrefscaleError(f"OOF of '{name}' lacks {int((~found).sum())} of {len(ids)} battles; rerun that member so every battle has one OOF row")
        logps.append(log_probs(oof.take(by_id[position])))
    return StackData(ids, battles.column(schema.FOLD).to_numpy(), schema.label_matrix(battles), np.stack(logps, axis=1), list(members),
                     schema.battle_sources(battles), schema.ties_allowed(battles), battles)
