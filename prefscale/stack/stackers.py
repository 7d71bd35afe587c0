"""A multinomial logistic-regression meta-model over member log-probabilities, fitted on the
protocol likelihood (protocol_models.py: forced-choice battles through P(winner | not a tie)).

Trained on both orders of every battle (members' A and B columns and the labels swapped
together) and averaged over both at prediction, so it stays symmetric under swapping A and B.
"""

from __future__ import annotations

import numpy as np

from prefscale.data import schema
from prefscale.protocol_models import SoftmaxRegression


def stack_features(logp: np.ndarray) -> np.ndarray:
    """Per member: log-probs centred over classes (a softmax-invariant view of the logits)."""
    centred = logp - logp.mean(axis=2, keepdims=True)
    return centred.reshape(len(logp), -1)


class LogisticStacker:
    def __init__(self, C: float = 1.0) -> None:
        self.C = C

    def fit(self, logp: np.ndarray, labels: np.ndarray, ties: np.ndarray | None = None) -> LogisticStacker:
        x = np.vstack([stack_features(logp), stack_features(logp[:, :, schema.SWAP_ORDER])])
        both = None if ties is None else np.tile(ties, 2)
        self.model_ = SoftmaxRegression(C=self.C).fit(x, np.vstack([labels, labels[:, schema.SWAP_ORDER]]), both)
        return self

    def predict_proba(self, logp: np.ndarray) -> np.ndarray:
        direct = self.model_.predict_proba(stack_features(logp))
        swapped = self.model_.predict_proba(stack_features(logp[:, :, schema.SWAP_ORDER]))[:, schema.SWAP_ORDER]
        return (direct + swapped) / 2
