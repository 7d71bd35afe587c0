"""A multinomial logistic-regression meta-model over member log-probabilities, fitted on the
protocol likelihood (protocol_models.py: forced-choice battles through P(winner | not a tie)).

Per source (default): each training source also gets its own intercepts and member weights,
as deviations from the pooled ones that the L2 penalty shrinks toward zero. Sources differ in
how their judges use "tie" (31% in the arena, 19% in llmeval2) and in which members they can
trust, and a pooled stacker averages those away; a battle from a source the stacker never saw
(or no source at all but the default) gets the pooled weights alone, so nothing is guessed
for it. The report's per-source and leave-one-source-out tables show both sides.

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
    def __init__(self, C: float = 1.0, per_source: bool = True) -> None:
        self.C = C
        self.per_source = per_source

    def _design(self, logp: np.ndarray, sources: np.ndarray | None) -> np.ndarray:
        features = stack_features(logp)
        if not getattr(self, "sources_", None):  # pooled, or a stacker saved before per-source stacking
            return features
        known = np.array([[s == k for k in self.sources_] for s in sources], dtype=np.float64)
        centred = np.where(known.any(axis=1, keepdims=True), known - 1.0 / len(self.sources_), 0.0)  # unseen source: pooled
        return np.hstack([features, centred, (features[:, :, None] * centred[:, None, :]).reshape(len(features), -1)])

    def fit(self, logp: np.ndarray, labels: np.ndarray, ties: np.ndarray | None = None, sources: np.ndarray | None = None) -> LogisticStacker:
        distinct = sorted(set(sources)) if self.per_source and sources is not None else []
        self.sources_ = [str(s) for s in distinct] if len(distinct) > 1 else []
        x = np.vstack([self._design(logp, sources), self._design(logp[:, :, schema.SWAP_ORDER], sources)])
        both = None if ties is None else np.tile(ties, 2)
        self.model_ = SoftmaxRegression(C=self.C).fit(x, np.vstack([labels, labels[:, schema.SWAP_ORDER]]), both)
        return self

    def predict_proba(self, logp: np.ndarray, sources: np.ndarray | None = None) -> np.ndarray:
        """``sources`` as in fit; None (or a source not seen in fit) predicts with the pooled weights."""
        if sources is None:
            sources = np.full(len(logp), None, dtype=object)
        direct = self.model_.predict_proba(self._design(logp, sources))
        swapped = self.model_.predict_proba(self._design(logp[:, :, schema.SWAP_ORDER], sources))[:, schema.SWAP_ORDER]
        return (direct + swapped) / 2
