"""A multinomial logistic-regression meta-model over member log-probabilities.

Trained on both orders of every battle (members' A and B columns and the labels swapped
together) and averaged over both at prediction, so it stays symmetric under swapping A and B.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from prefscale.data import schema
from prefscale.members.estimators import expand_soft_labels


def stack_features(logp: np.ndarray) -> np.ndarray:
    """Per member: log-probs centred over classes (a softmax-invariant view of the logits)."""
    centred = logp - logp.mean(axis=2, keepdims=True)
    return centred.reshape(len(logp), -1)


class LogisticStacker:
    def __init__(self, C: float = 1.0) -> None:
        self.C = C

    def fit(self, logp: np.ndarray, labels: np.ndarray) -> LogisticStacker:
        x = np.vstack([stack_features(logp), stack_features(logp[:, :, schema.SWAP_ORDER])])
        rows, classes, weights = expand_soft_labels(x, np.vstack([labels, labels[:, schema.SWAP_ORDER]]))
        self.model_ = LogisticRegression(C=self.C, max_iter=1000).fit(rows, classes, sample_weight=weights)
        return self

    def predict_proba(self, logp: np.ndarray) -> np.ndarray:
        direct = self.model_.predict_proba(stack_features(logp))
        swapped = self.model_.predict_proba(stack_features(logp[:, :, schema.SWAP_ORDER]))[:, schema.SWAP_ORDER]
        return (direct + swapped) / 2
