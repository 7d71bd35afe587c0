"""Calibrators fitted against log loss, from one parameter to a full matrix.

temperature: softmax(log p / T) (1 parameter); vector: softmax(w * log p + b) (6);
dirichlet: softmax(W log p + b) (12, L2-regularised; Kull et al. 2019). Identity is the
'none' choice, so the automatic selection can always decline to calibrate. All fit the
protocol log loss (forced-choice rows through P(winner | not a tie)).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_softmax

from prefscale.blas import one_blas_thread
from prefscale.metrics import log_loss, log_probs
from prefscale.protocol_models import SoftmaxRegression


class IdentityCalibrator:
    def fit(self, probs: np.ndarray, labels: np.ndarray, ties: np.ndarray | None = None) -> IdentityCalibrator:
        return self

    def predict_proba(self, probs: np.ndarray) -> np.ndarray:
        return probs


class TemperatureCalibrator:
    def fit(self, probs: np.ndarray, labels: np.ndarray, ties: np.ndarray | None = None) -> TemperatureCalibrator:
        logp = log_probs(probs)
        result = minimize_scalar(lambda t: log_loss(labels, np.exp(log_softmax(logp / t, axis=1)), ties), bounds=(0.05, 20.0), method="bounded")
        self.temperature_ = float(result.x)
        return self

    def predict_proba(self, probs: np.ndarray) -> np.ndarray:
        return np.exp(log_softmax(log_probs(probs) / self.temperature_, axis=1))


class VectorCalibrator:
    @one_blas_thread
    def fit(self, probs: np.ndarray, labels: np.ndarray, ties: np.ndarray | None = None) -> VectorCalibrator:
        logp = log_probs(probs)

        def loss(theta: np.ndarray) -> float:
            return log_loss(labels, np.exp(log_softmax(logp * theta[:3] + theta[3:], axis=1)), ties)

        self.theta_ = minimize(loss, np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]), method="L-BFGS-B").x
        return self

    def predict_proba(self, probs: np.ndarray) -> np.ndarray:
        return np.exp(log_softmax(log_probs(probs) * self.theta_[:3] + self.theta_[3:], axis=1))


class DirichletCalibrator:
    def __init__(self, C: float = 1.0) -> None:
        self.C = C

    def fit(self, probs: np.ndarray, labels: np.ndarray, ties: np.ndarray | None = None) -> DirichletCalibrator:
        self.model_ = SoftmaxRegression(C=self.C).fit(log_probs(probs), labels, ties)
        return self

    def predict_proba(self, probs: np.ndarray) -> np.ndarray:
        return self.model_.predict_proba(log_probs(probs))


CALIBRATORS = {"none": IdentityCalibrator, "temperature": TemperatureCalibrator, "vector": VectorCalibrator, "dirichlet": DirichletCalibrator}


def choose_calibrator(probs: np.ndarray, labels: np.ndarray, folds: np.ndarray, ties: np.ndarray) -> tuple[str, dict[str, float]]:
    """The calibrator with the lowest cross-validated log loss over ``folds`` ('none' included)."""
    scores = {}
    for name, make in CALIBRATORS.items():
        calibrated = np.empty_like(probs)
        for fold in np.unique(folds):
            test = folds == fold
            calibrated[test] = make().fit(probs[~test], labels[~test], ties[~test]).predict_proba(probs[test])
        scores[name] = log_loss(labels, calibrated, ties)
    return min(scores, key=scores.get), scores
