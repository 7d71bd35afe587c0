"""Degenerate battles (identical responses, an empty response) get probabilities fitted on data.

Each rule's distribution is the smoothed label mean of the training battles it matches;
rules with too few training battles stay off, so nothing is hard-coded.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from prefscale.data import schema
from prefscale.members.features import cell_turns
from prefscale.metrics import class_prior

RULES = ("identical", "a_empty", "b_empty")


def degenerate_kinds(battles: pa.Table) -> np.ndarray:
    kinds = []
    for cell_a, cell_b in zip(battles.column(schema.RESPONSE_A).to_pylist(), battles.column(schema.RESPONSE_B).to_pylist(), strict=True):
        a, b = "".join(cell_turns(cell_a)).strip(), "".join(cell_turns(cell_b)).strip()
        kinds.append("identical" if a == b else "a_empty" if not a else "b_empty" if not b else "")
    return np.asarray(kinds, dtype=object)


class DegenerateRules:
    def __init__(self, min_count: int = 10, smoothing: float = 1.0, enabled: bool = True) -> None:
        self.min_count = min_count
        self.enabled = enabled
        self.smoothing = smoothing

    def fit(self, battles: pa.Table, labels: np.ndarray) -> DegenerateRules:
        kinds, ties = degenerate_kinds(battles), schema.ties_allowed(battles)
        prior = class_prior(labels, ties)
        self.rules_: dict[str, list[float]] = {}
        self.counts_: dict[str, int] = {}
        for rule in RULES:
            matched = kinds == rule
            count = int(matched.sum())
            self.counts_[rule] = count
            if self.enabled and count >= self.min_count:
                own = class_prior(labels[matched], ties[matched])
                self.rules_[rule] = ((count * own + self.smoothing * prior) / (count + self.smoothing)).tolist()
        return self

    def apply(self, battles: pa.Table, probs: np.ndarray) -> np.ndarray:
        kinds = degenerate_kinds(battles)
        probs = probs.copy()
        for rule, distribution in self.rules_.items():
            probs[kinds == rule] = distribution
        return probs
