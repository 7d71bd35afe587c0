"""Three-way classifiers fitted on the protocol likelihood (metrics.log_loss), so forced-choice
battles train through P(winner | not a tie) and never teach that ties do not happen.

- SoftmaxRegression: multinomial logistic regression (L2, like scikit-learn's) whose loss and
  gradient are that likelihood; for linear models (TF-IDF member, LR stacker, Dirichlet).
- fit_factored: any scikit-learn binary classifier (boosted trees) as P(a, b, tie) =
  ((1 - t) q, (1 - t)(1 - q), t), with t = P(tie) fitted only on battles whose judges could
  answer tie and q = P(a | not a tie) on every battle's decisive label mass; the likelihood
  splits into those two binary ones, so this maximises it exactly.
Soft labels (annotator shares, pseudolabels) are weights, never rounded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax

from prefscale.blas import one_blas_thread


class SoftmaxRegression:
    def __init__(self, C: float = 1.0, max_iter: int = 1000) -> None:
        self.C = C
        self.max_iter = max_iter

    @one_blas_thread
    def fit(self, x: Any, labels: np.ndarray, ties: np.ndarray | None = None) -> SoftmaxRegression:
        rows, dims = x.shape
        forced = np.zeros(rows, dtype=bool) if ties is None else ~np.asarray(ties, dtype=bool)
        decisive = labels[:, :2].sum(axis=1, keepdims=True)

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            weights, bias = theta[:-3].reshape(dims, 3), theta[-3:]
            logits = np.asarray(x @ weights) + bias
            logp = log_softmax(logits, axis=1)
            residual = np.exp(logp) - labels
            loss = -(labels * logp).sum()
            if forced.any():
                pair = log_softmax(logits[forced, :2], axis=1)
                loss += (labels[forced] * logp[forced]).sum() - (labels[forced, :2] * pair).sum()
                residual[forced, :2] = np.exp(pair) * decisive[forced] - labels[forced, :2]
                residual[forced, 2] = 0.0
            grad_w = np.asarray(x.T @ residual) + weights / self.C
            return loss + (weights**2).sum() / (2 * self.C), np.concatenate([grad_w.ravel(), residual.sum(axis=0)])

        result = minimize(objective, np.zeros(dims * 3 + 3), jac=True, method="L-BFGS-B", options={"maxiter": self.max_iter})
        self.coef_, self.intercept_ = result.x[:-3].reshape(dims, 3), result.x[-3:]
        return self

    def predict_proba(self, x: Any) -> np.ndarray:
        return np.exp(log_softmax(np.asarray(x @ self.coef_) + self.intercept_, axis=1))


class ConstantBinary:
    """A binary 'classifier' for targets of one class only (say, no battle allowed ties)."""

    def __init__(self, positive: float) -> None:
        self.positive = float(positive)

    def predict_proba(self, x: Any) -> np.ndarray:
        return np.tile([1 - self.positive, self.positive], (x.shape[0], 1))


def fit_binary(make: Callable[[], Any], x: Any, target: np.ndarray, weight: np.ndarray) -> Any:
    """Fit P(positive) to soft ``target`` in [0, 1]: each row once per class, weighted by its share."""
    positive, negative = weight * target, weight * (1 - target)
    if positive.sum() <= 0 or negative.sum() <= 0:
        return ConstantBinary(1.0 if negative.sum() <= 0 and positive.sum() > 0 else 0.0)
    pos, neg = np.nonzero(positive > 0)[0], np.nonzero(negative > 0)[0]
    rows = np.concatenate([pos, neg])
    classes = np.concatenate([np.ones(len(pos), dtype=int), np.zeros(len(neg), dtype=int)])
    return make().fit(x[rows], classes, sample_weight=np.concatenate([positive[pos], negative[neg]]))


class FactoredModel:
    """The fitted pair; holds no callables, so skops can save it."""

    def __init__(self, tie: Any, winner: Any) -> None:
        self.tie = tie
        self.winner = winner

    def predict_proba(self, x: Any) -> np.ndarray:
        tie, a_wins = self.tie.predict_proba(x)[:, 1], self.winner.predict_proba(x)[:, 1]
        return np.column_stack([(1 - tie) * a_wins, (1 - tie) * (1 - a_wins), tie])


def fit_factored(make_binary: Callable[[], Any], x: Any, labels: np.ndarray, ties: np.ndarray | None = None) -> FactoredModel:
    """Fit the tie model on battles that allowed ties and the winner model on decisive label mass."""
    allowed = np.ones(len(labels), dtype=bool) if ties is None else np.asarray(ties, dtype=bool)
    decisive = labels[:, 0] + labels[:, 1]
    a_share = np.divide(labels[:, 0], decisive, out=np.zeros(len(labels)), where=decisive > 0)
    return FactoredModel(fit_binary(make_binary, x, labels[:, 2], allowed.astype(np.float64)), fit_binary(make_binary, x, a_share, decisive))
