"""Weighted blending of members' log-probabilities: p ∝ exp(Σ_m w_m log p_m).

Weights are free non-negative numbers (not forced to sum to one), so the blend also learns how
sharp the ensemble should be. Powell is the reference optimiser; Ray Tune searches the same
objective in stack/tune_blend.py.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax

from prefscale.metrics import log_loss

MAX_WEIGHT = 2.0


def blend(logp: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(np.einsum("nmk,m->nk", logp, np.asarray(weights, dtype=np.float64)), axis=1))


def blend_loss(weights: np.ndarray, logp: np.ndarray, labels: np.ndarray, ties: np.ndarray | None = None) -> float:
    return log_loss(labels, blend(logp, np.clip(weights, 0.0, MAX_WEIGHT)), ties)


def powell_weights(logp: np.ndarray, labels: np.ndarray, ties: np.ndarray | None = None) -> np.ndarray:
    start = np.full(logp.shape[1], 1.0 / logp.shape[1])
    result = minimize(blend_loss, start, args=(logp, labels, ties), method="Powell", bounds=[(0.0, MAX_WEIGHT)] * logp.shape[1],
                      options={"xtol": 1e-4, "ftol": 1e-7})
    return np.clip(result.x, 0.0, MAX_WEIGHT)


class BlendStacker:
    """Blend weights fitted by Powell (or given, e.g. from a Ray Tune search)."""

    def __init__(self, weights: list[float] | None = None) -> None:
        self.weights = weights

    def fit(self, logp: np.ndarray, labels: np.ndarray, ties: np.ndarray | None = None, sources: np.ndarray | None = None) -> BlendStacker:
        """``sources`` is accepted for the stacker interface; one blend serves every source."""
        self.weights_ = np.asarray(self.weights, dtype=np.float64) if self.weights is not None else powell_weights(logp, labels, ties)
        return self

    def predict_proba(self, logp: np.ndarray, sources: np.ndarray | None = None) -> np.ndarray:
        return blend(logp, self.weights_)
